"""Random command sequences through the whole engine; every invariant after every step.

After each command: the rules file's invariants (``core.invariants.violations``), versions
gap-free, a refused command is exactly one ``Rejected`` and changes nothing, and every funding
settlement sums to zero. Prices move, so positions get liquidated and TP/SL orders fire; time
moves, so funding settles. The run also tracks how many commands were accepted, so a machine
that only produces rejections fails instead of passing vacuously.
"""

from __future__ import annotations

from collections import Counter

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine, EngineSnapshot
from openperps.core.invariants import version_gaps, violations
from openperps.core.markets import default_markets

APT, BTC = 1338, 1339
PROFILES = [f"0x{i:064x}" for i in range(0x300, 0x305)]
KEEPER = f"0x{0x3FF:064x}"
DELEGATE = "0x" + "de" * 32
MIDS = {APT: 7_000, BTC: 900_000}
STEP = {APT: 1, BTC: 100}  # price units per tick step used below
TOTALS: Counter[str] = Counter()


def business(engine: Engine) -> EngineSnapshot:
    return msgspec.structs.replace(engine.snapshot(), version=0, last_timestamp=0)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(default_markets())
        self.now = 1_000
        self.mids = dict(MIDS)
        self.log: list[e.Event] = []
        for who in PROFILES:
            self.run(c.Deposit(timestamp=self.now, profile=who, amount=20_000 * 10**6))
        for market, price in MIDS.items():
            self.run(c.SetOraclePrice(timestamp=self.now, market_id=market, price=price))

    def run(self, command: c.Command) -> list[e.Event]:
        before_version = self.engine.version
        before = business(self.engine)
        events = self.engine.handle(command)
        assert events, "every command produces at least one event"
        assert version_gaps(events, before_version) == []
        if isinstance(events[0], e.Rejected):
            assert len(events) == 1
            assert business(self.engine) == before
            TOTALS["rejected"] += 1
        else:
            assert isinstance(events[0], e.CommandExecuted)
            TOTALS["accepted"] += 1
        for event in events:
            if isinstance(event, e.FundingSettled):
                assert sum(p.amount for p in event.payments) + event.house_remainder == 0
            TOTALS[type(event).__name__] += 1
        self.log.extend(events)
        return events

    def tick(self, ms: int = 1) -> int:
        self.now += ms
        return self.now

    @rule(who=st.sampled_from([*PROFILES, KEEPER]), amount=st.integers(1, 5_000))
    def deposit(self, who: str, amount: int) -> None:
        self.run(c.Deposit(timestamp=self.tick(), profile=who, amount=amount * 10**6))

    @rule(who=st.sampled_from(PROFILES), amount=st.integers(1, 2_000))
    def withdraw(self, who: str, amount: int) -> None:
        self.run(c.Withdraw(timestamp=self.tick(), profile=who, amount=amount * 10**6))

    @rule(
        who=st.sampled_from(PROFILES),
        market=st.sampled_from([APT, BTC]),
        long=st.booleans(),
        reduce=st.booleans(),
        offset=st.integers(-30, 30),
        lots=st.integers(1, 40),
        leverage=st.sampled_from([1, 5, 10, 20]),
        restriction=st.sampled_from([0, 0, 1, 2, 3]),
        trigger=st.integers(-1, 2),
    )
    def limit(
        self,
        who: str,
        market: int,
        long: bool,
        reduce: bool,
        offset: int,
        lots: int,
        leverage: int,
        restriction: int,
        trigger: int,
    ) -> None:
        config = self.engine.markets[market].config
        pos = self.engine.position(who, market, long)
        if reduce and pos is not None:
            leverage = pos.leverage
            lots = max(min(lots, (pos.size - pos.pending_reduce) // config.min_size), 1)
        price = self.mids[market] + offset * STEP[market]
        move = 40 * STEP[market]
        tp = sl = None
        if not reduce and trigger == 1:
            tp = price + move if long else price - move
        if not reduce and trigger == 2:
            sl = price - move if long else price + move
        self.run(
            c.PlaceLimitOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=market,
                trade_side=long,
                direction=reduce,
                size=lots * config.min_size,
                price=price,
                leverage=leverage,
                restriction=restriction,
                take_profit=tp,
                stop_loss=sl,
            )
        )

    @rule(
        who=st.sampled_from(PROFILES),
        market=st.sampled_from([APT, BTC]),
        long=st.booleans(),
        reduce=st.booleans(),
        lots=st.integers(1, 30),
    )
    def market_order(self, who: str, market: int, long: bool, reduce: bool, lots: int) -> None:
        config = self.engine.markets[market].config
        pos = self.engine.position(who, market, long)
        leverage = pos.leverage if pos is not None else 10
        size = lots * config.min_size
        if reduce and pos is not None:
            size = min(size, pos.size - pos.pending_reduce) or pos.size
        self.run(
            c.PlaceMarketOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=market,
                trade_side=long,
                direction=reduce,
                size=size,
                leverage=leverage,
            )
        )

    @rule(
        who=st.sampled_from(PROFILES),
        long=st.booleans(),
        offsets=st.lists(st.integers(-15, 15), min_size=1, max_size=6),
        lots=st.integers(1, 20),
    )
    def ladder(self, who: str, long: bool, offsets: list[int], lots: int) -> None:
        """A quick burst of opening limit orders around the mid (gives the book depth)."""
        for offset in offsets:
            self.limit(who, APT, long, False, offset, lots, 10, 0, 0)

    @rule(
        who=st.sampled_from(PROFILES),
        long=st.booleans(),
        lots=st.integers(1, 30),
        leverage=st.sampled_from([10, 20]),
        trigger=st.integers(0, 2),
    )
    def take(self, who: str, long: bool, lots: int, leverage: int, trigger: int) -> None:
        """Open at market, often with a TP or SL close to the mid."""
        pos = self.engine.position(who, APT, long)
        move = 15 * STEP[APT]
        mid = self.mids[APT]
        tp = (mid + move if long else mid - move) if trigger == 1 else None
        sl = (mid - move if long else mid + move) if trigger == 2 else None
        self.run(
            c.PlaceMarketOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=APT,
                trade_side=long,
                direction=False,
                size=lots * 10,
                leverage=pos.leverage if pos else leverage,
                take_profit=tp,
                stop_loss=sl,
            )
        )

    @rule(who=st.sampled_from(PROFILES), other=st.sampled_from(PROFILES), lots=st.integers(1, 9))
    def hedge_and_collapse(self, who: str, other: str, lots: int) -> None:
        """Hold both sides of one market (hedge mode), then net them."""
        mid = self.mids[APT]
        for long in (True, False):
            self.run(
                c.PlaceLimitOrder(
                    timestamp=self.tick(),
                    profile=other,
                    market_id=APT,
                    trade_side=not long,
                    direction=False,
                    size=lots * 10,
                    price=mid,
                    leverage=10,
                )
            )
            self.take(who, long, lots, 10, 0)
        self.collapse(who, APT)

    @rule(
        who=st.sampled_from(PROFILES),
        other=st.sampled_from(PROFILES),
        long=st.booleans(),
        take_profit=st.booleans(),
    )
    def trigger_fires(self, who: str, other: str, long: bool, take_profit: bool) -> None:
        """Open with a trigger 10 ticks away, give it a book to close into, move past it."""
        mid = self.mids[APT]
        self.run(
            c.PlaceLimitOrder(
                timestamp=self.tick(),
                profile=other,
                market_id=APT,
                trade_side=not long,
                direction=False,
                size=50,
                price=mid,
                leverage=10,
            )
        )
        pos = self.engine.position(who, APT, long)
        away = 10 if take_profit == long else -10
        trigger = mid + away
        self.run(
            c.PlaceMarketOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=APT,
                trade_side=long,
                direction=False,
                size=50,
                leverage=pos.leverage if pos else 10,
                take_profit=trigger if take_profit else None,
                stop_loss=None if take_profit else trigger,
            )
        )
        for price in (mid - 40, mid + 40):  # both sides of the book, around the trigger
            self.run(
                c.PlaceLimitOrder(
                    timestamp=self.tick(),
                    profile=other,
                    market_id=APT,
                    trade_side=price < mid,
                    direction=False,
                    size=200,
                    price=price,
                    leverage=10,
                )
            )
        self.move_price(APT, away * 2)

    @rule(pick=st.integers(0, 10**6), market=st.sampled_from([APT, BTC]))
    def cancel(self, pick: int, market: int) -> None:
        orders = sorted(self.engine.markets[market].book.orders.values(), key=lambda o: o.order_id)
        if not orders:
            return
        order = orders[pick % len(orders)]
        self.run(
            c.CancelOrder(
                timestamp=self.tick(),
                profile=order.profile,
                market_id=market,
                order_id=order.order_id,
            )
        )

    @rule(market=st.sampled_from([APT, BTC]), steps=st.integers(-350, 350))
    def move_price(self, market: int, steps: int) -> None:
        self.mids[market] = max(self.mids[market] + steps * STEP[market], 1_000)
        self.run(
            c.SetOraclePrice(timestamp=self.tick(1_000), market_id=market, price=self.mids[market])
        )
        # a liquidation trades against the book and can move the mark: keep going until
        # nothing is liquidatable (each pass closes at least one position)
        for _ in range(len(PROFILES) * 2 + 1):
            due = self.engine.liquidatable(market)
            if not due:
                break
            closed = 0
            for profile, side in due:
                events = self.run(
                    c.Liquidate(
                        timestamp=self.tick(),
                        profile=profile,
                        market_id=market,
                        trade_side=side,
                        liquidator=KEEPER,
                    )
                )
                if isinstance(events[0], e.Rejected):  # an earlier close-out moved the mark
                    assert events[0].code == 2013
                else:
                    assert any(isinstance(ev, e.PositionLiquidated) for ev in events)
                    closed += 1
            assert closed, "a pass over liquidatable positions closes at least one"
        assert self.engine.liquidatable(market) == []

    @rule(market=st.sampled_from([APT, BTC]), down=st.booleans())
    def shock(self, market: int, down: bool) -> None:
        """The book empties and the index jumps 8 %: leveraged positions go under."""
        book = self.engine.markets[market].book
        for order in sorted(book.orders.values(), key=lambda o: o.order_id):
            self.run(
                c.CancelOrder(
                    timestamp=self.tick(),
                    profile=order.profile,
                    market_id=market,
                    order_id=order.order_id,
                )
            )
        self.move_price(market, (-1 if down else 1) * self.mids[market] * 8 // 100 // STEP[market])

    @rule(market=st.sampled_from([APT, BTC]))
    def settle_funding(self, market: int) -> None:
        state = self.engine.markets[market]
        due = state.interval_start + state.config.funding_interval_ms
        self.now = max(self.now, due)
        self.run(c.SettleFunding(timestamp=self.tick(), market_id=market))

    @rule(
        who=st.sampled_from(PROFILES),
        market=st.sampled_from([APT, BTC]),
        long=st.booleans(),
        amount=st.integers(1, 100),
    )
    def add_margin(self, who: str, market: int, long: bool, amount: int) -> None:
        self.run(
            c.AddMargin(
                timestamp=self.tick(),
                profile=who,
                market_id=market,
                trade_side=long,
                amount=amount * 10**6,
            )
        )

    @rule(
        who=st.sampled_from(PROFILES),
        market=st.sampled_from([APT, BTC]),
        long=st.booleans(),
        steps=st.integers(-80, 80),
        take_profit=st.booleans(),
    )
    def update_trigger(
        self, who: str, market: int, long: bool, steps: int, take_profit: bool
    ) -> None:
        price = self.mids[market] + steps * STEP[market]
        cls = c.UpdateTakeProfit if take_profit else c.UpdateStopLoss
        self.run(
            cls(
                timestamp=self.tick(),
                profile=who,
                market_id=market,
                trade_side=long,
                price=price if steps else None,
            )
        )

    @rule(who=st.sampled_from(PROFILES), market=st.sampled_from([APT, BTC]))
    def collapse(self, who: str, market: int) -> None:
        self.run(c.CollapsePosition(timestamp=self.tick(), profile=who, market_id=market))

    @rule(market=st.sampled_from([APT, BTC]), who=st.sampled_from(PROFILES))
    def pause(self, market: int, who: str) -> None:
        """Paused, an order is refused and a cancel still works; then trading resumes."""
        self.run(c.PauseMarket(timestamp=self.tick(), market_id=market, paused=True))
        events = self.run(
            c.PlaceMarketOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=market,
                trade_side=True,
                direction=False,
                size=10**6,
                leverage=10,
            )
        )
        assert isinstance(events[0], e.Rejected) and events[0].code == 1002
        self.run(c.PauseMarket(timestamp=self.tick(), market_id=market, paused=False))

    @rule(who=st.sampled_from(PROFILES), lots=st.integers(1, 5), long=st.booleans())
    def delegated_order(self, who: str, lots: int, long: bool) -> None:
        self.run(
            c.EnableDelegation(
                timestamp=self.tick(),
                profile=who,
                delegate_public_key=DELEGATE,
                expires_at=self.now + 5_000,
            )
        )
        self.run(
            c.PlaceLimitOrder(
                timestamp=self.tick(),
                profile=who,
                delegate=DELEGATE,
                market_id=APT,
                trade_side=long,
                direction=False,
                size=lots * 10,
                price=self.mids[APT],
                leverage=10,
            )
        )

    @precondition(lambda self: len(self.log) > 0)
    @invariant()
    def invariants_hold(self) -> None:
        assert violations(self.engine) == []


EngineMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)
TestEngineMachine = EngineMachine.TestCase


def test_the_machine_exercised_the_engine() -> None:
    """Runs after the machine (same module): most commands must have been accepted, and the
    rare paths (liquidations, TP/SL, funding, collapse) must have been reached."""
    if not TOTALS:  # run on its own: drive a short machine first
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(
            EngineMachine, settings=settings(max_examples=40, stateful_step_count=60, deadline=None)
        )
    accepted, rejected = TOTALS["accepted"], TOTALS["rejected"]
    assert accepted > rejected / 3, TOTALS
    for kind in (
        "TradeExecuted",
        "PositionLiquidated",
        "FundingSettled",
        "OrderCancelled",
        "TpSlTriggered",
        "PositionsCollapsed",
    ):
        assert TOTALS[kind] > 0, (kind, TOTALS)
