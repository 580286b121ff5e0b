"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

The test starts `openperps serve --sim`, loads the page, checks that the ladder and the trades
update live and that the address view shows a position the test opened itself, and saves a
screenshot to artifacts/dashboard.png. Chromium comes from the machine (apt package
``chromium``); without it the test skips, and fails under CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openperps.signing import PrivateKey, profile_address, sign_request
from tests.runtime.test_demo import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is needed: apt-get install chromium")
        pytest.skip("Chromium is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("dashboard")
    api_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openperps.cli.main",
            "serve",
            "--sim",
            "--sim-rate",
            "40",
            "--oracle-interval",
            "0.5",
            "--ws-port",
            str(free_port()),
            "--api-port",
            str(api_port),
            "--log-level",
            "ERROR",
        ],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    yield url
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


def open_position(url: str) -> str:
    """A position of our own, opened through the API, to find in the address view."""
    key = PrivateKey.generate()

    def post(path: str, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        headers = sign_request(key, "POST", path, data, time.time_ns() // 1_000_000)
        response = httpx.post(url + path, content=data, headers=headers)
        assert response.status_code == 200, response.text

    post("/mintTestTokens", {"amount": "1000"})
    post("/deposit", {"amount": "1000"})
    for _ in range(50):  # the simulated makers quote within a second or two
        try:
            post(
                "/placeMarketOrder",
                {
                    "marketId": "1338",
                    "tradeSide": True,
                    "direction": False,
                    "size": "3",
                    "leverage": 5,
                },
            )
            break
        except AssertionError:
            time.sleep(0.2)
    return profile_address(key.address)


def test_the_dashboard_updates_live_and_shows_an_address(demo: str) -> None:
    executable = _need_chromium()
    from playwright.sync_api import sync_playwright

    profile = open_position(demo)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{demo}/?address={profile}")
        page.wait_for_selector("#ladder td.ask", timeout=15_000)
        page.wait_for_selector("#trades td", timeout=15_000)
        # both sides quoted (until the simulated makers have, the ladder says "spread -"). The
        # market is live, so a side can empty again at any moment: the ladder's text is taken
        # in the same browser step that sees both sides, not read a second time after it.
        first_book: str = page.wait_for_function(
            """() => {
                const text = document.getElementById('ladder').innerText;
                return /spread \\d/.test(text) ? text : null;
            }""",
            timeout=15_000,
        ).json_value()
        first_trades = page.inner_text("#trades")
        # the spread in the market's own decimals (APT-USD: ticks of 0.001)
        assert re.search(r"spread \d+\.\d{3}\b(?!\d)", first_book), first_book
        changed = False
        for _ in range(60):  # the market is live: ladder or trades change within seconds
            page.wait_for_timeout(250)
            if (
                page.inner_text("#trades") != first_trades
                or page.inner_text("#ladder") != first_book
            ):
                changed = True
                break
        assert changed, "neither the ladder nor the trades updated"
        page.wait_for_function(
            "document.querySelector('#usertable').innerText.includes('long')", timeout=15_000
        )
        account = page.inner_text("#usertable")
        assert "1338" in account and "3" in account
        page.click("button[data-tab=order_history]")
        assert "open long" in page.inner_text("#usertable")  # order_type 1, named
        names = page.evaluate("[1, 6, 12, 13, 0].map(orderTypeName)")
        assert names == ["open long", "decrease short", "liquidation short", 13, 0]
        page.click("button[data-tab=positions]")
        assert not re.search(r"\.\d{9}", account), "long decimals are cut to 8 places"
        # the feed's 28-digit entry price (Kana's own example), as the table shows it
        long_entry = "5.8370434782608695652173913043"
        assert page.evaluate(f"shortened('{long_entry}')") == "5.83704347"
        assert page.evaluate("shortened('5.2')") == "5.2"
        assert page.evaluate("shortened(12)") == 12
        # the depth chart centres on the mid: a bid far below the market does not stretch it
        far_bid = page.evaluate(
            "depthRange([{price: 5.33}, {price: 5.32}, {price: 5.0}],"
            " [{price: 5.36}, {price: 5.35}, {price: 5.34}])"
        )
        assert [round(p, 6) for p in far_bid] == [5.31, 5.36]
        one_level = page.evaluate("depthRange([{price: 5.33}], [{price: 5.34}])")
        assert [round(p, 6) for p in one_level] == [5.32, 5.35]  # three half-spreads
        assert page.inner_text("#status") == "live"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
