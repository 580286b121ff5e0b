"""Helpers for the event-log tests: test data, assertions, and the two storage backends.

A ``Backend`` is one storage location, SQLite in ``tmp_path`` or a fresh PostgreSQL schema,
with the raw access tests need to break it on purpose.
"""

from __future__ import annotations

import abc
import os
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from openperps.store import Envelope, EventLog, SqliteEventLog
from openperps.store.postgres import PostgresEventLog
from tests.services import unavailable

PG_DSN = os.environ.get("OPENPERPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def envelopes(first: int, count: int) -> list[Envelope]:
    """``count`` envelopes from ``first`` on, contents derived from the version."""
    return [
        Envelope(v, 1_700_000_000_000 + v, f"Type{v % 5}", b"payload-%d-" % v + bytes(v % 97))
        for v in range(first, first + count)
    ]


async def read_all(log: EventLog, from_version: int = 1) -> list[Envelope]:
    return [e async for e in log.read(from_version)]


async def assert_log(log: EventLog, expected: Sequence[Envelope]) -> None:
    """The log holds exactly ``expected``, in order, and ``last_version`` agrees."""
    assert await read_all(log) == list(expected)
    assert await log.last_version() == (expected[-1].version if expected else 0)


class Backend(abc.ABC):
    """One storage location and raw, checksum-bypassing access to it."""

    name: str
    append_zero_byte: str
    """SQL that appends a zero byte to the ``payload`` column, in this dialect."""

    @abc.abstractmethod
    def make(self) -> EventLog:
        """A new, unopened log on this storage (a second process would see the same)."""

    def reader(self) -> EventLog:
        """A second process's view of the log that reads it while the first writes (SQLite:
        another connection; PostgreSQL: a read-only log, as a gateway opens it)."""
        return self.make()

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None:
        """Run raw SQL; tables are written ``{events}``, ``{snapshots}``, ``{meta}``."""

    async def corrupt_event(self, version: int) -> None:
        await self.execute(
            f"UPDATE {{events}} SET payload = {self.append_zero_byte} WHERE version = ?", version
        )

    async def delete_events(self, *versions: int) -> None:
        for version in versions:
            await self.execute("DELETE FROM {events} WHERE version = ?", version)

    async def corrupt_snapshot(self, version: int) -> None:
        await self.execute(
            "UPDATE {snapshots} SET state_hash = 'tampered' WHERE version = ?", version
        )

    async def set_schema_version(self, version: int) -> None:
        await self.execute("UPDATE {meta} SET value = ? WHERE key = 'schema_version'", str(version))

    async def cleanup(self) -> None:
        return None


class SqliteBackend(Backend):
    name = "sqlite"
    append_zero_byte = "CAST(payload || X'00' AS BLOB)"

    def __init__(self, path: Path) -> None:
        self.path = path

    def make(self) -> EventLog:
        return SqliteEventLog(self.path)

    async def execute(self, sql: str, *args: Any) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(
                sql.format(events="events", snapshots="snapshots", meta="store_meta"), args
            )
        finally:
            conn.close()


class PostgresBackend(Backend):
    name = "postgres"
    append_zero_byte = "payload || '\\x00'::bytea"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.schema = f"test_store_{uuid.uuid4().hex[:12]}"

    def make(self) -> EventLog:
        return PostgresEventLog(self.dsn, schema=self.schema)

    def reader(self) -> EventLog:
        return PostgresEventLog(self.dsn, schema=self.schema, read_only=True)

    async def execute(self, sql: str, *args: Any) -> None:
        q = self.schema
        sql = sql.format(events=f"{q}.events", snapshots=f"{q}.snapshots", meta=f"{q}.store_meta")
        for i in range(len(args)):
            sql = sql.replace("?", f"${i + 1}", 1)
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def cleanup(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


async def postgres_or_skip() -> str:
    """The test DSN if the server answers; skip, or fail under CI, if it does not."""
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
    except (OSError, TimeoutError, asyncpg.exceptions.PostgresError) as exc:
        unavailable(f"PostgreSQL at {PG_DSN} does not answer: {exc}")
    await conn.close()
    return PG_DSN
