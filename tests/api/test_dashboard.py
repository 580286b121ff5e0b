"""The dashboard is served with what it needs: the page, and where the feed is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from openperps.api.app import create_app
from openperps.runtime.app import Exchange, Settings


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Exchange]]:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    transport = httpx.ASGITransport(app=create_app(exchange))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client, exchange
    await exchange.stop()


async def test_the_page_and_its_configuration(
    api: tuple[httpx.AsyncClient, Exchange],
) -> None:
    client, exchange = api
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for part in (
        'id="ladder"',
        'id="trades"',
        'id="prices"',
        'id="depth"',
        'id="address"',
        "live_funding_rate",
        "/getMarketPrice",
    ):
        assert part in page.text
    config = (await client.get("/dashboard/config")).json()
    assert config["feedUrl"] == f"ws://127.0.0.1:{exchange.feed.port}/ws/"
    info = (await client.get("/getMarketInfo", params={"marketId": "1338"})).json()["data"]
    assert info["fundingIntervalS"] == 3600
