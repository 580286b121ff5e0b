"""The durable event log: append, replay, snapshots, for SQLite and PostgreSQL.

Select a backend with a URL (the ``--db`` option):

    sqlite:///data/events.sqlite3     relative path (three slashes)
    sqlite:////var/lib/openperps.db   absolute path (four slashes)
    data/events.sqlite3               a plain path is SQLite too
    postgresql://user@host:5432/db?schema=openperps

``log_from_url`` builds the log without touching storage; ``open_log`` also opens it. The
PostgreSQL backend lives in ``openperps.store.postgres`` and is imported only when a URL asks for
it, so the embedded default runs without asyncpg. See ``docs/event-log.md`` for the guarantees.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from openperps.store.base import EventLog
from openperps.store.envelope import Envelope, Snapshot
from openperps.store.errors import (
    CorruptLog,
    LogClosed,
    LogInUse,
    SchemaTooNew,
    SnapshotAhead,
    StorageFull,
    StorageLocked,
    StorageUnavailable,
    StoreError,
    StoreErrorCode,
    UnsupportedURL,
    VersionGap,
)
from openperps.store.migrations import SCHEMA_VERSION
from openperps.store.sqlite import DEFAULT_PATH, SqliteEventLog
from openperps.store.writer import GroupCommitWriter

__all__ = [
    "DEFAULT_PATH",
    "SCHEMA_VERSION",
    "CorruptLog",
    "Envelope",
    "EventLog",
    "GroupCommitWriter",
    "LogClosed",
    "LogInUse",
    "SchemaTooNew",
    "Snapshot",
    "SnapshotAhead",
    "SqliteEventLog",
    "StorageFull",
    "StorageLocked",
    "StorageUnavailable",
    "StoreError",
    "StoreErrorCode",
    "UnsupportedURL",
    "VersionGap",
    "log_from_url",
    "open_log",
]


def log_from_url(url: str | None = None, *, read_only: bool = False) -> EventLog:
    """The event log a URL names (see the module docstring); ``None`` is the default file.

    ``read_only`` (PostgreSQL only) opens a log another process writes, for reading only.
    """
    if read_only and not (url or "").startswith(("postgresql://", "postgres://")):
        raise UnsupportedURL(
            f"a reader follows a PostgreSQL event log (postgresql://...), not {url!r}"
        )
    if url is None or url in ("sqlite://", "sqlite:"):
        return SqliteEventLog()
    if url.startswith("sqlite:///"):
        return SqliteEventLog(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so that SQLite needs no asyncpg (it is in the "server" extra).
        from openperps.store.postgres import DEFAULT_SCHEMA, PostgresEventLog

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = next((v for k, v in query if k == "schema"), DEFAULT_SCHEMA)
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return PostgresEventLog(
            urlunsplit(parts._replace(query=rest)), schema=schema, read_only=read_only
        )
    if "://" in url or url.startswith("sqlite:"):
        raise UnsupportedURL(f"unsupported event log URL {url!r}: use sqlite:/// or postgresql://")
    return SqliteEventLog(url)


async def open_log(url: str | None = None, *, read_only: bool = False) -> EventLog:
    """``log_from_url(url)``, opened: migrated, tail-checked, ready to append (or, with
    ``read_only``, checked and ready to read)."""
    log = log_from_url(url, read_only=read_only)
    await log.open()
    return log
