"""Positions: hedge mode, take-profit / stop-loss, collapsing, margin."""

from __future__ import annotations

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import SYSTEM_ACCOUNTS
from openperps.core.errors import ErrorCode
from tests.core.harness import ALICE, APT, BOB, CAROL, KEEPER, Exchange, of, only, rejected


def funded() -> Exchange:
    x = Exchange()
    for who in (ALICE, BOB, CAROL, KEEPER):
        x.deposit(who, "100000")
    return x


def test_hedge_mode_holds_a_long_and_a_short_in_one_market() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    x.limit(CAROL, "open long", "5", "6.900")
    x.market_order(ALICE, "open long", "2")
    x.market_order(ALICE, "open short", "3", leverage=5)
    long, short = x.position(ALICE, True), x.position(ALICE, False)
    assert long.size == x.sz("2") and long.leverage == 10
    assert short.size == x.sz("3") and short.leverage == 5
    assert long.trade_id != short.trade_id


def test_collapse_nets_a_hedged_long_and_short() -> None:
    x = funded()
    x.limit(BOB, "open short", "2", "7.000")
    x.market_order(ALICE, "open long", "2")  # long 2 @ 7.0
    x.limit(CAROL, "open long", "5", "7.500")
    x.market_order(ALICE, "open short", "3")  # short 3 @ 7.5
    free = x.free(ALICE)
    events = x.do(c.CollapsePosition(timestamp=x.tick(), profile=ALICE, market_id=APT))
    collapsed = only(events, e.PositionsCollapsed)
    # 2 netted: the short sold at 7.5 what the long bought at 7.0 -> +1.0
    assert collapsed.size == x.sz("2") and collapsed.pnl == x.usd("1")
    assert x.position(ALICE, True) is None
    assert x.position(ALICE, False).size == x.sz("1")
    # margins of the netted part (1.4 + 1.5) and the pnl come back to free balance
    assert x.free(ALICE) - free == x.usd("1") + x.usd("1.4") + x.usd("1.5")
    assert rejected(x.do(c.CollapsePosition(timestamp=x.tick(), profile=ALICE, market_id=APT))) == (
        ErrorCode.NO_POSITION
    )


def test_take_profit_set_with_the_order_fires_on_mark_price() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    x.market_order(ALICE, "open long", "5", tp="7.500", sl="6.500")
    pos = x.position(ALICE)
    assert pos.take_profit == x.px("7.500") and pos.stop_loss == x.px("6.500")
    x.limit(CAROL, "open long", "5", "7.600")  # a bid to close into
    x.limit(KEEPER, "open short", "1", "7.700")
    events = x.oracle("7.600")
    trigger = only(events, e.TpSlTriggered)
    assert trigger.take_profit and trigger.trigger_price == x.px("7.500")
    trade = only(events, e.TradeExecuted)
    assert trade.taker.order_type == 9 and trade.taker.profile == ALICE
    assert x.position(ALICE) is None


def test_stop_loss_updated_later_fires_for_a_short() -> None:
    x = funded()
    x.limit(BOB, "open long", "5", "7.000")
    x.market_order(ALICE, "open short", "5")
    update = c.UpdateStopLoss(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=False, price=x.px("7.200")
    )
    assert only(x.do(update), e.PositionChanged).stop_loss == x.px("7.200")
    x.oracle("7.100")
    assert x.position(ALICE, False).size == x.sz("5")
    x.limit(CAROL, "open short", "5", "7.250")
    events = x.oracle("7.300")  # no bid: mark = index 7.3 >= 7.2
    assert only(events, e.TpSlTriggered).take_profit is False
    assert only(events, e.TradeExecuted).taker.order_type == 10
    assert x.position(ALICE, False) is None


def test_a_trigger_with_nothing_to_close_into_stays_armed() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    x.market_order(ALICE, "open long", "5", sl="6.500")
    assert of(x.oracle("6.400"), e.TpSlTriggered) == []  # no bid to sell into
    assert x.position(ALICE).stop_loss == x.px("6.500")
    x.limit(CAROL, "open long", "5", "6.400")
    assert of(x.oracle("6.400"), e.TpSlTriggered)


