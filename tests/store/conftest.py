"""Fixtures that run one suite against both event-log backends.

PostgreSQL tests skip when the server does not answer, except under CI (``CI=true``), where
that is a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openperps.store import EventLog

from .helpers import Backend, PostgresBackend, SqliteBackend, postgres_or_skip


@pytest.fixture
async def pg_dsn() -> str:
    return await postgres_or_skip()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "events.sqlite3")
        return
    pg = PostgresBackend(await postgres_or_skip())
    try:
        yield pg
    finally:
        await pg.cleanup()


@pytest.fixture
async def log(backend: Backend) -> AsyncIterator[EventLog]:
    async with backend.make() as opened:
        yield opened
