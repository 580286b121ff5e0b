"""The server's send path (``FeedServer.on_applied`` then ``_flush``) with stub sockets: a
client that subscribes or resumes after a batch was collected but before it was written gets
every live record exactly once, in order, whichever path (shared bytes or its own outbox)
each frame takes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from picows import WSMsgType

from openperps.feed import frames as frames_module
from openperps.feed import server as server_module
from openperps.feed.frames import inflate
from openperps.feed.server import Connection, FeedServer
from openperps.feed.session import Subscribe
from openperps.indexer import ReadModels
from openperps.indexer.models import FillRow, OrderRow
from tests.feed.test_resume import BATCHES
from tests.indexer.test_models import APT, PROFILES


def frames(wire: bytes) -> list[tuple[int, bytes]]:
    """(first header byte, payload) of each unmasked frame in ``wire`` (what the server
    wrote)."""
    out = []
    while wire:
        size = wire[1] & 0x7F
        start = 2
        if size == 126:
            size, start = int.from_bytes(wire[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(wire[2:10], "big"), 10
        out.append((wire[0], wire[start : start + size]))
        wire = wire[start + size :]
    return out


def payloads(wire: bytes) -> list[bytes]:
    return [payload for _first, payload in frames(wire)]


class Socket:
    """The asyncio transport under picows: records what the fast path writes."""

    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def get_extra_info(self, name: str) -> Any:
        return None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.sink += payloads(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)


class WebSocket:
    """The picows transport: records what the outbox path sends."""

    def __init__(self) -> None:
        self.sink: list[bytes] = []
        self.underlying_transport = Socket(self.sink)
        self.closed: int | None = None  # the close code sent

    def send(self, kind: Any, data: bytes) -> None:
        self.sink.append(bytes(data))

    def send_close(self, code: Any, reason: bytes = b"") -> None:
        self.closed = int(code)

    def disconnect(self) -> None:
        pass


def connect(
    server: FeedServer, deflate: bool = False, sock: Socket | None = None
) -> tuple[Connection, WebSocket]:
    """A connection on stub sockets; ``sock`` replaces the transport under picows."""
    conn = Connection(server, deflate=deflate)
    ws = WebSocket()
    if sock is not None:
        ws.underlying_transport = sock
    conn.on_ws_connected(ws)  # type: ignore[arg-type]
    return conn, ws


async def a_round() -> None:
    """Let the server write: a round starts one loop pass after the batch that asks for it
    (its callers go first), so two passes."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def subscribe(conn: Connection, request: dict[str, Any]) -> None:
    (action,) = conn.session.receive_text(json.dumps(request).encode(), 0)
    assert isinstance(action, Subscribe)
    conn.start(action)


def live_versions(sink: list[bytes], topic: str) -> list[int]:
    versions = []
    for frame in sink:
        body = json.loads(frame)
        if body.get("message") == topic and body.get("data"):
            versions.append(body["transaction_version"])
    return versions


@pytest.mark.parametrize("topic", ["live_order_history", "live_trade_history"])
@pytest.mark.parametrize("moment", [33, 45, 200])
async def test_a_resume_between_collect_and_flush_loses_and_repeats_nothing(
    topic: str, moment: int
) -> None:
    models = ReadModels()
    server = FeedServer(models)
    address = PROFILES[0]
    steady, steady_ws = connect(server)
    subscribe(steady, {"topic": topic, "address": address})
    await a_round()
    late, late_ws = connect(server)
    resume_from = 0
    for index, batch in enumerate(BATCHES):
        server.on_applied(models.apply_all(batch))
        if index == moment - 1:
            seen = live_versions(steady_ws.sink, topic)
            resume_from = seen[-1] if seen else 0
        if index == moment:
            # this batch is collected, not yet written: the late client resumes now
            assert any(
                push.subscription.topic == topic and push.subscription.key == address
                for push in server._pushes
            ), "the race needs a pending push"
            subscribe(late, {"topic": topic, "address": address, "since_version": resume_from})
        if index % 3 == 0:  # several batches per flush, sometimes
            await a_round()
    await a_round()
    everything = live_versions(steady_ws.sink, topic)
    resumed = live_versions(late_ws.sink, topic)
    assert len(everything) > 20, "the address had live changes"
    # exactly the steady client's records after the resume point, in its order: none lost,
    # none twice; and that order is the ledger's
    assert [v for v in everything if v > resume_from] == resumed
    # and the steady client had every live change of the address, once, in ledger order
    rows, covered = models.live_changes_since(address, 0)
    kind = OrderRow if topic == "live_order_history" else FillRow
    assert covered and everything == [row.version for row in rows if isinstance(row, kind)]


