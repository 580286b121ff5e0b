"""The trading commands driven as a user would, against a running `openperps serve`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime.test_demo import free_port


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A plain `openperps serve`; its oracle walk starts APT near 5.20, so the orders of the
    test trade around that price."""
    home = tmp_path_factory.mktemp("serve")
    ws_port, api_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openperps.cli.main",
            "serve",
            "--ws-port",
            str(ws_port),
            "--api-port",
            str(api_port),
            "--log-level",
            "WARNING",
        ],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
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
    env = {
        **os.environ,
        "OPENPERPS_URL": url,
        "OPENPERPS_WS_URL": f"ws://127.0.0.1:{ws_port}/ws/",
        "COLUMNS": "200",
    }
    yield env
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


def cli(
    env: dict[str, str], *args: str, key: Path | None = None
) -> subprocess.CompletedProcess[str]:
    extra = ["--key", str(key)] if key is not None else []
    return subprocess.run(
        [sys.executable, "-m", "openperps.cli.main", *args, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_user_session_from_the_command_line(exchange: dict[str, str], tmp_path: Path) -> None:
    maker_key, user_key = tmp_path / "maker.json", tmp_path / "user.json"
    for key in (maker_key, user_key):
        made = cli(exchange, "keygen", key=key)
        assert made.returncode == 0 and "wallet:" in made.stdout
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = cli(exchange, "keygen", key=user_key)
    assert again.returncode == 1 and "error 2111" in again.stderr
    assert cli(exchange, "faucet", "1000", key=maker_key).returncode == 0
    minted = cli(exchange, "faucet", "600", key=user_key)
    assert minted.returncode == 0 and "walletBalance: 600" in minted.stdout
    account = cli(exchange, "account", key=user_key)
    assert "walletBalance: 600" in account.stdout and "freeBalance: 0" in account.stdout
    too_much = cli(exchange, "deposit", "600.5", key=user_key)
    assert too_much.returncode == 1 and "error 2027" in too_much.stderr
    negative = cli(exchange, "deposit", "-1", key=user_key)  # an amount, not an option
    assert negative.returncode == 1 and "error 2018" in negative.stderr, negative.stderr
    assert "more than 0" in negative.stderr
    assert cli(exchange, "deposit", "1000", key=maker_key).returncode == 0
    deposited = cli(exchange, "deposit", "500", key=user_key)
    assert deposited.returncode == 0 and "walletBalance: 100" in deposited.stdout
    account = cli(exchange, "account", key=user_key)
    assert "freeBalance: 500" in account.stdout and "profile:" in account.stdout
    assert "walletBalance: 100" in account.stdout
    rest = cli(
        exchange, "order", "limit", "1338", "short", "20", "5.300", "--leverage", "5", key=maker_key
    )
    assert rest.returncode == 0 and "Open: 20 @ 5.3" in rest.stdout
    taken = cli(exchange, "order", "market", "1338", "long", "5", "--leverage", "10", key=user_key)
    assert taken.returncode == 0 and "fill 5 @ 5.3" in taken.stdout
    assert taken.stdout.count("fill ") == 1, "the user's side of the fill, not the maker's"
    order_id = rest.stdout.split("order ")[1].split()[0]
    resting = cli(exchange, "orders", "APT-USD", key=maker_key)
    row = next(line for line in resting.stdout.splitlines() if order_id in line)
    assert "open short" in row and "5.3" in row and "│ 20 " in row and "│ 15 " in row, row
    assert "no open orders" in cli(exchange, "orders", "BTC-USD", key=maker_key).stdout
    mine = cli(exchange, "fills", key=user_key)
    row = next(line for line in mine.stdout.splitlines() if "1338" in line)
    assert "open long" in row and "│ 5 " in row and "5.3" in row, mine.stdout
    assert "open short" in cli(exchange, "fills", "--limit", "1", key=maker_key).stdout
    assert cli(exchange, "fills", "--limit", "0", key=user_key).returncode == 2
    newcomer = tmp_path / "newcomer.json"
    assert cli(exchange, "keygen", key=newcomer).returncode == 0
    assert "no fills" in cli(exchange, "fills", key=newcomer).stdout
    assert "no open positions" in cli(exchange, "positions", key=newcomer).stdout
    table = cli(exchange, "positions", key=user_key)
    assert "1338" in table.stdout and "long" in table.stdout and "4.893" in table.stdout
    # a market by its symbol, in any case
    set_tp = cli(exchange, "tp", "apt-usd", "long", "6", key=user_key)
    assert set_tp.returncode == 0 and "long take-profit: 6" in set_tp.stdout
    typo = cli(exchange, "sl", "1338", "long", "abc", key=user_key)
    assert typo.returncode == 1 and "PRICE is not a decimal number" in typo.stderr, typo.stderr
    assert "│ 6 " in cli(exchange, "positions", key=user_key).stdout
    profile = account.stdout.split("profile:")[1].split()[0]
    pushed = cli(exchange, "subscribe", "positions", "--address", profile, "--json", "--count", "1")
    record = json.loads(pushed.stdout.splitlines()[0])
    assert record["message"] == "positions" and record["data"][0]["tp"] == "6"
    # --mine: the key file's own account, without copying its profile address
    own = cli(exchange, "subscribe", "positions", "--mine", "--json", "--count", "1", key=user_key)
    (position,) = json.loads(own.stdout.splitlines()[0])["data"]
    assert position["address"] == profile and position["tp"] == "6"
    no_market = cli(exchange, "subscribe", "recent_trades", "--count", "1")
    assert no_market.returncode == 1 and "needs --market" in no_market.stderr
    ladder = cli(exchange, "book", "APT-USD", "--count", "1")
    assert ladder.returncode == 0 and "5.3" in ladder.stdout and "market APT-USD" in ladder.stdout
    by_symbol = cli(
        exchange, "subscribe", "orderbook", "--market", "apt-usd", "--json", "--count", "1"
    )
    assert json.loads(by_symbol.stdout.splitlines()[0])["data"][0]["market_id"] == "1338"
    # the id `orders` lists is the one `order cancel` takes
    cancelled = cli(exchange, "order", "cancel", "1338", order_id, key=maker_key)
    assert cancelled.returncode == 0, cancelled.stderr
    # the same id again: the exchange refuses that part of the batch, and the command fails
    again = cli(exchange, "order", "cancel", "1338", order_id, key=maker_key)
    assert again.returncode == 1 and "refused 2007" in again.stderr, again
    assert "no open orders" in cli(exchange, "orders", key=maker_key).stdout
    refused = cli(exchange, "withdraw", "100000", key=user_key)
    assert refused.returncode == 1 and "error 1010" in refused.stderr
    withdrawn = cli(exchange, "withdraw", "10", key=user_key)
    assert withdrawn.returncode == 0 and "walletBalance: 110" in withdrawn.stdout
    no_market = cli(exchange, "order", "market", "DOGE-USD", "long", "5", key=user_key)
    assert no_market.returncode == 1 and "error 1003" in no_market.stderr
    assert "APT-USD (1338)" in no_market.stderr
    bad_side = cli(exchange, "order", "market", "1338", "up", "5", key=user_key)
    assert bad_side.returncode == 2 and "long or short" in bad_side.stderr
    no_key = cli(exchange, "account", key=tmp_path / "missing.json")
    assert no_key.returncode == 1 and "keygen" in no_key.stderr
    unknown = cli(exchange, "subscribe", "nonsense", "--count", "1")
    assert unknown.returncode == 1 and "unknown_topic" in unknown.stderr
