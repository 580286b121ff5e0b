"""The feed end to end: commands into the exchange, pushes out of a real socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from openperps.core import commands as c
from openperps.feed import server as server_module
from openperps.runtime.app import Exchange, Settings
from tests.feed.test_flush import RawSocket, connect, subscribe

ALICE = "0x" + "a1" * 32
BOB = "0x" + "b2" * 32
APT = 1338


def url(ex: Exchange) -> str:
    return f"ws://127.0.0.1:{ex.feed.port}/ws/"


async def recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, dict)
    return frame


async def until(ws: Any, message: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        frame = await recv(ws, timeout)
        if frame["message"] == message:
            return frame


async def trade(ex: Exchange) -> None:
    seq = ex.sequencer
    await seq.execute(c.Mint(timestamp=0, profile=ALICE, amount=10**9))
    await seq.execute(c.Deposit(timestamp=0, profile=ALICE, amount=10**9))
    await seq.execute(c.Mint(timestamp=0, profile=BOB, amount=10**9))
    await seq.execute(c.Deposit(timestamp=0, profile=BOB, amount=10**9))
    await seq.execute(
        c.PlaceLimitOrder(
            timestamp=0,
            profile=BOB,
            market_id=APT,
            trade_side=False,
            direction=False,
            size=1000,
            price=7000,
            leverage=10,
        )
    )
    await seq.execute(
        c.PlaceMarketOrder(
            timestamp=0,
            profile=ALICE,
            market_id=APT,
            trade_side=True,
            direction=False,
            size=400,
            leverage=10,
        )
    )


async def offer(ex: Exchange, price: int) -> None:
    """Bob rests an ask of 1 APT at ``price`` (in 0.001)."""
    await ex.sequencer.execute(
        c.PlaceLimitOrder(
            timestamp=0,
            profile=BOB,
            market_id=APT,
            trade_side=False,
            direction=False,
            size=100,
            price=price,
            leverage=10,
        )
    )


async def test_a_kana_client_subscribes_and_gets_snapshot_then_pushes(exchange: Exchange) -> None:
    async with websockets.connect(url(exchange)) as ws:
        await ws.send(json.dumps({"topic": "order_history", "address": ALICE}))
        first = await recv(ws)
        assert first["message"] == "order_history" and first["data"] == []
        await ws.send(json.dumps({"topic": "orderbook", "market_id": "1338"}))
        book = await recv(ws)
        assert book == {  # Kana's keys, and which book (extra top-level keys are allowed)
            "message": "orderbook",
            "data": [],
            "transaction_version": book["transaction_version"],
            "market_id": "1338",
            "limit": 100,
        }
        await trade(exchange)
        pushed = await until(ws, "order_history")
        assert pushed["data"][0]["address"] == ALICE
        assert pushed["data"][0]["status"] == "Filled"
        levels = (await until(ws, "orderbook"))["data"]
        assert levels[0]["price"] == 7.0 and levels[0]["is_ask"] is True


async def test_acks_errors_and_the_connection_stays_open(exchange: Exchange) -> None:
    async with websockets.connect(url(exchange)) as ws:
        await ws.send("{not json")
        error = await recv(ws)
        assert error["message"] == "error" and error["error"]["code"] == "invalid_json"
        await ws.send(json.dumps({"topic": "positions", "id": 7}))
        error = await recv(ws)
        assert error["error"]["code"] == "missing_param" and error["id"] == 7
        await ws.send(json.dumps({"topic": "recent_trades", "market_id": 99, "id": "x"}))
        assert (await recv(ws))["error"]["code"] == "unknown_market"
        await ws.send(json.dumps({"method": "ping", "id": 1}))
        assert await recv(ws) == {"message": "pong", "id": 1}
        await ws.send(
            json.dumps({"topic": "positions", "address": "0x" + "a1" * 31 + "a", "id": 2})
        )
        ack = await recv(ws)
        assert ack["message"] == "subscribed" and ack["id"] == 2
        assert ack["address"] == "0x0" + "a1" * 31 + "a"  # 63 digits, normalised
        assert (await recv(ws))["message"] == "positions"  # the snapshot follows the ack
        await ws.send(b"binary")
        assert (await recv(ws))["error"]["code"] == "unsupported_frame"
        await ws.send(json.dumps({"method": "list_subscriptions", "id": 3}))
        listed = await until(ws, "subscriptions")
        assert listed["subscriptions"][0]["topic"] == "positions"


async def test_subscribing_again_sends_the_snapshot_again(exchange: Exchange) -> None:
    """A client that suspects it missed something starts over by subscribing again: it gets
    the current state, and later changes once each (not once per request)."""
    await exchange.sequencer.execute(c.Mint(timestamp=0, profile=BOB, amount=10**9))
    await exchange.sequencer.execute(c.Deposit(timestamp=0, profile=BOB, amount=10**9))
    async with websockets.connect(url(exchange)) as ws:
        request = {"topic": "orderbook", "market_id": "1338", "limit": 5}
        await ws.send(json.dumps(request))
        assert (await recv(ws))["data"] == []
        await offer(exchange, 7100)
        assert (await until(ws, "orderbook"))["data"][0]["price"] == 7.1
        await ws.send(json.dumps({**request, "id": 9}))
        assert (await recv(ws))["message"] == "subscribed"
        again = await recv(ws)
        assert again["message"] == "orderbook" and again["data"][0]["price"] == 7.1
        await offer(exchange, 7050)
        pushed = await until(ws, "orderbook")
        assert [level["price"] for level in pushed["data"]] == [7.05, 7.1]
        await ws.send(json.dumps({"method": "ping", "id": 1}))
        assert await recv(ws) == {"message": "pong", "id": 1}  # no second copy in between


async def test_live_topics_push_every_change_in_order(exchange: Exchange) -> None:
    async with websockets.connect(url(exchange)) as ws:
        await ws.send(json.dumps({"topic": "live_order_history", "address": BOB, "id": 1}))
        await until(ws, "subscribed")
        await ws.send(json.dumps({"topic": "live_trade_history", "address": ALICE, "id": 2}))
        await until(ws, "subscribed")
        await trade(exchange)
        statuses = []
        fill = None
        while fill is None or len(statuses) < 2:
            frame = await recv(ws)
            if frame["message"] == "live_order_history":
                assert isinstance(frame["data"], dict)
                statuses.append(frame["data"]["status"])
            elif frame["message"] == "live_trade_history":
                fill = frame["data"]
        assert statuses == ["Open", "Partially Filled"]
        assert fill["order_id"] and fill["size"] == "4" and fill["fee"] == "0.014"


async def test_resume_with_since_version_loses_and_repeats_nothing(exchange: Exchange) -> None:
    await trade(exchange)
    version = exchange.models.version
    await offer(exchange, 7100)
    async with websockets.connect(url(exchange)) as ws:
        await ws.send(
            json.dumps({"topic": "live_order_history", "address": BOB, "since_version": version})
        )
        frame = await recv(ws)
        assert frame["data"]["price"] == "7.1" and frame["transaction_version"] > version
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)


async def test_a_resume_a_little_ahead_of_the_feed_waits_for_it_and_stays_exact(
    exchange: Exchange,
) -> None:
    """A client that comes from a feed further along (another gateway) resumes from a version
    this feed has not reached yet: it waits the moment it takes, then goes on exactly."""
    await trade(exchange)
    before = exchange.models.version
    await offer(exchange, 7100)
    per_offer = exchange.models.version - before
    ahead = exchange.models.version + per_offer  # where the next offer will end
    async with websockets.connect(url(exchange)) as ws:
        request = {"topic": "live_order_history", "address": BOB, "since_version": ahead}
        await ws.send(json.dumps({**request, "id": 9}))
        assert (await recv(ws))["message"] == "subscribed"
        await offer(exchange, 7200)  # at or below since_version: the client has it
        await offer(exchange, 7300)
        frame = await recv(ws)
        assert frame["message"] == "live_order_history", frame  # no error, no fresh start
        assert frame["data"]["price"] == "7.3" and frame["transaction_version"] > ahead
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)


async def test_subscribing_again_past_the_feeds_version_is_told_as_a_first_request_is(
    exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held live subscription asked for again with a since_version the feed never reaches:
    after the wait, version_ahead and the current state, as on a fresh connection."""
    monkeypatch.setattr(server_module, "AHEAD_WAIT_S", 0.2)
    await trade(exchange)
    async with websockets.connect(url(exchange)) as ws:
        request = {"topic": "live_order_history", "address": BOB}
        await ws.send(json.dumps(request))
        latest = await until(ws, "live_order_history")
        far = exchange.models.version + 1_000_000
        await ws.send(json.dumps({**request, "since_version": far, "id": "again"}))
        assert (await recv(ws))["message"] == "subscribed"
        error = await recv(ws)
        assert error["message"] == "error" and error["error"]["code"] == "version_ahead"
        assert (await recv(ws))["data"] == latest["data"]


