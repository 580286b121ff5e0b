"""A deliberately naive price-time book: a plain list, sorted from scratch on every match.

It shares no code with ``core.book`` or the engine's matcher and exists only so property
tests can check that the fast book makes the same trades (exchange-core runs one suite
against two books for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NaiveOrder:
    order_id: int
    profile: str
    is_buy: bool
    price: int
    remaining: int
    seq: int


@dataclass
class NaiveBook:
    orders: list[NaiveOrder] = field(default_factory=list)
    seq: int = 0

    def _opposite(self, is_buy: bool) -> list[NaiveOrder]:
        side = [o for o in self.orders if o.is_buy != is_buy]
        if is_buy:  # a buy meets the lowest ask first
            return sorted(side, key=lambda o: (o.price, o.seq))
        return sorted(side, key=lambda o: (-o.price, o.seq))

    @staticmethod
    def _reachable(is_buy: bool, price: int, limit: int | None) -> bool:
        return limit is None or (price <= limit if is_buy else price >= limit)

    def would_reject(
        self, profile: str, is_buy: bool, limit: int | None, size: int, restriction: int
    ) -> bool:
        opposite = self._opposite(is_buy)
        if limit is None:
            return not opposite
        crosses = bool(opposite) and self._reachable(is_buy, opposite[0].price, limit)
        if restriction == 3:
            return crosses
        if restriction == 1:
            available = sum(
                o.remaining
                for o in opposite
                if o.profile != profile and self._reachable(is_buy, o.price, limit)
            )
            return available < size
        return False

    def place(
        self,
        order_id: int,
        profile: str,
        is_buy: bool,
        limit: int | None,
        size: int,
        restriction: int,
    ) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """Returns the trades (maker id, taker id, price, size) and the self-match cancels."""
        trades: list[tuple[int, int, int, int]] = []
        cancelled: list[int] = []
        remaining = size
        while remaining:
            opposite = self._opposite(is_buy)
            if not opposite or not self._reachable(is_buy, opposite[0].price, limit):
                break
            maker = opposite[0]
            if maker.profile == profile:
                self.orders.remove(maker)
                cancelled.append(maker.order_id)
                continue
            qty = min(remaining, maker.remaining)
            trades.append((maker.order_id, order_id, maker.price, qty))
            maker.remaining -= qty
            remaining -= qty
            if not maker.remaining:
                self.orders.remove(maker)
        if remaining and limit is not None and restriction in (0, 3):
            self.seq += 1
            self.orders.append(NaiveOrder(order_id, profile, is_buy, limit, remaining, self.seq))
        return trades, cancelled

    def cancel(self, order_id: int) -> bool:
        for order in self.orders:
            if order.order_id == order_id:
                self.orders.remove(order)
                return True
        return False

    def levels(self, is_buy: bool) -> list[tuple[int, int]]:
        totals: dict[int, int] = {}
        for o in self.orders:
            if o.is_buy == is_buy:
                totals[o.price] = totals.get(o.price, 0) + o.remaining
        return sorted(totals.items(), reverse=is_buy)
