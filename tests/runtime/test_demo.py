"""What `make run` starts (the same command and options, on free ports): from an empty
directory to every topic carrying data in 10 s."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

from openperps.runtime.sim import sim_profile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_sim_pushes_every_topic_within_ten_seconds(tmp_path: Path) -> None:
    ws_port, api_port = free_port(), free_port()
    env = {**os.environ, "OPENPERPS_LOG_LEVEL": "INFO"}  # what make run shows
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openperps.cli.main",
            "serve",
            "--sim",
            "--funding-interval",
            "120",
            "--ws-port",
            str(ws_port),
            "--api-port",
            str(api_port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        started = time.monotonic()
        async with httpx.AsyncClient() as http:
            while True:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    health = await http.get(f"http://127.0.0.1:{api_port}/health")
                    if health.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() - started < 30, "never became healthy"
                await asyncio.sleep(0.1)
        maker, trader = sim_profile("maker", 0, 7), sim_profile("taker", 0, 7)
        requests = [
            {"topic": "order_history", "address": trader},
            {"topic": "deposit_withdraw_history", "address": trader},
            {"topic": "trade_history", "address": trader},
            {"topic": "positions", "address": trader},
            {"topic": "open_orders", "address": maker},
            {"topic": "orderbook", "market_id": "1338"},
            {"topic": "recent_trades", "market_id": "1338"},
            {"topic": "live_funding_rate"},
            {"topic": "live_order_history", "address": maker},
            {"topic": "live_trade_history", "address": trader},
        ]
        with_data: set[str] = set()
        async with websockets.connect(f"ws://127.0.0.1:{ws_port}/ws/") as ws:
            for request in requests:
                await ws.send(json.dumps(request))
            deadline = time.monotonic() + 10
            while len(with_data) < 10 and time.monotonic() < deadline:
                try:
                    push = json.loads(await asyncio.wait_for(ws.recv(), 1))
                except TimeoutError:
                    continue
                if push.get("data"):
                    with_data.add(push["message"])
        assert with_data == {r["topic"] for r in requests}
        assert (tmp_path / "data" / "events.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        log.close()
    err = (tmp_path / "serve.log").read_text()
    assert process.returncode == 0, err
    assert "stopped; the log is flushed" in err
    # neither the simulated traders' HTTP requests nor feed connections are logged one by
    # one at the default level
    assert "HTTP Request" not in err, err[-2000:]
    assert "picows" not in err, err[-2000:]
    assert len(err.splitlines()) < 40, err[-2000:]
