"""An exchange with its feed on a free port, for the tests that talk to it over a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openperps.runtime.app import Exchange, Settings


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await ex.start()
    yield ex
    await ex.stop()
