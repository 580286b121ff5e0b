"""Random command sequences through the whole engine; every rule-file invariant after every step.

Several traders, a market maker and a keeper act on two markets: mints into wallets, deposits
(within the wallet and past it) and withdrawals;
limit orders of all four restrictions, opening and reducing, both sides (hedge mode); market
orders; cancels and the three batch commands; TP/SL with orders and as updates; add margin;
collapse; oracle moves that fire TP/SL and make positions liquidatable; liquidations of
whatever ``engine.liquidatable`` names; funding settled when due; pause and unpause;
delegation (a live key, an expired one, a wrong one); a few malformed commands; and restarts
from a snapshot mid-run.

After every command (``EngineMachine.run``):

- the invariants of ``core.invariants.violations`` (book not crossed, FIFO, conservation to
  the unit, long size = short size, reserved balances consistent) hold;
- the command's events continue the version sequence with no gap and carry its timestamp;
- a refused command yields exactly one ``Rejected`` and changes nothing (snapshots equal
  with version and clock left out); an accepted one starts with its ``CommandExecuted``;
- every ``FundingSettled`` sums to zero, pays every open position exactly
  ``|rate| x size x mark`` (payers rounded up, receivers down) and stays within the cap;
- every liquidation closes the position and splits what was left 50/30/20 (rest to house);
- no profile trades with itself, and fees are the market's rates, rounded up;
- an accepted market order fills something or meets its own profile's orders (self-match):
  one that can do neither is refused, not accepted and cancelled;
- the events alone tell the state: projecting them (open orders and what each has left,
  positions, free and reserved balances, wallets, the fee account as the sum of fill fees) gives
  exactly the engine's state. This is what the read models rely on;
- orders in a paused market are refused with 1002, and a delegate that is not the profile's
  live delegate with 1001.

After every run the event log replayed from nothing rebuilds the same state hash.
A last test checks the run exercised the engine: most commands accepted, every path reached.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import FEES_ACCOUNT, INSURANCE_FUND, Engine
from openperps.core.errors import ErrorCode
from openperps.core.invariants import version_gaps, violations
from openperps.core.markets import default_markets
from openperps.core.numbers import BPS_ONE, RATE_ONE, ceil_div, floor_div
from openperps.core.replay import replay_events
from openperps.core.snapshot import EngineSnapshot

APT, BTC = 1338, 1339  # APT: tick 0.001, min size 0.1; BTC: tick 0.1, min size 0.0001
MARKETS = (APT, BTC)
START_MID = {APT: 7_000, BTC: 900_000}  # 7.000 and 90 000.0
STEP = {APT: 1, BTC: 100}  # price units per step of the machine's price offsets
TRADERS = [f"0x{0xA000 + i:064x}" for i in range(5)]
MAKER = f"0x{0xB000:064x}"
KEEPER = f"0x{0xC000:064x}"
DELEGATES = {who: "0x" + f"{0xD0 + i:02x}" * 32 for i, who in enumerate(TRADERS)}
WRONG_KEY = "0x" + "ee" * 32
T0 = 1_700_000_000_000
LOTS = [1, 2, 3, 5, 8, 13, 21, 50, 100, 400, 2000]  # sizes in multiples of the minimum
ORDER_COMMANDS = (c.PlaceLimitOrder, c.PlaceMarketOrder)

TOTALS: Counter[str] = Counter()

PositionRow = tuple[int, int, int, int, int, int | None, int | None, int]


def business(engine: Engine) -> EngineSnapshot:
    """The state a refused command must leave alone: everything but version and clock."""
    return msgspec.structs.replace(engine.snapshot(), version=0, last_timestamp=0)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(default_markets(), timestamp=T0)
        self.now = T0
        self.mids = dict(START_MID)
        self.log: list[e.Event] = []
        self.paused: set[int] = set()
        self.delegations: dict[str, tuple[str, int]] = {}
        # projections of the event stream, compared with the engine after every command
        self.open_orders: dict[int, int] = {}
        self.positions: dict[tuple[str, int, bool], PositionRow] = {}
        self.balances: dict[str, tuple[int, int]] = {}
        self.wallets: dict[str, int] = {}
        self.fees = 0
        for i, who in enumerate(TRADERS):
            self.fund(who, (500 + 4000 * i) * 10**6)
        self.fund(MAKER, 10**7 * 10**6)
        for market in MARKETS:
            self.run(
                c.SetOraclePrice(timestamp=self.tick(), market_id=market, price=self.mids[market])
            )
            self.quote(market, 3)

    # -- driving and checking ----------------------------------------------------------------

    def tick(self, ms: int = 1) -> int:
        self.now += ms
        return self.now

    def fund(self, who: str, amount: int) -> None:
        """Mint into the wallet, then deposit all of it."""
        self.run(c.Mint(timestamp=self.tick(), profile=who, amount=amount))
        self.run(c.Deposit(timestamp=self.tick(), profile=who, amount=amount))

    def run(self, command: c.Command) -> list[e.Event]:
        engine = self.engine
        start = engine.version
        before = business(engine)
        events = engine.handle(command)
        name = type(command).__name__
        assert events, "every command yields at least one event"
        assert version_gaps(events, start) == []
        assert all(ev.timestamp == command.timestamp for ev in events)
        first = events[0]
        if isinstance(first, e.Rejected):
            assert len(events) == 1, events
            assert business(engine) == before, f"refused {name} changed the state"
            TOTALS["rejected"] += 1
            TOTALS[f"{name} rejected {first.code}"] += 1
            if getattr(command, "profile", None) in TRADERS:
                TOTALS["trader rejected"] += 1
        else:
            assert isinstance(first, e.CommandExecuted) and first.command == command
            TOTALS["accepted"] += 1
            TOTALS[f"{name} accepted"] += 1
            if getattr(command, "profile", None) in TRADERS:
                TOTALS["trader accepted"] += 1
        self.expect(command, events)
        self.check_effects(before, events)
        self.project(events)
        self.compare_projection()
        assert violations(engine) == []
        self.log.extend(events)
        for ev in events:
            TOTALS[type(ev).__name__] += 1
            if isinstance(ev, e.Rejected) and ev is not first:
                TOTALS[f"nested {ev.command} rejected {ev.code}"] += 1
        return events

    def expect(self, command: c.Command, events: list[e.Event]) -> None:
        """What the rules say about this command whatever the state: delegation and pause."""
        first = events[0]
        code = first.code if isinstance(first, e.Rejected) else None
        if isinstance(command, c.UserCommand) and command.delegate is not None:
            granted = self.delegations.get(command.profile)
            live = (
                granted is not None
                and granted[0] == command.delegate.lower()
                and granted[1] > command.timestamp
            )
            forbidden = isinstance(command, (c.Withdraw, c.EnableDelegation, c.DisableDelegation))
            if forbidden or not live:
                assert code == ErrorCode.NOT_AUTHORISED, (command, events)
                return
        assert code != ErrorCode.NOT_AUTHORISED, (command, events)
        if isinstance(command, ORDER_COMMANDS) and command.market_id in self.paused:
            assert code == ErrorCode.MARKET_PAUSED, (command, events)
        subs: list[c.PlaceLimitOrder | c.PlaceMarketOrder] = []
        if isinstance(command, (c.PlaceMultipleOrders, c.CancelAndPlaceMultipleOrders)):
            subs = command.orders
        if subs and code is None:
            accepted = [ev for ev in events if isinstance(ev, e.OrderAccepted)]
            refused = [ev for ev in events[1:] if isinstance(ev, e.Rejected)]
            placed = len(accepted) + len([ev for ev in refused if ev.command != "CancelOrder"])
            assert placed == len(subs), events
            if all(sub.market_id in self.paused for sub in subs):
                assert not accepted
        for ev in events:
            if isinstance(ev, e.OrderAccepted) and ev.order_type < 9:
                assert ev.market_id not in self.paused, "an order was accepted while paused"

    def check_effects(self, before: EngineSnapshot, events: list[e.Event]) -> None:
        engine = self.engine
        # an accepted user market order does something: it fills, or it meets the profile's
        # own resting orders (self-match); one that can do neither is refused (1007, 1014)
        takers = {ev.taker.order_id for ev in events if isinstance(ev, e.TradeExecuted)}
        self_matched = {
            ev.profile
            for ev in events
            if isinstance(ev, e.OrderCancelled) and ev.reason == e.CancelReason.SELF_MATCH
        }
        for ev in events:
            if isinstance(ev, e.OrderAccepted) and ev.is_market and ev.order_type < 9:
                assert ev.order_id in takers or ev.profile in self_matched, events
        for ev in events:
            if isinstance(ev, e.TradeExecuted):
                config = engine.markets[ev.market_id].config
                mul = engine.markets[ev.market_id].mul
                assert ev.maker.profile != ev.taker.profile, "a profile traded with itself"
                assert ev.maker.is_buy != ev.taker.is_buy
                assert ev.price > 0 and ev.price % config.tick == 0
                assert ev.size > 0 and ev.size % config.lot == 0
                notional = ev.price * ev.size * mul
                assert ev.taker.fee == ceil_div(notional * config.taker_fee_bps, BPS_ONE)
                assert ev.maker.fee == ceil_div(notional * config.maker_fee_bps, BPS_ONE)
            elif isinstance(ev, e.FundingSettled):
                self.check_funding(before, ev)
            elif isinstance(ev, e.PositionLiquidated):
                left = ev.collateral_left
                split = (ev.to_user, ev.to_liquidator, ev.to_insurance)
                if left > 0:
                    assert split == (left * 50 // 100, left * 30 // 100, left * 20 // 100)
                    assert sum(split) + ev.to_house == left and ev.shortfall == 0
                else:
                    assert split == (0, 0, 0) and ev.to_house == 0 and ev.shortfall == -left
                assert engine.position(ev.profile, ev.market_id, ev.trade_side) is None
                assert 0 <= ev.taken_over_size <= ev.size
                TOTALS["liquidation taken over"] += ev.taken_over_size > 0
                TOTALS["liquidation shortfall"] += ev.shortfall > 0
                TOTALS["liquidation to user"] += ev.to_user > 0

    def check_funding(self, before: EngineSnapshot, ev: e.FundingSettled) -> None:
        assert sum(p.amount for p in ev.payments) + ev.house_remainder == 0
        market = self.engine.markets[ev.market_id]
        assert -market.config.funding_cap <= ev.rate <= market.config.funding_cap
        snap = next(m for m in before.markets if m.config.market_id == ev.market_id)
        open_positions = sorted((p.profile, p.trade_side, p.size) for p in snap.positions if p.size)
        if ev.rate == 0:
            assert ev.payments == [] and ev.house_remainder == 0
            return
        assert [(p.profile, p.trade_side, p.size) for p in ev.payments] == open_positions
        for p in ev.payments:
            owed = abs(ev.rate) * p.size * ev.mark_price * market.mul
            pays = p.trade_side == (ev.rate > 0)
            expected = -ceil_div(owed, RATE_ONE) if pays else floor_div(owed, RATE_ONE)
            assert p.amount == expected, (p, ev)

    def project(self, events: list[e.Event]) -> None:
        """Apply events the way a read model would, without asking the engine anything."""
        for ev in events:
            if isinstance(ev, e.OrderAccepted):
                assert ev.order_id not in self.open_orders
                self.open_orders[ev.order_id] = ev.size
            elif isinstance(ev, e.TradeExecuted):
                for leg in (ev.maker, ev.taker):
                    assert self.open_orders[leg.order_id] - ev.size == leg.remaining
                    self.fees += leg.fee
                    if leg.remaining:
                        self.open_orders[leg.order_id] = leg.remaining
                    else:
                        del self.open_orders[leg.order_id]
            elif isinstance(ev, e.OrderCancelled):
                assert self.open_orders.pop(ev.order_id) == ev.remaining
            elif isinstance(ev, e.PositionChanged):
                key = (ev.profile, ev.market_id, ev.trade_side)
                if ev.size:
                    self.positions[key] = (
                        ev.trade_id,
                        ev.size,
                        ev.entry_value,
                        ev.margin,
                        ev.leverage,
                        ev.take_profit,
                        ev.stop_loss,
                        ev.available_size,
                    )
                else:
                    self.positions.pop(key, None)
            elif isinstance(ev, e.BalanceChanged):
                self.balances[ev.profile] = (ev.free, ev.reserved)
            elif isinstance(ev, (e.Deposited, e.Withdrawn)):
                reserved = self.balances.get(ev.profile, (0, 0))[1]
                self.balances[ev.profile] = (ev.free, reserved)
                moved = ev.amount if isinstance(ev, e.Withdrawn) else -ev.amount
                assert ev.wallet == self.wallets.get(ev.profile, 0) + moved
                self.wallets[ev.profile] = ev.wallet
            elif isinstance(ev, e.Minted):
                assert ev.wallet == self.wallets.get(ev.profile, 0) + ev.amount
                self.wallets[ev.profile] = ev.wallet
            elif isinstance(ev, e.DelegationEnabled):
                self.delegations[ev.profile] = (ev.delegate_public_key, ev.expires_at)
            elif isinstance(ev, e.DelegationDisabled):
                del self.delegations[ev.profile]
            elif isinstance(ev, e.MarketPaused):
                if ev.paused:
                    self.paused.add(ev.market_id)
                else:
                    self.paused.discard(ev.market_id)

    def compare_projection(self) -> None:
        engine = self.engine
        resting = {
            order.order_id: order.remaining
            for market in engine.markets.values()
            for order in market.book.orders.values()
        }
        assert self.open_orders == resting
        positions = {
            (pos.profile, market_id, pos.trade_side): (
                pos.trade_id,
                pos.size,
                pos.entry_value,
                pos.margin,
                pos.leverage,
                pos.take_profit,
                pos.stop_loss,
                pos.size - pos.pending_reduce,
            )
            for market_id, market in engine.markets.items()
            for pos in market.slots.values()
            if pos.size
        }
        assert self.positions == positions
        assert self.wallets == {p: w.balance for p, w in engine.wallets.items()}
        for profile, account in engine.accounts.items():
            if profile == FEES_ACCOUNT:
                assert account.free == self.fees and account.reserved == 0
            else:
                shown = self.balances.get(profile, (0, 0))
                assert shown == (account.free, account.reserved), profile

    def teardown(self) -> None:
        """The event log alone rebuilds the state, bit for bit (through every restart)."""
        if self.log:
            rebuilt = replay_events(Engine(default_markets(), timestamp=T0), self.log)
            assert rebuilt.state_hash() == self.engine.state_hash()

    # -- building commands -------------------------------------------------------------------

    def signer(self, who: str, via: int) -> str | None:
        """The delegate a command names: mostly none; sometimes the profile's own delegate
        key (live, expired or never granted; now and then in capitals); rarely a key that is
        nobody's. A trader whose delegation is live signs with it more often."""
        live = self.delegations.get(who)
        if live is not None and live[1] > self.now and via >= 20:
            via = 25
        if via < 25:
            return None
        key = DELEGATES.get(who, WRONG_KEY)
        if via == 28:
            return key.upper().replace("0X", "0x")
        return key if via < 29 else WRONG_KEY

    def leverage_for(self, who: str, market: int, long: bool, drawn: int) -> int:
        """The leverage a position already has (mostly) or the one drawn."""
        slot = self.engine.markets[market].slots.get((who, long))
        if slot is not None and (slot.size or slot.pending_open) and drawn != 3:
            return slot.leverage
        return drawn

    def reduce_size(self, who: str, market: int, long: bool, lots: int) -> int | None:
        """A share of what the position has uncommitted (lots 400+ = all, 2000 = too much)."""
        pos = self.engine.position(who, market, long)
        if pos is None:
            return None
        config = self.engine.markets[market].config
        free = pos.size - pos.pending_reduce
        if lots >= 2000:
            return free + config.min_size
        if lots >= 400 or free < 2 * config.min_size:
            return free or config.min_size  # all that is left, dust included
        share = free * min(lots, 13) // 14
        return max(share - share % config.lot, config.min_size)

    def order(
        self,
        who: str,
        market: int,
        long: bool,
        reduce: bool,
        offset: int | None,
        lots: int,
        leverage: int,
        restriction: int = 0,
        trigger: int = 0,
        delegate: str | None = None,
    ) -> c.PlaceLimitOrder | c.PlaceMarketOrder:
        """An order on the market's grids around its mid; ``offset`` None is a market order.

        A reduce order with nothing to reduce on that side turns to the other side, or into
        an opening order, so that most orders make sense; the size of a reduce order is a
        share of the position.
        """
        config = self.engine.markets[market].config
        if reduce and self.engine.position(who, market, long) is None:
            if self.engine.position(who, market, not long) is not None:
                long = not long
            elif lots % 3:
                reduce = False
        size = lots * config.min_size
        if reduce:
            size = self.reduce_size(who, market, long, lots) or size
        leverage = self.leverage_for(who, market, long, leverage)
        if reduce:
            pos = self.engine.position(who, market, long)
            leverage = pos.leverage if pos is not None and trigger != 4 else leverage
        mid = self.mids[market]
        price = None if offset is None else max(mid + offset * STEP[market], config.tick)
        reference = price if price is not None else mid
        away = (10 + 5 * lots % 30) * STEP[market]
        tp = sl = None
        if not reduce and trigger in (1, 3):
            tp = reference + away if long else max(reference - away, config.tick)
        if not reduce and trigger in (2, 3):
            sl = max(reference - away, config.tick) if long else reference + away
        if not reduce and trigger == 4:
            tp = max(reference - away, config.tick) if long else reference + away  # wrong side
        if offset is None:
            return c.PlaceMarketOrder(
                timestamp=self.now,
                profile=who,
                delegate=delegate,
                market_id=market,
                trade_side=long,
                direction=reduce,
                size=size,
                leverage=leverage,
                take_profit=tp,
                stop_loss=sl,
            )
        assert price is not None
        return c.PlaceLimitOrder(
            timestamp=self.now,
            profile=who,
            delegate=delegate,
            market_id=market,
            trade_side=long,
            direction=reduce,
            size=size,
            price=price,
            leverage=leverage,
            restriction=restriction,
            take_profit=tp,
            stop_loss=sl,
        )

    def holder(self, who: str, market: int, long: bool) -> tuple[str, bool]:
        """A trader's position in the market (the drawn one if it exists, else another
        trader's); unchanged when no trader holds one (the command is then refused, 2010)."""
        held = sorted(
            key
            for key, pos in self.engine.markets[market].slots.items()
            if pos.size and key[0] in TRADERS
        )
        if (who, long) in held or not held:
            return who, long
        mine = [key for key in held if key[0] == who]
        return (mine or held)[0]

    def own_orders(self, who: str, market: int) -> list[int]:
        book = self.engine.markets[market].book
        return sorted(o.order_id for o in book.orders.values() if o.profile == who)

    def quote(self, market: int, levels: int) -> None:
        """The market maker replaces its quotes with a ladder around the mid."""
        mine = self.own_orders(MAKER, market)
        for start in range(0, len(mine), 20):
            self.run(
                c.CancelMultipleOrders(
                    timestamp=self.tick(),
                    profile=MAKER,
                    market_id=market,
                    order_ids=mine[start : start + 20],
                )
            )
        if not levels:
            return
        self.tick()
        orders: list[c.PlaceLimitOrder | c.PlaceMarketOrder] = []
        for level in range(1, levels + 1):
            for long in (True, False):
                offset = -2 * level if long else 2 * level
                orders.append(self.order(MAKER, market, long, False, offset, 20 * level, 5))
        self.run(c.PlaceMultipleOrders(timestamp=self.now, profile=MAKER, orders=orders))

    def liquidate_due(self, market: int) -> None:
        """Liquidate whatever the engine names, pass after pass (a close-out trades and so
        moves the mark, which can put another position under)."""
        for _ in range(20):
            due = self.engine.liquidatable(market)
            if not due:
                return
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
                    assert events[0].code == ErrorCode.NOT_LIQUIDATABLE, events
                else:
                    closed += 1
            assert closed, "a pass over liquidatable positions closes at least one"
        assert self.engine.liquidatable(market) == []

    # -- rules -------------------------------------------------------------------------------

    traders = st.sampled_from(TRADERS)
    markets = st.sampled_from(MARKETS)
    lots = st.sampled_from(LOTS)
    leverages = st.sampled_from([1, 2, 3, 5, 10, 20, 20])
    vias = st.integers(0, 29)

    @rule(
        who=st.sampled_from([*TRADERS, KEEPER]),
        amount=st.integers(1, 5_000),
        mint=st.sampled_from([True, True, False]),
    )
    def deposit(self, who: str, amount: int, mint: bool) -> None:
        """Mint and deposit it (accepted), or deposit without minting: past what the wallet
        holds it is refused with 2027 and nothing moves."""
        amount *= 10**6
        if mint:
            self.run(c.Mint(timestamp=self.tick(), profile=who, amount=amount))
        wallet = self.engine.wallet(who)
        events = self.run(c.Deposit(timestamp=self.tick(), profile=who, amount=amount))
        if amount > wallet:
            assert isinstance(events[0], e.Rejected), events
            assert events[0].code == ErrorCode.INSUFFICIENT_WALLET_BALANCE
        else:
            deposited = next(ev for ev in events if isinstance(ev, e.Deposited))
            assert deposited.wallet == wallet - amount == self.engine.wallet(who)

    @rule(who=traders, share=st.sampled_from([1, 5, 9, 10, 10, 12]), via=vias)
    def withdraw(self, who: str, share: int, via: int) -> None:
        """Withdraw within the free balance (accepted) or past it (1009 or 1010)."""
        account = self.engine.account(who)
        free = account.free if account is not None else 0
        # tenths of the free balance; 9 leaves dust: a few units, less than any lot costs
        amount = max(free - 7 if share == 9 else free * share // 10, 1)
        delegate = self.signer(who, via)
        events = self.run(
            c.Withdraw(timestamp=self.tick(), profile=who, delegate=delegate, amount=amount)
        )
        if delegate is None and amount > free:
            assert isinstance(events[0], e.Rejected)
            assert events[0].code in (
                ErrorCode.NOT_ENOUGH_TRADING_BALANCE,
                ErrorCode.NOT_ENOUGH_DEPOSITS,
            )

    @rule(
        who=traders,
        market=markets,
        long=st.booleans(),
        reduce=st.sampled_from([False, False, True]),
        offset=st.integers(-30, 30),
        lots=lots,
        leverage=leverages,
        restriction=st.sampled_from([0, 0, 0, 1, 2, 3]),
        trigger=st.integers(0, 7),
        via=vias,
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
        via: int,
    ) -> None:
        self.tick()
        command = self.order(
            who,
            market,
            long,
            reduce,
            offset,
            lots,
            leverage,
            restriction,
            trigger,
            self.signer(who, via),
        )
        self.run(command)

    @rule(
        who=traders,
        market=markets,
        long=st.booleans(),
        reduce=st.booleans(),
        lots=lots,
        leverage=leverages,
        trigger=st.integers(0, 7),
        via=vias,
    )
    def market_order(
        self,
        who: str,
        market: int,
        long: bool,
        reduce: bool,
        lots: int,
        leverage: int,
        trigger: int,
        via: int,
    ) -> None:
        book = self.engine.markets[market].book
        if (book.best_ask() is None or book.best_bid() is None) and lots % 3:
            self.quote(market, 1)  # most of the time the maker is back before the taker
        self.tick()
        self.run(
            self.order(
                who, market, long, reduce, None, lots, leverage, 0, trigger, self.signer(who, via)
            )
        )

    @rule(
        who=traders,
        market=markets,
        items=st.lists(
            st.tuples(
                st.booleans(),
                st.sampled_from([False, False, True]),
                st.one_of(st.none(), st.integers(-20, 20)),
                st.sampled_from(LOTS[:8]),
                st.sampled_from([0, 0, 1, 2, 3]),
            ),
            min_size=1,
            max_size=6,
        ),
        cancels=st.lists(st.integers(0, 10**6), max_size=4),
        stranger=st.integers(0, 19),
        via=vias,
    )
    def batch(
        self,
        who: str,
        market: int,
        items: list[tuple[bool, bool, int | None, int, int]],
        cancels: list[int],
        stranger: int,
        via: int,
    ) -> None:
        """placeMultipleOrders, or cancelAndPlaceMultipleOrders (its cancels may be none); now
        and then an item names another profile (refused on its own, 1001)."""
        self.tick()
        orders: list[c.PlaceLimitOrder | c.PlaceMarketOrder] = []
        for i, (long, reduce, offset, lots, restriction) in enumerate(items):
            order = self.order(who, market, long, reduce, offset, lots, 10, restriction)
            if stranger == i:
                order = msgspec.structs.replace(
                    order, profile=TRADERS[(TRADERS.index(who) + 1) % 5]
                )
            orders.append(order)
        mine = self.own_orders(who, market)
        delegate = self.signer(who, via)
        if cancels:
            ids = list(dict.fromkeys(mine[p % len(mine)] for p in cancels)) if mine else []
            self.run(
                c.CancelAndPlaceMultipleOrders(
                    timestamp=self.now,
                    profile=who,
                    delegate=delegate,
                    market_id=market,
                    cancel_order_ids=ids,
                    orders=orders,
                )
            )
        else:
            self.run(
                c.PlaceMultipleOrders(
                    timestamp=self.now, profile=who, delegate=delegate, orders=orders
                )
            )

    @rule(
        market=markets,
        picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=5),
        mode=st.integers(0, 9),
        via=vias,
    )
    def cancel(self, market: int, picks: list[int], mode: int, via: int) -> None:
        """Cancel resting orders as their owner, one or several at once; now and then as
        someone else or an id that rests nowhere (2007)."""
        orders = sorted(self.engine.markets[market].book.orders.values(), key=lambda o: o.order_id)
        if not orders:
            return
        target = orders[picks[0] % len(orders)]
        who = target.profile
        delegate = self.signer(who, via)
        if mode < 6:
            self.run(
                c.CancelOrder(
                    timestamp=self.tick(),
                    profile=who if mode else TRADERS[picks[0] % 5],
                    delegate=delegate,
                    market_id=market,
                    order_id=target.order_id if mode > 1 else (picks[0] << 64) | market,
                )
            )
            return
        mine = self.own_orders(who, market)
        ids = list(dict.fromkeys(mine[p % len(mine)] for p in picks))
        if mode == 9:
            ids.append((picks[-1] << 64) | market)
        self.run(
            c.CancelMultipleOrders(
                timestamp=self.tick(),
                profile=who,
                delegate=delegate,
                market_id=market,
                order_ids=ids,
            )
        )

    @rule(
        who=traders,
        market=markets,
        long=st.booleans(),
        steps=st.integers(-60, 60),
        take_profit=st.booleans(),
        via=vias,
    )
    def update_trigger(
        self, who: str, market: int, long: bool, steps: int, take_profit: bool, via: int
    ) -> None:
        """Set a TP or SL mostly on the right side of the mark, or clear it (steps 0)."""
        who, long = self.holder(who, market, long)
        mark = self.engine.markets[market].mark_price() or self.mids[market]
        right = 1 if take_profit == long else -1
        distance = abs(steps) if steps % 5 else -abs(steps)  # one in five on the wrong side
        price = max(mark + right * distance * STEP[market], STEP[market])
        cls = c.UpdateTakeProfit if take_profit else c.UpdateStopLoss
        self.run(
            cls(
                timestamp=self.tick(),
                profile=who,
                delegate=self.signer(who, via),
                market_id=market,
                trade_side=long,
                price=price if steps else None,
            )
        )

    @rule(who=traders, market=markets, long=st.booleans(), share=st.integers(1, 12), via=vias)
    def add_margin(self, who: str, market: int, long: bool, share: int, via: int) -> None:
        who, long = self.holder(who, market, long)
        account = self.engine.account(who)
        free = account.free if account is not None else 0
        self.run(
            c.AddMargin(
                timestamp=self.tick(),
                profile=who,
                delegate=self.signer(who, via),
                market_id=market,
                trade_side=long,
                amount=max(free * share // 20, 1),
            )
        )

    @rule(who=traders, market=markets, lots=st.sampled_from(LOTS[:7]), collapse=st.booleans())
    def hedge(self, who: str, market: int, lots: int, collapse: bool) -> None:
        """Hold both sides of a market at once (hedge mode), then perhaps collapse them."""
        self.quote(market, 2)
        for long in (True, False):
            self.tick()
            self.run(self.order(who, market, long, False, None, lots * (2 if long else 1), 10))
        if collapse:
            self.run(c.CollapsePosition(timestamp=self.tick(), profile=who, market_id=market))

    @rule(who=traders, market=markets, long=st.booleans(), take_profit=st.booleans())
    def trigger_fires(self, who: str, market: int, long: bool, take_profit: bool) -> None:
        """Open at market with a TP or SL a few steps away, then move the price past it."""
        self.quote(market, 3)
        self.tick()
        order = self.order(who, market, long, False, None, 5, 10)
        mid = self.mids[market]
        away = (8 if take_profit == long else -8) * STEP[market]
        if take_profit:
            order = msgspec.structs.replace(order, take_profit=mid + away)
        else:
            order = msgspec.structs.replace(order, stop_loss=mid + away)
        self.run(order)
        self.move_price(market, 16 if away > 0 else -16, False)

    @rule(market=markets, steps=st.integers(-400, 400), requote=st.booleans())
    def move_price(self, market: int, steps: int, requote: bool) -> None:
        """A new index price (time passes); the maker may follow it; the keeper liquidates."""
        low, high = START_MID[market] // 2, START_MID[market] * 2
        self.mids[market] = min(max(self.mids[market] + steps * STEP[market], low), high)
        self.run(
            c.SetOraclePrice(timestamp=self.tick(1_000), market_id=market, price=self.mids[market])
        )
        if requote:
            self.quote(market, 3)
        self.liquidate_due(market)

    @rule(market=markets, down=st.booleans(), size=st.integers(3, 12), refill=st.booleans())
    def shock(self, market: int, down: bool, size: int, refill: bool) -> None:
        """The maker pulls its quotes and the index jumps: leveraged positions go under. The
        keeper closes them into an empty book (the fund takes them over) or, when the maker
        is back first, into the maker's new quotes."""
        self.quote(market, 0)
        steps = self.mids[market] * size // 100 // STEP[market]
        self.move_price(market, -steps if down else steps, refill)

    @rule(market=markets, pick=st.integers(0, 10**6))
    def liquidate_healthy(self, market: int, pick: int) -> None:
        """A keeper tries a position that is not under water: 2013, nothing changes."""
        due = set(self.engine.liquidatable(market))
        healthy = sorted(
            key
            for key, pos in self.engine.markets[market].slots.items()
            if pos.size and key not in due and key[0] != INSURANCE_FUND
        )
        if not healthy:
            return
        profile, side = healthy[pick % len(healthy)]
        events = self.run(
            c.Liquidate(
                timestamp=self.tick(),
                profile=profile,
                market_id=market,
                trade_side=side,
                liquidator=KEEPER,
            )
        )
        assert isinstance(events[0], e.Rejected) and events[0].code == ErrorCode.NOT_LIQUIDATABLE

    @rule(market=markets, wait=st.sampled_from([True, True, False]))
    def settle_funding(self, market: int, wait: bool) -> None:
        """Settle when due (time jumps to the end of the interval), or try early (2014)."""
        state = self.engine.markets[market]
        due = state.interval_start + state.config.funding_interval_ms
        if wait:
            self.now = max(self.now, due)
        events = self.run(c.SettleFunding(timestamp=self.tick(), market_id=market))
        if self.now < due:
            assert isinstance(events[0], e.Rejected) and events[0].code == ErrorCode.FUNDING_NOT_DUE
        else:
            assert any(isinstance(ev, e.FundingSettled) for ev in events)
        self.liquidate_due(market)

    @rule(market=markets, who=traders, lots=lots)
    def pause(self, market: int, who: str, lots: int) -> None:
        """While paused an order is refused (1002), a cancel works, prices still move."""
        self.run(c.PauseMarket(timestamp=self.tick(), market_id=market, paused=True))
        self.tick()
        self.run(self.order(who, market, True, False, -3, lots, 10))
        TOTALS["trader rejected"] -= 1  # refused with 1002 (checked in expect)
        mine = self.own_orders(MAKER, market)
        if mine:
            self.run(
                c.CancelOrder(
                    timestamp=self.tick(), profile=MAKER, market_id=market, order_id=mine[0]
                )
            )
        self.move_price(market, lots % 7 - 3, False)
        self.run(c.PauseMarket(timestamp=self.tick(), market_id=market, paused=False))

    @rule(who=traders, ttl=st.sampled_from([1, 50, 10_000, 10**8]), via=vias)
    def enable_delegation(self, who: str, ttl: int, via: int) -> None:
        self.run(
            c.EnableDelegation(
                timestamp=self.tick(),
                profile=who,
                delegate=DELEGATES[who] if via == 29 else None,
                delegate_public_key=DELEGATES[who],
                expires_at=self.now + ttl,
            )
        )

    @rule(who=traders, via=vias)
    def disable_delegation(self, who: str, via: int) -> None:
        """Revoke a delegation (mostly one that exists; 2019 otherwise)."""
        if who not in self.delegations and via % 4:
            if not self.delegations:
                self.enable_delegation(who, 10**8, 0)
            who = min(self.delegations)
        self.run(
            c.DisableDelegation(
                timestamp=self.tick(), profile=who, delegate=DELEGATES[who] if via == 29 else None
            )
        )

    @rule(ms=st.sampled_from([10, 1_000, 60_000, 600_000]))
    def wait(self, ms: int) -> None:
        """Time passes (delegations expire, funding falls due); the oracle ticks."""
        self.tick(ms)
        for market in MARKETS:
            self.run(
                c.SetOraclePrice(timestamp=self.now, market_id=market, price=self.mids[market])
            )
            self.liquidate_due(market)

    @rule(who=traders, market=markets, kind=st.integers(0, 7))
    def malformed(self, who: str, market: int, kind: int) -> None:
        """Bad input at the boundary: refused with a code, nothing changes (checked in run)."""
        config = self.engine.markets[market].config
        self.tick()
        base = self.order(who, market, True, False, -5, 3, 10)
        assert isinstance(base, c.PlaceLimitOrder)
        bad: dict[str, Any] = [
            {"price": base.price + config.tick // 2 if config.tick > 1 else 0},
            {"size": config.min_size - config.lot},
            {"size": 0},
            {"market_id": 4242},
            {"leverage": 0},
            {"leverage": config.max_leverage + 1},
            {"price": 2**70},
            {"restriction": 7},
        ][kind]
        events = self.run(msgspec.structs.replace(base, **bad))
        assert isinstance(events[0], e.Rejected)
        TOTALS["trader rejected"] -= 1  # meant to be refused: not part of the trader rate

    @rule()
    def restart(self) -> None:
        """Restart from a snapshot: the rest of the run goes on in the restored engine."""
        snapshot = self.engine.snapshot_bytes()
        restored = Engine.restore(snapshot)
        assert restored.snapshot_bytes() == snapshot
        self.engine = restored
        TOTALS["restarts"] += 1


EngineMachine.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None, derandomize=True
)
TestEngineMachine = EngineMachine.TestCase


def test_the_machine_exercised_the_engine() -> None:
    """Runs after the machine (same module): most commands were accepted, and the rare paths
    (liquidations, take-overs, TP/SL, funding, collapse, batches, delegation) were reached."""
    if not TOTALS:  # run on its own: drive a short machine first
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(EngineMachine, settings=EngineMachine.TestCase.settings)
    accepted, rejected = TOTALS["accepted"], TOTALS["rejected"]
    assert accepted >= 2 * rejected, TOTALS
    # the traders' own commands (the rules' random ones, malformed ones included)
    assert TOTALS["trader accepted"] >= 1.5 * TOTALS["trader rejected"], TOTALS
    for kind in (
        "TradeExecuted",
        "PositionLiquidated",
        "FundingSettled",
        "TpSlTriggered",
        "PositionsCollapsed",
        "MarginAdded",
        "Withdrawn",
        "Minted",
        f"Deposit rejected {int(ErrorCode.INSUFFICIENT_WALLET_BALANCE)}",
        "DelegationEnabled",
        "DelegationDisabled",
        "PlaceLimitOrder accepted",
        "PlaceMarketOrder accepted",
        "PlaceMultipleOrders accepted",
        "CancelMultipleOrders accepted",
        "CancelAndPlaceMultipleOrders accepted",
        "UpdateTakeProfit accepted",
        "UpdateStopLoss accepted",
        "restarts",
        "liquidation taken over",
        "liquidation to user",
    ):
        assert TOTALS[kind] > 0, (kind, TOTALS)
