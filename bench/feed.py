"""Feed benchmark: deliveries per second, push latency, and memory per idle connection.

Three server processes are started in turn on 127.0.0.1, and a load-generating client runs in
another process (``--role client``), so neither side's event loop slows the other:

1. throughput: 1 000 connections subscribed to a market's ``orderbook`` and ``recent_trades``
   while the exchange matches orders as fast as it can; the same client against a bare picows
   server that broadcasts one pre-encoded frame to every connection is the baseline;
2. latency: the same 1 000 subscribers while commands make about 5 000 events/s; the server
   records when each version became durable (wall clock), a sample of connections record
   when each push arrived;
3. memory: the server's resident set before and after 10 000 idle connections.

Prints figures, then as its last line one JSON object:
{"bench": "feed", "deliveries_per_s": N, "baseline_per_s": N, "ratio": R, "p50_ms": X,
 "p99_ms": Y, "kib_per_conn": Z}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

ROOT = Path(__file__).resolve().parent.parent
MARKET = 1338
ALICE = "0x" + "a1" * 32
BOB = "0x" + "b2" * 32


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- servers ----------------------------------------------------------------------------------


async def serve_exchange(port: int, rate: float, durable_log: Path | None, seconds: float) -> None:
    """The real thing: log, sequencer, read models, feed; a driver trading at ``rate``
    commands per second (0: as fast as it can)."""
    from openperps.core import commands as c
    from openperps.feed.server import ServerLimits
    from openperps.runtime.app import Exchange, Settings

    with tempfile.TemporaryDirectory() as tmp:
        exchange = Exchange(
            Settings(
                db=str(Path(tmp) / "events.sqlite3"),
                ws_port=port,
                # every simulated client comes from 127.0.0.1
                server_limits=ServerLimits(connections_per_ip=1_000_000),
            )
        )
        await exchange.start()
        durable: dict[int, int] = {}
        if durable_log is not None:
            exchange.bus.subscribe(
                lambda batch: durable.__setitem__(batch.last_version, time.time_ns())
            )
        seq = exchange.sequencer
        await seq.execute(c.Mint(timestamp=0, profile=ALICE, amount=10**15))
        await seq.execute(c.Deposit(timestamp=0, profile=ALICE, amount=10**15))
        await seq.execute(c.Mint(timestamp=0, profile=BOB, amount=10**15))
        await seq.execute(c.Deposit(timestamp=0, profile=BOB, amount=10**15))
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # wait until the client is connected
        stop_at = time.monotonic() + seconds
        i = 0
        interval = 1.0 / rate if rate else 0.0
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            i += 1
            price = 7_000 + i % 20
            # a resting order, then a taker that trades against it: book and trade pushes
            await seq.execute(
                c.PlaceLimitOrder(
                    timestamp=0,
                    profile=BOB,
                    market_id=MARKET,
                    trade_side=False,
                    direction=False,
                    size=100,
                    price=price,
                    leverage=10,
                )
            )
            await seq.execute(
                c.PlaceMarketOrder(
                    timestamp=0,
                    profile=ALICE,
                    market_id=MARKET,
                    trade_side=True,
                    direction=False,
                    size=100,
                    leverage=10,
                )
            )
            if interval:
                next_at += 2 * interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 20 == 0:
                await asyncio.sleep(0)
        print(f"events {seq.engine.version}", flush=True)
        if durable_log is not None:
            durable_log.write_text(json.dumps(durable))
        await asyncio.to_thread(sys.stdin.readline)
        await exchange.stop()


async def serve_bare(port: int, seconds: float) -> None:
    """Baseline: picows broadcasting the same bytes to every connection, nothing else."""
    transports: set[WSTransport] = set()

    class Listener(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            transports.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            transports.discard(transport)

    server = await ws_create_server(lambda request: Listener(), "127.0.0.1", port)
    frame = json.dumps(
        {
            "message": "orderbook",
            "data": [
                {
                    "market_id": "1338",
                    "price": 7.001,
                    "size": "1",
                    "is_ask": True,
                    "last_updated": 1,
                    "transaction_version": 1,
                }
            ],
            "transaction_version": 1,
        }
    ).encode()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        for transport in list(transports):
            transport.send(WSMsgType.TEXT, frame)
        await asyncio.sleep(0)
    print("events 0", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    server.close()


async def serve_idle(port: int) -> None:
    from openperps.feed.server import ServerLimits
    from openperps.runtime.app import Exchange, Settings

    with tempfile.TemporaryDirectory() as tmp:
        exchange = Exchange(
            Settings(
                db=str(Path(tmp) / "events.sqlite3"),
                ws_port=port,
                # every simulated client comes from 127.0.0.1
                server_limits=ServerLimits(connections_per_ip=1_000_000),
            )
        )
        await exchange.start()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await exchange.stop()


# -- client -------------------------------------------------------------------------------------


async def client(
    port: int, connections: int, seconds: float, sample: int, subscribe: bool
) -> dict[str, Any]:
    received = 0
    arrivals: list[tuple[int, int]] = []  # (version, ns) of sampled connections

    class Listener(WSListener):
        def __init__(self, sampled: bool) -> None:
            self.sampled = sampled

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            nonlocal received
            received += 1
            if self.sampled:
                data = frame.get_payload_as_bytes()
                at = time.time_ns()
                start = data.rfind(b'"transaction_version":')
                if start >= 0:
                    end = start + 22
                    stop = end
                    while stop < len(data) and data[stop : stop + 1].isdigit():
                        stop += 1
                    arrivals.append((int(data[end:stop]), at))

    url = f"ws://127.0.0.1:{port}/ws/"
    transports = []
    for i in range(connections):
        transport, _ = await ws_connect(lambda i=i: Listener(i < sample), url)
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
    arrivals.clear()
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    result = {"received": received, "seconds": elapsed, "arrivals": arrivals}
    for transport in transports:
        transport.disconnect()
    return result


# -- orchestration ------------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
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
) -> tuple[dict[str, Any], str]:
    server = spawn(
        "--role", "server", "--port", str(port), "--seconds", str(seconds + 1), *server_args
    )
    expect(server, "ready")
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
    )
    expect(load, "connected")
    tell(server)
    tell(load)
    assert load.stdout is not None
    result = json.loads(expect(load, "{"))
    events = expect(server, "events")
    tell(server)
    server.wait(timeout=60)
    load.wait(timeout=60)
    return result, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--role", choices=["main", "server", "client"], default="main")
    parser.add_argument("--mode", choices=["exchange", "bare", "idle"], default="exchange")
    parser.add_argument("--port", type=int, default=18870)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--durable-log", type=Path)
    args = parser.parse_args()

    if args.role == "server":
        import uvloop

        if args.mode == "exchange":
            uvloop.run(serve_exchange(args.port, args.rate, args.durable_log, args.seconds))
        elif args.mode == "bare":
            uvloop.run(serve_bare(args.port, args.seconds))
        else:
            uvloop.run(serve_idle(args.port))
        return
    if args.role == "client":
        import uvloop

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        result = uvloop.run(
            client(
                args.port,
                args.connections,
                args.seconds,
                args.sample,
                subscribe=args.mode != "idle",
            )
        )
        print(json.dumps(result), flush=True)
        return

    n = args.connections
    feed, events = measure(["--mode", "exchange"], args.port, n, args.seconds)
    deliveries = feed["received"] / feed["seconds"]
    print(f"exchange: {deliveries:,.0f} deliveries/s to {n} subscribers ({events})")
    bare, _ = measure(["--mode", "bare"], args.port + 1, n, args.seconds)
    baseline = bare["received"] / bare["seconds"]
    print(f"baseline: {baseline:,.0f} deliveries/s (bare picows broadcast of the same bytes)")

    with tempfile.TemporaryDirectory() as tmp:
        durable_log = Path(tmp) / "durable.json"
        # two commands make about 6 events; 5 000 events/s is about 1 650 commands/s
        timed, events = measure(
            ["--mode", "exchange", "--rate", "1650", "--durable-log", str(durable_log)],
            args.port + 2,
            n,
            args.seconds,
            sample=50,
        )
        durable = {int(k): v for k, v in json.loads(durable_log.read_text()).items()}
    latencies = sorted(
        (at - durable[version]) / 1e6 for version, at in timed["arrivals"] if version in durable
    )
    total_events = int(events.split()[1])
    print(
        f"latency:  {len(latencies)} pushes sampled at about "
        f"{total_events / (args.seconds + 1):,.0f} events/s"
    )
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    print(f"          p50 {p50:.2f} ms, p99 {p99:.2f} ms (durable -> received)")

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
    idle.wait(timeout=60)
    tell(server)
    server.wait(timeout=60)
    per_conn = (after - before) / args.idle_connections
    print(
        f"memory:   {per_conn:.1f} KiB per idle connection "
        f"({args.idle_connections} connections, RSS {before} -> {after} KiB)"
    )
    print(
        json.dumps(
            {
                "bench": "feed",
                "deliveries_per_s": round(deliveries),
                "baseline_per_s": round(baseline),
                "ratio": round(deliveries / baseline, 3) if baseline else None,
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "kib_per_conn": round(per_conn, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
