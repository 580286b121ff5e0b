"""The REST server as ``openperps serve`` and ``openperps gateway`` run it: HEAD requests."""

from __future__ import annotations

from pathlib import Path

import httpx

from openperps.api.app import create_app
from openperps.api.serving import bind, start
from openperps.runtime.app import Exchange, Settings


async def test_head_is_answered_as_get_without_a_body(tmp_path: Path) -> None:
    """Load balancers probe ``/health`` with HEAD: the GET's status and headers, no body. A
    path that has no GET is still refused."""
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    serving = await start(create_app(exchange), bind("127.0.0.1", 0), "test-api")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{serving.port}") as client:
            for path in ("/health", "/metrics", "/getLastPlacedPrice?marketId=1338"):
                got = await client.get(path)
                head = await client.head(path)
                assert head.status_code == got.status_code == 200, path
                assert head.content == b"" and got.content
                assert head.headers["content-type"] == got.headers["content-type"]
            missing = await client.head("/getLastPlacedPrice?marketId=9999")
            assert (
                missing.status_code
                == (await client.get("/getLastPlacedPrice?marketId=9999")).status_code
            )
            assert missing.status_code >= 400 and missing.content == b""
            assert (await client.head("/placeLimitOrder")).status_code == 405
    finally:
        await serving.stop()
        await exchange.stop()