def test_a_stop_loss_the_book_could_only_partly_fill_stays_armed_for_the_rest() -> None:
    x = funded()
    x.limit(BOB, "open short", "2", "7.000")
    x.market_order(ALICE, "open long", "2", sl="6.500", tp="8.000")
    x.limit(CAROL, "open long", "0.5", "6.400")  # all the book will take
    events = x.oracle("6.300")
    assert only(events, e.TpSlTriggered).take_profit is False
    assert only(events, e.TradeExecuted).size == x.sz("0.5")
    left = x.position(ALICE)
    assert left.size == x.sz("1.5"), "the rest is still open"
    assert (left.stop_loss, left.take_profit) == (x.px("6.500"), x.px("8.000"))
    shown = [p for p in of(events, e.PositionChanged) if p.profile == ALICE][-1]
    assert shown.stop_loss == x.px("6.500"), "what the feed is told matches"
    x.limit(CAROL, "open long", "5", "6.200")
    events = x.oracle("6.200")  # fires again, and this time closes it all
    assert only(events, e.TpSlTriggered).take_profit is False
    assert x.position(ALICE) is None


def test_a_stop_loss_that_only_meets_the_traders_own_bid_stays_armed() -> None:
    x = funded()
    x.limit(BOB, "open short", "2", "7.000")
    x.market_order(ALICE, "open long", "2", sl="6.500")
    x.limit(ALICE, "open long", "1", "6.400")  # her own bid is the only one
    x.oracle("6.300")  # the close cancels her bid (no self-trade) and fills nothing
    assert x.position(ALICE).size == x.sz("2")
    assert x.position(ALICE).stop_loss == x.px("6.500")
    x.limit(CAROL, "open long", "5", "6.200")
    assert of(x.oracle("6.200"), e.TpSlTriggered)
    assert x.position(ALICE) is None


def test_trigger_prices_on_the_wrong_side_are_refused() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    assert rejected(x.market_order(ALICE, "open long", "1", tp="6.000")) == 2011
    assert rejected(x.limit(ALICE, "open long", "1", "7.000", sl="7.500")) == 2011
    assert rejected(x.limit(ALICE, "open short", "1", "7.000", tp="7.500")) == 2011
    x.market_order(ALICE, "open long", "1")
    tp = c.UpdateTakeProfit(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=x.px("6.000")
    )
    assert rejected(x.do(tp)) == 2011
    clear = c.UpdateTakeProfit(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=None
    )
    assert only(x.do(clear), e.PositionChanged).take_profit is None
    reduce_with_tp = x.limit(ALICE, "close long", "1", "8.000", tp="9.000")
    assert rejected(reduce_with_tp) == 2011


def test_position_commands_need_a_position() -> None:
    x = funded()
    for command in (
        c.UpdateTakeProfit(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=1
        ),
        c.UpdateStopLoss(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=1
        ),
        c.AddMargin(timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, amount=1),
    ):
        assert rejected(x.do(command)) == ErrorCode.NO_POSITION


def test_add_margin_needs_free_balance() -> None:
    x = Exchange()
    x.deposit(ALICE, "10")
    x.deposit(BOB, "1000")
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "1")
    add = c.AddMargin(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, amount=x.usd("20")
    )
    assert rejected(x.do(add)) == ErrorCode.INSUFFICIENT_BALANCE


def test_liquidation_needs_a_liquidatable_position_and_a_price() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    x.market_order(ALICE, "open long", "5")

    def liquidate(side: bool = True, who: str = ALICE) -> list[e.Event]:
        return x.do(
            c.Liquidate(
                timestamp=x.tick(), profile=who, market_id=APT, trade_side=side, liquidator=KEEPER
            )
        )

    assert rejected(liquidate()) == ErrorCode.NO_ORACLE_PRICE
    x.oracle("7.000")
    assert rejected(liquidate()) == ErrorCode.NOT_LIQUIDATABLE
    assert rejected(liquidate(False)) == ErrorCode.NO_POSITION
    assert rejected(liquidate(who="0xnothex")) == ErrorCode.INVALID_ADDRESS
    assert x.engine.liquidatable(APT) == []


