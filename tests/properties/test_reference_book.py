"""The engine's book and matcher make exactly the trades a naive list-based book makes."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.invariants import violations
from openperps.core.markets import default_markets
from tests.properties.naive_book import NaiveBook

APT = 1338
PROFILES = [f"0x{i:064x}" for i in range(0x200, 0x204)]
MID = 7_000


class BookAgainstNaive(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(default_markets())
        self.naive = NaiveBook()
        self.now = 1
        for who in PROFILES:
            self.engine.handle(c.Deposit(timestamp=0, profile=who, amount=10**15))

    def _run(self, command: c.Command) -> list[e.Event]:
        self.now += 1
        return self.engine.handle(command)

    def _compare(
        self,
        events: list[e.Event],
        order_id: int | None,
        expected: tuple[list[tuple[int, int, int, int]], list[int]],
    ) -> None:
        trades = [
            (ev.maker.order_id, ev.taker.order_id, ev.price, ev.size)
            for ev in events
            if isinstance(ev, e.TradeExecuted)
        ]
        self_cancels = [
            ev.order_id
            for ev in events
            if isinstance(ev, e.OrderCancelled) and ev.reason == e.CancelReason.SELF_MATCH
        ]
        assert (trades, self_cancels) == expected, (order_id, events)

    @rule(
        who=st.sampled_from(PROFILES),
        is_buy=st.booleans(),
        offset=st.integers(-12, 12),
        lots=st.integers(1, 8),
        restriction=st.sampled_from([0, 0, 0, 1, 2, 3]),
    )
    def limit(self, who: str, is_buy: bool, offset: int, lots: int, restriction: int) -> None:
        price, size = MID + offset, lots * 10
        reject = self.naive.would_reject(who, is_buy, price, size, restriction)
        events = self._run(
            c.PlaceLimitOrder(
                timestamp=self.now,
                profile=who,
                market_id=APT,
                trade_side=is_buy,
                direction=False,
                size=size,
                price=price,
                leverage=10,
                restriction=restriction,
            )
        )
        accepted = [ev for ev in events if isinstance(ev, e.OrderAccepted)]
        assert bool(accepted) != reject, events
        if accepted:
            order_id = accepted[0].order_id
            expected = self.naive.place(order_id, who, is_buy, price, size, restriction)
            self._compare(events, order_id, expected)

    @rule(who=st.sampled_from(PROFILES), is_buy=st.booleans(), lots=st.integers(1, 12))
    def market(self, who: str, is_buy: bool, lots: int) -> None:
        size = lots * 10
        reject = self.naive.would_reject(who, is_buy, None, size, 2)
        events = self._run(
            c.PlaceMarketOrder(
                timestamp=self.now,
                profile=who,
                market_id=APT,
                trade_side=is_buy,
                direction=False,
                size=size,
                leverage=10,
            )
        )
        accepted = [ev for ev in events if isinstance(ev, e.OrderAccepted)]
        assert bool(accepted) != reject, events
        if accepted:
            order_id = accepted[0].order_id
            self._compare(events, order_id, self.naive.place(order_id, who, is_buy, None, size, 2))

    @rule(pick=st.integers(0, 10**6))
    def cancel(self, pick: int) -> None:
        if not self.naive.orders:
            return
        target = self.naive.orders[pick % len(self.naive.orders)]
        events = self._run(
            c.CancelOrder(
                timestamp=self.now,
                profile=target.profile,
                market_id=APT,
                order_id=target.order_id,
            )
        )
        assert isinstance(events[-1], e.BalanceChanged | e.OrderCancelled)
        assert self.naive.cancel(target.order_id)

    @invariant()
    def books_agree(self) -> None:
        book = self.engine.markets[APT].book
        assert book.depth(True) == self.naive.levels(True)
        assert book.depth(False) == self.naive.levels(False)
        resting = [o.order_id for level in book.bids.values() for o in level.values()]
        resting += [o.order_id for level in book.asks.values() for o in level.values()]
        assert sorted(resting) == sorted(o.order_id for o in self.naive.orders)
        assert violations(self.engine) == []


BookAgainstNaive.TestCase.settings = settings(
    max_examples=60, stateful_step_count=60, deadline=None
)
TestBookAgainstNaive = BookAgainstNaive.TestCase
