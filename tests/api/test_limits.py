"""REST request rates: token buckets per account and per address, and the 429 they answer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from openperps.api.app import create_app
from openperps.api.limits import Buckets, RestLimits, retry_after
from openperps.runtime.app import Exchange, Settings
from openperps.signing import PrivateKey, sign_request


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    clock = Clock()
    buckets = Buckets(per_second=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes in half a second
    assert buckets.take("b") == 0.0  # another key has its own bucket
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # a refused request spends nothing
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    clock.now += 60
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not past it


def test_quiet_buckets_are_forgotten_so_memory_follows_active_clients() -> None:
    clock = Clock()
    buckets = Buckets(per_second=10.0, burst=10, clock=clock)
    for i in range(Buckets.PRUNE_AT):
        buckets.take(f"client {i}")
    assert len(buckets) == Buckets.PRUNE_AT
    clock.now += 2  # every bucket has refilled: they would start full anyway
    buckets.take("newcomer")
    assert len(buckets) == 1


def test_limits_check_themselves_and_retry_after_is_whole_seconds() -> None:
    with pytest.raises(ValueError, match="rest limit actions_per_second"):
        RestLimits(actions_per_second=-1.0)
    with pytest.raises(ValueError, match="rest limit action_burst"):
        RestLimits(action_burst=0)
    assert RestLimits(actions_per_second=0.0).actions_per_second == 0.0  # 0: off
    assert [retry_after(s) for s in (0.01, 1.0, 1.2)] == ["1", "1", "2"]


async def test_an_account_past_its_rate_gets_429_and_others_do_not(tmp_path: Path) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    # a token every 20 s: nothing refills while the test sends its few requests
    limits = RestLimits(
        actions_per_second=0.05, action_burst=3, requests_per_second=0.05, request_burst=6
    )
    app = create_app(exchange, limits=limits)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as api:

        async def faucet(key: PrivateKey) -> httpx.Response:
            body = json.dumps({"amount": "1"}).encode()
            headers = sign_request(key, "POST", "/mintTestTokens", body, time.time_ns() // 10**6)
            return await api.post("/mintTestTokens", content=body, headers=headers)

        busy, other = PrivateKey.generate(), PrivateKey.generate()
        assert [(await faucet(busy)).status_code for _ in range(3)] == [200, 200, 200]
        limited = await faucet(busy)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "20"
        body = limited.json()
        assert body["success"] is False and body["code"] == 2036
        assert "0.05 signed actions per second an account" in body["message"]
        assert (await faucet(other)).status_code == 200  # its own bucket
        # monitors are not counted; everything else from this address is, reads included
        for _ in range(5):
            assert (await api.get("/health")).status_code == 200
        reads = [(await api.get("/getMarketPrice", params={"marketId": "1338"})).status_code]
        reads += [(await api.get("/getMarketPrice", params={"marketId": "1338"})).status_code]
        assert reads == [200, 429]  # a burst of 6: 5 actions, 1 read, then the limit
        per_address = (await api.get("/getMarketPrice", params={"marketId": "1338"})).json()
        assert per_address["code"] == 2036 and "an address" in per_address["message"]
    await exchange.stop()


async def test_zero_turns_a_limit_off(tmp_path: Path) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    off = RestLimits(
        actions_per_second=0.0, action_burst=1, requests_per_second=0.0, request_burst=1
    )
    transport = httpx.ASGITransport(app=create_app(exchange, limits=off))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as api:
        for _ in range(20):
            answer = await api.get("/getMarketPrice", params={"marketId": "1338"})
            assert answer.status_code == 200
    await exchange.stop()
