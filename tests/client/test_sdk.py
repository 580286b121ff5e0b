"""The SDK against a real server: a whole trading session whose REST answers and feed pushes
agree, and a feed that loses and repeats nothing across forced disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from openperps.api.app import create_app
from openperps.client import ApiError, Client, Feed
from openperps.core import commands as c
from openperps.feed.session import CLOSE_SLOW_CONSUMER
from openperps.runtime.app import Exchange, Settings
from openperps.signing import PrivateKey

APT = "1338"


async def bid(exchange: Exchange, profile: str, price: int) -> None:
    """A resting 1-APT bid of ``profile`` at ``price`` (in ticks)."""
    await exchange.sequencer.execute(
        c.PlaceLimitOrder(
            timestamp=0,
            profile=profile,
            market_id=int(APT),
            trade_side=True,
            direction=False,
            size=100,
            price=price,
            leverage=5,
        )
    )


class Server:
    def __init__(self, exchange: Exchange, api: uvicorn.Server, port: int) -> None:
        self.exchange = exchange
        self.api = api
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{exchange.feed.port}/ws/"


@contextlib.asynccontextmanager
async def serving(exchange: Exchange) -> AsyncIterator[Server]:
    """The REST app over ``exchange`` (started and stopped here) on a free port."""
    await exchange.start()
    config = uvicorn.Config(
        create_app(exchange), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    api = uvicorn.Server(config)
    task = asyncio.create_task(api.serve())
    try:
        while not api.started:
            await asyncio.sleep(0.01)
        port = api.servers[0].sockets[0].getsockname()[1]
        yield Server(exchange, api, port)
    finally:
        api.should_exit = True
        await task
        await exchange.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))) as up:
        yield up


async def test_a_full_trading_session_rest_and_feed_agree(server: Server) -> None:
    maker = Client(server.http, PrivateKey.generate())
    trader = Client(server.http, PrivateKey.generate())
    async with maker, trader, Feed(server.ws) as feed:
        await feed.subscribe("live_trade_history", address=trader.profile)
        for client, amount in ((maker, "10000"), (trader, "1000")):
            minted = await client.mint_test_tokens(amount)  # the faucet fills the wallet
            assert minted["walletBalance"] == amount
        assert await trader.wallet_balance() == Decimal("1000")
        assert (await trader.balance())["freeBalance"] == 0
        with pytest.raises(ApiError) as short:
            await trader.deposit("1000.000001")
        assert short.value.code == 2027 and short.value.status == 409
        await maker.deposit("10000")
        await trader.deposit("1000")
        assert await trader.wallet_balance() == 0
        assert (await trader.balance())["freeBalance"] == Decimal("1000")
        await maker.place_limit_order(APT, long=False, size="20", price="7.000", leverage=5)
        assert trader.read_version is not None
        taken = await trader.place_market_order(
            APT, long=True, size="10", leverage=10, take_profit="9", stop_loss="6"
        )
        (position,) = await trader.positions()
        assert trader.read_version >= taken["transactionVersion"]  # the read includes it
        assert position.size == "10" and position.tp == "9" and position.sl == "6"
        assert taken.positions == [position]  # the action's answer has it already
        updated = await trader.update_take_profit(APT, long=True, price="8.5")
        assert [p.tp for p in updated.positions] == ["8.5"]
        await maker.place_limit_order(APT, long=True, size="20", price="7.200", leverage=5)
        await trader.place_market_order(APT, long=True, reduce=True, size="4", leverage=10)
        await trader.place_market_order(APT, long=True, reduce=True, size="6", leverage=10)
        assert await trader.positions() == []
        fills = await trader.fills()
        assert [f.order_type for f in reversed(fills)] == [1, 5, 7]
        pushed: list[dict[str, Any]] = []
        while len(pushed) < 3:
            push = await feed.next(timeout=5)
            if push.topic == "live_trade_history":
                pushed.append(push.data)
        assert [p["trade_id"] for p in pushed] == [f.trade_id for f in reversed(fills)]
        assert [p["pnl"] for p in pushed] == [f.pnl for f in reversed(fills)]
        assert Decimal(fills[0].pnl) > 0  # bought at 7, sold at 7.2
        free = (await trader.balance())["freeBalance"]
        settled = await trader.settle_pnl(APT)  # already settled by the fills: moves nothing
        assert Decimal(settled["freeBalance"]) == free and settled["settledPnl"] == "0"
        assert free > Decimal("1000")  # the profit is in the free balance
        await trader.withdraw(free)
        assert (await trader.balance())["freeBalance"] == 0
        assert await trader.wallet_balance() == free  # back in the wallet, profit and all
        with pytest.raises(ApiError) as refused:
            await trader.withdraw("1")
        assert refused.value.code in (1009, 1010) and refused.value.status == 409
        with pytest.raises(TypeError):
            await trader.deposit(1.5)  # type: ignore[arg-type]


async def test_the_feed_resumes_across_forced_disconnects(server: Server) -> None:
    exchange = server.exchange
    maker = Client(server.http, PrivateKey.generate())
    trader = Client(server.http, PrivateKey.generate())
    received: list[dict[str, Any]] = []
    async with maker, trader, Feed(server.ws, max_backoff=0.2) as feed:
        await feed.subscribe("live_order_history", address=trader.profile)
        for client in (maker, trader):
            await client.mint_test_tokens("100000")
            await client.deposit("100000")

        async def collect() -> None:
            async for push in feed:
                if push.topic == "live_order_history":
                    received.append(push.data)

        collector = asyncio.create_task(collect())
        for i in range(60):
            await trader.place_limit_order(
                APT, long=True, size="1", price=f"{6 + i % 10 / 100}", leverage=5
            )
            if i % 7 == 3:  # the server drops every client, as it would a slow one
                for conn in list(exchange.feed.connections):
                    conn.close(CLOSE_SLOW_CONSUMER, "forced by the test")
                for _ in range(200):  # orders keep coming while the client is away
                    await asyncio.sleep(0.01)
                    if exchange.feed.connections:
                        break
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(received) >= 60:
                break
        collector.cancel()
        expected, covered = exchange.models.live_changes_since(trader.profile, 0)
        assert covered
        versions = [r["transaction_version"] for r in received]
        assert versions == [r.version for r in expected]  # every change once, in order
        assert feed.reconnects >= 5


async def test_the_feed_says_so_when_it_was_away_longer_than_the_server_keeps(
    tmp_path: Path,
) -> None:
    """Past ``live_retention`` a resume cannot be exact: the bot gets a ``version_too_old``
    error push, then the newest record, then live pushes again."""
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0, live_retention=2))
    await exchange.start()
    try:
        profile = "0x" + "c3" * 32
        async with Feed(f"ws://127.0.0.1:{exchange.feed.port}/ws/", max_backoff=0.2) as feed:
            await feed.subscribe("live_order_history", address=profile)
            seq = exchange.sequencer
            await seq.execute(c.Mint(timestamp=0, profile=profile, amount=10**9))
            await seq.execute(c.Deposit(timestamp=0, profile=profile, amount=10**9))

            async def order(price: int) -> None:
                await bid(exchange, profile, price)

            await order(6000)
            first = await feed.next(timeout=5)
            assert first.topic == "live_order_history" and first.data["price"] == "6"
            for conn in list(exchange.feed.connections):
                conn.close(CLOSE_SLOW_CONSUMER, "forced by the test")
            while exchange.feed.connections:
                await asyncio.sleep(0.01)
            for price in (6100, 6200, 6300, 6400):  # more than the server keeps
                await order(price)
            error = await feed.next(timeout=5)
            assert error.topic == "error"
            assert error.raw["error"]["code"] == "version_too_old"
            newest = await feed.next(timeout=5)
            assert newest.topic == "live_order_history" and newest.data["price"] == "6.4"
            await order(6500)
            live = await feed.next(timeout=5)
            assert (
                live.data["price"] == "6.5"
                and live.raw["transaction_version"] > newest.raw["transaction_version"]
            )
            assert feed.reconnects == 1
    finally:
        await exchange.stop()


async def test_the_feed_follows_an_exchange_whose_log_was_reset(tmp_path: Path) -> None:
    """The server comes back with a new, shorter log (a test venue wiped, say): the resume
    version is past anything it has, so it says so (``version_ahead``) and the SDK counts
    versions afresh instead of dropping every push as already seen."""
    profile = "0x" + "c4" * 32

    async def order(exchange: Exchange, price: int) -> None:
        await bid(exchange, profile, price)

    async def funded(db: str, port: int) -> Exchange:
        exchange = Exchange(Settings(db=str(tmp_path / db), ws_port=port))
        await exchange.start()
        await exchange.sequencer.execute(c.Mint(timestamp=0, profile=profile, amount=10**9))
        await exchange.sequencer.execute(c.Deposit(timestamp=0, profile=profile, amount=10**9))
        return exchange

    first = await funded("first.sqlite3", 0)
    port = first.feed.port
    async with Feed(f"ws://127.0.0.1:{port}/ws/", max_backoff=0.2) as feed:
        await feed.subscribe("live_order_history", address=profile)
        for price in (6000, 6100, 6200, 6300):
            await order(first, price)
        for _ in range(4):
            seen = await feed.next(timeout=5)
        assert seen.data["price"] == "6.3"
        await first.stop()
        second = await funded("second.sqlite3", port)
        try:
            assert second.sequencer.engine.version < seen.raw["transaction_version"]
            error = await feed.next(timeout=10)
            assert error.topic == "error" and error.raw["error"]["code"] == "version_ahead"
            assert error.raw["error"]["request"]["since_version"] == seen.raw["transaction_version"]
            await order(second, 7000)
            fresh = await feed.next(timeout=5)
            assert fresh.topic == "live_order_history" and fresh.data["price"] == "7"
        finally:
            await second.stop()