def test_liquidation_cancels_the_positions_resting_orders() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "5")
    x.limit(ALICE, "close long", "2", "9.000")
    x.limit(ALICE, "open long", "1", "5.000")
    x.limit(CAROL, "open long", "5", "6.400")
    x.oracle("6.400")
    events = x.do(
        c.Liquidate(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, liquidator=KEEPER
        )
    )
    reasons = [ev.reason for ev in of(events, e.OrderCancelled)]
    assert reasons == [e.CancelReason.LIQUIDATION, e.CancelReason.LIQUIDATION]
    assert x.reserved(ALICE) == 0 and x.position(ALICE) is None


def test_funding_needs_an_index_and_an_elapsed_interval() -> None:
    x = funded()
    x.tick(3_600_000)
    assert rejected(x.do(c.SettleFunding(timestamp=x.now, market_id=APT))) == 2015
    x.oracle("7.000")
    settled = only(x.do(c.SettleFunding(timestamp=x.tick(), market_id=APT)), e.FundingSettled)
    # no positions and no premium: the interest rate alone, nobody pays
    assert settled.payments == [] and settled.rate == x.market().interest_per_interval
    assert rejected(x.do(c.SettleFunding(timestamp=x.tick(), market_id=APT))) == 2014


def test_funding_with_a_negative_rate_makes_shorts_pay() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    x.market_order(ALICE, "open long", "5")
    x.limit(CAROL, "open long", "1", "6.800")
    x.limit(KEEPER, "open short", "1", "6.900")
    x.oracle("7.000")
    x.tick(3_600_000)
    settled = only(x.do(c.SettleFunding(timestamp=x.now, market_id=APT)), e.FundingSettled)
    assert settled.rate < 0
    paid = {(p.profile, p.trade_side): p.amount for p in settled.payments}
    assert paid[(BOB, False)] < 0 < paid[(ALICE, True)]
    assert sum(paid.values()) + settled.house_remainder == 0


def test_a_dust_position_can_be_closed_whole_and_only_whole() -> None:
    x = funded()
    x.limit(BOB, "open short", "1", "7.000")
    x.market_order(ALICE, "open long", "0.15")
    x.limit(CAROL, "open long", "1", "6.900")
    x.market_order(ALICE, "close long", "0.10")
    assert x.position(ALICE).size == x.sz("0.05")  # below the 0.1 minimum order size
    # less than what is left is still refused; what is left is accepted
    assert rejected(x.market_order(ALICE, "close long", "0.04")) == ErrorCode.SIZE_BELOW_MINIMUM
    assert rejected(x.limit(ALICE, "open long", "0.05", "6.000")) == ErrorCode.SIZE_BELOW_MINIMUM
    rest = x.limit(ALICE, "close long", "0.05", "7.500")
    assert isinstance(rest[0], e.CommandExecuted)
    # while that order rests, nothing of the position is uncommitted: another is refused
    assert rejected(x.market_order(ALICE, "close long", "0.05")) == ErrorCode.SIZE_BELOW_MINIMUM
    (order_id,) = x.order_ids(rest)
    x.do(c.CancelOrder(timestamp=x.tick(), profile=ALICE, market_id=APT, order_id=order_id))
    closed = x.market_order(ALICE, "close long", "0.05")
    assert only(closed, e.TradeExecuted).size == x.sz("0.05")
    assert x.position(ALICE) is None or x.position(ALICE).size == 0


def test_a_system_account_cannot_be_the_liquidator() -> None:
    x = funded()
    x.limit(BOB, "open short", "5", "7.000")
    x.market_order(ALICE, "open long", "5")
    x.limit(CAROL, "open long", "10", "6.000")
    x.oracle("6.400")
    assert x.engine.liquidatable(APT)
    for system in sorted(SYSTEM_ACCOUNTS):
        refused = x.do(
            c.Liquidate(
                timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, liquidator=system
            )
        )
        assert rejected(refused) == ErrorCode.NOT_AUTHORISED
    done = x.do(
        c.Liquidate(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, liquidator=KEEPER
        )
    )
    assert isinstance(done[0], e.CommandExecuted)
