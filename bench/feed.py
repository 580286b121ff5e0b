"""Feed benchmark: deliveries per second, push latency, and memory per idle connection.

Server processes are started in turn on 127.0.0.1, and a load-generating client runs in
another process (``--role client``), so neither side's event loop slows the other:

1. throughput: 1 000 connections subscribed to a market's ``orderbook`` and ``recent_trades``
   while traders keep 64 commands in flight (the exchange matches as fast as it can); the
   baseline is the same client against a bare picows server broadcasting the same bytes (the
   exchange's own book push and its 32 KB push of the latest 100 trades, sampled from a
   second of the same trading before the runs) to every connection, framed once and
   written in one write per connection per round as the feed writes them, into sockets with
   the send buffer the feed gives its own; the exchange is measured again under a lighter
   load, 4 commands in flight, to show how much of the gap is the matching it shares its
   loop with; each of the three runs ``--repeat`` (2) times, interleaved, and the best of
   each counts (the machine is shared);
2. latency: the same 1 000 subscribers while traders send commands at a fixed rate that makes
   ``--events-per-s`` (5 000) events/s, none waiting for another; the server records when
   each commit became durable (wall clock, when the log's append returns) and when each write
   round ended, a sample of 50 connections (every 20th to connect, in case a server writes in
   the order they came) record when each push arrived; a commit counts until the first book
   push that includes it reaches the client. The client reports the wall-clock start and end
   of its measuring window, and the server's figures (events, pushes and write rounds per
   second, its own part of the latency) count only what falls inside that window: the server
   trades for a second longer than the client measures, and the clients stay connected until
   it has stopped;
3. the latency floor: a bare picows server broadcasting the same two pushes to the same
   1 000 connections, as many rounds per second as the exchange sent book pushes, each push
   stamped when its round starts: how fast this machine can move them with nothing else to do;
4. memory: the server's resident set before and after 10 000 idle connections.

The clients offer ``permessage-deflate`` as most do (Python's websockets, Node's ws,
browsers), so pushes of 1 KiB or more travel compressed, the same for the exchange and the
bare broadcasts; the sampled connections take the time a push arrives before anything else,
keep its bytes as they came and inflate and read them only after the measuring window, so
the client's own work is not counted as latency. ``--plain`` measures clients that do not
offer it.

Prints figures, then as its last line one JSON object (``--parts`` picks measurements; the
server's own part of the latency, durability to the end of the write round that hands a
commit's pushes to every socket, is ``server_p99_ms``; the deliveries the clients received
during the latency run, at a steady 5 000 events/s, are ``paced_deliveries_per_s``; those
under the lighter load, ``light_deliveries_per_s`` and ``light_ratio``):
{"bench": "feed", "deliveries_per_s": N, "baseline_per_s": N, "ratio": R,
 "light_deliveries_per_s": N, "light_ratio": R, "paced_deliveries_per_s": N, "p50_ms": X,
 "p99_ms": Y, "server_p99_ms": Y, "floor_p50_ms": X, "floor_p99_ms": Y, "kib_per_conn": Z,
 "deflate": true}

Market pushes are coalesced: a subscriber gets at most one ``orderbook`` and one
``recent_trades`` push per write round, and a round follows new durable batches. So the
exchange's deliveries are bounded by its write rounds per second, which its own work
(matching, the log, the read models) shares the event loop with; the bare broadcast has
nothing else to do.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponseWithListener,
    ws_connect,
    ws_create_server,
)

from percentiles import percentile

ROOT = Path(__file__).resolve().parent.parent
MARKET = 1338
FLAT_OUT_IN_FLIGHT = 64
LIGHT_IN_FLIGHT = 4  # the lighter load of the throughput part: the exchange mostly idle
EVENTS_PER_COMMAND = 5  # measured: a resting order and a taker that fills it make 10 events
ORDERBOOK_PUSH = b'{"message":"orderbook"'
PUSHES = ("orderbook", "recent_trades")  # the topics each subscriber holds
MAX_IN_FLIGHT = 20_000
SAMPLE = 50  # connections of the latency runs that record when each push arrived
OFFER = "permessage-deflate; client_max_window_bits"  # what browsers and Node's ws offer
ALICE = "0x" + "a1" * 32
BOB = "0x" + "b2" * 32


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- servers ----------------------------------------------------------------------------------


def trading_pair(i: int) -> tuple[Any, Any]:
    """A resting order, then a taker that trades against it: book and trade pushes."""
    from openperps.core import commands as c

    price = 7_000 + i % 20
    maker = c.PlaceLimitOrder(
        timestamp=0,
        profile=BOB,
        market_id=MARKET,
        trade_side=False,
        direction=False,
        size=100,
        price=price,
        leverage=10,
    )
    taker = c.PlaceMarketOrder(
        timestamp=0,
        profile=ALICE,
        market_id=MARKET,
        trade_side=True,
        direction=False,
        size=100,
        leverage=10,
    )
    return maker, taker


async def drive(
    exchange: Any, rate: float, seconds: float, in_flight_cap: int = FLAT_OUT_IN_FLIGHT
) -> tuple[int, float]:
    """Submit trading pairs for ``seconds``; returns the events made and the time taken.

    Commands come as they would from many independent traders: each is its own task and
    nobody waits for an earlier command to be durable before sending the next. ``rate`` 0
    keeps ``in_flight_cap`` commands in flight (the default: as fast as the exchange takes
    them);
    otherwise commands are sent on a fixed schedule at ``rate`` per second, whatever happens
    to the earlier ones (at most ``MAX_IN_FLIGHT`` waiting, so an overload shows as a lower
    event rate, not as unbounded memory).
    """
    seq = exchange.sequencer
    loop = asyncio.get_running_loop()
    in_flight = 0
    wakeup = asyncio.Event()

    failed = 0

    def done(task: asyncio.Task[Any]) -> None:
        nonlocal in_flight, failed
        in_flight -= 1
        if task.cancelled() or task.exception() is not None:
            failed += 1
        wakeup.set()

    def submit(i: int) -> None:
        nonlocal in_flight
        for command in trading_pair(i):
            in_flight += 1
            loop.create_task(seq.execute(command)).add_done_callback(done)

    first_version = seq.engine.version
    started = time.monotonic()
    stop_at = started + seconds
    pairs = 0
    while (now := time.monotonic()) < stop_at:
        if rate:
            due = int((now - started) * rate / 2)
            while pairs < due and in_flight < MAX_IN_FLIGHT:
                pairs += 1
                submit(pairs)
            await asyncio.sleep(0.001)  # the loop's timers tick in milliseconds
        else:
            while in_flight < in_flight_cap:
                pairs += 1
                submit(pairs)
            wakeup.clear()
            await wakeup.wait()
    elapsed = time.monotonic() - started
    made = seq.engine.version - first_version
    while in_flight:
        wakeup.clear()
        await wakeup.wait()
    if failed:
        raise RuntimeError(f"{failed} commands failed")
    return made, elapsed


@asynccontextmanager
async def running_exchange(port: int, deflate: bool) -> AsyncIterator[Any]:
    """An exchange serving on ``port``, its log in a temporary directory, started and settled
    as ``openperps serve`` does; stopped on leaving."""
    from openperps.feed.server import ServerLimits
    from openperps.runtime.app import Exchange, Settings
    from openperps.runtime.startup import settle_heap

    with tempfile.TemporaryDirectory() as tmp:
        exchange = Exchange(
            Settings(
                db=str(Path(tmp) / "events.sqlite3"),
                ws_port=port,
                # every simulated client comes from 127.0.0.1
                server_limits=ServerLimits(
                    connections_per_ip=1_000_000,
                    deflate_min_bytes=ServerLimits.deflate_min_bytes if deflate else 0,
                ),
            )
        )
        await exchange.start()
        settle_heap()  # as ``openperps serve`` does once started
        yield exchange
        await exchange.stop()


async def serve_exchange(
    port: int,
    rate: float,
    durable_log: Path | None,
    seconds: float,
    deflate: bool,
    in_flight: int = FLAT_OUT_IN_FLIGHT,
) -> None:
    """The real thing: log, sequencer, read models, feed; traders sending ``rate`` commands
    per second (0: keeping ``in_flight`` commands in flight)."""
    from openperps.core import commands as c
    from openperps.store.envelope import Envelope
    from openperps.store.sqlite import SqliteEventLog

    async with running_exchange(port, deflate) as exchange:
        # (first version, last version, wall clock ns) of every commit, taken on the log's
        # writer thread the moment SQLite's COMMIT returns (the batch is on disk): before the
        # event loop hears of it, let alone the bus, the read models or the feed
        durable: list[tuple[int, int, int]] = []
        if durable_log is not None:
            log = exchange.writer.log
            assert isinstance(log, SqliteEventLog)
            commit = log._append

            def timed_commit(batch: Sequence[Envelope]) -> None:
                commit(batch)
                durable.append((batch[0].version, batch[-1].version, time.time_ns()))

            setattr(log, "_append", timed_commit)  # noqa: B010 (a method of this one object)
        # (version, wall clock ns, pushes written, bytes written) at the end of every write
        # round: every push up to that version handed to every socket, and the feed's running
        # totals then (so that what it wrote inside the client's window can be counted)
        rounds: list[tuple[int, int, int, int]] = []
        metrics = exchange.feed.metrics
        if durable_log is not None:
            feed = exchange.feed
            flush = feed._flush

            def timed_flush() -> None:
                version = feed.hub.version
                flush()
                rounds.append((version, time.time_ns(), metrics.messages_sent, metrics.bytes_sent))

            setattr(feed, "_flush", timed_flush)  # noqa: B010 (a method of this one object)
        seq = exchange.sequencer
        await seq.execute(c.Mint(timestamp=0, profile=ALICE, amount=10**15))
        await seq.execute(c.Deposit(timestamp=0, profile=ALICE, amount=10**15))
        await seq.execute(c.Mint(timestamp=0, profile=BOB, amount=10**15))
        await seq.execute(c.Deposit(timestamp=0, profile=BOB, amount=10**15))
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # wait until the client is connected
        sent, sent_bytes = metrics.messages_sent, metrics.bytes_sent
        durable.clear()  # only what happens under load counts (not the set-up's deposits)
        rounds.clear()
        made, elapsed = await drive(exchange, rate, seconds, in_flight)
        sent, sent_bytes = metrics.messages_sent - sent, metrics.bytes_sent - sent_bytes
        print(f"events {made} {elapsed:.3f} {sent} {sent_bytes}", flush=True)
        if durable_log is not None:
            durable_log.write_text(json.dumps({"commits": durable, "rounds": rounds}))
        await asyncio.to_thread(sys.stdin.readline)


async def sample_pushes(port: int) -> tuple[bytes, bytes]:
    """The exchange's own ``orderbook`` and ``recent_trades`` pushes after a second of the
    throughput run's trading (the latest 100 fills): the bytes the bare broadcasts send."""
    from openperps.core import commands as c
    from openperps.feed.session import Subscription

    async with running_exchange(port, deflate=True) as exchange:
        seq = exchange.sequencer
        for profile in (ALICE, BOB):
            await seq.execute(c.Mint(timestamp=0, profile=profile, amount=10**15))
            await seq.execute(c.Deposit(timestamp=0, profile=profile, amount=10**15))
        await drive(exchange, 0, 1.0)
        hub = exchange.feed.hub
        book, trades = (hub.render(Subscription(topic, MARKET)) for topic in PUSHES)
    if trades.count(b'"trade_id"') < 100:
        raise RuntimeError("the sample has fewer than 100 trades")
    return book, trades


