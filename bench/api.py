"""REST benchmark: signed orders per second from one client process, with latency from
request to durable answer; the same client hammering ``GET /health`` is the baseline.

Starts ``openperps serve`` (no simulated traders) on 127.0.0.1 in its own process; the client
keeps ``--concurrency`` requests in flight over keep-alive connections.

Then a paced run: orders at a fixed rate (``--paced-rate``, 200/s) on their own tasks, so the
client is not the bottleneck and the latency is the server's.

``--subscribers N`` first connects N feed clients from another process (``bench/feed.py``'s
load client), each subscribed to the market's ``orderbook`` and ``recent_trades``, so every
order the bench places is also fanned out to N sockets while its answer is on its way: the
order entry of a venue with a busy feed.

Last line: {"bench": "api", "orders_per_s": N, "baseline_per_s": N, "ratio": R,
            "p50_ms": X, "p99_ms": Y, "paced_rate": N, "paced_p50_ms": X, "paced_p99_ms": Y,
            "subscribers": N}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from openperps.signing import PrivateKey, sign_request
from percentiles import percentile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(
    url: str, seconds: float, concurrency: int, paced_rate: float
) -> tuple[float, float, list[float], list[float]]:
    key = PrivateKey.generate()
    # idle connections are dropped before uvicorn's own keep-alive timeout (5 s) closes them
    # under a request that reuses one (the paced run leaves some idle for seconds)
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

        async def signed(path: str, body: dict[str, object]) -> httpx.Response:
            data = json.dumps(body).encode()
            headers = sign_request(key, "POST", path, data, time.time_ns() // 1_000_000)
            headers["content-type"] = "application/json"
            return await http.post(path, content=data, headers=headers)

        assert (await signed("/mintTestTokens", {"amount": "100000"})).status_code == 200
        assert (await signed("/deposit", {"amount": "100000"})).status_code == 200

        async def health_worker(stop: float, counts: list[int]) -> None:
            while time.monotonic() < stop:
                response = await http.get("/health")
                assert response.status_code == 200
                counts[0] += 1

        counts = [0]
        stop = time.monotonic() + seconds
        await asyncio.gather(*(health_worker(stop, counts) for _ in range(concurrency)))
        baseline = counts[0] / seconds

        async def timed_order(n: int, into: list[float]) -> None:
            """One passive bid below the market, its request-to-durable-answer time kept."""
            started = time.perf_counter()
            response = await signed(
                "/placeLimitOrder",
                {
                    "marketId": "1338",
                    "tradeSide": True,
                    "direction": False,
                    "size": "0.1",
                    "price": f"{4 + n % 100 / 1000:.3f}",
                    "leverage": 20,
                },
            )
            into.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text

        latencies: list[float] = []
        sequence = [0]

        async def order_worker(stop: float) -> None:
            while time.monotonic() < stop:
                sequence[0] += 1
                await timed_order(sequence[0], latencies)

        stop = time.monotonic() + seconds
        await asyncio.gather(*(order_worker(stop) for _ in range(concurrency)))
        orders = len(latencies) / seconds

        # Flat out, the client process itself is saturated and its own queueing shows in the
        # tail. At a fixed rate well below that, each order goes out on time, on its own task,
        # and the figures are the server's: request to durable answer.
        paced: list[float] = []

        tasks = []
        begin = time.perf_counter()
        for n in range(int(paced_rate * seconds)):
            await asyncio.sleep(max(begin + n / paced_rate - time.perf_counter(), 0))
            tasks.append(asyncio.create_task(timed_order(n, paced)))
        await asyncio.gather(*tasks)
        return orders, baseline, latencies, paced


def subscribe(ws_port: int, connections: int) -> subprocess.Popen[str]:
    """``connections`` feed clients of the traded market, connected and subscribed, in a
    process of their own (killed when the bench is done)."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("feed.py")),
            "--role",
            "client",
            "--port",
            str(ws_port),
            "--connections",
            str(connections),
            "--seconds",
            "3600",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    while (line := process.stdout.readline()) and not line.startswith("connected"):
        pass
    if not line:
        raise RuntimeError("the feed clients did not connect")
    process.stdin.write("go\n")  # they count what they receive; nobody reads it
    process.stdin.flush()
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description="signed orders per second through REST")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--paced-rate", type=float, default=200.0, help="orders/s of the latency-only run"
    )
    parser.add_argument(
        "--subscribers", type=int, default=0, help="feed clients of the traded market"
    )
    args = parser.parse_args()
    api_port = free_port()
    ws_port = free_port()
    with tempfile.TemporaryDirectory() as home:
        config = Path(home) / "openperps.toml"
        # every feed client comes from 127.0.0.1
        config.write_text(f"[feed]\nconnections_per_ip = {max(args.subscribers, 64)}\n")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openperps.cli.main",
                "serve",
                "--api-port",
                str(api_port),
                "--ws-port",
                str(ws_port),
                "--log-level",
                "ERROR",
                "--oracle-interval",
                "60",
                # the bench measures how fast orders go through, not the venue's rate limits
                "--rest-actions-per-second",
                "0",
                "--rest-requests-per-second",
                "0",
                "--config",
                str(config),
            ],
            cwd=Path(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{api_port}"
        subscribers: subprocess.Popen[str] | None = None
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            if args.subscribers:
                subscribers = subscribe(ws_port, args.subscribers)
            orders, baseline, latencies, paced = asyncio.run(
                run(url, args.seconds, args.concurrency, args.paced_rate)
            )
        finally:
            if subscribers is not None:
                subscribers.kill()
                subscribers.wait(timeout=30)
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"orders:   {orders:,.0f} signed orders/s ({args.concurrency} in flight), "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (request -> durable answer)"
    )
    paced_p50, paced_p99 = percentile(paced, 0.5), percentile(paced, 0.99)
    print(
        f"paced:    {args.paced_rate:,.0f} orders/s, one task each: p50 {paced_p50:.2f} ms, "
        f"p99 {paced_p99:.2f} ms (the client has time to spare: the server's latency)"
    )
    print(f"baseline: {baseline:,.0f} GET /health per second")
    if args.subscribers:
        print(f"feed:     {args.subscribers:,} subscribers to the traded market throughout")
    print(
        json.dumps(
            {
                "bench": "api",
                "orders_per_s": round(orders),
                "baseline_per_s": round(baseline),
                "ratio": round(orders / baseline, 3),
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "paced_rate": args.paced_rate,
                "paced_p50_ms": round(paced_p50, 2),
                "paced_p99_ms": round(paced_p99, 2),
                "subscribers": args.subscribers,
            }
        )
    )


if __name__ == "__main__":
    main()
