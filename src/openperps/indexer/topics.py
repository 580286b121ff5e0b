"""Topic data: what each feed topic (and the matching REST read) serves, from the read models.

``TopicData.snapshot(topic, key, limit)`` gives the records of one subscription at the read
models' current version; list topics are newest first where they are histories. The feed
takes the snapshot and the version together, between two applied batches, so the live
pushes that follow join it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec

from openperps.indexer.models import FillRow, OrderRow, ReadModels
from openperps.indexer.render import Renderer

USER_TOPICS: Final = (
    "order_history",
    "deposit_withdraw_history",
    "trade_history",
    "positions",
    "open_orders",
    "live_order_history",
    "live_trade_history",
)
MARKET_TOPICS: Final = ("orderbook", "recent_trades")
GLOBAL_TOPICS: Final = ("live_funding_rate",)
LIVE_TOPICS: Final = ("live_order_history", "live_trade_history")
ALL_TOPICS: Final = USER_TOPICS + MARKET_TOPICS + GLOBAL_TOPICS


Row = TypeVar("Row", OrderRow, FillRow)

RECORD_CACHE: Final = 10_000  # rendered trades (and book levels) kept; asked for again and again


class TopicData:
    def __init__(self, models: ReadModels) -> None:
        self.models = models
        self.render = Renderer(models.markets)
        # a fill's record never changes (a market's scales are fixed when it is listed), and
        # every push of ``recent_trades`` carries the latest 100 again: render each once
        self._trades: dict[FillRow, msgspec.Struct] = {}
        # likewise a book level at a given size and version: most of a book's levels are the
        # same from one push of it to the next
        self._levels: dict[tuple[int, bool, int, int, int, int], msgspec.Struct] = {}

    def snapshot(
        self, topic: str, key: str | int | None, limit: int = 100
    ) -> Sequence[msgspec.Struct]:
        """The records a subscription starts with (live topics: the latest change, if any)."""
        m, r = self.models, self.render
        if topic == "order_history":
            return [r.order(row) for row in m.order_history_of(str(key), limit)]
        if topic == "deposit_withdraw_history":
            return [r.transfer(row) for row in m.transfers_of(str(key), limit)]
        if topic == "trade_history":
            return [r.fill(row) for row in m.fills_of(str(key), limit)]
        if topic == "positions":
            return [r.position(row) for row in m.positions_of(str(key))]
        if topic == "open_orders":
            return [r.open_order(row) for row in m.open_orders_of(str(key))]  # every one
        if topic == "orderbook":
            return self.orderbook(int(key or 0), limit)
        if topic == "recent_trades":
            return [self._recent_trade(row) for row in m.recent_trades_of(int(key or 0), limit)]
        if topic == "live_funding_rate":
            return [r.funding_rate(m.markets[i]) for i in sorted(m.markets)]
        if topic == "live_order_history":
            change = self._latest_change(str(key), OrderRow)
            if change is not None:
                return [r.order(change)]
            return [r.order(row) for row in m.order_history_of(str(key), 1)]
        if topic == "live_trade_history":
            fill = self._latest_change(str(key), FillRow)
            if fill is not None:
                return [r.live_fill(fill)]
            return [r.live_fill(row) for row in m.fills_of(str(key), 1)]
        raise KeyError(topic)

    def _latest_change(self, address: str, kind: type[Row]) -> Row | None:
        """The address's latest live change of ``kind`` still kept (an order as it was then:
        a cancel of an older order is newer than the newest order placed)."""
        for row in reversed(self.models.live_log.get(address, ())):
            if isinstance(row, kind):
                return row
        return None

    def _recent_trade(self, row: FillRow) -> msgspec.Struct:
        record = self._trades.get(row)
        if record is None:
            if len(self._trades) >= RECORD_CACHE:
                self._trades.clear()
            record = self._trades[row] = self.render.recent_trade(row)
        return record

    def orderbook(self, market_id: int, depth: int = 100) -> list[msgspec.Struct]:
        """Both sides, best first: bids then asks, at most ``depth`` levels a side."""
        bids, asks = self.models.book_of(market_id, depth)
        versions = self.models.level_versions.get(market_id, {})
        out: list[msgspec.Struct] = []
        cache = self._levels
        for is_ask, levels in ((False, bids), (True, asks)):
            for price, size in levels:
                version, ts = versions.get((is_ask, price), (0, 0))
                key = (market_id, is_ask, price, size, version, ts)
                record = cache.get(key)
                if record is None:
                    if len(cache) >= RECORD_CACHE:
                        cache.clear()
                    record = cache[key] = self.render.level(*key)
                out.append(record)
        return out
