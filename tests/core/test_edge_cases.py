"""Corners of the rules: short liquidations, the fund's own positions, losses past margin."""

from __future__ import annotations

import msgspec

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import HOUSE_ACCOUNT, INSURANCE_FUND
from openperps.core.errors import ErrorCode
from tests.core.harness import ALICE, APT, BOB, CAROL, KEEPER, Exchange, of, only, rejected


def funded(amount: str = "100000") -> Exchange:
    x = Exchange()
    for who in (ALICE, BOB, CAROL, KEEPER):
        x.deposit(who, amount)
    return x


def liquidate(x: Exchange, who: str, long: bool) -> list[e.Event]:
    return x.do(
        c.Liquidate(
            timestamp=x.tick(), profile=who, market_id=APT, trade_side=long, liquidator=KEEPER
        )
    )


def test_a_short_is_liquidated_by_buying_back_no_higher_than_bankruptcy() -> None:
    x = funded()
    x.limit(BOB, "open long", "10", "7.000")
    x.market_order(ALICE, "open short", "10", leverage=10)  # margin 7, bankruptcy 7.700
    x.limit(CAROL, "open short", "3", "7.600")
    x.limit(CAROL, "open short", "20", "7.800")  # beyond bankruptcy
    x.oracle("7.600")
    events = liquidate(x, ALICE, False)
    trade = only(events, e.TradeExecuted)
    assert trade.taker.order_type == 12 and trade.size == x.sz("3")
    summary = only(events, e.PositionLiquidated)
    assert summary.taken_over_size == x.sz("7")
    fund = x.position(INSURANCE_FUND, False)
    # 7 taken over at 7.7: a short's basis grows by the margin behind it
    assert fund.size == x.sz("7") and fund.entry_value == x.usd("53.9")
    assert only(events, e.OrderCancelled).reason == e.CancelReason.LIQUIDATION


def test_the_funds_positions_pay_and_receive_funding_from_its_balance() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=10)
    x.limit(CAROL, "open long", "50", "6.000")
    x.oracle("6.200")
    liquidate(x, ALICE, True)  # all of it passes to the fund (bid below bankruptcy)
    assert x.position(INSURANCE_FUND, True).size == x.sz("10")
    x.limit(KEEPER, "open short", "1", "6.100")  # book: bid 6.0, ask 6.1 below index
    x.oracle("6.200")
    x.tick(3_600_000)
    fund_before = x.free(INSURANCE_FUND)
    settled = only(x.do(c.SettleFunding(timestamp=x.now, market_id=APT)), e.FundingSettled)
    assert settled.rate < 0  # shorts pay the fund's long
    paid = {(p.profile, p.trade_side): p.amount for p in settled.payments}
    assert paid[(INSURANCE_FUND, True)] > 0
    assert x.free(INSURANCE_FUND) - fund_before == paid[(INSURANCE_FUND, True)]
    assert sum(paid.values()) + settled.house_remainder == 0
    assert x.free(HOUSE_ACCOUNT) == settled.house_remainder
    x.limit(KEEPER, "close short", "1", "6.100")
    # a positive rate: the fund's long pays from its balance
    x.limit(CAROL, "open short", "1", "6.500")
    x.oracle("6.100", advance=3_600_000)
    settled = only(x.do(c.SettleFunding(timestamp=x.now, market_id=APT)), e.FundingSettled)
    paid = {(p.profile, p.trade_side): p.amount for p in settled.payments}
    if settled.rate > 0:
        assert paid[(INSURANCE_FUND, True)] < 0
    assert sum(paid.values()) + settled.house_remainder == 0


def test_a_loss_past_the_margin_of_a_voluntary_close_is_covered() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=20)  # margin 3.5
    x.limit(CAROL, "open long", "10", "6.000")
    # closing 5 at 6.0 loses 5 against 1.75 of margin released: the rest comes from margin
    events = x.market_order(ALICE, "close long", "5", leverage=20)
    assert only(events, e.TradeExecuted).taker.pnl < -x.usd("5")
    pos = x.position(ALICE)
    assert pos.margin == 0
    fund = x.free(INSURANCE_FUND)
    # closing the rest: the shortfall falls on the insurance fund
    x.market_order(ALICE, "close long", "5", leverage=20)
    assert x.free(INSURANCE_FUND) < fund and x.position(ALICE) is None


