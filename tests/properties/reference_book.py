"""A deliberately naive price-time order book: the reference the engine's book must agree with.

Resting orders live in one flat list in arrival order. Every question (who is best, who trades
next, what rests) sorts that list from scratch: best price first, then earliest arrival. It is
slow on purpose and shares no code with ``core.book`` or the engine's matcher, so when the two
disagree one of them is wrong (exchange-core runs one suite against two books for the same
reason, ``OrderBookBaseTest.java``).

It follows the book rules of ``docs/exchange-rules.md`` ("Orders"):

- price-time priority; a trade happens at the resting (maker) order's price;
- self-match: a resting order of the taker's own profile is cancelled and matching goes on;
- restriction 0 rests what is left; 1 fill-or-kill is refused (1007) unless *other* profiles
  offer the whole size at the limit or better; 2 immediate-or-cancel cancels what is left;
  3 post-only is refused (2008) when it would take;
- a market order (no limit) never rests: what is left is cancelled; it is refused (1007) when
  the opposite side is empty.

The book knows sides (buy or sell), not positions: which orders a profile may place (reduce
orders, leverage, margin) is the business of whoever drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openperps.core.commands import Restriction
from openperps.core.errors import ErrorCode
from openperps.core.events import CancelReason


@dataclass
class RestingOrder:
    order_id: int
    profile: str
    is_buy: bool
    price: int
    remaining: int
    arrival: int


@dataclass(frozen=True)
class Fill:
    maker_order_id: int
    taker_order_id: int
    price: int
    size: int
    maker_remaining: int
    taker_remaining: int


@dataclass(frozen=True)
class Cancel:
    order_id: int
    remaining: int
    reason: CancelReason


Outcome = Fill | Cancel


@dataclass
class ReferenceBook:
    orders: list[RestingOrder] = field(default_factory=list)
    arrivals: int = 0

    def side(self, is_buy: bool) -> list[RestingOrder]:
        """The resting orders of one side, best first: highest bid, lowest ask, then arrival."""
        orders = [o for o in self.orders if o.is_buy == is_buy]
        if is_buy:
            return sorted(orders, key=lambda o: (-o.price, o.arrival))
        return sorted(orders, key=lambda o: (o.price, o.arrival))

    def resting(self, is_buy: bool) -> list[tuple[int, int, int]]:
        """(price, order id, remaining) of one side in priority order."""
        return [(o.price, o.order_id, o.remaining) for o in self.side(is_buy)]

    def find(self, order_id: int) -> RestingOrder | None:
        for order in self.orders:
            if order.order_id == order_id:
                return order
        return None

    @staticmethod
    def reaches(is_buy: bool, resting_price: int, limit: int | None) -> bool:
        """Whether an incoming order with this limit may trade at a resting price."""
        if limit is None:
            return True
        return resting_price <= limit if is_buy else resting_price >= limit

    def refusal(
        self, profile: str, is_buy: bool, limit: int | None, size: int, restriction: int
    ) -> ErrorCode | None:
        """Why the book refuses the order before anything happens, or None."""
        opposite = self.side(not is_buy)
        if limit is None:
            return None if opposite else ErrorCode.NOT_ENOUGH_LIQUIDITY
        crosses = bool(opposite) and self.reaches(is_buy, opposite[0].price, limit)
        if restriction == Restriction.POST_ONLY and crosses:
            return ErrorCode.POST_ONLY_WOULD_TAKE
        if restriction == Restriction.FILL_OR_KILL:
            offered = sum(
                o.remaining
                for o in opposite
                if o.profile != profile and self.reaches(is_buy, o.price, limit)
            )
            if offered < size:
                return ErrorCode.NOT_ENOUGH_LIQUIDITY
        return None

    def submit(
        self,
        order_id: int,
        profile: str,
        is_buy: bool,
        limit: int | None,
        size: int,
        restriction: int,
    ) -> list[Outcome]:
        """Match an order the book accepts; rest or cancel what is left. Returns, in order,
        the trades and the cancels it caused."""
        assert self.refusal(profile, is_buy, limit, size, restriction) is None
        outcomes: list[Outcome] = []
        remaining = size
        while remaining:
            opposite = self.side(not is_buy)
            if not opposite or not self.reaches(is_buy, opposite[0].price, limit):
                break
            maker = opposite[0]
            if maker.profile == profile:
                self.orders.remove(maker)
                outcomes.append(Cancel(maker.order_id, maker.remaining, CancelReason.SELF_MATCH))
                continue
            qty = min(remaining, maker.remaining)
            maker.remaining -= qty
            remaining -= qty
            outcomes.append(
                Fill(maker.order_id, order_id, maker.price, qty, maker.remaining, remaining)
            )
            if maker.remaining == 0:
                self.orders.remove(maker)
        if remaining:
            if limit is None:
                outcomes.append(Cancel(order_id, remaining, CancelReason.NO_LIQUIDITY))
            elif restriction == Restriction.IMMEDIATE_OR_CANCEL:
                outcomes.append(Cancel(order_id, remaining, CancelReason.IMMEDIATE_OR_CANCEL))
            else:
                assert restriction != Restriction.FILL_OR_KILL, "a fill-or-kill left a remainder"
                self.arrivals += 1
                self.orders.append(
                    RestingOrder(order_id, profile, is_buy, limit, remaining, self.arrivals)
                )
        return outcomes

    def cancel(self, order_id: int) -> RestingOrder | None:
        order = self.find(order_id)
        if order is not None:
            self.orders.remove(order)
        return order
