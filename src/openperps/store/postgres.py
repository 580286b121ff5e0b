"""The PostgreSQL event log, for running the engine, indexer and gateways as separate processes.

Same behaviour as the SQLite log, same tables, inside one PostgreSQL schema (``openperps``
unless configured, so tests and several exchanges can share a database). A batch is written with
``COPY`` inside one transaction; connections ask for ``synchronous_commit=on`` so a commit has
reached the server's WAL on disk before ``append`` returns, whatever the server's default.

Connections come from a small asyncpg pool: a connection that breaks (server restart,
``pg_terminate_backend``) fails the operation in flight with ``StorageUnavailable`` and is
replaced on the next one, so the log recovers by itself once the server answers again. A table
locked by someone else for longer than ``lock_timeout_ms`` fails the batch with
``StorageLocked`` (as ``busy_timeout`` does for SQLite), and every statement has a time limit
(``command_timeout_s``): a server that stops answering without closing the connection fails
the batch with ``StorageUnavailable`` instead of stalling the writer for ever.

Migrations and tail repair hold a transaction-scoped advisory lock, so two processes opening the
same schema at once do not race. A writer also holds the schema's writer lock (a session
advisory lock) for as long as it is open: a second writer is refused at once with ``LogInUse``
(2310), and the lock goes with the process that held it.

``read_only=True`` is how a process that only reads (a feed gateway) opens the log another
process writes: no migration, no tail repair, every transaction read-only on the server, and
the schema must already hold a log of this version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any, cast

import asyncpg

from openperps.store.base import DEFAULT_READ_BATCH, EventLog, check_read_range, prefetched
from openperps.store.envelope import Envelope, Snapshot
from openperps.store.errors import (
    LogClosed,
    LogInUse,
    SnapshotAhead,
    StorageFull,
    StorageLocked,
    StorageUnavailable,
    StoreError,
    VersionGap,
)
from openperps.store.migrations import SCHEMA_VERSION, pending
from openperps.store.records import (
    EventRow,
    TailScanner,
    check_batch,
    check_no_hole,
    from_rows,
    snapshot_checksum,
    to_rows,
)

logger = logging.getLogger("openperps.store")

DEFAULT_SCHEMA = "openperps"
APPLICATION_NAME = "openperps-store"

_EVENT_COLUMNS = ("version", "timestamp", "type", "payload", "batch_last", "checksum")
_MAX_VERSION = 2**63 - 1
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def translate_error(exc: BaseException) -> StoreError | None:
    """The store error for an asyncpg or socket failure, None for anything else."""
    detail = f"postgresql: {type(exc).__name__}: {exc}"
    if isinstance(exc, asyncpg.exceptions.DiskFullError):
        return StorageFull(detail)
    if isinstance(
        exc,
        asyncpg.exceptions.LockNotAvailableError
        | asyncpg.exceptions.DeadlockDetectedError
        | asyncpg.exceptions.SerializationError,
    ):
        return StorageLocked(detail)
    if isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.InsufficientResourcesError
        | asyncpg.exceptions.InterfaceError
        | OSError
        | TimeoutError,
    ):
        return StorageUnavailable(detail)
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return StoreError(detail)
    return None


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        translated = translate_error(exc)
        if translated is None:
            raise
        raise translated from exc


class PostgresEventLog(EventLog):
    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float | None = 60.0,
        lock_timeout_ms: int = 5_000,
        read_only: bool = False,
        exclusive: bool = True,
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"not a plain PostgreSQL identifier: {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.lock_timeout_ms = lock_timeout_ms
        self.read_only = read_only
        # a writer holds the schema's writer lock while open (tests of the log's own
        # guarantees open two writers on purpose)
        self.exclusive = exclusive and not read_only
        self._pool: Any = None  # asyncpg.Pool
        self._writer_lock: Any = None  # the connection whose session holds the writer lock
        self._q = f'"{schema}"'  # the quoted schema, for building statements

    def __repr__(self) -> str:
        return f"PostgresEventLog(schema={self.schema!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        with _translated():
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout_s,
                command_timeout=self.command_timeout_s,
                server_settings={
                    "application_name": APPLICATION_NAME,
                    "synchronous_commit": "on",
                    "lock_timeout": str(int(self.lock_timeout_ms)),
                    "default_transaction_read_only": "on" if self.read_only else "off",
                },
            )
        self._pool = pool
        try:
            if self.exclusive:
                await self._lock_writer()
            with _translated():
                async with pool.acquire() as conn:
                    if self.read_only:
                        await self._check_schema(conn)
                    else:
                        await self._migrate(conn)
                        await self._repair_tail(conn)
        except BaseException:
            await self.close()
            raise

    async def _lock_writer(self) -> None:
        """Hold the schema's writer lock for as long as the log is open: a second writer (a
        second ``serve`` where a ``gateway`` was meant, say) is refused at once with
        ``LogInUse`` instead of racing the first for every version. The lock is a session
        advisory lock on a connection of its own, so the server lets it go the moment this
        process dies."""
        with _translated():
            conn = await asyncpg.connect(
                self.dsn,
                timeout=self.connect_timeout_s,
                server_settings={"application_name": f"{APPLICATION_NAME} writer lock"},
            )
            try:
                held = await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtext($1))", f"openperps.writer:{self.schema}"
                )
            except BaseException:
                await conn.close()
                raise
        if not held:
            await conn.close()
            raise LogInUse(
                f"another process writes the event log in schema {self.schema!r}: one log has "
                "one writer (`openperps gateway` serves another feed from it)"
            )
        self._writer_lock = conn

    async def close(self) -> None:
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lock.close(), timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.exceptions.InterfaceError):
                pool.terminate()

    @property
    def _open_pool(self) -> Any:
        if self._pool is None:
            raise LogClosed()
        return self._pool

    async def _lock(self, conn: Any) -> None:
        """Serialise migrations and tail repair of this schema across processes."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"openperps.store:{self.schema}"
        )

    async def _migrate(self, conn: Any) -> None:
        q = self._q
        async with conn.transaction():
            await self._lock(conn)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {q}.store_meta "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            value = await conn.fetchval(
                f"SELECT value FROM {q}.store_meta WHERE key = 'schema_version'"
            )
            current = int(value) if value is not None else 0
            todo = pending(current)
            for migration in todo:
                for statement in migration.postgres:
                    await conn.execute(statement.format(schema=q))
            if todo:
                await conn.execute(
                    f"INSERT INTO {q}.store_meta VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    str(SCHEMA_VERSION),
                )
                logger.info(
                    "%s: migrated schema from version %d to %d", self, current, SCHEMA_VERSION
                )

    async def _check_schema(self, conn: Any) -> None:
        """For a reader: the schema holds a log this version reads, written by someone else."""
        exists = await conn.fetchval(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 "
            "AND table_name = 'store_meta'",
            self.schema,
        )
        value = None
        if exists:
            value = await conn.fetchval(
                f"SELECT value FROM {self._q}.store_meta WHERE key = 'schema_version'"
            )
        if value is None:
            raise StoreError(f"{self}: no event log here yet (start the writer first)")
        if pending(int(value)):  # SchemaTooNew when a newer OpenPerps wrote it
            raise StoreError(
                f"{self}: schema version {value}; the writer migrates it to {SCHEMA_VERSION}"
            )

    async def _repair_tail(self, conn: Any) -> None:
        q = self._q
        async with conn.transaction():
            await self._lock(conn)
            scanner = TailScanner()
            top = 0
            keep: int | None = None
            query = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {q}.events ORDER BY version DESC"
            async for record in conn.cursor(query, prefetch=1_000):
                row = cast(EventRow, tuple(record))
                top = top or row[0]
                keep = scanner.feed(row)
                if keep is not None:
                    break
            if keep is None:
                keep = scanner.finish()
            if keep < top:
                logger.error(
                    "%s: torn or corrupt tail: dropping events %d..%d (%d rows) that failed "
                    "verification or formed an incomplete batch; the log now ends at version %d",
                    self,
                    keep + 1,
                    top,
                    top - keep,
                    keep,
                )
                # Bounded by what was scanned: under READ COMMITTED this statement would also
                # see batches another process committed since, and those are not ours to drop.
                await conn.execute(
                    f"DELETE FROM {q}.events WHERE version > $1 AND version <= $2", keep, top
                )
                status = await conn.execute(f"DELETE FROM {q}.snapshots WHERE version > $1", keep)
                dropped = int(status.split()[-1])
                if dropped:
                    logger.error("%s: dropped %d snapshot(s) above version %d", self, dropped, keep)

    # -- the interface ---------------------------------------------------------------------

    async def last_version(self) -> int:
        pool = self._open_pool
        with _translated():
            return await self._last_version(pool)

    async def _last_version(self, conn: Any) -> int:
        return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {self._q}.events"))

    async def append(self, batch: Sequence[Envelope]) -> None:
        if not batch:
            return
        check_batch(batch, batch[0].version)
        pool = self._open_pool
        rows = to_rows(batch)
        with _translated():
            async with pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        last = await self._last_version(conn)
                        if batch[0].version != last + 1:
                            raise VersionGap(last + 1, batch[0].version)
                        await conn.copy_records_to_table(
                            "events", schema_name=self.schema, records=rows, columns=_EVENT_COLUMNS
                        )
                except asyncpg.exceptions.UniqueViolationError:
                    # Another writer appended between our check and our COPY.
                    raise VersionGap(await self._last_version(conn) + 1, batch[0].version) from None

    def read_batches(
        self,
        from_version: int,
        to_version: int | None = None,
        batch_size: int = DEFAULT_READ_BATCH,
    ) -> AsyncGenerator[list[Envelope], None]:
        check_read_range(from_version, to_version, batch_size)
        pool = self._open_pool
        last = _MAX_VERSION if to_version is None else to_version
        # A bounded range rather than LIMIT: versions are contiguous, so it holds the chunk,
        # and the planner picks the primary key even before the table has statistics.
        query = (
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {self._q}.events "
            "WHERE version >= $1 AND version <= $2 ORDER BY version"
        )
        next_stored = (
            f"SELECT min(version) FROM {self._q}.events WHERE version >= $1 AND version <= $2"
        )

        async def fetch(first: int) -> list[Envelope]:
            high = min(last, first + batch_size - 1)
            with _translated():
                records = await pool.fetch(query, first, high)
            envelopes = from_rows(cast(list[EventRow], records), first)
            if len(records) <= high - first:  # the end of the log, or a hole before its end
                expected = first + len(records)
                with _translated():
                    check_no_hole(expected, await pool.fetchval(next_stored, expected, last))
            return envelopes

        return prefetched(fetch, from_version, last, batch_size)

    async def save_snapshot(self, version: int, state_hash: str, blob: bytes) -> None:
        pool = self._open_pool
        with _translated():
            async with pool.acquire() as conn, conn.transaction():
                last = await self._last_version(conn)
                if version > last or version < 0:
                    raise SnapshotAhead(version, last)
                await conn.execute(
                    f"INSERT INTO {self._q}.snapshots VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (version) DO UPDATE SET state_hash = excluded.state_hash, "
                    "blob = excluded.blob, checksum = excluded.checksum",
                    version,
                    state_hash,
                    blob,
                    snapshot_checksum(version, state_hash, blob),
                )

    async def load_latest_snapshot(self) -> Snapshot | None:
        pool = self._open_pool
        query = (
            f"SELECT version, state_hash, blob, checksum FROM {self._q}.snapshots "
            "ORDER BY version DESC"
        )
        with _translated():
            async with pool.acquire() as conn, conn.transaction():
                async for version, state_hash, blob, checksum in conn.cursor(query, prefetch=1):
                    if snapshot_checksum(version, state_hash, blob) == checksum:
                        return Snapshot(version, state_hash, blob)
                    logger.error(
                        "%s: snapshot at version %d is corrupt; skipping it", self, version
                    )
        return None

    async def prune_snapshots(self, keep: int) -> int:
        if keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        pool = self._open_pool
        with _translated():
            status = await pool.execute(
                f"DELETE FROM {self._q}.snapshots WHERE version NOT IN "
                f"(SELECT version FROM {self._q}.snapshots ORDER BY version DESC LIMIT $1)",
                keep,
            )
        return int(status.split()[-1])
