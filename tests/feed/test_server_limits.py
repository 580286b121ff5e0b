"""Server-side limits: slow consumers, connections per address, shutdown, heartbeats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import websockets

from openperps.core import commands as c
from openperps.feed.server import ServerLimits
from openperps.feed.session import FeedLimits
from openperps.runtime.app import Exchange, Settings
from tests.feed.test_server import ALICE, APT, recv, url


async def start(tmp_path: Path, limits: ServerLimits) -> Exchange:
    ex = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0, server_limits=limits))
    await ex.start()
    return ex


def alice_bids(i: int) -> c.PlaceLimitOrder:
    """The i-th of a stream of bids that fills her order history."""
    return c.PlaceLimitOrder(
        timestamp=0,
        profile=ALICE,
        market_id=APT,
        trade_side=True,
        direction=False,
        size=100 + i % 7 * 10,
        price=5000 + i % 50,
        leverage=10,
    )


@pytest.fixture
async def tight(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = await start(
        tmp_path,
        ServerLimits(outbox_max_bytes=64 * 1024, outbox_max_age_ms=300, connections_per_ip=3),
    )
    yield ex
    await ex.stop()


async def test_a_client_that_stops_reading_is_closed_with_4010(tight: Exchange) -> None:
    seq = tight.sequencer
    await seq.execute(c.Mint(timestamp=0, profile=ALICE, amount=10**12))
    await seq.execute(c.Deposit(timestamp=0, profile=ALICE, amount=10**12))
    async with websockets.connect(url(tight)) as probe:
        await probe.send(json.dumps({"topic": "orderbook", "market_id": APT}))
        await recv(probe)
    async with websockets.connect(url(tight), max_queue=1) as slow:
        await slow.send(json.dumps({"topic": "live_order_history", "address": ALICE}))
        await slow.send(json.dumps({"topic": "order_history", "address": ALICE, "limit": 1000}))
        await asyncio.sleep(0.1)
        slow.transport.pause_reading()  # stop draining the socket
        largest_seen = 0
        for i in range(3000):
            await seq.execute(alice_bids(i))
            if i % 100 == 0:
                await asyncio.sleep(0.05)
            if slow.close_code is not None or tight.feed.metrics.closes["slow_consumer"]:
                break
            largest_seen = max(largest_seen, tight.feed.outbox_stats()[2])
        assert tight.feed.metrics.closes["slow_consumer"] == 1
        # what operators see on /metrics while it happens: a backlog, states replaced in it
        assert largest_seen > 0
        assert tight.feed.metrics.coalesced > 0
        slow.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4010


async def test_a_client_that_reads_nothing_more_is_dropped_soon_after_its_close(
    tight: Exchange,
) -> None:
    """The close frame cannot reach a client that reads nothing: the server drops the socket
    (and the buffers it holds) a short grace after the close, not when the heartbeat (40 s
    here) would."""
    seq = tight.sequencer
    await seq.execute(c.Mint(timestamp=0, profile=ALICE, amount=10**12))
    await seq.execute(c.Deposit(timestamp=0, profile=ALICE, amount=10**12))
    async with websockets.connect(url(tight), max_queue=1) as stuck:
        await stuck.send(json.dumps({"topic": "order_history", "address": ALICE, "limit": 1000}))
        await asyncio.sleep(0.1)
        stuck.transport.pause_reading()  # and never again
        loop = asyncio.get_running_loop()
        i = 0
        while not tight.feed.metrics.closes["slow_consumer"]:
            i += 1
            await seq.execute(alice_bids(i))
            if i % 100 == 0:
                await asyncio.sleep(0.05)
        closed_at = loop.time()
        while tight.feed.connections and loop.time() - closed_at < 15:
            await asyncio.sleep(0.1)
        assert not tight.feed.connections, "still held after 15 s"
        assert tight.feed.metrics.closes["aborted_unread"] == 1


async def test_connections_per_address_are_limited(tight: Exchange) -> None:
    clients = [await websockets.connect(url(tight)) for _ in range(3)]
    extra = await websockets.connect(url(tight))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(extra.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
    assert tight.feed.metrics.closes["4008"] == 1
    for client in clients:
        await client.send(json.dumps({"method": "ping"}))
        assert (await recv(client))["message"] == "pong"
        await client.close()


async def test_shutdown_closes_clients_with_1012(tmp_path: Path) -> None:
    ex = await start(tmp_path, ServerLimits())
    client = await websockets.connect(url(ex))
    await ex.stop()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012


async def test_a_dead_client_is_dropped_after_the_ping_timeout(tmp_path: Path) -> None:
    ex = await start(tmp_path, ServerLimits(ping_interval_s=1.0, ping_timeout_s=1.0))
    try:
        # websockets answers pings by itself; with reading paused it cannot
        client = await websockets.connect(url(ex), ping_interval=None)
        await asyncio.sleep(0.1)
        assert len(ex.feed.connections) == 1
        client.transport.pause_reading()
        for _ in range(60):
            await asyncio.sleep(0.1)
            if not ex.feed.connections:
                break
        assert not ex.feed.connections
        alive = await websockets.connect(url(ex), ping_interval=None)
        await asyncio.sleep(2.5)  # answers pings: stays
        assert len(ex.feed.connections) == 1
        await alive.close()
    finally:
        await ex.stop()


@pytest.mark.parametrize(
    ("interval", "timeout", "message"),
    [(0.5, 0.5, "at least 1 second"), (5.0, 6.0, "may not be longer than ping_interval_s")],
)
def test_heartbeat_settings_picows_cannot_honour_are_refused(
    interval: float, timeout: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ServerLimits(ping_interval_s=interval, ping_timeout_s=timeout)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (lambda: FeedLimits(max_subscriptions=0), "max_subscriptions must be a positive integer"),
        (lambda: FeedLimits(max_frame_bytes=1.5), "max_frame_bytes must be a positive integer"),  # type: ignore[arg-type]
        (lambda: FeedLimits(requests_per_second=True), "must be a positive number"),
        (lambda: ServerLimits(socket_send_buffer=-1), "a positive integer or 0"),
        (lambda: ServerLimits(outbox_max_bytes=0), "outbox_max_bytes must be a positive"),
    ],
)
def test_limits_built_in_python_are_checked_as_a_config_file_is(
    limits: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        limits()
    assert ServerLimits(socket_send_buffer=0, deflate_min_bytes=0).deflate_min_bytes == 0


def test_the_default_send_buffer_holds_two_loopback_segments() -> None:
    """Loopback's segments are 64 KiB; with room for one only, a receiver acknowledges it
    after its 40 ms delayed-ACK timer, and a large snapshot to a client on the same machine
    took 40 ms per 64 KiB (bench: a 180 KB snapshot in 44-88 ms, 1-2 ms with 128 KiB)."""
    assert ServerLimits().socket_send_buffer >= 2 * 64 * 1024


async def test_a_frame_picows_refuses_to_read_is_closed_1009_and_counted(tmp_path: Path) -> None:
    """A single frame over 1 MiB is not read at all: closed with 1009, and counted among the
    closes an operator watches, as the feed's own closes are."""
    ex = await start(tmp_path, ServerLimits())
    try:
        async with websockets.connect(url(ex), max_size=None, compression=None) as huge:
            await huge.send("x" * (2 << 20))
            with pytest.raises(websockets.ConnectionClosed):
                await recv(huge)
            assert huge.close_code == 1009
        async with websockets.connect(url(ex)) as polite:  # a close the client asked for
            await polite.send(json.dumps({"method": "ping"}))
            await recv(polite)
        for _ in range(50):
            if not ex.feed.connections:
                break
            await asyncio.sleep(0.02)
        assert ex.feed.metrics.closes == {"1009": 1}
    finally:
        await ex.stop()
