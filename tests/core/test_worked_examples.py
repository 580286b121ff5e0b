"""The rules file's worked numbers, reproduced through the engine.

APT-USD (testnet id 1338) is used throughout: prices have 3 decimals, sizes 2, money 6.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import FEES_ACCOUNT, HOUSE_ACCOUNT, INSURANCE_FUND
from openperps.core.margin import liquidation_price
from openperps.core.numbers import RATE_ONE, format_fraction
from tests.core.harness import ALICE, APT, BOB, CAROL, KEEPER, Exchange, of, only


def funded() -> Exchange:
    x = Exchange()
    for who in (ALICE, BOB, CAROL, KEEPER):
        x.deposit(who, "10000")
    return x


def test_fee_and_pnl_of_an_opening_and_a_closing_fill() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "5.758")
    opening = only(x.market_order(ALICE, "open long", "10"), e.TradeExecuted)
    # notional 57.58 USDT, taker fee 0.05 % = 0.02879; an opening fill shows pnl = -fee
    assert opening.taker.fee == x.usd("0.02879")
    assert opening.taker.pnl == -x.usd("0.02879")
    assert opening.maker.fee == 0 and opening.maker.pnl == 0
    x.limit(CAROL, "open long", "10", "6.000")
    closing = only(x.market_order(ALICE, "close long", "10"), e.TradeExecuted)
    # realised (6.000 - 5.758) x 10 = 2.42, fee 60 x 0.05 % = 0.03, pnl = 2.39
    assert closing.taker.fee == x.usd("0.03")
    assert closing.taker.pnl == x.usd("2.39")
    assert closing.taker.order_type == 7  # close long
    # Alice paid two fees and made 2.42: all of her margin is back in free balance
    assert x.free(ALICE) == x.usd("10000") - x.usd("0.02879") + x.usd("2.39")
    assert x.engine.accounts[FEES_ACCOUNT].free == x.usd("0.02879") + x.usd("0.03")


def test_entry_price_is_the_size_weighted_average_of_opening_fills() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "5.000")
    x.limit(BOB, "open short", "30", "6.000")
    x.market_order(ALICE, "open long", "10")
    x.market_order(ALICE, "open long", "30")
    pos = x.position(ALICE)
    assert pos.size == x.sz("40")
    # (10 x 5 + 30 x 6) / 40 = 5.75
    assert Fraction(pos.entry_value, pos.size * x.engine.markets[APT].mul) == Fraction(x.px("5.75"))
    bobs = [ev for ev in of(x.log, e.PositionChanged) if ev.profile == BOB]
    assert bobs[-1].entry_value == x.usd("230") and bobs[-1].size == x.sz("40")


def test_liquidation_prices_of_entry_7_at_10x() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=10)
    mul = x.engine.markets[APT].mul
    long = x.position(ALICE, True)
    short = x.position(BOB, False)
    rate = x.market().maintenance_margin_bps
    long_liq = liquidation_price(True, long.size, long.entry_value, long.margin, mul, rate)
    short_liq = liquidation_price(False, short.size, short.entry_value, short.margin, mul, rate)
    # in price units of 0.001: 7 x 0.9 / 0.975 = 6.4615..., 7 x 1.1 / 1.025 = 7.5121...
    assert Decimal(format_fraction(long_liq / 1000)).quantize(Decimal("0.01")) == Decimal("6.46")
    assert Decimal(format_fraction(short_liq / 1000)).quantize(Decimal("0.01")) == Decimal("7.51")


def test_adding_margin_moves_the_liquidation_price_away() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=10)
    mul = x.engine.markets[APT].mul
    pos = x.position(ALICE)
    before = liquidation_price(True, pos.size, pos.entry_value, pos.margin, mul, 250)
    events = x.do(
        c.AddMargin(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, amount=x.usd("3")
        )
    )
    assert only(events, e.MarginAdded).amount == x.usd("3")
    assert only(events, e.PositionChanged).margin == x.usd("10")
    after = liquidation_price(True, pos.size, pos.entry_value, pos.margin, mul, 250)
    assert after < before


def test_liquidation_waterfall_splits_50_30_20() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=10)  # margin 7
    x.limit(CAROL, "open long", "10", "6.450")  # the bid the liquidation sells into
    x.limit(CAROL, "open short", "1", "6.600")  # an ask, so mark = median(index, bid, ask)
    x.oracle("6.450")
    assert x.engine.liquidatable(APT) == [(ALICE, True)]
    free_before = x.free(ALICE)
    events = x.do(
        c.Liquidate(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, liquidator=KEEPER
        )
    )
    trade = only(events, e.TradeExecuted)
    assert trade.taker.order_type == 11 and trade.price == x.px("6.450")
    summary = only(events, e.PositionLiquidated)
    # margin 7 - loss 5.5 - fee 0.03225 = 1.46775 left; 50 / 30 / 20 %
    assert summary.collateral_left == x.usd("1.46775")
    assert summary.to_user == x.usd("0.733875")
    assert summary.to_liquidator == x.usd("0.440325")
    assert summary.to_insurance == x.usd("0.29355")
    assert summary.to_house == 0 and summary.shortfall == 0 and summary.taken_over_size == 0
    assert x.free(ALICE) - free_before == x.usd("0.733875")
    assert x.free(KEEPER) == x.usd("10000") + x.usd("0.440325")
    assert x.free(INSURANCE_FUND) == x.usd("0.29355")
    assert x.position(ALICE) is None


def test_what_the_book_cannot_take_passes_to_the_insurance_fund() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=10)  # bankruptcy price 6.300
    x.limit(CAROL, "open long", "4", "6.400")
    x.limit(CAROL, "open long", "50", "6.000")  # below bankruptcy: never sold into
    x.oracle("6.400")
    events = x.do(
        c.Liquidate(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, liquidator=KEEPER
        )
    )
    summary = only(events, e.PositionLiquidated)
    assert summary.taken_over_size == x.sz("6")
    fund = x.position(INSURANCE_FUND, True)
    # 6 of 10 taken over at the bankruptcy price 6.300: cost basis 37.8
    assert fund.size == x.sz("6") and fund.entry_value == x.usd("37.8")
    # the 4 sold at 6.4: margin share 2.8, loss 2.4, fee 0.0128 -> 0.3872 left to split
    assert summary.collateral_left == x.usd("0.3872")
    assert x.engine.liquidatable(APT) == []


def test_a_shortfall_is_covered_by_the_insurance_fund() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", leverage=10)
    x.limit(CAROL, "open long", "10", "6.000")
    x.limit(CAROL, "open short", "1", "6.500")
    x.oracle("6.000")  # mark 6.0: equity 7 - 10 = -3, bankrupt
    events = x.do(
        c.Liquidate(
            timestamp=x.tick(), profile=ALICE, market_id=APT, trade_side=True, liquidator=KEEPER
        )
    )
    summary = only(events, e.PositionLiquidated)
    # bankruptcy price 6.3 is above the bid 6.0: the fund takes all of it over
    assert summary.taken_over_size == x.sz("10") and summary.shortfall == 0
    assert of(events, e.TradeExecuted) == []


def test_funding_settlement_sums_to_zero_and_longs_pay_when_rate_is_positive() -> None:
    x = funded()
    x.limit(BOB, "open short", "7", "7.000")
    x.limit(CAROL, "open short", "3", "7.000")
    x.market_order(ALICE, "open long", "10")
    # a book above the index: positive premium, longs pay shorts
    x.limit(BOB, "open short", "1", "7.100")
    x.limit(KEEPER, "open long", "1", "7.050")
    x.oracle("7.000")
    rate_event = of(x.oracle("7.000", advance=1_800_000), e.OraclePriceSet)[0]
    assert rate_event.funding_rate > 0
    x.tick(1_800_000)
    events = x.do(c.SettleFunding(timestamp=x.now, market_id=APT))
    settled = only(events, e.FundingSettled)
    assert settled.rate > 0
    assert settled.rate <= x.market().funding_cap
    paid = {(p.profile, p.trade_side): p.amount for p in settled.payments}
    assert paid[(ALICE, True)] < 0 < paid[(BOB, False)]
    assert paid[(CAROL, False)] > 0
    assert sum(paid.values()) + settled.house_remainder == 0
    assert x.free(HOUSE_ACCOUNT) == settled.house_remainder
    # the rate is the premium TWAP (mid 7.075 vs index 7: 1.07 %) clamped to the cap 0.75 %
    assert settled.rate == 75 * RATE_ONE // 10_000
    # and it cannot be settled again before the next interval
    again = x.do(c.SettleFunding(timestamp=x.tick(), market_id=APT))
    assert only(again, e.Rejected).code == 2014