class RawSocket(Socket):
    """Records the bytes written, as they went; may say it is closing."""

    def __init__(self, closing: bool = False) -> None:
        super().__init__([])
        self.closing = closing
        self.wire = bytearray()

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.wire += data


async def test_the_metrics_count_what_was_written_compressed_or_not() -> None:
    """Messages, bytes (as on the wire) and compressed messages: exactly what the sockets
    took, a socket picows is closing left out."""
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])  # the markets are listed
    sockets: list[RawSocket] = []
    for deflate, closing in ((True, False), (False, False), (True, True), (False, True)):
        sock = RawSocket(closing)
        conn, _ws = connect(server, deflate=deflate, sock=sock)
        sockets.append(sock)
        for topic in ("recent_trades", "orderbook", "live_trade_history"):
            key = {"address": PROFILES[0]} if topic.startswith("live") else {"market_id": APT}
            subscribe(conn, {"topic": topic, **key})
    await a_round()  # the snapshots and acks go out through the outboxes
    for sock in sockets:
        sock.wire.clear()
    metrics = server.metrics
    before = (metrics.messages_sent, metrics.bytes_sent, metrics.compressed_sent)
    for batch in BATCHES[1:300]:
        server.on_applied(models.apply_all(batch))
        await a_round()
    heads = [first for sock in sockets[:2] for first, _ in frames(bytes(sock.wire))]
    assert not sockets[2].wire and not sockets[3].wire
    written = sum(len(sock.wire) for sock in sockets)
    compressed = sum(1 for first in heads if first == 0xC1)
    assert compressed > 10 and len(heads) > compressed
    assert (
        metrics.messages_sent - before[0],
        metrics.bytes_sent - before[1],
        metrics.compressed_sent - before[2],
    ) == (len(heads), written, compressed)


async def test_push_latency_is_counted_when_the_pushes_are_written() -> None:
    """From a batch being durable to its pushes being handed to the sockets: counted in the
    flush, once per batch that pushed something, never for a batch of unknown time."""
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])
    conn, _ws = connect(server)
    subscribe(conn, {"topic": "orderbook", "market_id": APT})
    await a_round()
    metrics = server.metrics
    rest = iter(BATCHES[1:])
    for batch in rest:  # up to a batch that changes the book, durable 20 ms ago
        server.on_applied(models.apply_all(batch), durable_at=time.time() - 0.020)
        if server._pushes or server._changed:
            break
    assert sum(metrics.latency_counts) == 0, "nothing is counted before it is written"
    await a_round()
    assert sum(metrics.latency_counts) == 1
    assert 20 <= metrics.latency_sum < 1000
    expected = 1
    for index, batch in enumerate(rest):
        if index % 2:  # unknown time (read back from the log): not counted
            server.on_applied(models.apply_all(batch))
        else:  # counted if it pushes something, once written
            waiting = len(server._durable)
            server.on_applied(models.apply_all(batch), durable_at=time.time())
            expected += len(server._durable) - waiting
        if index % 7 == 0:
            await a_round()
    await a_round()
    assert 1 < expected < len(BATCHES) // 2, "some batches pushed, some did not"
    assert sum(metrics.latency_counts) == expected


async def test_a_snapshot_many_ask_for_at_once_is_compressed_once() -> None:
    models = ReadModels()
    server = FeedServer(models)
    for batch in BATCHES:
        models.apply_all(batch)
    storm = []
    for _ in range(20):
        conn, _ws = connect(server, deflate=True)
        subscribe(conn, {"topic": "recent_trades", "market_id": APT})
        storm.append(conn)
    snapshots = [conn.queue[-1][1] for conn in storm]
    assert snapshots[0][0] == 0xC1, "large enough to be compressed"
    assert all(frame is snapshots[0] for frame in snapshots), "compressed once, shared"
    await a_round()
    plain, ws = connect(server)
    subscribe(plain, {"topic": "recent_trades", "market_id": APT})
    await a_round()
    (payload,) = [p for p in ws.sink if p.startswith(b'{"message":"recent_trades"')]
    ((_first, packed),) = frames(snapshots[0])
    assert inflate(packed, len(payload)) == payload, "the same snapshot, compressed or not"


