"""Keepers: the exchange's own housekeeping, done through engine commands like anything else.

- After every index price, liquidate what has become liquidatable (TP/SL triggers fire inside
  the engine on the same price).
- Settle funding of each market when its interval has elapsed.

Keeper actions go through the sequencer, so they are in the log, in the read models and on
the feed exactly like a user's.
"""

from __future__ import annotations

import asyncio
import logging

from openperps.core import commands as c
from openperps.core import events as e
from openperps.runtime.sequencer import NotDurable, Sequencer

logger = logging.getLogger("openperps.keepers")

# The liquidator account that receives the keeper's 30 % share.
KEEPER_ACCOUNT = "0x" + "0" * 62 + "0b"


class Keepers:
    def __init__(self, sequencer: Sequencer, *, liquidator: str = KEEPER_ACCOUNT) -> None:
        self.sequencer = sequencer
        self.liquidator = liquidator
        self.liquidations = 0
        self.settlements = 0

    async def set_price(self, market_id: int, price: int, timestamp: int = 0) -> list[e.Event]:
        """Push an index price, then liquidate whatever it made liquidatable."""
        events = await self.sequencer.execute(
            c.SetOraclePrice(timestamp=timestamp, market_id=market_id, price=price)
        )
        await self.liquidate(market_id)
        return events

    async def liquidate(self, market_id: int, max_passes: int = 20) -> None:
        """Liquidate until nothing is liquidatable: a close-out trades against the book and
        can move the mark price enough to put another position under."""
        for _ in range(max_passes):
            due = self.sequencer.engine.liquidatable(market_id)
            if not due:
                return
            await self._liquidate_pass(market_id, due)
        logger.warning(
            "market %d still has liquidatable positions after %d passes", market_id, max_passes
        )

    async def _liquidate_pass(self, market_id: int, due: list[tuple[str, bool]]) -> None:
        for profile, side in due:
            events = await self.sequencer.execute(
                c.Liquidate(
                    timestamp=0,
                    profile=profile,
                    market_id=market_id,
                    trade_side=side,
                    liquidator=self.liquidator,
                )
            )
            if any(isinstance(ev, e.PositionLiquidated) for ev in events):
                self.liquidations += 1

    async def settle_due_funding(self, now_ms: int) -> None:
        engine = self.sequencer.engine
        for market_id, market in sorted(engine.markets.items()):
            due = market.interval_start + market.config.funding_interval_ms
            if now_ms >= due and market.index_price is not None:
                events = await self.sequencer.execute(
                    c.SettleFunding(timestamp=0, market_id=market_id)
                )
                if any(isinstance(ev, e.FundingSettled) for ev in events):
                    self.settlements += 1

    async def run_funding(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.settle_due_funding(self.sequencer.clock())
            except NotDurable as exc:
                logger.warning("funding settlement not durable, will retry: %s", exc.detail)
