"""The SDK's Feed as a bot relies on it: requests kept to the server's rate and refused ones
handled, a first connection that fails says so, a feed that stops or is closed ends its
readers, local books that are empty while they cannot be trusted, and a bounded queue that
loses nothing when its reader falls behind.

Against a real exchange where one can produce the condition, else against a scripted feed
server (``ScriptedFeed``). Timeouts are safety nets only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from openperps.client import Feed, LocalBook, Push
from openperps.client.feed import FeedClosedError, FeedConnectError, FeedError, FeedFailedError
from openperps.core import commands as c
from openperps.feed.server import ServerLimits
from openperps.feed.session import CLOSE_SLOW_CONSUMER, FeedLimits
from openperps.runtime.app import Exchange, Settings
from tests.client.test_sdk import APT, Server, bid

BOOK = {"topic": "orderbook", "market_id": APT, "mode": "delta", "limit": 10}


@asynccontextmanager
async def exchange_at(tmp_path: Path, **settings: Any) -> AsyncIterator[Exchange]:
    """An exchange with its feed on a free port (``ws_url(exchange)``)."""
    settings.setdefault("ws_port", 0)
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), **settings))
    await exchange.start()
    try:
        yield exchange
    finally:
        await exchange.stop()


def ws_url(exchange: Exchange) -> str:
    return f"ws://127.0.0.1:{exchange.feed.port}/ws/"


def drop_every_client(exchange: Exchange) -> None:
    """The server closes every connection, as it would a slow consumer."""
    for conn in list(exchange.feed.connections):
        conn.close(CLOSE_SLOW_CONSUMER, "forced by the test")


def address(i: int) -> str:
    return "0x" + f"{i + 1:064x}"


async def pushes(feed: Feed, count: int) -> list[Push]:
    return [await feed.next(timeout=5) for _ in range(count)]


class ScriptedFeed:
    """A feed server whose every frame the test writes: ``connections`` yields each client
    connection as it opens, ``requests`` every request frame received, decoded."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.url = ""

    async def _handler(self, ws: ServerConnection) -> None:
        await self.connections.put(ws)
        async for frame in ws:
            await self.requests.put(json.loads(frame))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedFeed]:
        async with serve(self._handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/ws/"
            yield self

    async def request(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.requests.get(), 5)

    async def connection(self) -> ServerConnection:
        return await asyncio.wait_for(self.connections.get(), 5)


async def send(ws: ServerConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


def snapshot(version: int, *bids: tuple[str, str]) -> dict[str, Any]:
    levels = [{"market_id": APT, "price": p, "size": s, "is_ask": False} for p, s in bids]
    return {
        "message": "orderbook",
        "mode": "snapshot",
        "market_id": APT,
        "limit": 10,
        "data": levels,
        "transaction_version": version,
    }


def delta(previous: int, version: int) -> dict[str, Any]:
    return {
        "message": "orderbook",
        "mode": "delta",
        "market_id": APT,
        "limit": 10,
        "data": [],
        "transaction_version": version,
        "prev_version": previous,
    }


# -- requests keep to the server's rate ---------------------------------------------------------


async def test_seventy_subscriptions_are_paced_and_all_come_back_after_a_reconnect(
    tmp_path: Path,
) -> None:
    """70 subscriptions (the server takes 100 per connection, 40 requests at once and then
    20 a second): every one is answered, with no rate_limited refusal and no policy close,
    and after the server drops the connection every one is subscribed again."""
    async with exchange_at(tmp_path) as exchange, Feed(ws_url(exchange)) as feed:
        for i in range(70):
            await feed.subscribe("positions", address=address(i))
        first = await pushes(feed, 70)
        assert [p.topic for p in first] == ["positions"] * 70
        drop_every_client(exchange)
        again = await pushes(feed, 70)
        assert [p.topic for p in again] == ["positions"] * 70
        assert feed.reconnects == 1


async def test_a_request_refused_as_rate_limited_is_sent_again(tmp_path: Path) -> None:
    """A server stricter than the documented limits refuses part of a burst: the feed sends
    those requests again, and the reader sees only the answers."""
    strict = FeedLimits(request_burst=10)
    async with (
        exchange_at(tmp_path, feed_limits=strict) as exchange,
        Feed(ws_url(exchange)) as feed,
    ):
        for i in range(15):
            await feed.subscribe("positions", address=address(i))
        answers = await pushes(feed, 15)
        assert [p.topic for p in answers] == ["positions"] * 15
        assert len(feed.requests) == 15


async def test_a_request_refused_for_good_is_not_sent_again_after_a_reconnect(
    tmp_path: Path,
) -> None:
    async with exchange_at(tmp_path) as exchange, Feed(ws_url(exchange)) as feed:
        await feed.subscribe("no_such_topic", address=address(0))
        await feed.book("9999")
        await feed.subscribe("positions", address=address(1))
        refused = await pushes(feed, 2)
        assert [p.raw["error"]["code"] for p in refused] == ["unknown_topic", "unknown_market"]
        assert (await feed.next(timeout=5)).topic == "positions"
        assert feed.requests == [{"topic": "positions", "address": address(1)}]
        assert feed.books == {}  # the refused book is not kept: book("9999") may try again
        drop_every_client(exchange)
        after = await feed.next(timeout=5)
        assert after.topic == "positions", "only the accepted subscription is sent again"
        assert feed.reconnects == 1


async def test_a_request_with_an_id_of_its_own_is_matched_to_its_refusal(tmp_path: Path) -> None:
    async with exchange_at(tmp_path) as exchange, Feed(ws_url(exchange)) as feed:
        await feed.subscribe("no_such_topic", address=address(0), id="mine")
        refused = await feed.next(timeout=5)
        assert refused.raw["error"]["code"] == "unknown_topic"
        assert refused.raw["id"] == "mine"
        assert feed.requests == [], "refused for good: not sent again after a reconnect"


class RecordingFeed(Feed):
    """A Feed that notes each wait before reconnecting instead of waiting it out."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.delays: list[float] = []

    async def _pause(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def test_after_policy_closes_the_wait_before_reconnecting_grows(tmp_path: Path) -> None:
    """A server that closes every connection with 4008 right after the handshake (here: one
    connection per address, and the test holds it) is not hammered: the waits start at 1 s
    and double, instead of starting again from 0.1 s after every handshake."""
    one = ServerLimits(connections_per_ip=1)
    async with exchange_at(tmp_path, server_limits=one) as exchange:
        held = await websockets.connect(ws_url(exchange))  # the one connection allowed
        feed = RecordingFeed(ws_url(exchange), max_backoff=4.0)
        try:
            await feed.start()
            async with asyncio.timeout(10):
                while len(feed.delays) < 5:
                    await asyncio.sleep(0.01)
        finally:
            await feed.close()
            await held.close()
    assert feed.delays[:5] == [1.0, 2.0, 4.0, 4.0, 4.0]


# -- the first connection -----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_start_gives_up_when_nothing_listens() -> None:
    url = f"ws://127.0.0.1:{closed_port()}/ws/"
    feed = Feed(url, connect_timeout=0.5)
    async with asyncio.timeout(10):
        with pytest.raises(FeedConnectError) as failed:
            await feed.start()
        assert url in str(failed.value) and "0.5 s" in str(failed.value)
        assert isinstance(failed.value.__cause__, OSError)
        with pytest.raises(FeedConnectError):
            await feed.next()  # a reader learns it too
        await feed.close()


async def test_start_fails_at_once_on_a_url_that_cannot_be_a_feed(server: Server) -> None:
    """A wrong scheme, or the REST port (HTTP 4xx): no retrying until the timeout."""
    rest_port = server.http.rsplit(":", 1)[1]
    for url, said in (
        (server.ws.replace("ws://", "http://"), "InvalidURI"),
        (f"ws://127.0.0.1:{rest_port}/ws/", "HTTP 4"),
    ):
        async with asyncio.timeout(10):  # far less than connect_timeout: it does not wait
            with pytest.raises(FeedConnectError) as failed:
                async with Feed(url, connect_timeout=60):
                    pass
        assert url in str(failed.value) and said in str(failed.value)


async def test_a_first_connection_made_within_the_timeout_is_kept(tmp_path: Path) -> None:
    """start() keeps trying until the timeout: a feed that comes up meanwhile is found."""
    port = closed_port()
    feed = Feed(f"ws://127.0.0.1:{port}/ws/", connect_timeout=30, max_backoff=0.2)
    starting = asyncio.create_task(feed.start())
    while feed.reconnects < 1:  # it has tried, and failed, at least once
        await asyncio.sleep(0.01)
    assert not starting.done()
    async with exchange_at(tmp_path, ws_port=port):
        await asyncio.wait_for(starting, 10)
        await feed.subscribe("positions", address=address(0))
        assert (await feed.next(timeout=5)).topic == "positions"
        await feed.close()


# -- the end of a feed --------------------------------------------------------------------------


async def test_a_failing_feed_ends_every_reader_with_its_error() -> None:
    async with ScriptedFeed().running() as server:
        feed = Feed(server.url)
        await feed.start()
        await feed.book(APT, depth=10)
        ws = await server.connection()
        await server.request()
        await send(ws, message="recent_trades", data=[], transaction_version=5)
        malformed = {**snapshot(6), "data": [{"price": 1, "size": "1"}]}  # no is_ask
        await send(ws, **malformed)

        async def iterate() -> None:
            async for _push in feed:
                pass

        assert (await feed.next(timeout=5)).topic == "recent_trades"  # what came before
        reader = asyncio.create_task(iterate())
        with pytest.raises(FeedFailedError) as failed:
            await feed.next(timeout=5)
        assert isinstance(failed.value.__cause__, KeyError)
        with pytest.raises(FeedFailedError):
            await asyncio.wait_for(reader, 5)
        with pytest.raises(FeedFailedError):
            await feed.start()
        await feed.close()  # does not raise


async def test_close_ends_the_readers_and_the_feed_refuses_further_use(tmp_path: Path) -> None:
    async with exchange_at(tmp_path) as exchange:
        feed = Feed(ws_url(exchange))
        await feed.start()
        await feed.subscribe("positions", address=address(0))
        seen: list[Push] = []

        async def iterate() -> None:
            async for push in feed:
                seen.append(push)

        reader = asyncio.create_task(iterate())
        waiting = asyncio.create_task(feed.next())
        while not seen and not waiting.done():
            await asyncio.sleep(0.01)
        await feed.close()
        await asyncio.wait_for(reader, 5)  # async for ends
        if seen:  # the one push went to the iterator, so next() was still waiting
            with pytest.raises(FeedClosedError):
                await asyncio.wait_for(waiting, 5)
        with pytest.raises(FeedClosedError):
            await feed.next(timeout=5)
        with pytest.raises(FeedClosedError):
            await feed.subscribe("positions", address=address(1))
        with pytest.raises(FeedClosedError):
            await feed.book(APT)
        with pytest.raises(FeedClosedError):
            await feed.start()
        assert issubclass(FeedClosedError, FeedError)
        await feed.close()  # twice is fine


# -- local books --------------------------------------------------------------------------------


def test_after_a_gap_the_book_is_empty_and_waits_for_one_snapshot() -> None:
    book = LocalBook(APT, depth=10)
    assert book.apply(snapshot(100, ("6.9", "1")))
    assert book.best_bid() == (Decimal("6.9"), Decimal("1"))
    assert not book.apply(delta(101, 102)), "101 was lost: a gap"
    assert book.version is None and book.best_bid() is None and not book.bids
    for version in range(103, 108):  # deltas in flight before the new snapshot
        assert book.apply(delta(version - 1, version))
    assert book.gaps == 1 and book.version is None and not book.bids
    assert book.apply(snapshot(110, ("6.8", "2")))
    assert book.apply(delta(110, 111))
    assert book.version == 111 and book.best_bid() == (Decimal("6.8"), Decimal("2"))


async def test_a_gap_takes_one_snapshot_however_many_deltas_follow_it() -> None:
    async with ScriptedFeed().running() as server, Feed(server.url) as feed:
        local = await feed.book(APT, depth=10)
        ws = await server.connection()
        assert await server.request() == BOOK
        await send(ws, **snapshot(100, ("6.9", "1")))
        for version in range(102, 107):  # 101 is lost
            await send(ws, **delta(version - 1, version))
        await pushes(feed, 6)
        assert local.gaps == 1 and local.version is None and local.best_bid() is None
        assert await server.request() == BOOK  # subscribing again brings a snapshot
        await send(ws, **snapshot(110, ("6.8", "2")))
        await send(ws, **delta(110, 111))
        await pushes(feed, 2)
        assert local.version == 111 and local.best_bid() == (Decimal("6.8"), Decimal("2"))
        # requests go out in order: the next one the server reads is this, nothing before it
        await feed.subscribe("recent_trades", market_id=APT)
        assert await server.request() == {"topic": "recent_trades", "market_id": APT}


async def test_a_book_is_empty_while_the_feed_reconnects() -> None:
    async with ScriptedFeed().running() as server, Feed(server.url, max_backoff=0.1) as feed:
        local = await feed.book(APT, depth=10)
        first = await server.connection()
        await server.request()
        await send(first, **snapshot(100, ("6.9", "1")))
        await feed.next(timeout=5)
        assert local.version == 100 and local.best_bid() is not None
        await first.close(1012)
        second = await server.connection()
        assert local.version is None and local.best_bid() is None  # not trusted meanwhile
        assert await server.request() == BOOK
        await send(second, **snapshot(120, ("7.1", "3")))
        await feed.next(timeout=5)
        assert local.version == 120 and local.best_bid() == (Decimal("7.1"), Decimal("3"))


async def test_book_needs_the_extensions_and_takes_one_depth_per_market() -> None:
    with pytest.raises(ValueError, match="extension"):
        await Feed("ws://127.0.0.1:1/ws/", extensions=False).book(APT)
    feed = Feed("ws://127.0.0.1:1/ws/")  # not started: requests wait for the connection
    shallow = await feed.book(APT, depth=5)
    assert await feed.book(APT, depth=5) is shallow
    with pytest.raises(ValueError, match="depth 5"):
        await feed.book(APT, depth=50)
    assert feed.requests == [{**BOOK, "limit": 5}]


async def test_a_book_ignores_pushes_of_another_depth_of_its_market() -> None:
    async with ScriptedFeed().running() as server, Feed(server.url) as feed:
        local = await feed.book(APT, depth=10)
        ws = await server.connection()
        await server.request()
        await send(ws, **snapshot(100, ("6.9", "1")))
        await send(ws, **{**snapshot(101, ("6.5", "9")), "limit": 3})
        await pushes(feed, 2)
        assert local.version == 100 and local.levels()[0] == [(Decimal("6.9"), Decimal("1"))]


# -- a reader that falls behind -----------------------------------------------------------------


async def test_a_reader_that_falls_behind_holds_at_most_max_queue_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """20 live records for a reader that keeps at most 5 waiting: the feed drops the
    connection when the queue is full and resumes once the reader has caught up, again and
    again; the reader gets every record once, in order."""
    profile = "0x" + "c5" * 32
    async with exchange_at(tmp_path) as exchange, Feed(ws_url(exchange), max_queue=5) as feed:
        await feed.subscribe("live_order_history", address=profile)
        await exchange.sequencer.execute(c.Mint(timestamp=0, profile=profile, amount=10**9))
        await exchange.sequencer.execute(c.Deposit(timestamp=0, profile=profile, amount=10**9))
        for i in range(20):
            await bid(exchange, profile, 6000 + i)
        async with asyncio.timeout(10):
            while feed.reconnects < 1:  # the sixth push found the queue full
                await asyncio.sleep(0.01)
        assert feed.queued == 5
        received = await pushes(feed, 20)
        expected, covered = exchange.models.live_changes_since(profile, 0)
        assert covered and len(expected) == 20
        assert [p.version for p in received] == [r.version for r in expected]
        assert feed.queued == 0 and feed.reconnects >= 2


async def test_a_book_asked_for_after_the_same_subscription_by_hand_gets_its_snapshot() -> None:
    async with ScriptedFeed().running() as server, Feed(server.url) as feed:
        await feed.subscribe("orderbook", **{k: v for k, v in BOOK.items() if k != "topic"})
        ws = await server.connection()
        assert await server.request() == BOOK
        await send(ws, **snapshot(100, ("6.9", "1")))
        await pushes(feed, 1)
        local = await feed.book(APT, depth=10)  # the snapshot above came before it
        assert await server.request() == BOOK, "asked again: the server sends a snapshot"
        await send(ws, **snapshot(105, ("6.8", "2")))
        await send(ws, **delta(105, 106))
        await pushes(feed, 2)
        assert local.version == 106 and local.best_bid() == (Decimal("6.8"), Decimal("2"))


async def test_unsubscribe_stops_a_subscription_and_it_is_not_made_again() -> None:
    async with ScriptedFeed().running() as server, Feed(server.url, max_backoff=0.1) as feed:
        await feed.subscribe("recent_trades", market_id=APT)
        local = await feed.book(APT, depth=10)
        first = await server.connection()
        assert await server.request() == {"topic": "recent_trades", "market_id": APT}
        assert await server.request() == BOOK
        await feed.unsubscribe("orderbook", **{k: v for k, v in BOOK.items() if k != "topic"})
        assert await server.request() == {**BOOK, "method": "unsubscribe"}
        assert feed.books == {} and local.version is None
        await feed.unsubscribe("orderbook", market_id="9999")  # never subscribed: nothing sent
        await first.close(1012)
        await server.connection()
        assert await server.request() == {"topic": "recent_trades", "market_id": APT}
        assert server.requests.empty()
        await feed.subscribe("positions", address=address(1))  # the next request read
        assert await server.request() == {"topic": "positions", "address": address(1)}


async def test_a_start_cancelled_while_connecting_leaves_nothing_running() -> None:
    with socket.socket() as bound:  # bound, never listening: every attempt is refused
        bound.bind(("127.0.0.1", 0))
        feed = Feed(f"ws://127.0.0.1:{bound.getsockname()[1]}/ws/", connect_timeout=30)
        before = asyncio.all_tasks()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3), feed:
                pass
        await asyncio.sleep(0.3)
        assert asyncio.all_tasks() - before == set(), "no task left reconnecting"
        assert feed.reconnects <= 5
        reconnects = feed.reconnects
        await asyncio.sleep(0.3)
        assert feed.reconnects == reconnects


async def test_nothing_is_read_after_close_even_from_a_busy_stream() -> None:
    async with ScriptedFeed().running() as server:
        feed = Feed(server.url)
        await feed.start()
        await feed.subscribe("recent_trades", market_id=APT)
        ws = await server.connection()

        async def stream() -> None:
            version = 0
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    version += 1
                    await send(ws, message="recent_trades", data=[], transaction_version=version)
                    await asyncio.sleep(0)

        streaming = asyncio.create_task(stream())
        await pushes(feed, 10)
        await feed.close()
        assert feed.queued == 0
        for _ in range(3):
            with pytest.raises(FeedClosedError):
                await feed.next(timeout=1)
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming


async def test_close_does_not_wait_long_for_a_peer_that_never_answers() -> None:
    async with ScriptedFeed().running() as server:
        feed = Feed(server.url)
        await feed.start()
        ws = await server.connection()
        ws.transport.pause_reading()  # the server reads nothing more: no close answer
        async with asyncio.timeout(8):  # websockets' own default would wait 10 s
            await feed.close()