async def test_a_resume_older_than_retention_is_told_then_given_the_current_state(
    tmp_path: Path,
) -> None:
    """``since_version`` past what the feed keeps: a coded error echoing the request, the
    newest record as a fresh start, then live pushes as usual; the connection stays open."""
    ex = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0, live_retention=2))
    await ex.start()
    try:
        await trade(ex)
        for price in (7100, 7200, 7300):
            await offer(ex, price)
        async with websockets.connect(url(ex)) as ws:
            request = {"topic": "live_order_history", "address": BOB, "since_version": 1, "id": 4}
            await ws.send(json.dumps(request))
            assert (await recv(ws))["message"] == "subscribed"
            error = await recv(ws)
            assert error["message"] == "error" and error["id"] == 4
            assert error["error"]["code"] == "version_too_old"
            assert error["error"]["request"] == request  # as sent: since_version and id too
            latest = await recv(ws)
            assert latest["message"] == "live_order_history"
            assert latest["data"]["price"] == "7.3", "the newest record, as a fresh start"
            order_id = int(latest["data"]["order_id"])
            await ex.sequencer.execute(
                c.CancelOrder(timestamp=0, profile=BOB, market_id=APT, order_id=order_id)
            )
            cancelled = await recv(ws)
            assert cancelled["data"]["status"] == "Cancelled"
            assert cancelled["transaction_version"] > latest["transaction_version"]
    finally:
        await ex.stop()


async def test_a_commands_caller_is_answered_before_its_pushes_are_fanned_out(
    exchange: Exchange,
) -> None:
    """The write round a batch starts waits one loop pass, so whoever waited for that batch
    (a REST handler, say) answers first: with a thousand subscribers a round takes
    milliseconds, and an order's answer does not wait for them."""
    happened: list[str] = []

    class Recording(RawSocket):
        def write(self, data: bytes) -> None:
            happened.append("written")

    conn, _ws = connect(exchange.feed, sock=Recording())
    subscribe(conn, {"topic": "orderbook", "market_id": APT})
    seq = exchange.sequencer
    await seq.execute(c.Mint(timestamp=0, profile=BOB, amount=10**9))
    await seq.execute(c.Deposit(timestamp=0, profile=BOB, amount=10**9))
    await asyncio.sleep(0.05)  # the snapshot is out
    happened.clear()
    await offer(exchange, 7100)
    happened.append("answered")
    await asyncio.sleep(0.05)
    assert happened == ["answered", "written"]
