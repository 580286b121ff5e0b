"""What only the PostgreSQL log does (store/postgres.py): schemas, pooled connections, and
losing a connection in the middle of a batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from openperps.store import (
    SCHEMA_VERSION,
    GroupCommitWriter,
    LogInUse,
    SchemaTooNew,
    StorageLocked,
    StorageUnavailable,
    StoreError,
    StoreErrorCode,
    VersionGap,
)
from openperps.store.postgres import APPLICATION_NAME, PostgresEventLog

from .helpers import PostgresBackend, assert_log, envelopes

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(pg_dsn)
    try:
        yield backend
    finally:
        await backend.cleanup()


async def blocked_writer_pid(holder: asyncpg.Connection) -> int:
    """The log's backend once its COPY waits for the lock ``holder`` holds (polls up to 10 s)."""
    for _ in range(200):
        pid = await holder.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))",
            APPLICATION_NAME,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError("the writer never blocked on the held lock")


async def test_a_connection_killed_mid_batch_acknowledges_nothing_and_the_writer_recovers(
    pg: PostgresBackend,
) -> None:
    async with pg.make() as log, GroupCommitWriter(log) as writer:
        await writer.submit(envelopes(1, 10))

        # Hold the table so the writer's transaction stops inside its COPY, then kill it there.
        holder = await asyncpg.connect(pg.dsn)
        try:
            async with holder.transaction():
                await holder.execute(f'LOCK TABLE "{pg.schema}".events IN SHARE MODE')
                in_flight = writer.enqueue(envelopes(11, 1_000))
                pid = await blocked_writer_pid(holder)
                assert await holder.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await holder.close()

        with pytest.raises(StorageUnavailable) as lost:
            await in_flight
        assert lost.value.code == StoreErrorCode.STORAGE_UNAVAILABLE
        await assert_log(log, envelopes(1, 10))

        await writer.submit(envelopes(11, 1_000))  # a fresh connection from the pool
        await assert_log(log, envelopes(1, 1_010))


async def test_a_locked_table_fails_the_batch_and_the_writer_recovers(
    pg: PostgresBackend,
) -> None:
    log = PostgresEventLog(pg.dsn, schema=pg.schema, lock_timeout_ms=200)
    async with log, GroupCommitWriter(log) as writer:
        await writer.submit(envelopes(1, 3))
        holder = await asyncpg.connect(pg.dsn)
        try:
            async with holder.transaction():
                await holder.execute(f'LOCK TABLE "{pg.schema}".events IN EXCLUSIVE MODE')
                with pytest.raises(StorageLocked) as locked:
                    await writer.submit(envelopes(4, 3))
                assert locked.value.code == StoreErrorCode.STORAGE_LOCKED
        finally:
            await holder.close()
        await writer.submit(envelopes(4, 3))
        await assert_log(log, envelopes(1, 6))


async def test_a_server_that_does_not_answer_is_unavailable() -> None:
    log = PostgresEventLog("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=2)
    with pytest.raises(StorageUnavailable):
        await log.open()


def test_the_schema_must_be_a_plain_identifier() -> None:
    with pytest.raises(ValueError, match="identifier"):
        PostgresEventLog("postgresql://x/y", schema='a"; DROP TABLE events; --')


async def test_logs_in_different_schemas_are_independent(pg_dsn: str) -> None:
    first, second = PostgresBackend(pg_dsn), PostgresBackend(pg_dsn)
    try:
        async with first.make() as a, second.make() as b:
            await a.append(envelopes(1, 3))
            await b.append(envelopes(1, 1))
            await assert_log(a, envelopes(1, 3))
            await assert_log(b, envelopes(1, 1))
    finally:
        await first.cleanup()
        await second.cleanup()


async def test_a_second_writer_is_refused_while_the_first_holds_the_log(
    pg: PostgresBackend,
) -> None:
    async with pg.make() as first:
        await first.append(envelopes(1, 3))
        second = pg.make()
        with pytest.raises(LogInUse) as refused:
            await second.open()
        assert refused.value.code == StoreErrorCode.LOG_IN_USE and pg.schema in str(refused.value)
        reader = PostgresEventLog(pg.dsn, schema=pg.schema, read_only=True)
        async with reader:  # readers (gateways) are not writers
            await assert_log(reader, envelopes(1, 3))
    async with pg.make() as after:  # released on close (and with the process)
        await assert_log(after, envelopes(1, 3))


async def test_two_writers_racing_for_the_same_versions_cannot_both_win(
    pg: PostgresBackend,
) -> None:
    """Below the writer lock, the log itself lets one of two racing appends win."""
    a = PostgresEventLog(pg.dsn, schema=pg.schema, exclusive=False)
    b = PostgresEventLog(pg.dsn, schema=pg.schema, exclusive=False)
    async with a, b:
        results = await asyncio.gather(
            a.append(envelopes(1, 500)), b.append(envelopes(1, 500)), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["NoneType", "VersionGap"]
        assert any(isinstance(r, VersionGap) for r in results)
        await assert_log(a, envelopes(1, 500))


async def test_a_read_only_log_reads_what_the_writer_wrote_and_writes_nothing(
    pg: PostgresBackend,
) -> None:
    reader = PostgresEventLog(pg.dsn, schema=pg.schema, read_only=True)
    with pytest.raises(StoreError, match="no event log here yet"):
        await reader.open()
    async with pg.make() as log:
        await log.append(envelopes(1, 5))
        async with reader:
            await assert_log(reader, envelopes(1, 5))
            with pytest.raises(StoreError):  # the server refuses: read-only transactions
                await reader.append(envelopes(6, 1))
        await assert_log(log, envelopes(1, 5))


@pytest.mark.parametrize(
    ("offset", "refusal"),
    [(1, "newer"), (-1, f"the writer migrates it to {SCHEMA_VERSION}")],
)
async def test_a_read_only_log_opens_only_the_schema_this_version_reads(
    pg: PostgresBackend, offset: int, refusal: str
) -> None:
    async with pg.make() as log:
        await log.append(envelopes(1, 2))
    await pg.set_schema_version(SCHEMA_VERSION + offset)
    reader = PostgresEventLog(pg.dsn, schema=pg.schema, read_only=True)
    with pytest.raises(StoreError, match=refusal) as refused:
        await reader.open()
    assert isinstance(refused.value, SchemaTooNew) == (offset > 0)
    await pg.set_schema_version(SCHEMA_VERSION)  # a reader changes nothing: it opens now
    async with reader:
        await assert_log(reader, envelopes(1, 2))
