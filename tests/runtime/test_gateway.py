"""Scale-out end to end: `serve --bus nats://...` on PostgreSQL and two `gateway` processes.

A client on a gateway gets the same pushes, byte for byte, as a client on the engine's own
feed; a gateway killed and started again serves a client resuming with ``since_version``
every change it missed, once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from openperps.client import Client
from openperps.signing import PrivateKey
from tests.bus.helpers import nats_or_skip, unique_stream
from tests.runtime.test_demo import free_port
from tests.store.helpers import postgres_or_skip

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.slow]

OPENPERPS = [sys.executable, "-m", "openperps.cli.main"]
MARKET = "1338"
WAIT_S = 30.0  # the longest any step may take before the test gives up


class Deployment:
    """One PostgreSQL schema and one stream: the engine and its gateways, as processes."""

    def __init__(self, tmp_path: Path, dsn: str, nats_url: str, stream: str, subject: str):
        self.tmp_path = tmp_path
        self.db = f"{dsn}?schema=test_gw_{uuid.uuid4().hex[:12]}"
        self.nats_url = nats_url
        self.bus = ["--nats-stream", stream, "--nats-subject", subject]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api_port = free_port()
        self.ws_port = free_port()

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OPENPERPS_LOG_LEVEL": "WARNING"}
        with (self.tmp_path / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [*OPENPERPS, *args], cwd=self.tmp_path, env=env, stdout=log, stderr=log
            )
        self.processes.append(process)
        return process

    def output(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    async def start_engine(self) -> None:
        process = self.spawn(
            "serve",
            [
                "serve",
                "--db",
                self.db,
                "--bus",
                self.nats_url,
                *self.bus,
                "--ws-port",
                str(self.ws_port),
                "--api-port",
                str(self.api_port),
                "--oracle-interval",
                "3600",  # one index price at start, then only what the test does
            ],
        )
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(WAIT_S):
                while True:
                    assert process.poll() is None, self.output("serve")
                    try:
                        if (await http.get(f"http://127.0.0.1:{self.api_port}/health")).is_success:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)

    async def start_gateway(self, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        process = self.spawn(
            name,
            [
                "gateway",
                "--db",
                self.db,
                "--nats",
                self.nats_url,
                *self.bus,
                "--ws-port",
                str(port),
                *extra,
            ],
        )
        async with asyncio.timeout(WAIT_S):
            while True:
                assert process.poll() is None, self.output(name)
                try:
                    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/"):
                        return process, port
                except OSError:
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        schema = self.db.rsplit("schema=", 1)[1]
        conn = await asyncpg.connect(self.db.split("?")[0])
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


class Subscriber:
    """One connection, one subscription; keeps every frame's bytes."""

    def __init__(self, port: int, request: dict[str, Any]) -> None:
        self.port = port
        self.request = request
        self.frames: list[bytes] = []
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Subscriber:
        ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws/", max_size=None)
        await ws.send(json.dumps({**self.request, "id": 1}))
        self._task = asyncio.create_task(self._read(ws))
        await self.until(lambda: bool(self.frames))  # the acknowledgement
        return self

    async def _read(self, ws: Any) -> None:
        try:
            async with ws:
                while True:
                    self.frames.append(await ws.recv(decode=False))
        except websockets.ConnectionClosed:
            self.closed = True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def pushes(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.frames]

    @property
    def version(self) -> int:
        return max((p.get("transaction_version", 0) for p in self.pushes()), default=0)

    def records(self) -> list[Any]:
        """A live topic's records (one per push), in order."""
        return [push["data"] for push in self.pushes() if "data" in push]

    async def until(self, condition: Any) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await asyncio.sleep(0.01)


def subscriptions(maker: str, taker: str) -> dict[str, dict[str, Any]]:
    return {
        "book": {"topic": "orderbook", "market_id": MARKET},
        "book_deltas": {"topic": "orderbook", "market_id": MARKET, "mode": "delta"},
        "trades": {"topic": "recent_trades", "market_id": MARKET},
        "maker_orders": {"topic": "live_order_history", "address": maker},
        "taker_orders": {"topic": "live_order_history", "address": taker},
        "taker_fills": {"topic": "live_trade_history", "address": taker},
        "taker_positions": {"topic": "positions", "address": taker},
        "maker_open": {"topic": "open_orders", "address": maker},
    }


