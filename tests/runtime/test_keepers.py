"""Keepers liquidate and settle funding through the sequencer, so it is all in the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openperps.core import commands as c
from openperps.core import events as e
from openperps.runtime.keepers import KEEPER_ACCOUNT, Keepers
from tests.runtime.test_sequencer import ALICE, APT, BOB, Rig, fund


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "events.sqlite3")
    await rig.start()
    yield rig
    await rig.stop()


def limit(who: str, long: bool, size: int, price: int, leverage: int = 10) -> c.PlaceLimitOrder:
    return c.PlaceLimitOrder(
        timestamp=0,
        profile=who,
        market_id=APT,
        trade_side=long,
        direction=False,
        size=size,
        price=price,
        leverage=leverage,
    )


async def test_a_price_move_liquidates_through_the_log(rig: Rig) -> None:
    seq = rig.sequencer
    keepers = Keepers(seq)
    await fund(seq, ALICE, 10**9)
    await fund(seq, BOB, 10**9)
    await seq.execute(limit(BOB, False, 1000, 7_000))
    await seq.execute(limit(ALICE, True, 1000, 7_000, leverage=20))  # long 10 @ 7 at 20x
    await seq.execute(limit(BOB, True, 5000, 6_700))
    await keepers.set_price(APT, 6_700)
    assert keepers.liquidations == 1
    assert seq.engine.position(ALICE, APT, True) is None
    stored = [env.type async for env in rig.log.read(1)]
    assert "PositionLiquidated" in stored
    assert seq.engine.accounts[KEEPER_ACCOUNT].free > 0


async def test_funding_is_settled_when_due_and_not_before(rig: Rig) -> None:
    seq = rig.sequencer
    keepers = Keepers(seq)
    await keepers.set_price(APT, 7_000)
    start = seq.engine.markets[APT].interval_start
    await keepers.settle_due_funding(start + 1_000)
    assert keepers.settlements == 0
    rig.now = start + 3_600_000
    await keepers.settle_due_funding(rig.now)
    assert keepers.settlements == 1
    assert seq.engine.markets[APT].last_funding_ts > 0
    kinds = [type(ev) for batch in rig.published for ev in batch.events]
    assert e.FundingSettled in kinds
