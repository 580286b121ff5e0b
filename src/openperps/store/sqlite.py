"""The SQLite event log: the embedded default, one file under ``./data/``.

Durability. The database runs in WAL mode with ``synchronous=FULL``: every commit fsyncs the
write-ahead log before ``append`` returns, so an acknowledged batch survives a power loss, not
just a crash of the process. ``NORMAL`` would only fsync at checkpoints and can lose the last
commits on power loss; the group-commit writer amortises one fsync over every batch queued
behind it, which is what makes ``FULL`` affordable (see ``bench/store.py`` for both).

Checkpoints. WAL pages are copied back into the database file by a checkpoint. SQLite's own
automatic checkpoint runs inside the commit that crosses the threshold, and that commit then
takes ~50-100 ms: every request waiting on it sees the delay (the REST API's p99). So a third
thread with its own connection runs a PASSIVE checkpoint once about ``checkpoint_pages``
pages (4 000, 16 MB) have been appended since the last one; it copies pages while commits go
on. The writer keeps SQLite's automatic checkpoint at four times that as a safety net, should
the background one fall behind (a long read can hold it back).

Threads. sqlite3 blocks, so each log owns three threads with one connection each: a writer
(appends, snapshots, migrations, tail repair), a reader (``read``, ``last_version``,
``load_latest_snapshot``) and a checkpointer. WAL lets the reader and the checkpointer run
while the writer commits; the event loop only awaits futures.

One writer. While open, a log holds a POSIX lock on ``<file>.lock`` beside its file: a second
process opening the same file is refused with ``LogInUse`` (2310), and the lock goes with the
process that held it.

Errors. SQLite's result codes map to the store's family: ``SQLITE_FULL`` to ``StorageFull``,
``SQLITE_BUSY``/``SQLITE_LOCKED`` (after ``busy_timeout``) to ``StorageLocked``, I/O errors to
``StorageUnavailable``, ``SQLITE_CORRUPT``/``SQLITE_NOTADB`` to ``CorruptLog``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Literal, ParamSpec, TypeVar

from openperps.store.base import DEFAULT_READ_BATCH, EventLog, check_read_range, prefetched
from openperps.store.envelope import Envelope, Snapshot
from openperps.store.errors import (
    CorruptLog,
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

DEFAULT_PATH = Path("data") / "events.sqlite3"
DEFAULT_CHECKPOINT_PAGES = 4_000

Synchronous = Literal["FULL", "NORMAL"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_EVENT_COLUMNS = "version, timestamp, type, payload, batch_last, checksum"
_MAX_VERSION = 2**63 - 1

# Primary result codes (https://www.sqlite.org/rescode.html).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def translate_error(exc: sqlite3.Error) -> StoreError:
    """The store error for a sqlite3 exception (see the module docstring)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    detail = f"sqlite: {exc}"
    if primary == _SQLITE_FULL:
        return StorageFull(detail)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageLocked(detail)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return CorruptLog(None, detail)
    if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
        return StorageUnavailable(detail)
    return StoreError(detail)


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls some failed transactions back by itself (SQLITE_FULL may); only finish
    # what is still open.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class SqliteEventLog(EventLog):
    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5_000,
        checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES,
    ) -> None:
        self.path = Path(path) if path is not None else DEFAULT_PATH
        self.synchronous: Synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.checkpoint_pages = checkpoint_pages
        self._write_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._checkpoint_pool: ThreadPoolExecutor | None = None
        # Each connection is only touched from its own pool's single thread.
        self._writer: sqlite3.Connection | None = None
        self._lock_file: IO[str] | None = None  # holds the writer lock while open
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._appended_pages = 0  # WAL pages written since the last checkpoint started (roughly)
        self._checkpointing: asyncio.Future[bool] | None = None
        self.checkpoints = 0  # background checkpoints completed (for tests and operators)

    def __repr__(self) -> str:
        return f"SqliteEventLog({str(self.path)!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._write_pool is not None:
            return
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="openperps-sqlite-write")
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="openperps-sqlite-read")
        self._checkpoint_pool = ThreadPoolExecutor(
            1, thread_name_prefix="openperps-sqlite-checkpoint"
        )
        try:
            await self._on_writer(self._open_writer)
            await self._on_reader(self._open_reader)
            await self._run(self._checkpoint_pool, self._open_checkpointer)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        write_pool, read_pool = self._write_pool, self._read_pool
        if write_pool is None or read_pool is None:
            return
        loop = asyncio.get_running_loop()
        checkpoint_pool = self._checkpoint_pool
        try:
            if self._checkpointing is not None:
                await asyncio.wait([self._checkpointing])
            if checkpoint_pool is not None:
                await loop.run_in_executor(checkpoint_pool, self._close_checkpointer)
            await loop.run_in_executor(read_pool, self._close_reader)
            await loop.run_in_executor(write_pool, self._close_writer)
        finally:
            self._write_pool = self._read_pool = self._checkpoint_pool = None
            self._checkpointing = None
            write_pool.shutdown(wait=False)
            read_pool.shutdown(wait=False)
            if checkpoint_pool is not None:
                checkpoint_pool.shutdown(wait=False)

    # -- the interface ---------------------------------------------------------------------

    async def last_version(self) -> int:
        return await self._on_reader(self._last_version, self._read_conn)

    async def append(self, batch: Sequence[Envelope]) -> None:
        if not batch:
            return
        check_batch(batch, batch[0].version)
        await self._on_writer(self._append, batch)
        # every commit adds at least one whole page to the WAL, however small the batch
        size = sum(len(envelope.payload) + 64 for envelope in batch)
        self._appended_pages += 1 + (size + 4095) // 4096
        if self._appended_pages >= self.checkpoint_pages and self._checkpointing is None:
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        """Copy the WAL back into the database on the checkpoint thread, off the commit path."""
        pool = self._checkpoint_pool
        if pool is None:
            return
        self._appended_pages = 0
        future = asyncio.ensure_future(self._run(pool, self._checkpoint))
        self._checkpointing = future

        def done(finished: asyncio.Future[bool]) -> None:
            self._checkpointing = None
            if finished.cancelled():
                return
            if (error := finished.exception()) is not None:
                # not fatal: the writer's automatic checkpoint is the safety net
                logger.warning("%s: background checkpoint failed: %s", self, error)
            elif finished.result():
                self.checkpoints += 1

        future.add_done_callback(done)

    def read_batches(
        self,
        from_version: int,
        to_version: int | None = None,
        batch_size: int = DEFAULT_READ_BATCH,
    ) -> AsyncGenerator[list[Envelope], None]:
        check_read_range(from_version, to_version, batch_size)
        last = _MAX_VERSION if to_version is None else to_version

        async def fetch(first: int) -> list[Envelope]:
            return await self._on_reader(self._fetch, first, last, batch_size)

        return prefetched(fetch, from_version, last, batch_size)

    async def save_snapshot(self, version: int, state_hash: str, blob: bytes) -> None:
        await self._on_writer(self._save_snapshot, version, state_hash, blob)

    async def load_latest_snapshot(self) -> Snapshot | None:
        return await self._on_reader(self._load_latest_snapshot)

    async def prune_snapshots(self, keep: int) -> int:
        if keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        return await self._on_writer(self._prune_snapshots, keep)

    # -- running on the two threads --------------------------------------------------------

    async def _on_writer(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._write_pool is None:
            raise LogClosed()
        return await self._run(self._write_pool, fn, *args, **kwargs)

    async def _on_reader(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._read_pool is None:
            raise LogClosed()
        return await self._run(self._read_pool, fn, *args, **kwargs)

    @staticmethod
    async def _run(
        pool: ThreadPoolExecutor, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        def call() -> _T:
            try:
                return fn(*args, **kwargs)
            except sqlite3.Error as exc:
                raise translate_error(exc) from exc
            except OSError as exc:  # creating the directory
                raise StorageUnavailable(f"sqlite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    @property
    def _write_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise LogClosed()
        return self._writer

    @property
    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise LogClosed()
        return self._reader

    # -- writer thread ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended explicitly below.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        return conn

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_writer()
        conn = self._connect()
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StorageUnavailable(f"sqlite: cannot switch {self.path} to WAL ({mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # the checkpoint thread keeps the WAL short; this only bounds it if that falls behind
            conn.execute(f"PRAGMA wal_autocheckpoint = {4 * int(self.checkpoint_pages)}")
            self._migrate(conn)
            self._repair_tail(conn)
        except BaseException:
            conn.close()
            raise
        self._writer = conn

    def _open_checkpointer(self) -> None:
        self._checkpointer = self._connect()

    def _close_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def _checkpoint(self) -> bool:
        """Copy what the WAL holds back into the database; True if any page was copied."""
        if self._checkpointer is None:
            return False
        _busy, _frames, copied = self._checkpointer.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
        return bool(copied and copied > 0)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_file is not None:
            self._lock_file.close()  # and with it the lock
            self._lock_file = None

    def _lock_writer(self) -> None:
        """Hold the log's writer lock (a POSIX lock on ``<file>.lock`` beside it) for as long
        as the log is open: a second process writing the same file (a second ``serve`` in
        the same directory on other ports, ``reindex`` while the exchange runs) is refused
        with ``LogInUse`` instead of racing the first for every version. The system lets the
        lock go when the process dies. (POSIX locks belong to the process: a second handle on
        the same file within one process is not refused.)"""
        lock = self.path.with_name(self.path.name + ".lock").open("a")  # held while open
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LogInUse(
                    f"another process writes the event log {self.path}: one log has one "
                    "writer (stop it first, or give this one another --db)"
                ) from None
            raise
        self._lock_file = lock

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = conn.execute(
                "SELECT value FROM store_meta WHERE key = 'schema_version'"
            ).fetchone()
            current = int(row[0]) if row else 0
            todo = pending(current)
            for migration in todo:
                for statement in migration.sqlite:
                    conn.execute(statement)
            if todo:
                conn.execute(
                    "INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                logger.info(
                    "%s: migrated schema from version %d to %d", self, current, SCHEMA_VERSION
                )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _repair_tail(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            scanner = TailScanner()
            top = 0
            keep: int | None = None
            cursor = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY version DESC")
            for row in cursor:
                top = top or row[0]
                keep = scanner.feed(row)
                if keep is not None:
                    break
            cursor.close()
            if keep is None:
                keep = scanner.finish()
            if keep < top:
                self._truncate(conn, keep, top)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _truncate(self, conn: sqlite3.Connection, keep: int, top: int) -> None:
        logger.error(
            "%s: torn or corrupt tail: dropping events %d..%d (%d rows) that failed "
            "verification or formed an incomplete batch; the log now ends at version %d",
            self,
            keep + 1,
            top,
            top - keep,
            keep,
        )
        conn.execute("DELETE FROM events WHERE version > ? AND version <= ?", (keep, top))
        dropped = conn.execute("DELETE FROM snapshots WHERE version > ?", (keep,)).rowcount
        if dropped:
            logger.error("%s: dropped %d snapshot(s) above version %d", self, dropped, keep)

    def _append(self, batch: Sequence[Envelope]) -> None:
        rows = to_rows(batch)
        conn = self._write_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = self._last_version(conn)
            if batch[0].version != last + 1:
                raise VersionGap(last + 1, batch[0].version)
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _save_snapshot(self, version: int, state_hash: str, blob: bytes) -> None:
        conn = self._write_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = self._last_version(conn)
            if version > last or version < 0:
                raise SnapshotAhead(version, last)
            conn.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                (version, state_hash, blob, snapshot_checksum(version, state_hash, blob)),
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _prune_snapshots(self, keep: int) -> int:
        cursor = self._write_conn.execute(
            "DELETE FROM snapshots WHERE version NOT IN "
            "(SELECT version FROM snapshots ORDER BY version DESC LIMIT ?)",
            (keep,),
        )
        return cursor.rowcount

    # -- reader thread ---------------------------------------------------------------------

    def _open_reader(self) -> None:
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        self._reader = conn

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @staticmethod
    def _last_version(conn: sqlite3.Connection) -> int:
        (last,) = conn.execute("SELECT coalesce(max(version), 0) FROM events").fetchone()
        return int(last)

    def _fetch(self, first: int, last: int, limit: int) -> list[Envelope]:
        # A bounded range rather than LIMIT: versions are contiguous, so it holds the chunk.
        high = min(last, first + limit - 1)
        conn = self._read_conn
        rows: list[EventRow] = conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events "
            "WHERE version >= ? AND version <= ? ORDER BY version",
            (first, high),
        ).fetchall()
        envelopes = from_rows(rows, first)
        if len(rows) <= high - first:  # short: the end of the log, or a hole before its end
            expected = first + len(rows)
            (stored,) = conn.execute(
                "SELECT min(version) FROM events WHERE version >= ? AND version <= ?",
                (expected, last),
            ).fetchone()
            check_no_hole(expected, stored)
        return envelopes

    def _load_latest_snapshot(self) -> Snapshot | None:
        cursor = self._read_conn.execute(
            "SELECT version, state_hash, blob, checksum FROM snapshots ORDER BY version DESC"
        )
        try:
            for version, state_hash, blob, checksum in cursor:
                if snapshot_checksum(version, state_hash, blob) == checksum:
                    return Snapshot(version, state_hash, blob)
                logger.error("%s: snapshot at version %d is corrupt; skipping it", self, version)
            return None
        finally:
            cursor.close()