def load_pushes(path: Path) -> list[bytes]:
    """The sampled pushes, as ``main`` wrote them for the bare broadcasts."""
    return [text.encode() for text in json.loads(path.read_text())]


def on_wire(payloads: list[bytes], deflate: bool) -> bytes:
    """``payloads`` as the feed writes them to a client that did or did not negotiate
    compression, in one piece: each a whole frame, compressed from the feed's default
    threshold up. The bare broadcasts write this once per connection per round, as the feed
    writes everything a round has for a connection in one write."""
    from openperps.feed.frames import deflated_frame, text_frame
    from openperps.feed.server import ServerLimits

    return b"".join(
        deflated_frame(payload)
        if deflate and len(payload) >= ServerLimits.deflate_min_bytes
        else text_frame(payload)
        for payload in payloads
    )


async def bare_server(port: int, deflate: bool) -> tuple[asyncio.Server, set[WSTransport]]:
    """A picows server that only keeps the set of its connections (agreeing to compression
    as the feed does, when ``deflate``), each socket's send buffer set as the feed sets its
    own: a bigger kernel buffer would let a broadcast hand over more per write."""
    from openperps.feed.frames import offers_deflate, with_deflate
    from openperps.feed.server import ServerLimits

    send_buffer = ServerLimits.socket_send_buffer
    transports: set[WSTransport] = set()

    class Listener(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            if send_buffer:  # as the feed's connections do on connecting
                sock = transport.underlying_transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            transports.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            transports.discard(transport)

    def factory(request: WSUpgradeRequest) -> Listener | WSUpgradeResponseWithListener:
        listener = Listener()
        return with_deflate(listener) if deflate and offers_deflate(request) else listener

    server = await ws_create_server(factory, "127.0.0.1", port)
    return server, transports


async def serve_bare(port: int, seconds: float, deflate: bool, pushes: list[bytes]) -> None:
    """Baseline: picows broadcasting the feed's own mix (a small book push and a 32 KB trades
    push) to every connection, nothing else: the frames built once, then one write per
    connection per round. It skips a connection while its socket has a backlog, as any
    broadcast of that size must (otherwise the backlog grows by gigabytes in a few seconds)."""
    server, transports = await bare_server(port, deflate)
    wire = on_wire(pushes, deflate)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        for transport in list(transports):
            raw = transport.underlying_transport
            if not raw.get_write_buffer_size():
                raw.write(wire)
        await asyncio.sleep(0)
    print("events 0 1 0 0", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    server.close()


def stamped(push: bytes, stamp: int) -> bytes:
    """``push`` (compact JSON) with its top-level ``transaction_version`` set to ``stamp`` and
    moved to the end."""
    body = json.loads(push)
    del body["transaction_version"]
    body["transaction_version"] = stamp
    return json.dumps(body, separators=(",", ":")).encode()


async def serve_bare_timed(
    port: int, seconds: float, rounds_per_s: float, deflate: bool, pushes: list[bytes]
) -> None:
    """Latency floor: picows broadcasting a book push and the trades push to every connection
    at a fixed number of rounds per second, each stamped with the wall clock at the start of
    its round (in ``transaction_version``), both in one write per connection, skipping a socket
    with a backlog. What the client measures is the time from deciding to push to receiving,
    with nothing else to do; a push large enough is compressed once per round, as the exchange
    does once per push."""
    server, transports = await bare_server(port, deflate)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    # each push up to its stamp (the last key), so a round only appends digits: JSON work
    # would otherwise count as transport time
    heads = [stamped(push, 0).removesuffix(b"0}") for push in pushes]
    stop_at = time.monotonic() + seconds
    next_round = time.monotonic()
    rounds = 0
    while time.monotonic() < stop_at:
        tail = b"%d}" % time.time_ns()
        wire = on_wire([head + tail for head in heads], deflate)
        for transport in list(transports):
            raw = transport.underlying_transport
            if not raw.get_write_buffer_size():
                raw.write(wire)
        rounds += 1
        next_round += 1 / rounds_per_s
        await asyncio.sleep(max(next_round - time.monotonic(), 0))
    print(f"events 0 {seconds} {rounds} 0", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    server.close()


async def serve_idle(port: int, deflate: bool) -> None:
    """An exchange with nothing to do but hold its connections."""
    async with running_exchange(port, deflate):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)


# -- client -------------------------------------------------------------------------------------


def pushed_version(data: bytes, compressed: bool) -> tuple[bool, int] | None:
    """Whether a push as it came off the wire is a book push, and its ``transaction_version``
    (None if it has none)."""
    from openperps.feed.frames import inflate

    if compressed:
        data = inflate(data, 1 << 24)
    start = data.rfind(b'"transaction_version":')
    if start < 0:
        return None
    end = start + 22
    stop = end
    while stop < len(data) and data[stop : stop + 1].isdigit():
        stop += 1
    return data.startswith(ORDERBOOK_PUSH), int(data[end:stop])


async def client(
    port: int,
    connections: int,
    seconds: float,
    sample: int,
    subscribe: bool,
    deflate: bool,
    result_file: Path | None,
) -> None:
    """Connects (and subscribes), measures for ``seconds`` when told to, writes what it saw,
    then stays connected until told to leave: the server may still be counting."""
    received = 0
    measuring = False
    # (connection, payload as it came, compressed, wall clock ns on arrival) on the sampled
    # connections during the window; read only after it, so that inflating and parsing
    # (the client's own work) is not counted as latency
    raw: list[tuple[int, bytes, bool, int]] = []

    class Listener(WSListener):
        def __init__(self, index: int, sampled: bool) -> None:
            self.index = index
            self.sampled = sampled

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            nonlocal received
            if self.sampled and measuring:
                at = time.time_ns()  # on arrival, before anything else
                raw.append((self.index, frame.get_payload_as_bytes(), bool(frame.rsv1), at))
            received += 1

    url = f"ws://127.0.0.1:{port}/ws/"
    stride = max(connections // sample, 1) if sample else 1
    transports = []
    for i in range(connections):
        transport, _ = await ws_connect(
            # spread over the order of connecting, in case a server writes in that order
            lambda i=i: Listener(i, bool(sample) and i % stride == 0),
            url,
            extra_headers={"Sec-WebSocket-Extensions": OFFER} if deflate else None,
        )
        transports.append(transport)
        if subscribe:
            for request in (
                {"topic": "orderbook", "market_id": MARKET},
                {"topic": "recent_trades", "market_id": MARKET},
            ):
                transport.send(WSMsgType.TEXT, json.dumps(request).encode())
        if i % 200 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0.5)
    print("connected", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent says: measure now
    received = 0
    measuring = True
    started_ns = time.time_ns()  # the window in wall clock, for the server's records
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    ended_ns = time.time_ns()
    measuring = False
    in_window = received
    # (stream, version, ns) of the sampled connections; a stream is one topic on one
    # connection: 2 * connection for the book, 2 * connection + 1 for the trades
    arrivals: list[tuple[int, int, int]] = []
    for index, data, compressed, at in raw:
        pushed = pushed_version(data, compressed)
        if pushed is not None:
            book, version = pushed
            arrivals.append((2 * index + (0 if book else 1), version, at))
    raw.clear()
    result: dict[str, Any] = {
        "received": in_window,
        "seconds": elapsed,
        "started_ns": started_ns,
        "ended_ns": ended_ns,
        "arrivals": arrivals,
    }
    if result_file is not None:  # the arrivals can be megabytes: not through a pipe
        result_file.write_text(json.dumps(result))
    print(json.dumps({"received": in_window, "seconds": elapsed}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent says: leave now
    for transport in transports:
        transport.disconnect()


# -- orchestration ------------------------------------------------------------------------------


# options every spawned server and client shares with the main process (``--plain``)
PASS_ON: list[str] = []


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args, *PASS_ON],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def expect(process: subprocess.Popen[str], word: str) -> str:
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before {word!r}")
        if line.startswith(word):
            return line.strip()


def tell(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def measure(
    server_args: list[str], port: int, connections: int, seconds: float, sample: int = 0
) -> tuple[dict[str, Any], ServerRun]:
    """One run: the server works for a second longer than the client measures, so that the
    client's window lies inside the server's; the client stays connected until the server
    has stopped counting. Returns what the client saw (with its window in wall-clock ns,
    ``started_ns`` and ``ended_ns``) and what the server says when it stops counting."""
    server = spawn(
        "--role", "server", "--port", str(port), "--seconds", str(seconds + 1), *server_args
    )
    expect(server, "ready")
    result_file = Path(tempfile.mkdtemp()) / "result.json"
    load = spawn(
        "--role",
        "client",
        "--port",
        str(port),
        "--connections",
        str(connections),
        "--seconds",
        str(seconds),
        "--sample",
        str(sample),
        "--result",
        str(result_file),
    )
    expect(load, "connected")
    tell(server)
    tell(load)
    expect(load, "{")
    result = json.loads(result_file.read_text())
    shutil.rmtree(result_file.parent)
    events = ServerRun.parse(expect(server, "events"))
    tell(load)  # the server has stopped counting: the clients may leave
    load.wait(timeout=60)
    tell(server)
    server.wait(timeout=60)
    return result, events


class ServerRun(NamedTuple):
    """What a server says when it stops counting: ``events MADE SECONDS PUSHES BYTES``."""

    events: int  # made by the exchange (0 for the bare broadcasts)
    seconds: float  # how long its traders ran
    pushes: int  # written
    sent_bytes: int  # written

    @classmethod
    def parse(cls, line: str) -> ServerRun:
        _word, made, seconds, pushes, sent = line.split()
        return cls(int(made), float(seconds), int(pushes), int(sent))

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.sent_bytes / self.seconds / 1e6


def send_buffer_kib() -> int:
    """The kernel send buffer the feed asks for each connection, and the bare servers too."""
    from openperps.feed.server import ServerLimits

    return ServerLimits.socket_send_buffer // 1024


def latencies(
    commits: list[tuple[int, ...]], arrivals: list[list[int]]
) -> tuple[list[float], list[float]]:
    """Milliseconds from durable to received, two ways.

    Per event: every commit changes the book in this bench (a resting order, or a taker that
    takes it), so for each sampled connection, each commit is counted once, when the first
    book push at or above its version arrives. A commit coalesced into a later push waits
    for it, and that wait is counted.
    Per push: each push against the commit holding its own version, for every topic.
    """
    commits.sort()
    lasts = [last for _first, last, _at in commits]
    per_event: list[float] = []
    per_frame: list[float] = []
    seen: dict[int, int] = {}
    for stream, version, at in arrivals:
        index = bisect.bisect_left(lasts, version)
        if index < len(commits) and commits[index][0] <= version:
            per_frame.append((at - commits[index][2]) / 1e6)
        if stream % 2:  # trades: not every commit makes one
            continue
        previous = seen.get(stream)
        seen[stream] = version if previous is None else max(previous, version)
        if previous is None or version <= previous:
            continue  # the first push measured on a stream: what it covers is unknown
        start = bisect.bisect_right(lasts, previous)
        stop = bisect.bisect_left(lasts, version)
        for _first, last, durable_at in commits[start : stop + 1]:
            if last > previous:
                per_event.append((at - durable_at) / 1e6)
    return per_event, per_frame


def server_side(commits: list[tuple[int, ...]], rounds: list[tuple[int, ...]]) -> list[float]:
    """Milliseconds from each commit being durable to the end of the first write round at or
    after its version (the round that handed its pushes to every socket). ``rounds`` are
    (version, wall clock ns, ...) in the order they ended."""
    versions = [round_[0] for round_ in rounds]
    out = []
    for _first, last, durable_at in commits:
        index = bisect.bisect_left(versions, last)
        if index < len(rounds):
            out.append((rounds[index][1] - durable_at) / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--role", choices=["main", "server", "client"], default="main")
    parser.add_argument(
        "--mode",
        choices=["exchange", "bare-same", "bare-timed", "idle"],
        default="exchange",
    )
    parser.add_argument("--port", type=int, default=18870)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=0.0, help="commands/s (server role)")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=FLAT_OUT_IN_FLIGHT,
        help="commands kept in flight when --rate is 0 (server role)",
    )
    parser.add_argument(
        "--events-per-s", type=float, default=5000.0, help="the load of the latency run"
    )
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--durable-log", type=Path)
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs of each kind")
    parser.add_argument("--result", type=Path, help="where the client writes what it saw")
    parser.add_argument("--pushes", type=Path, help="the sampled pushes (bare servers)")
    parser.add_argument(
        "--plain", action="store_true", help="clients that do not offer permessage-deflate"
    )
    parser.add_argument(
        "--parts",
        default="throughput,latency,memory",
        help="which measurements to make (comma-separated; the JSON has only theirs)",
    )
    args = parser.parse_args()
    deflate = not args.plain
    if args.plain:
        PASS_ON.append("--plain")

    if args.role == "server":
        import uvloop

        if args.mode == "exchange":
            uvloop.run(
                serve_exchange(
                    args.port, args.rate, args.durable_log, args.seconds, deflate, args.in_flight
                )
            )
        elif args.mode == "bare-same":
            uvloop.run(serve_bare(args.port, args.seconds, deflate, load_pushes(args.pushes)))
        elif args.mode == "bare-timed":
            uvloop.run(
                serve_bare_timed(
                    args.port, args.seconds, args.rate, deflate, load_pushes(args.pushes)
                )
            )
        else:
            uvloop.run(serve_idle(args.port, deflate))
        return
    if args.role == "client":
        import uvloop

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        uvloop.run(
            client(
                args.port,
                args.connections,
                args.seconds,
                args.sample,
                subscribe=args.mode != "idle",
                deflate=deflate,
                result_file=args.result,
            )
        )
        return

    figures: dict[str, Any] = {"bench": "feed"}
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if parts & {"throughput", "latency"}:
            # the bare broadcasts send the exchange's own pushes, sampled once here
            pushes = asyncio.run(sample_pushes(args.port + 5))
            path = Path(tmp) / "pushes.json"
            path.write_text(json.dumps([push.decode() for push in pushes]))
            PASS_ON.extend(["--pushes", str(path)])
        if "throughput" in parts:
            figures |= throughput(args, deflate, pushes)
        if "latency" in parts:
            figures |= latency(args)
    if "memory" in parts:
        figures |= memory(args)
    figures["deflate"] = deflate
    print(json.dumps(figures))


def throughput(
    args: argparse.Namespace, deflate: bool, pushes: tuple[bytes, bytes]
) -> dict[str, Any]:
    n = args.connections
    book, trades = pushes
    # the machine is shared: each throughput run is repeated, interleaved, and the best of
    # each kind counts (the same for the exchange and the baseline)
    kinds = {
        "exchange": ["--mode", "exchange"],
        "light": ["--mode", "exchange", "--in-flight", str(LIGHT_IN_FLIGHT)],
        "bare-same": ["--mode", "bare-same"],
    }
    runs: dict[str, list[tuple[float, ServerRun]]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeat):
        for offset, (kind, server_args) in enumerate(kinds.items()):
            port = args.port + 10 * (repeat + 1) + offset
            result, events = measure(server_args, port, n, args.seconds)
            runs[kind].append((result["received"] / result["seconds"], events))

    def best(kind: str) -> tuple[float, str]:
        tried = ", ".join(f"{rate:,.0f}" for rate, _ in runs[kind])
        return max(runs[kind])[0], f"best of {tried}"

    def trading(server: ServerRun) -> str:
        return (
            f"the best run's server, over its own {server.seconds:.1f} s of trading, "
            f"the subscribers connected throughout: {server.events_per_s:,.0f} events/s, "
            f"{server.mb_per_s:,.0f} MB/s written"
        )

    deliveries, tried = best("exchange")
    print(
        f"exchange: {deliveries:,.0f} deliveries/s to {n} subscribers, "
        f"{FLAT_OUT_IN_FLIGHT} commands in flight; {tried} "
        f"({trading(max(runs['exchange'])[1])})"
    )
    light, light_tried = best("light")
    baseline, base_tried = best("bare-same")
    print(
        f"lighter:  {light:,.0f} deliveries/s with {LIGHT_IN_FLIGHT} commands in flight "
        f"(ratio {light / baseline:.2f}; {light_tried}; {trading(max(runs['light'])[1])}): "
        "with less matching to share the loop with, the rounds come closer to the baseline's"
    )
    print(
        f"baseline: {baseline:,.0f} deliveries/s (bare picows broadcast of the exchange's own "
        f"pushes: a {len(book)} B book push and a {len(trades):,} B trades push, "
        f"{len(on_wire([trades], deflate)):,} B on the wire, frame included, into "
        f"sockets with the feed's {send_buffer_kib()} KiB send buffer); {base_tried}"
    )
    return {
        "deliveries_per_s": round(deliveries),
        "baseline_per_s": round(baseline),
        "ratio": round(deliveries / baseline, 3) if baseline else None,
        "light_deliveries_per_s": round(light),
        "light_ratio": round(light / baseline, 3) if baseline else None,
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    n = args.connections
    with tempfile.TemporaryDirectory() as tmp:
        durable_log = Path(tmp) / "durable.json"
        rate = args.events_per_s / EVENTS_PER_COMMAND
        timed, _events = measure(
            ["--mode", "exchange", "--rate", str(rate), "--durable-log", str(durable_log)],
            args.port + 2,
            n,
            args.seconds,
            sample=SAMPLE,
        )
        timings = json.loads(durable_log.read_text())
    commits = [tuple(group) for group in timings["commits"]]
    rounds = [tuple(group) for group in timings["rounds"]]
    # the server trades longer than the client measures: only what happens inside the
    # client's window counts. The arrivals are all inside it; each is matched with its
    # commit wherever that fell. The server's part is taken for the commits made durable
    # inside the window, each with the round that carried it (which may end just after).
    opened, closed = timed["started_ns"], timed["ended_ns"]
    window = (closed - opened) / 1e9
    per_event, per_frame = latencies(commits, timed["arrivals"])
    inside = [commit for commit in commits if opened <= commit[2] <= closed]
    handed = server_side(inside, rounds)
    made = sum(last - first + 1 for first, last, _at in inside)
    rounds_inside = [round_ for round_ in rounds if opened <= round_[1] <= closed]
    rounds_per_s = len(rounds_inside) / window
    # what the feed wrote between the first and the last round that ended inside the window
    first, last = rounds_inside[0], rounds_inside[-1]
    span = max((last[1] - first[1]) / 1e9, 1e-9)
    pushes_per_s, mb_per_s = (last[2] - first[2]) / span, (last[3] - first[3]) / span / 1e6
    paced = timed["received"] / timed["seconds"]
    print(
        f"latency:  {made / window:,.0f} events/s made (asked for {args.events_per_s:,.0f}) in "
        f"the clients' {window:.2f} s window, over which the server wrote {pushes_per_s:,.0f} "
        f"pushes/s, {mb_per_s:,.0f} MB/s, in {rounds_per_s:,.0f} write rounds/s; "
        f"{len(per_frame)} pushes sampled on {SAMPLE} connections; the clients received "
        f"{paced:,.0f} deliveries/s"
    )
    p50 = percentile(per_event, 0.5)
    p99 = percentile(per_event, 0.99)
    print(
        f"          p50 {p50:.2f} ms, p99 {p99:.2f} ms from each commit's durability to the "
        "first book push that includes it"
    )
    print(
        f"          p50 {percentile(per_frame, 0.5):.2f} ms, "
        f"p99 {percentile(per_frame, 0.99):.2f} ms from the durability of each push's own "
        "version (every push, book and trades)"
    )
    server_p99 = percentile(handed, 0.99)
    print(
        f"          p50 {percentile(handed, 0.5):.2f} ms, p99 {server_p99:.2f} ms "
        "from each commit's durability to the end of the write round that carries it (the "
        f"server's part: every one of the {n} sockets written; the {len(handed)} commits "
        "durable inside the window)"
    )

    # the floor: a bare broadcast of the same two pushes, as many book pushes per second per
    # connection as the exchange just sent, timed from the start of each round
    sampled_seconds = timed["seconds"] * SAMPLE
    book_rounds = sum(1 for stream, _, _ in timed["arrivals"] if stream % 2 == 0)
    floor_rate = max(book_rounds / sampled_seconds, 1.0)
    floor, _ = measure(
        ["--mode", "bare-timed", "--rate", str(floor_rate)],
        args.port + 4,
        n,
        args.seconds,
        sample=SAMPLE,
    )
    floor_ms = [(at - stamp) / 1e6 for stream, stamp, at in floor["arrivals"] if stream % 2 == 0]
    floor_p50, floor_p99 = percentile(floor_ms, 0.5), percentile(floor_ms, 0.99)
    print(
        f"floor:    p50 {floor_p50:.2f} ms, p99 {floor_p99:.2f} ms from the start of a round to "
        f"its book push arriving, for a bare picows broadcast of the same two pushes at "
        f"{floor_rate:,.0f} rounds/s to {n} connections"
    )
    return {
        "paced_deliveries_per_s": round(paced),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "server_p99_ms": round(server_p99, 2),
        "floor_p50_ms": round(floor_p50, 2),
        "floor_p99_ms": round(floor_p99, 2),
    }


def memory(args: argparse.Namespace) -> dict[str, Any]:
    server = spawn("--role", "server", "--mode", "idle", "--port", str(args.port + 3))
    expect(server, "ready")
    time.sleep(0.5)
    before = rss_kib(server.pid)
    idle = spawn(
        "--role",
        "client",
        "--mode",
        "idle",
        "--port",
        str(args.port + 3),
        "--connections",
        str(args.idle_connections),
        "--seconds",
        "0.5",
    )
    expect(idle, "connected")
    time.sleep(1.0)
    after = rss_kib(server.pid)
    tell(idle)
    expect(idle, "{")
    tell(idle)
    idle.wait(timeout=60)
    tell(server)
    server.wait(timeout=60)
    per_conn = (after - before) / args.idle_connections
    print(
        f"memory:   {per_conn:.1f} KiB per idle connection "
        f"({args.idle_connections} connections, RSS {before} -> {after} KiB)"
    )
    return {"kib_per_conn": round(per_conn, 1)}


if __name__ == "__main__":
    main()
