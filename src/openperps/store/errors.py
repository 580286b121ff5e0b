"""Errors of the event log: one base class, stable codes.

The event log owns codes 2300..2349 of the 2300-2399 block (the rest is left to the read
models). Numbers are written out, never derived from declaration order, and append-only: a code
is never renumbered or reused.

    StoreError                  2300  any failure of the event log
     ├── VersionGap             2301  a batch does not continue the log gap-free
     ├── CorruptLog             2302  a stored record fails its checksum or the sequence has a
     │                                hole below the tail (the tail itself is repaired on open)
     ├── SchemaTooNew           2303  the database was written by a newer OpenPerps
     ├── StorageFull            2304  disk or quota full; nothing of the batch was written
     ├── StorageLocked          2305  another process holds the database lock for too long
     ├── StorageUnavailable     2306  I/O error, connection lost, server down
     ├── LogClosed              2307  used before ``open()`` or after ``close()``
     ├── SnapshotAhead          2308  a snapshot claims a version the log does not have
     ├── UnsupportedURL         2309  ``open_log`` cannot tell which backend a URL names
     └── LogInUse               2310  another writer has this log open (PostgreSQL)

A failed ``append`` never leaves part of its batch behind: every backend writes a batch in one
transaction, so the caller may retry the same batch once the fault clears. A
``StorageUnavailable`` raised while committing is the one ambiguous case (the server may have
committed before the connection dropped); ``last_version()`` tells which.
"""

from __future__ import annotations

from enum import IntEnum


class StoreErrorCode(IntEnum):
    STORE_ERROR = 2300
    VERSION_GAP = 2301
    CORRUPT_LOG = 2302
    SCHEMA_TOO_NEW = 2303
    STORAGE_FULL = 2304
    STORAGE_LOCKED = 2305
    STORAGE_UNAVAILABLE = 2306
    LOG_CLOSED = 2307
    SNAPSHOT_AHEAD = 2308
    UNSUPPORTED_URL = 2309
    LOG_IN_USE = 2310


class StoreError(Exception):
    """Base of every error the event log raises on purpose; ``code`` is stable."""

    code: StoreErrorCode = StoreErrorCode.STORE_ERROR

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{int(self.code)}: {detail}")


class VersionGap(StoreError):
    """The batch does not start right after the log's last version, or has a hole itself."""

    code = StoreErrorCode.VERSION_GAP

    def __init__(self, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"expected version {expected}, got {got}")


class CorruptLog(StoreError):
    """A record that would be served fails verification; it is never served."""

    code = StoreErrorCode.CORRUPT_LOG

    def __init__(self, version: int | None, reason: str) -> None:
        self.version = version
        self.reason = reason
        where = "" if version is None else f" at version {version}"
        super().__init__(f"corrupt event log{where}: {reason}")


class SchemaTooNew(StoreError):
    """The database was migrated by a newer OpenPerps; this one refuses to touch it."""

    code = StoreErrorCode.SCHEMA_TOO_NEW

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"database schema version {found} is newer than this OpenPerps supports "
            f"({supported}); upgrade OpenPerps or point it at another database"
        )


class StorageFull(StoreError):
    code = StoreErrorCode.STORAGE_FULL


class StorageLocked(StoreError):
    code = StoreErrorCode.STORAGE_LOCKED


class StorageUnavailable(StoreError):
    code = StoreErrorCode.STORAGE_UNAVAILABLE


class LogClosed(StoreError):
    code = StoreErrorCode.LOG_CLOSED

    def __init__(self, detail: str = "the event log is not open") -> None:
        super().__init__(detail)


class SnapshotAhead(StoreError):
    code = StoreErrorCode.SNAPSHOT_AHEAD

    def __init__(self, version: int, last_version: int) -> None:
        self.version = version
        self.last_version = last_version
        super().__init__(
            f"snapshot at version {version} is ahead of the log (last version {last_version})"
        )


class UnsupportedURL(StoreError):
    code = StoreErrorCode.UNSUPPORTED_URL


class LogInUse(StoreError):
    """Another process writes this log: one log has one writer (gateways only read it)."""

    code = StoreErrorCode.LOG_IN_USE