async def test_a_list_state_is_written_once_per_pass_at_the_version_it_is_built() -> None:
    """Several batches change a list between two passes: one push, of the newest state. A
    subscriber that joins in between gets its snapshot and not the same state again."""
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])
    steady, steady_ws = connect(server)
    subscribe(steady, {"topic": "recent_trades", "market_id": APT})
    await a_round()
    steady_ws.sink.clear()
    changes = 0
    for batch in BATCHES[1:]:
        server.on_applied(models.apply_all(batch))
        changes += bool(server._changed)
        if changes == 3:
            break
    assert changes == 3, "three batches changed the trades"
    late, late_ws = connect(server)
    subscribe(late, {"topic": "recent_trades", "market_id": APT})  # after collect, before flush
    await a_round()
    pushes = [json.loads(p) for p in steady_ws.sink]
    assert [p["message"] for p in pushes] == ["recent_trades"]
    assert pushes[0]["transaction_version"] == models.version
    (subscription,) = steady.session.subscriptions
    assert pushes[0]["data"] == json.loads(server.hub.render(subscription))["data"]
    late_trades = [json.loads(p) for p in late_ws.sink if b"recent_trades" in p]
    assert len(late_trades) == 1, "the snapshot only: the pass's state is the same one"


async def test_a_list_state_written_compressed_is_not_compressed_again_for_new_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = ReadModels()
    server = FeedServer(models)
    half = len(BATCHES) // 2
    for batch in BATCHES[:half]:
        models.apply_all(batch)
    holder, _ws = connect(server, deflate=True)
    subscribe(holder, {"topic": "recent_trades", "market_id": APT})
    await a_round()
    compressed: list[bytes] = []
    compress = frames_module.deflated_frame

    def counted(payload: bytes) -> bytes:
        compressed.append(payload)
        return compress(payload)

    monkeypatch.setattr(server_module, "deflated_frame", counted)
    for batch in BATCHES[half:]:
        server.on_applied(models.apply_all(batch))
        if server._changed:
            break
    await a_round()  # the new state is written, compressed
    assert len(compressed) == 1
    late, _ws = connect(server, deflate=True)
    subscribe(late, {"topic": "recent_trades", "market_id": APT})  # at the same version
    assert len(compressed) == 1, "its snapshot is the state just written"
    assert late.queue[-1][1][0] == 0xC1


class Frame:
    """What picows hands ``on_ws_frame``: one whole, unmasked frame."""

    def __init__(self, payload: bytes, msg_type: WSMsgType = WSMsgType.TEXT) -> None:
        self.msg_type = msg_type
        self.fin = True
        self.rsv1 = self.rsv2 = self.rsv3 = False
        self.payload = payload

    def get_payload_as_bytes(self) -> bytes:
        return self.payload


async def test_frames_read_after_the_close_are_ignored() -> None:
    """A close decided (a protocol failure, say) and a request read in the same pass: the
    request is not served, and the connection is not left subscribed."""
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])
    conn, ws = connect(server)
    request = json.dumps({"topic": "orderbook", "market_id": APT, "id": 1}).encode()
    conn.close(1002, "x")
    assert ws.closed == 1002
    conn.on_ws_frame(ws, Frame(request))  # type: ignore[arg-type]
    assert not server.hub.holders, "no subscription after the close"
    assert not conn.session.subscriptions
    assert not conn.queue and not ws.sink, "nothing answered"


