"""The engine's book makes exactly the trades and cancels the naive reference book makes.

Both run the same random orders on one market: opening and reducing orders of both sides
(hedge mode included), all four restrictions, market orders, cancels and batches. Accounts are
funded far beyond anything the orders need, so margin never interferes and every difference
is a book difference. After every command both must agree on:

- whether each order was accepted, and the code when it was not;
- the order ids and order types the engine assigns (``order_counter << 64 | market_id``);
- every trade (maker, taker, price, size, what each has left) and every cancel (self-match,
  immediate-or-cancel, no liquidity, user) in the same order;
- the resting book, order by order in priority order, and each profile's position sizes.

Reduce orders are modelled with the position sizes the model derives from its own fills: a
reduce order may take at most the position's size less its resting reduce orders (1011).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.errors import ErrorCode
from openperps.core.invariants import version_gaps, violations
from openperps.core.markets import default_markets
from tests.properties.reference_book import Cancel, Fill, Outcome, ReferenceBook

APT = 1338  # tick 0.001, lot 0.01, min size 0.1
LOT = 10  # the minimum size; sizes below are multiples of it, fills may split them
MID = 7_000
LEVERAGE = 10
PROFILES = [f"0x{i:064x}" for i in range(0x200, 0x204)]
TOTALS: Counter[str] = Counter()

# What the comparison looks at, in event order: an accepted order (id, order type), a refused
# one (code), a trade or a cancel.
Item = tuple[str, int, int] | tuple[str, int] | Outcome


@dataclass(frozen=True)
class Spec:
    """One order as the machine draws it."""

    long: bool
    reduce: bool
    offset: int  # ticks from the mid; None-like when ``market``
    lots: int
    restriction: int
    market: bool


specs = st.builds(
    Spec,
    long=st.booleans(),
    reduce=st.sampled_from([False, False, True]),
    offset=st.integers(-8, 8),
    lots=st.integers(1, 8),
    restriction=st.sampled_from([0, 0, 0, 1, 2, 3]),
    market=st.sampled_from([False, False, False, False, True]),
)


class BookAgainstReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(default_markets())
        self.reference = ReferenceBook()
        self.now = 1
        self.accepted_orders = 0
        # (profile, trade_side, direction) of every order the model saw accepted
        self.meta: dict[int, tuple[str, bool, bool]] = {}
        self.size: Counter[tuple[str, bool]] = Counter()
        self.pending_reduce: Counter[tuple[str, bool]] = Counter()
        for who in PROFILES:
            self.engine.handle(c.Mint(timestamp=0, profile=who, amount=10**15))
            self.engine.handle(c.Deposit(timestamp=0, profile=who, amount=10**15))
        # a few levels each side to start from, so most orders meet something
        for i, who in enumerate(PROFILES):
            for long in (True, False):
                spec = Spec(long, False, -2 - i if long else 2 + i, 3, 0, False)
                self._run(self._command(who, spec, 3 * LOT), self._expect_order(who, spec, 3 * LOT))

    # -- the model ---------------------------------------------------------------------------

    def _apply(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Fill):
                for order_id in (outcome.maker_order_id, outcome.taker_order_id):
                    profile, side, reduce = self.meta[order_id]
                    self.size[(profile, side)] += -outcome.size if reduce else outcome.size
                    if reduce and order_id == outcome.maker_order_id:
                        self.pending_reduce[(profile, side)] -= outcome.size
            else:
                profile, side, reduce = self.meta[outcome.order_id]
                resting = outcome.reason in (e.CancelReason.SELF_MATCH, e.CancelReason.USER)
                if reduce and resting:
                    self.pending_reduce[(profile, side)] -= outcome.remaining

    def _expect_order(self, who: str, spec: Spec, size: int) -> list[Item]:
        """What the engine must do with one order, applied to the model."""
        key = (who, spec.long)
        is_buy = spec.long != spec.reduce
        price = None if spec.market else MID + spec.offset
        restriction = int(c.Restriction.IMMEDIATE_OR_CANCEL) if spec.market else spec.restriction
        held = self.size[key]
        if spec.reduce and (held == 0 or size > held - self.pending_reduce[key]):
            return [("rejected", int(ErrorCode.REDUCE_OVER_POSITION))]
        refused = self.reference.refusal(who, is_buy, price, size, restriction)
        if refused is not None:
            return [("rejected", int(refused))]
        self.accepted_orders += 1
        order_id = (self.accepted_orders << 64) | APT
        # order types: 1 open, 3 increase, 5 decrease, 7 close (the short side's are one more)
        base = (7 if size == held else 5) if spec.reduce else (3 if held else 1)
        order_type = base if spec.long else base + 1
        self.meta[order_id] = (who, spec.long, spec.reduce)
        outcomes = self.reference.submit(order_id, who, is_buy, price, size, restriction)
        self._apply(outcomes)
        rests = self.reference.find(order_id)
        if spec.reduce and rests is not None:
            self.pending_reduce[key] += rests.remaining
        return [("accepted", order_id, order_type), *outcomes]

    def _expect_cancel(self, who: str, order_id: int) -> list[Item]:
        order = self.reference.find(order_id)
        if order is None or order.profile != who:
            return [("rejected", int(ErrorCode.ORDER_NOT_FOUND))]
        self.reference.cancel(order_id)
        outcome = Cancel(order_id, order.remaining, e.CancelReason.USER)
        self._apply([outcome])
        return [outcome]

    # -- the engine --------------------------------------------------------------------------

    def _adjust(self, who: str, spec: Spec) -> Spec:
        """Point a reduce order at the side that has something to reduce, when one does."""
        if spec.reduce:
            free = {
                side: self.size[(who, side)] - self.pending_reduce[(who, side)]
                for side in (True, False)
            }
            if free[spec.long] < LOT <= free[not spec.long]:
                return replace(spec, long=not spec.long)
            if max(free.values()) < LOT and spec.offset % 3:
                return replace(spec, reduce=False)  # nothing to reduce: mostly open instead
        return spec

    def _size(self, who: str, spec: Spec) -> int:
        """Reduce orders take a share of what the position has uncommitted (sometimes more)."""
        key = (who, spec.long)
        if spec.reduce:
            free = self.size[key] - self.pending_reduce[key]
            if free >= LOT and spec.lots < 8:
                return max(LOT, free * spec.lots // 7)  # lots 7 closes all, 1..6 a share
        return spec.lots * LOT

    def _command(self, who: str, spec: Spec, size: int) -> c.PlaceLimitOrder | c.PlaceMarketOrder:
        if spec.market:
            return c.PlaceMarketOrder(
                timestamp=self.now,
                profile=who,
                market_id=APT,
                trade_side=spec.long,
                direction=spec.reduce,
                size=size,
                leverage=LEVERAGE,
            )
        return c.PlaceLimitOrder(
            timestamp=self.now,
            profile=who,
            market_id=APT,
            trade_side=spec.long,
            direction=spec.reduce,
            size=size,
            price=MID + spec.offset,
            leverage=LEVERAGE,
            restriction=spec.restriction,
        )

    def _run(self, command: c.Command, expected: list[Item]) -> None:
        start = self.engine.version
        events = self.engine.handle(command)
        assert version_gaps(events, start) == []
        seen: list[Item] = []
        for ev in events:
            if isinstance(ev, e.OrderAccepted):
                seen.append(("accepted", ev.order_id, ev.order_type))
            elif isinstance(ev, e.Rejected):
                seen.append(("rejected", ev.code))
            elif isinstance(ev, e.TradeExecuted):
                seen.append(
                    Fill(
                        ev.maker.order_id,
                        ev.taker.order_id,
                        ev.price,
                        ev.size,
                        ev.maker.remaining,
                        ev.taker.remaining,
                    )
                )
                assert ev.maker.profile != ev.taker.profile, "a profile traded with itself"
            elif isinstance(ev, e.OrderCancelled):
                seen.append(Cancel(ev.order_id, ev.remaining, e.CancelReason(ev.reason)))
        assert seen == expected, (command, events)
        for item in expected:
            if isinstance(item, tuple):
                TOTALS[item[0]] += 1
                if item[0] == "rejected":
                    TOTALS[f"rejected {item[1]}"] += 1
            elif isinstance(item, Cancel):
                TOTALS[f"Cancel {item.reason.name}"] += 1
            else:
                TOTALS["Fill"] += 1
        self.now += 1

    # -- rules -------------------------------------------------------------------------------

    @rule(who=st.sampled_from(PROFILES), spec=specs)
    def place(self, who: str, spec: Spec) -> None:
        spec = self._adjust(who, spec)
        size = self._size(who, spec)
        command = self._command(who, spec, size)
        self._run(command, self._expect_order(who, spec, size))

    @rule(who=st.sampled_from(PROFILES), batch=st.lists(specs, min_size=1, max_size=5))
    def place_batch(self, who: str, batch: list[Spec]) -> None:
        orders = []
        expected: list[Item] = []
        for spec in batch:
            spec = self._adjust(who, spec)
            size = self._size(who, spec)
            orders.append(self._command(who, spec, size))
            expected += self._expect_order(who, spec, size)
        self._run(c.PlaceMultipleOrders(timestamp=self.now, profile=who, orders=orders), expected)

    @rule(pick=st.integers(0, 10**6), owner=st.sampled_from([True, True, True, False]))
    def cancel(self, pick: int, owner: bool) -> None:
        """Cancel a resting order as its owner, or (refused) as someone else."""
        if not self.reference.orders:
            return
        target = self.reference.orders[pick % len(self.reference.orders)]
        who = target.profile if owner else PROFILES[(PROFILES.index(target.profile) + 1) % 4]
        expected = self._expect_cancel(who, target.order_id)
        self._run(
            c.CancelOrder(timestamp=self.now, profile=who, market_id=APT, order_id=target.order_id),
            expected,
        )

    @rule(
        who=st.sampled_from(PROFILES),
        picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
        batch=st.lists(specs, max_size=4),
    )
    def cancel_and_place(self, who: str, picks: list[int], batch: list[Spec]) -> None:
        """Cancel some of one's orders (or unknown ids), then place new ones, in one command."""
        mine = [o.order_id for o in self.reference.orders if o.profile == who]
        # mostly one's own resting orders, now and then an id that rests nowhere (or twice)
        ids = [mine[p % len(mine)] if mine and p % 6 else (p << 64) | APT for p in picks]
        ids = ids if mine else ids[:1]
        ids = list(dict.fromkeys(ids)) if picks[0] % 4 else ids
        expected: list[Item] = []
        for order_id in ids:
            expected += self._expect_cancel(who, order_id)
        if not batch:
            self._run(
                c.CancelMultipleOrders(
                    timestamp=self.now, profile=who, market_id=APT, order_ids=ids
                ),
                expected,
            )
            return
        orders = []
        for spec in batch:
            spec = self._adjust(who, spec)
            size = self._size(who, spec)
            orders.append(self._command(who, spec, size))
            expected += self._expect_order(who, spec, size)
        self._run(
            c.CancelAndPlaceMultipleOrders(
                timestamp=self.now,
                profile=who,
                market_id=APT,
                cancel_order_ids=ids,
                orders=orders,
            ),
            expected,
        )

    @invariant()
    def books_agree(self) -> None:
        book = self.engine.markets[APT].book
        for is_buy in (True, False):
            engine_side = [
                (price, o.order_id, o.remaining)
                for price, level in book.levels(is_buy)
                for o in level.values()
            ]
            assert engine_side == self.reference.resting(is_buy)
        for who in PROFILES:
            for side in (True, False):
                pos = self.engine.markets[APT].slots.get((who, side))
                size = pos.size if pos is not None else 0
                pending = pos.pending_reduce if pos is not None else 0
                assert (size, pending) == (self.size[(who, side)], self.pending_reduce[(who, side)])
        assert violations(self.engine) == []


BookAgainstReference.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestBookAgainstReference = BookAgainstReference.TestCase


def test_the_reference_machine_exercised_the_book() -> None:
    """Runs after the machine: most orders were accepted and every path was reached."""
    if not TOTALS:  # run on its own: drive a short machine first
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(
            BookAgainstReference, settings=BookAgainstReference.TestCase.settings
        )
    assert TOTALS["accepted"] > 1.5 * TOTALS["rejected"], TOTALS
    for kind in (
        "Fill",
        "Cancel SELF_MATCH",
        "Cancel IMMEDIATE_OR_CANCEL",
        "Cancel NO_LIQUIDITY",
        "Cancel USER",
    ):
        assert TOTALS[kind] > 0, (kind, TOTALS)
