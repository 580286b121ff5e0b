"""The command line as a user meets it: listings, and one-line errors for bad configuration."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openperps.cli.main import app

OPENPERPS = [sys.executable, "-m", "openperps.cli.main"]


def test_markets_lists_the_four_markets_for_either_network() -> None:
    result = CliRunner().invoke(app, ["markets"])
    assert result.exit_code == 0
    assert "APT-USD" in result.output and "1338" in result.output
    mainnet = CliRunner().invoke(app, ["markets", "--network", "mainnet"])
    assert "│ 14 " in mainnet.output


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
