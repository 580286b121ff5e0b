"""Choosing a backend from a URL (store/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openperps.store import (
    DEFAULT_PATH,
    SqliteEventLog,
    StoreErrorCode,
    UnsupportedURL,
    log_from_url,
    open_log,
)
from openperps.store.postgres import DEFAULT_SCHEMA, PostgresEventLog

from .helpers import envelopes


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (None, DEFAULT_PATH),
        ("sqlite://", DEFAULT_PATH),
        ("sqlite:///data/x.sqlite3", Path("data/x.sqlite3")),
        ("sqlite:////var/lib/openperps/x.db", Path("/var/lib/openperps/x.db")),
        ("events.db", Path("events.db")),
        ("/tmp/elsewhere/events.db", Path("/tmp/elsewhere/events.db")),
    ],
)
def test_sqlite_urls_and_plain_paths_select_sqlite(url: str | None, path: Path) -> None:
    log = log_from_url(url)
    assert isinstance(log, SqliteEventLog)
    assert log.path == path


@pytest.mark.parametrize(
    ("url", "dsn", "schema"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/test",
            "postgresql://postgres@127.0.0.1:5432/test",
            DEFAULT_SCHEMA,
        ),
        (
            "postgres://u:p@db/x?schema=exchange_a&sslmode=disable",
            "postgres://u:p@db/x?sslmode=disable",
            "exchange_a",
        ),
    ],
)
def test_postgresql_urls_select_postgresql(url: str, dsn: str, schema: str) -> None:
    log = log_from_url(url)
    assert isinstance(log, PostgresEventLog)
    assert (log.dsn, log.schema) == (dsn, schema)


@pytest.mark.parametrize("url", ["mysql://localhost/db", "sqlite:relative.db", "redis://x"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedURL) as refused:
        log_from_url(url)
    assert refused.value.code == StoreErrorCode.UNSUPPORTED_URL


async def test_open_log_returns_an_open_log(tmp_path: Path) -> None:
    log = await open_log(f"sqlite:///{tmp_path}/events.sqlite3")
    try:
        await log.append(envelopes(1, 1))
        assert await log.last_version() == 1
    finally:
        await log.close()
