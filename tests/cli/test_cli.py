"""The command line as a user meets it: listings, and one-line errors for bad configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import openperps
from openperps.cli.main import app

OPENPERPS = [sys.executable, "-m", "openperps.cli.main"]


def test_markets_lists_the_four_markets_for_either_network() -> None:
    result = CliRunner().invoke(app, ["markets"])
    assert result.exit_code == 0
    assert "APT-USD" in result.output and "1338" in result.output
    mainnet = CliRunner().invoke(app, ["markets", "--network", "mainnet"])
    assert "│ 14 " in mainnet.output


def test_markets_reads_what_serve_reads_and_a_flag_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = (Path(openperps.__file__).parent / "markets.toml").read_text("utf-8")
    header, first, *_ = packaged.split("\n[[market]]")
    (tmp_path / "one.toml").write_text(f"{header}\n[[market]]{first}")  # APT-USD only
    settings = tmp_path / "openperps.toml"
    settings.write_text(f'[serve]\nnetwork = "mainnet"\nmarkets = "{tmp_path / "one.toml"}"\n')
    listed = CliRunner().invoke(app, ["markets", "--config", str(settings)])
    assert listed.exit_code == 0, listed.output
    assert "markets (mainnet)" in listed.output and "BTC-USD" not in listed.output
    flag = CliRunner().invoke(app, ["markets", "--config", str(settings), "--network", "testnet"])
    assert "markets (testnet)" in flag.output and "│ 1338 " in flag.output
    monkeypatch.setenv("OPENPERPS_MARKETS", str(tmp_path / "one.toml"))
    from_env = CliRunner().invoke(app, ["markets"])
    assert "APT-USD" in from_env.output and "BTC-USD" not in from_env.output
    monkeypatch.setenv("OPENPERPS_MARKETS", str(tmp_path / "none.toml"))
    assert CliRunner().invoke(app, ["markets"]).exit_code == 1
    monkeypatch.delenv("OPENPERPS_MARKETS")
    # a markets file given as the settings file: told which option it belongs to
    confused = run(["markets", "--config", str(tmp_path / "one.toml")], tmp_path)
    assert "is a markets file" in one_line_error(confused) and "--markets" in confused.stderr


def run(args: list[str], cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENPERPS_LOG_LEVEL": "ERROR", "COLUMNS": "200"}
    return subprocess.run(
        [*OPENPERPS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_configuration_gives_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "markets.toml"
    bad.write_text("[[market]\nsymbol = ")
    assert "malformed TOML" in one_line_error(run(["serve", "--markets", str(bad)], tmp_path))
    missing = run(["serve", "--markets", str(tmp_path / "none.toml")], tmp_path)
    assert "cannot read" in one_line_error(missing)
    assert "testnet or mainnet" in one_line_error(run(["serve", "--network", "moon"], tmp_path))
    assert "NATS URL" in one_line_error(run(["serve", "--bus", "http://x"], tmp_path))
    slow = one_line_error(run(["serve", "--replay-speed", "-3"], tmp_path))
    assert "--replay-speed is 0" in slow
    wrong_scheme = ["gateway", "--db", "postgresql://nowhere/x", "--nats", "http://127.0.0.1"]
    assert "--nats is a NATS URL" in one_line_error(run(wrong_scheme, tmp_path))
    negative = run(["serve", "--rest-actions-per-second", "-1"], tmp_path)
    assert "rest limit actions_per_second" in one_line_error(negative)
    behind_a_balancer = ["gateway", "--db", "postgresql://nowhere/x"]
    negative = run([*behind_a_balancer, "--rest-requests-per-second", "-5"], tmp_path)
    assert "rest limit requests_per_second" in one_line_error(negative)
    rates = tmp_path / "rates.toml"
    rates.write_text('rest_requests_per_second = "fast"\n')
    in_file = one_line_error(run(["serve", "--config", str(rates)], tmp_path))
    assert "rest_requests_per_second must be int or float" in in_file
    assert "PostgreSQL" in one_line_error(run(["gateway", "--db", "events.db"], tmp_path))
    limits = tmp_path / "limits.toml"
    limits.write_text("[feed]\nwat = 1\n")
    gateway = ["gateway", "--db", "postgresql://nowhere/x", "--config", str(limits)]
    assert "unknown feed limit 'wat'" in one_line_error(run(gateway, tmp_path))
    (tmp_path / "data").write_text("a file where the data directory should be")
    assert "not writable" in one_line_error(run(["serve"], tmp_path))


def test_a_port_in_use_gives_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", "--ws-port", str(port), "--api-port", "0"], tmp_path)
        assert "port in use" in one_line_error(result)
        api_taken = run(["serve", "--ws-port", "0", "--api-port", str(port)], tmp_path)
    assert "port in use" in one_line_error(api_taken)


@pytest.mark.parametrize("args", [["reindex", "--db", "nowhere.db"], ["markets", "--network", "x"]])
def test_other_commands_fail_cleanly(tmp_path: Path, args: list[str]) -> None:
    result = run(args, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_a_toml_file_sets_options_and_flags_win(tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    from tests.runtime.test_demo import free_port

    ws_port, api_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "openperps.toml"
    config.write_text(
        f'[serve]\nws_port = {ws_port}\napi_port = {api_port}\nadmin_token = "abc"\n'
        'log_level = "ERROR"\n'
        "[feed]\nmax_subscriptions = 2\nlive_retention = 50\n"
        "ping_interval_s = 30\nping_timeout_s = 10\nsocket_send_buffer = 0\ndeflate_min_bytes = 0\n"
    )
    process = subprocess.Popen(
        [*OPENPERPS, "serve", "--config", str(config), "--api-port", str(flag_port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{flag_port}/health")
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        config_info = httpx.get(f"http://127.0.0.1:{flag_port}/dashboard/config").json()
        assert config_info["feedUrl"].endswith(f":{ws_port}/ws/")  # from the file
        admin = httpx.post(
            f"http://127.0.0.1:{flag_port}/admin/pauseMarket",
            json={"marketId": "1338", "paused": False},
            headers={"authorization": "Bearer abc"},
        )
        assert admin.status_code == 200  # the token came from the file
        # the feed's limits came from its [feed] table
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{ws_port}/ws/") as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers  # compression off
            answers: list[dict[str, Any]] = []
            for market in ("1338", "1339", "1340"):
                ws.send(f'{{"topic": "recent_trades", "market_id": "{market}", "id": {market}}}')
            while len(answers) < 3:
                answer = json.loads(ws.recv(timeout=5))
                if "id" in answer:
                    answers.append(answer)
            assert [a.get("error", {}).get("code") for a in answers] == [
                None,
                None,
                "too_many_subscriptions",
            ]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wat = 1\n", "unknown option 'wat'"),
        ('ws_port = "x"\n', "ws_port must be int"),
        ("sim = 1\n", "sim must be bool"),
        ("[serve\n", "malformed TOML"),
        ("[feed]\nwat = 1\n", "unknown feed limit 'wat'"),
        ("[feed]\nmax_subscriptions = 0\n", "max_subscriptions must be a positive integer"),
        ("[feed]\nsocket_send_buffer = -1\n", "socket_send_buffer must be a positive integer or 0"),
        ("[feed]\ndeflate_min_bytes = 0.5\n", "deflate_min_bytes must be a positive integer or 0"),
        ("[feed]\nmax_frame_bytes = 1.5\n", "max_frame_bytes must be a positive integer"),
        ("[feed]\nrequests_per_second = true\n", "requests_per_second must be a positive"),
        ("[feed]\nping_interval_s = 0.5\n", "at least 1 second"),
        ("[feed]\nping_interval_s = 5\n", "may not be longer than ping_interval_s"),
        ("feed = 3\n", "[feed] must be a table"),
    ],
)
def test_a_bad_toml_file_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert message in one_line_error(run(["serve", "--config", str(config)], tmp_path))


def test_a_bad_price_file_is_a_one_line_error(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("1000,APT-USD,abc\n")
    assert "prices.csv:1" in one_line_error(run(["serve", "--oracle-csv", str(prices)], tmp_path))
    missing = run(["serve", "--oracle-csv", str(tmp_path / "none.csv")], tmp_path)
    assert "cannot read" in one_line_error(missing)


def test_a_price_file_naming_an_unknown_market_is_a_one_line_error(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("1000,DOGE-USD,0.1\n")
    result = run(["serve", "--oracle-csv", str(prices)], tmp_path)
    assert "market DOGE-USD" in one_line_error(result)


def test_an_exchange_that_cannot_be_reached_is_a_one_line_error(tmp_path: Path) -> None:
    """No traceback for a server that is down, a URL without its scheme, or a host that is
    not there: the request never gets an answer, and the command says so in one line."""
    key = tmp_path / "key.json"
    assert run(["keygen", "--key", str(key)], tmp_path).returncode == 0
    with socket.socket() as closed:  # a port nothing listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        for url in (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", "http://nowhere.invalid"):
            for args in (["account"], ["faucet", "10"], ["orders", "APT-USD"]):
                result = run([*args, "--url", url, "--key", str(key)], tmp_path)
                assert "cannot reach the exchange" in one_line_error(result), (url, args)
                assert result.returncode == 1
        # the feed commands too: no feed there (tried for the SDK's connect timeout, 10 s),
        # or a URL that cannot be a feed's
        for ws_url in (f"ws://127.0.0.1:{port}/ws/", f"http://127.0.0.1:{port}/ws/"):
            feed = ["subscribe", "recent_trades", "--market", "1338", "--ws-url", ws_url]
            result = run(feed, tmp_path, timeout=30)
            assert "cannot reach the exchange" in one_line_error(result), ws_url


def test_version_flag_and_key_file_hints(tmp_path: Path) -> None:
    version = run(["--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == openperps.__version__
    key = tmp_path / "key.json"
    assert run(["keygen", "--key", str(key)], tmp_path).returncode == 0
    again = one_line_error(run(["keygen", "--key", str(key)], tmp_path))
    assert "2111" in again and "--force" in again
    missing = one_line_error(run(["account", "--key", str(tmp_path / "none.json")], tmp_path))
    assert missing.count("keygen") == 1, missing  # said once, not twice
    key.chmod(0o644)  # a key others can read: the fix is chmod, not a new wallet
    too_open = one_line_error(run(["account", "--key", str(key)], tmp_path))
    assert "2110" in too_open and "keygen" not in too_open
    both = run(["subscribe", "positions", "--mine", "--address", "0x1"], tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr


def test_a_gateway_takes_its_options_from_the_gateway_table(tmp_path: Path) -> None:
    """One file for the exchange and its gateways: ``[gateway]`` sets a gateway's options,
    a flag still wins over it, and a mistake in it is a one-line error. ``serve`` reads
    the same file without complaint."""
    config = tmp_path / "venue.toml"
    config.write_text(
        '[serve]\nws_port = 9000\n\n[gateway]\ndb = "events.db"\nnats = "http://x"\n'
        "ws_port = 9100\n\n[feed]\nmax_subscriptions = 50\n"
    )
    gateway = ["gateway", "--config", str(config)]
    # the file's db is used (and refused: not PostgreSQL) ...
    assert "PostgreSQL" in one_line_error(run([*gateway, "--nats", "nats://x:1"], tmp_path))
    # ... its nats too, where no flag gives one
    flagged = run([*gateway, "--db", "postgresql://nowhere/x"], tmp_path)
    assert "--nats is a NATS URL" in one_line_error(flagged)
    config.write_text("[gateway]\nwat = 1\n")
    assert "unknown [gateway] option 'wat'" in one_line_error(run(gateway, tmp_path))
    config.write_text('[gateway]\nhttp_port = "x"\n')
    assert "http_port must be int" in one_line_error(run(gateway, tmp_path))
    config.write_text("gateway = 3\n")
    assert "gateway must be a table" in one_line_error(run(gateway, tmp_path))
    config.write_text("[feed]\nmax_subscriptions = 50\n")
    assert "--db is required" in one_line_error(run(gateway, tmp_path))
    # serve reads a file with a [gateway] table (and stops at its own bad option)
    config.write_text('bus = "http://x"\n[gateway]\ndb = "postgresql://h/x"\n')
    assert "NATS URL" in one_line_error(run(["serve", "--config", str(config)], tmp_path))