LIVE = ("maker_orders", "taker_orders", "taker_fills")


async def reached(client: Subscriber, version: int) -> None:
    """Wait until the connection has a push at ``version`` or later (a live record carries
    the version of its row, a list state the version it was built at)."""
    await client.until(lambda: client.version >= version)


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    dsn = await postgres_or_skip()
    nats_url = await nats_or_skip()
    async with unique_stream(nats_url) as (stream, subject):
        deployed = Deployment(tmp_path, dsn, nats_url, stream, subject)
        try:
            yield deployed
        finally:
            await deployed.stop()


async def test_gateways_push_what_the_engine_pushes_and_a_restart_loses_nothing(
    deployment: Deployment,
) -> None:
    await deployment.start_engine()
    url = f"http://127.0.0.1:{deployment.api_port}"
    async with (
        Client(url, PrivateKey.generate()) as maker,
        Client(url, PrivateKey.generate()) as taker,
    ):
        for trader in (maker, taker):
            await trader.mint_test_tokens("1000")
            await trader.deposit("1000")
        await maker.place_limit_order(MARKET, long=False, size="1", price="5.300", leverage=5)

        _a, port_a = await deployment.start_gateway("gateway-a")
        http_b = free_port()
        limits = deployment.tmp_path / "gateway.toml"
        limits.write_text("[feed]\nmax_subscriptions = 1\n")  # each client here takes one
        process_b, port_b = await deployment.start_gateway(
            "gateway-b", "--http-port", str(http_b), "--config", str(limits)
        )
        feeds = {"engine": deployment.ws_port, "a": port_a, "b": port_b}
        requests = subscriptions(maker.profile, taker.profile)
        clients = {
            (feed, name): await Subscriber(port, request).start()
            for feed, port in feeds.items()
            for name, request in requests.items()
        }

        async def settled(version: int, feeds: tuple[str, ...]) -> None:
            """Every feed has pushed ``version`` before the next command (so each side pushes
            each command on its own, as the engine does); every command here moves the book."""
            for feed in feeds:
                await reached(clients[feed, "book"], version)

        actions = [
            (maker, dict(long=False, size="2", price="5.200")),
            (maker, dict(long=True, size="1", price="4.900")),
            (taker, dict(long=True, size="1", price="5.300")),  # takes 5.200 and 5.300 levels
            (taker, dict(long=True, size="0.5", price=None)),
            (maker, dict(long=False, size="3", price="5.250")),
            (taker, dict(long=False, size="0.5", price="4.900")),  # closes against the bid
        ]

        async def act(trader: Client, order: dict[str, Any]) -> int:
            if order["price"] is None:
                done = await trader.place_market_order(
                    MARKET, long=order["long"], size=order["size"], leverage=5
                )
            else:
                done = await trader.place_limit_order(MARKET, leverage=5, **order)
            return int(done["transactionVersion"])

        for trader, order in actions:
            await settled(await act(trader, order), ("engine", "a", "b"))

        for name in requests:
            engine = clients["engine", name].frames
            assert len(engine) > 1, name
            assert clients["a", name].frames == engine, name
            assert clients["b", name].frames == engine, name

        # gateway A dies; trading goes on; A starts again and clients resume where they were
        deployment.processes[1].kill()
        for name in LIVE:
            gone = clients["a", name]
            await gone.until(lambda gone=gone: gone.closed)
        more = [
            (maker, dict(long=False, size="1", price="5.400")),
            (taker, dict(long=True, size="2", price=None)),
            (taker, dict(long=False, size="1", price=None)),
        ]
        for trader, order in more:
            await settled(await act(trader, order), ("engine", "b"))
        _a, port_a = await deployment.start_gateway("gateway-a")
        resumed = {
            name: await Subscriber(
                port_a, {**requests[name], "since_version": clients["a", name].version}
            ).start()
            for name in LIVE
        }
        for trader, order in more[:2]:
            version = await act(trader, order)
            await settled(version, ("engine", "b"))
        assert process_b.poll() is None
        for name in LIVE:
            on_engine = clients["engine", name]
            await reached(resumed[name], on_engine.version)
            before, after = clients["a", name].records(), resumed[name].records()
            assert before and after, name  # some before the kill, some missed while down
            assert before + after == on_engine.records(), name  # nothing lost, nothing twice
            assert clients["b", name].frames == on_engine.frames, name
        # gateway B's operator endpoint: following, at the engine's version, its clients counted
        newest = max(client.version for client in clients.values())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_b}") as http:
            health = await http.get("/health")
            assert health.status_code == 200
            assert health.json()["data"]["following"] is True
            assert health.json()["data"]["version"] >= newest
            metrics = (await http.get("/metrics")).text
            assert f"openperps_feed_connections {len(requests)}\n" in metrics
            assert "openperps_gateway_holes_unfilled_total 0\n" in metrics
            # push latency, from the engine's durable time carried by the stream
            (count,) = re.findall(r"^openperps_feed_push_latency_ms_count (\d+)$", metrics, re.M)
            (total,) = re.findall(r"^openperps_feed_push_latency_ms_sum (\S+)$", metrics, re.M)
            assert int(count) > 0
            # milliseconds on one machine's clock: a wrong unit or a lost stamp shows here
            assert 0 < float(total) / int(count) < 1000
            assert 'openperps_build_info{version="' in metrics
            assert (await http.get("/nothing")).status_code == 404
            assert (await http.post("/metrics")).status_code == 405
            # the REST reads: the engine's answers, from the gateway's own read models
            for path, params in (
                ("/getOrderHistory", {"userAddress": taker.wallet}),
                ("/getPositions", {"userAddress": taker.wallet}),
                ("/getOpenOrders", {"userAddress": maker.wallet}),
                ("/getFills", {"userAddress": taker.wallet}),
                ("/getProfileBalanceSnapshot", {"userAddress": maker.wallet}),
                ("/getAllTrades", {"marketId": MARKET}),
                ("/getMarketPrice", {"marketId": MARKET}),
            ):
                here = await http.get(path, params=params)
                there = await http.get(f"{url}{path}", params=params)
                assert here.json()["success"] is True and here.json()["data"], path
                assert here.json() == there.json(), path
                # at the same version, and saying so
                header = "X-Transaction-Version"
                assert here.headers[header] == there.headers[header], path
            refused = await http.post("/placeLimitOrder", json={})
            assert refused.status_code == 404, "actions go to the exchange"
        # gateway B took its feed limits from the [feed] table
        async with websockets.connect(f"ws://127.0.0.1:{port_b}/ws/") as ws:
            for market in ("1338", "1339"):
                await ws.send(json.dumps({"topic": "recent_trades", "market_id": market, "id": 1}))
            codes: list[str | None] = []
            while len(codes) < 2:
                answer = json.loads(await ws.recv())
                if "id" in answer:
                    codes.append(answer.get("error", {}).get("code"))
            assert codes == [None, "too_many_subscriptions"]
        # the engine's side: what NATS acknowledged, nothing dropped
        async with httpx.AsyncClient(base_url=url) as http:
            engine_metrics = (await http.get("/metrics")).text
        assert "openperps_bus_dropped_total 0\n" in engine_metrics
        published = engine_metrics.split("\nopenperps_bus_published_version ", 1)[1]
        assert int(published.split("\n", 1)[0]) >= newest
        for client in [*clients.values(), *resumed.values()]:
            await client.close()


async def test_a_second_engine_on_the_same_log_is_refused_in_one_line(
    deployment: Deployment,
) -> None:
    """Scaling out by running `serve` again, where `gateway` was meant: the second writer
    is refused at start, and the first goes on."""
    await deployment.start_engine()
    second = subprocess.run(
        [
            *OPENPERPS,
            "serve",
            "--db",
            deployment.db,
            "--ws-port",
            str(free_port()),
            "--api-port",
            str(free_port()),
        ],
        cwd=deployment.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert "2310" in lines[0] and "one log has one writer" in lines[0]
    async with httpx.AsyncClient() as http:
        health = await http.get(f"http://127.0.0.1:{deployment.api_port}/health")
        assert health.status_code == 200