def test_resting_reduce_orders_fill_as_makers() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10")
    x.limit(ALICE, "close long", "4", "7.500")
    events = x.market_order(CAROL, "open long", "4")
    trade = only(events, e.TradeExecuted)
    assert trade.maker.profile == ALICE and trade.maker.order_type == 5
    # realised (7.5 - 7.0) x 4 = 2, maker fee 0
    assert trade.maker.pnl == x.usd("2")
    assert x.position(ALICE).size == x.sz("6")


def test_a_take_profit_without_a_mark_price_is_judged_against_entry() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10")
    tp = c.UpdateTakeProfit(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=x.px("6.900")
    )
    assert rejected(x.do(tp)) == ErrorCode.INVALID_TRIGGER_PRICE
    sl = c.UpdateStopLoss(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=x.px("6.900")
    )
    assert only(x.do(sl), e.PositionChanged).stop_loss == x.px("6.900")
    clear = c.UpdateStopLoss(
        timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, price=None
    )
    assert only(x.do(clear), e.PositionChanged).stop_loss is None


def test_collapse_with_a_loss_takes_it_from_what_remains() -> None:
    x = funded()
    x.limit(BOB, "open short", "2", "8.000")
    x.market_order(ALICE, "open long", "2", leverage=20)  # long 2 @ 8, margin 0.8
    x.limit(CAROL, "open long", "3", "6.000")
    x.market_order(ALICE, "open short", "3", leverage=20)  # short 3 @ 6, margin 0.9
    free = x.free(ALICE)
    events = x.do(c.CollapsePosition(timestamp=x.tick(), profile=ALICE, market_id=APT))
    collapsed = only(events, e.PositionsCollapsed)
    assert collapsed.pnl == -x.usd("4")  # bought at 8, sold at 6, 2 netted
    # released 0.8 + 0.6 = 1.4 does not cover the 4: the remaining short's margin does
    assert x.free(ALICE) == free
    assert x.position(ALICE, False).margin < x.usd("0.3")


def test_a_batch_refuses_what_is_not_an_order() -> None:
    x = funded()
    deposit = c.Deposit(timestamp=x.now, profile=ALICE, amount=1)
    events = x.do(
        c.PlaceMultipleOrders(timestamp=x.tick(), profile=ALICE, orders=[deposit])  # type: ignore[list-item]
    )
    assert rejected(events) == ErrorCode.UNKNOWN_COMMAND
    market = c.PlaceMarketOrder(
        timestamp=x.now,
        profile=ALICE,
        market_id=APT,
        trade_side=True,
        direction=False,
        size=x.sz("1"),
        leverage=10,
    )
    x.limit(BOB, "open short", "1", "7.000")
    events = x.do(c.PlaceMultipleOrders(timestamp=x.tick(), profile=ALICE, orders=[market]))
    assert of(events, e.TradeExecuted)
    floaty = msgspec.structs.replace(market, size=1.0)
    refused = x.do(c.PlaceMultipleOrders(timestamp=x.tick(), profile=ALICE, orders=[floaty]))
    assert rejected(refused) == ErrorCode.INVALID_NUMBER
    cancels = c.CancelMultipleOrders(
        timestamp=x.tick(),
        profile=ALICE,
        market_id=APT,
        order_ids=[1.5],  # type: ignore[list-item]
    )
    assert rejected(x.do(cancels)) == ErrorCode.INVALID_NUMBER


def test_an_order_filled_at_a_better_price_in_parts_never_overdraws() -> None:
    x = Exchange()
    x.deposit(ALICE, "7.035")  # exactly margin + taker fee for 10 @ 7.000 at 10x
    x.deposit(BOB, "1000")
    for price in ("6.991", "6.993", "6.997"):
        x.limit(BOB, "open short", "3.33", price)
    events = x.limit(ALICE, "open long", "10", "7.000")
    assert len(of(events, e.TradeExecuted)) == 3
    assert x.free(ALICE) >= 0 and x.reserved(ALICE) >= 0
