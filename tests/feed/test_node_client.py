"""The JavaScript integration example of the original page, run by Node.js with npm's ``ws``,
works against our server unchanged."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from openperps.runtime.app import Exchange
from tests.feed.test_server import ALICE, trade

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_client() -> Path:
    """Installs the pinned ``ws`` package once (npm registry); fails under CI if it cannot."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js and npm are needed for this test")
        pytest.skip("Node.js and npm are not installed")
    if not (NODE_DIR / "node_modules" / "ws").exists():
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            check=False,
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            message = f"npm install failed: {done.stderr[-500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return NODE_DIR / "kana_client.js"


async def test_the_kana_javascript_example_gets_snapshots_and_pushes(
    exchange: Exchange, node_client: Path
) -> None:
    url = f"ws://127.0.0.1:{exchange.feed.port}/ws/"
    process = await asyncio.create_subprocess_exec(
        "node",
        str(node_client),
        url,
        ALICE,
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines = [json.loads(await asyncio.wait_for(process.stdout.readline(), 10)) for _ in range(2)]
    assert {line["message"] for line in lines} == {"order_history", "trade_history"}
    assert all(line["data"] == [] for line in lines)
    await trade(exchange)
    pushes = [json.loads(await asyncio.wait_for(process.stdout.readline(), 10)) for _ in range(2)]
    await asyncio.wait_for(process.wait(), 10)
    assert process.stderr is not None
    assert process.returncode == 0, await process.stderr.read()
    by_topic = {p["message"]: p["data"] for p in pushes}
    assert by_topic["order_history"][0]["status"] == "Filled"
    assert by_topic["trade_history"][0]["fee"] == "0.014"
