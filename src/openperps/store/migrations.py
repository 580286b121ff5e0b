"""Versioned schema migrations, one list for both backends.

The database records its schema version in the ``store_meta`` table (key ``schema_version``).
Opening a log applies every migration newer than that, in order and in one transaction
together with the new version number, so a crash mid-migration leaves the old schema intact. A
database whose version is newer than ``SCHEMA_VERSION`` was written by a newer OpenPerps and is
refused with ``SchemaTooNew`` before anything is touched. Migrations are append-only: once
released, a migration is never edited, only followed by another.

Each migration carries both dialects side by side so the two backends cannot drift apart.
PostgreSQL statements name tables through ``{schema}``, filled in with the configured schema.
"""

from __future__ import annotations

from typing import NamedTuple

from openperps.store.errors import SchemaTooNew


class Migration(NamedTuple):
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events and snapshots",
        sqlite=(
            """CREATE TABLE events (
                version    INTEGER PRIMARY KEY,
                timestamp  INTEGER NOT NULL,
                type       TEXT    NOT NULL,
                payload    BLOB    NOT NULL,
                batch_last INTEGER NOT NULL,
                checksum   INTEGER NOT NULL
            )""",
            """CREATE TABLE snapshots (
                version    INTEGER PRIMARY KEY,
                state_hash TEXT    NOT NULL,
                blob       BLOB    NOT NULL,
                checksum   INTEGER NOT NULL
            )""",
        ),
        postgres=(
            """CREATE TABLE {schema}.events (
                version    BIGINT PRIMARY KEY,
                timestamp  BIGINT NOT NULL,
                type       TEXT   NOT NULL,
                payload    BYTEA  NOT NULL,
                batch_last BIGINT NOT NULL,
                checksum   BIGINT NOT NULL
            )""",
            """CREATE TABLE {schema}.snapshots (
                version    BIGINT PRIMARY KEY,
                state_hash TEXT   NOT NULL,
                blob       BYTEA  NOT NULL,
                checksum   BIGINT NOT NULL
            )""",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema this code writes and the newest it can open."""


def pending(current: int, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """The migrations to apply to a database at ``current``, oldest first.

    Raises ``SchemaTooNew`` when ``current`` is newer than the newest migration known.
    """
    supported = migrations[-1].version if migrations else 0
    if current > supported:
        raise SchemaTooNew(current, supported)
    return [m for m in migrations if m.version > current]