class PassSocket(RawSocket):
    """Keeps every write, so a test can tell one write per pass."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writelines(self, chunks: list[bytes]) -> None:  # one write, as the event loop does
        self.write(b"".join(chunks))


def unsubscribe(conn: Connection, ws: WebSocket, request: dict[str, Any]) -> None:
    conn.on_ws_frame(ws, Frame(json.dumps({"method": "unsubscribe", **request}).encode()))  # type: ignore[arg-type]


def decoded(sock: PassSocket) -> list[dict[str, Any]]:
    """Every frame a socket took, inflated where it went compressed, as JSON."""
    out = []
    for first, payload in frames(bytes(sock.wire)):
        if first == 0xC1:
            payload = inflate(payload, 1 << 20)
        out.append(json.loads(payload))
    return out


async def test_each_connection_gets_exactly_its_own_pushes_in_one_write_per_pass() -> None:
    """Connections holding the same subscriptions get the same bytes, one write per pass
    (compressed for those that asked); other sets of subscriptions get exactly their own
    pushes; a connection that drops a subscription between two passes loses nothing else."""
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])
    market = {"market_id": APT}
    who = {"address": PROFILES[0]}
    kinds: dict[str, tuple[bool, list[tuple[str, dict[str, Any]]]]] = {
        "plain": (False, [("orderbook", market), ("recent_trades", market)]),
        "twin": (False, [("orderbook", market), ("recent_trades", market)]),
        "packed": (True, [("orderbook", market), ("recent_trades", market)]),
        "book": (False, [("orderbook", market)]),
        "mixed": (
            False,
            [("orderbook", market), ("recent_trades", market), ("live_trade_history", who)],
        ),
        "mover": (False, [("orderbook", market), ("recent_trades", market)]),
    }
    conns: dict[str, tuple[Connection, WebSocket, PassSocket]] = {}
    for name, (deflate, topics) in kinds.items():
        sock = PassSocket()
        conn, ws = connect(server, deflate=deflate, sock=sock)
        for topic, key in topics:
            subscribe(conn, {"topic": topic, **key})
        conns[name] = (conn, ws, sock)
    await a_round()  # acks and snapshots, through the outboxes
    for _conn, _ws, sock in conns.values():
        sock.wire.clear()
        sock.writes.clear()
    mover, mover_ws, mover_sock = conns["mover"]
    start = models.version  # every live change after it is pushed
    passes = 0
    moved_at = 0
    for index, batch in enumerate(BATCHES[1:], 1):
        server.on_applied(models.apply_all(batch))
        if index % 4:
            continue
        counts = {name: len(sock.writes) for name, (_c, _w, sock) in conns.items()}
        await a_round()
        passes += 1
        for name, (_conn, _ws, sock) in conns.items():
            assert len(sock.writes) - counts[name] <= 1, f"{name}: one write per pass"
        if passes == 30:  # leaves recent_trades: from now on, what "book" gets
            unsubscribe(mover, mover_ws, {"topic": "recent_trades", "id": 7, **market})
            moved_at = len(mover_sock.writes)
    assert moved_at, "the mover moved"

    plain, twin, packed = (conns[name][2] for name in ("plain", "twin", "packed"))
    assert len(plain.writes) > 20
    assert len(twin.writes) == len(plain.writes)
    assert plain.writes == twin.writes
    assert any(first == 0xC1 for first, _ in frames(bytes(packed.wire)))
    assert decoded(packed) == decoded(plain), "the same pushes, compressed where large"
    assert not any(first == 0xC1 for first, _ in frames(bytes(plain.wire)))

    shared_pushes = decoded(plain)
    books = [push for push in shared_pushes if push["message"] == "orderbook"]
    assert decoded(conns["book"][2]) == books
    mixed = decoded(conns["mixed"][2])
    assert [push for push in mixed if push["message"] != "live_trade_history"] == shared_pushes
    live = [
        push["transaction_version"] for push in mixed if push["message"] == "live_trade_history"
    ]
    rows, covered = models.live_changes_since(PROFILES[0], start)
    assert covered and live and live == [row.version for row in rows if isinstance(row, FillRow)]

    # the mover: the book and trades until it left the trades, the book's after (an ack
    # between)
    mover_pushes = decoded(mover_sock)
    (ack_index,) = [i for i, push in enumerate(mover_pushes) if push["message"] == "unsubscribed"]
    before, after = mover_pushes[:ack_index], mover_pushes[ack_index + 1 :]
    assert before == shared_pushes[: len(before)]
    assert after and all(push["message"] == "orderbook" for push in after)
    assert after == books[-len(after) :]


async def test_a_list_snapshot_waiting_in_the_outbox_is_replaced_by_a_newer_state() -> None:
    """A client whose socket is full subscribes to a list: its snapshot waits, and each newer
    state of that list replaces it there instead of queueing behind it."""
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])
    sock = PassSocket()
    conn, ws = connect(server, sock=sock)
    conn.pause_writing()  # the kernel's buffer is full: frames wait in the outbox
    request = {"topic": "recent_trades", "market_id": APT, "id": 1}
    conn.on_ws_frame(ws, Frame(json.dumps(request).encode()))  # type: ignore[arg-type]
    changes = 0
    for batch in BATCHES[1:]:
        server.on_applied(models.apply_all(batch))
        if server._changed:
            changes += 1
            await a_round()
        if changes == 3:
            break
    assert changes == 3
    assert len(conn.queue) == 2, "the ack, and one state of the list"
    conn.resume_writing()
    await a_round()
    pushed = decoded(sock)
    assert [push["message"] for push in pushed] == ["subscribed", "recent_trades"]
    assert pushed[1]["transaction_version"] == models.version


async def test_subscribing_again_while_a_state_waits_keeps_the_ack_before_the_snapshot() -> None:
    models = ReadModels()
    server = FeedServer(models)
    models.apply_all(BATCHES[0])
    sock = PassSocket()
    conn, ws = connect(server, sock=sock)
    conn.pause_writing()
    request = {"topic": "recent_trades", "market_id": APT}
    conn.on_ws_frame(ws, Frame(json.dumps(request).encode()))  # type: ignore[arg-type]
    conn.on_ws_frame(ws, Frame(json.dumps({**request, "id": 2}).encode()))  # type: ignore[arg-type]
    conn.resume_writing()
    await a_round()
    assert [push["message"] for push in decoded(sock)] == [
        "recent_trades",
        "subscribed",
        "recent_trades",
    ]
