"""A CSV of prices replayed twice gives the same event log, byte for byte."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from openperps.core.markets import default_markets
from openperps.runtime.app import Exchange, ReplayClock, Settings
from openperps.runtime.oracle import read_csv_prices
from openperps.store import open_log


def write_prices(path: Path) -> None:
    rng = random.Random(5)
    apt, btc = 5200, 910000
    lines = ["timestamp_ms,market,price"]
    for i in range(400):
        apt = max(apt + rng.randint(-20, 20), 100)
        btc = max(btc + rng.randint(-900, 900), 1000)
        stamp = 1_700_000_000_000 + i * 30_000  # 30 s apart: funding settles along the way
        lines.append(f"{stamp},APT-USD,{apt / 1000:.3f}")
        lines.append(f"{stamp},1339,{btc / 10:.1f}")
    path.write_text("\n".join(lines) + "\n")


async def replay(db: Path, prices: Path) -> list[tuple[int, str, bytes]]:
    markets = default_markets()
    ticks = list(read_csv_prices(prices, markets))
    clock = ReplayClock(ticks[0].timestamp or 0)
    exchange = Exchange(
        Settings(db=str(db), ws_port=0, markets=markets, funding_check_seconds=0), clock=clock
    )
    await exchange.start()
    await exchange.run_replay(ticks, clock, speed=0)
    await exchange.stop()
    log = await open_log(str(db))
    stored = [(env.version, env.type, env.payload) async for env in log.read(1)]
    await log.close()
    return stored


async def test_the_same_prices_give_the_same_event_log(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    write_prices(prices)
    first = await replay(tmp_path / "a.sqlite3", prices)
    second = await replay(tmp_path / "b.sqlite3", prices)
    assert first == second
    kinds = {kind for _, kind, _ in first}
    assert {"OraclePriceSet", "FundingSettled", "MarketListed"} <= kinds


async def test_a_replay_restarted_on_its_log_goes_on_where_it_stopped(tmp_path: Path) -> None:
    """Stopped half way (Ctrl-C, a crash) and started again with the same file, a replay
    goes on after the prices its log holds: the log is the one a single run writes, not the
    first half followed by the whole file again at the wrong times."""
    prices = tmp_path / "prices.csv"
    write_prices(prices)
    whole = await replay(tmp_path / "whole.sqlite3", prices)
    markets = default_markets()
    ticks = list(read_csv_prices(prices, markets))
    halves = tmp_path / "halves.sqlite3"
    clock = ReplayClock(ticks[0].timestamp or 0)
    settings = Settings(db=str(halves), ws_port=0, markets=markets, funding_check_seconds=0)
    first = Exchange(settings, clock=clock)
    await first.start()
    await first.run_replay(ticks[:300], clock, speed=0)  # both markets' ticks of 150 times
    await first.stop()
    assert await replay(halves, prices) == whole


async def test_a_finished_replay_started_again_adds_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prices = tmp_path / "prices.csv"
    write_prices(prices)
    db = tmp_path / "done.sqlite3"
    whole = await replay(db, prices)
    with caplog.at_level(logging.WARNING, logger="openperps"):
        again = await replay(db, prices)
    assert again == whole
    assert any("all 800 remaining ticks" in record.getMessage() for record in caplog.records)
