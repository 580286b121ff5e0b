"""A simulated market left running stays sane: never crossed, a bounded spread, every
participant active, and the exchange's invariants intact at the end.

Runs 30 s by default; set OPENPERPS_SOAK_SECONDS for a longer soak.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from openperps.core.invariants import violations
from openperps.runtime.app import Exchange, Settings
from openperps.runtime.oracle import RandomWalkOracle
from openperps.runtime.sim import SimulatedMarket

SECONDS = float(os.environ.get("OPENPERPS_SOAK_SECONDS", "30"))


async def test_a_simulated_market_stays_sane(tmp_path: Path) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    engine = exchange.sequencer.engine
    oracle = RandomWalkOracle(
        [m.config for m in engine.markets.values()], seed=11, step_bps=15, jump_every=25
    )
    sim = SimulatedMarket(exchange.sequencer, seed=11, rate=150)
    exchange.spawn(lambda: exchange.run_walk(oracle, 0.2), "oracle")
    exchange.spawn(sim.run, "sim")
    worst_spread_bps = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SECONDS
    try:
        while loop.time() < deadline:
            await asyncio.sleep(0.5)
            engine = exchange.sequencer.engine
            for market in engine.markets.values():
                book = market.book
                assert not book.is_crossed()
                bid, ask, index = book.best_bid(), book.best_ask(), market.index_price
                if bid is not None and ask is not None and index:
                    worst_spread_bps = max(worst_spread_bps, (ask - bid) * 10_000 // index)
    finally:
        await exchange.stop()
    assert violations(exchange.sequencer.engine) == []
    assert worst_spread_bps < 500, worst_spread_bps  # makers keep quoting near the index
    everyone = [*sim.makers, *sim.takers, *sim.leveraged]
    assert all(sim.stats.by_profile[p] > 0 for p in everyone), sim.stats.by_profile
    assert sim.stats.commands > SECONDS * 50
    assert exchange.keepers.liquidations > 0  # jumps put leveraged traders under
    trades = [m for m in exchange.models.recent_trades.values() if m]
    assert len(trades) == len(engine.markets)  # every market traded
