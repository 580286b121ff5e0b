"""Orders: price-time matching, restrictions, order types, ids, self-match, batches."""

from __future__ import annotations

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.errors import ErrorCode
from tests.core.harness import ALICE, APT, BOB, CAROL, KEEPER, Exchange, of, only, rejected


def funded() -> Exchange:
    x = Exchange()
    for who in (ALICE, BOB, CAROL, KEEPER):
        x.deposit(who, "100000")
    return x


def book(x: Exchange) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    b = x.engine.markets[APT].book
    return b.depth(True), b.depth(False)


def test_price_then_time_priority() -> None:
    x = funded()
    first = x.order_ids(x.limit(BOB, "open short", "1", "7.010"))[0]
    second = x.order_ids(x.limit(CAROL, "open short", "1", "7.010"))[0]
    better = x.order_ids(x.limit(KEEPER, "open short", "1", "7.005"))[0]
    trades = of(x.market_order(ALICE, "open long", "2.5"), e.TradeExecuted)
    assert [t.maker.order_id for t in trades] == [better, first, second]
    assert [t.price for t in trades] == [x.px("7.005"), x.px("7.010"), x.px("7.010")]
    assert trades[-1].size == x.sz("0.5") and trades[-1].maker.remaining == x.sz("0.5")
    assert book(x)[1] == [(x.px("7.010"), x.sz("0.5"))]


def test_a_crossing_limit_order_fills_at_the_makers_price_then_rests() -> None:
    x = funded()
    x.limit(BOB, "open short", "1", "7.000")
    events = x.limit(ALICE, "open long", "3", "7.200")
    trade = only(events, e.TradeExecuted)
    assert trade.price == x.px("7.000") and trade.size == x.sz("1")
    assert book(x) == ([(x.px("7.200"), x.sz("2"))], [])
    # the rest reserves margin and maker fee at its own price: 2 x 7.2 / 10
    assert x.reserved(ALICE) == x.usd("1.44")


def test_order_ids_and_trade_ids_encode_counters_over_the_market() -> None:
    x = funded()
    accepted = only(x.limit(BOB, "open short", "1", "7.000"), e.OrderAccepted)
    assert accepted.order_id == (1 << 64) | APT
    assert accepted.trade_id == (1 << 64) | APT
    second = only(x.limit(ALICE, "open long", "1", "6.000"), e.OrderAccepted)
    assert second.order_id == (2 << 64) | APT and second.trade_id == (2 << 64) | APT
    # an increase keeps the position's trade id
    third = only(x.limit(BOB, "open short", "1", "7.100"), e.OrderAccepted)
    assert third.trade_id == accepted.trade_id


def test_order_types_follow_side_and_direction() -> None:
    x = funded()
    x.limit(BOB, "open long", "5", "6.900")
    assert only(x.market_order(ALICE, "open short", "2"), e.OrderAccepted).order_type == 2
    assert only(x.market_order(ALICE, "open short", "1"), e.OrderAccepted).order_type == 4
    x.limit(CAROL, "open short", "10", "7.100")
    assert only(x.market_order(ALICE, "close short", "1"), e.OrderAccepted).order_type == 6
    assert only(x.market_order(ALICE, "close short", "2"), e.OrderAccepted).order_type == 8
    assert only(x.market_order(BOB, "close long", "3"), e.OrderAccepted).order_type == 7
    assert x.position(ALICE, False) is None


def test_fill_or_kill_fills_whole_or_is_refused() -> None:
    x = funded()
    x.limit(BOB, "open short", "1", "7.000")
    x.limit(CAROL, "open short", "1", "7.050")
    refused = x.limit(ALICE, "open long", "3", "7.100", restriction=1)
    assert rejected(refused) == ErrorCode.NOT_ENOUGH_LIQUIDITY
    # own orders do not count as liquidity: they would be cancelled by self-match
    x.limit(ALICE, "open short", "5", "7.060")
    assert rejected(x.limit(ALICE, "open long", "3", "7.100", restriction=1)) == 1007
    filled = x.limit(ALICE, "open long", "2", "7.050", restriction=1)
    assert sum(t.size for t in of(filled, e.TradeExecuted)) == x.sz("2")
    assert of(filled, e.OrderCancelled) == []


def test_immediate_or_cancel_cancels_the_rest() -> None:
    x = funded()
    x.limit(BOB, "open short", "1", "7.000")
    events = x.limit(ALICE, "open long", "3", "7.000", restriction=2)
    assert only(events, e.TradeExecuted).size == x.sz("1")
    cancelled = only(events, e.OrderCancelled)
    assert (
        cancelled.remaining == x.sz("2") and cancelled.reason == e.CancelReason.IMMEDIATE_OR_CANCEL
    )
    assert book(x) == ([], []) and x.reserved(ALICE) == 0


def test_post_only_never_takes() -> None:
    x = funded()
    x.limit(BOB, "open short", "1", "7.000")
    assert rejected(x.limit(ALICE, "open long", "1", "7.000", restriction=3)) == 2008
    rests = x.limit(ALICE, "open long", "1", "6.999", restriction=3)
    assert of(rests, e.TradeExecuted) == []
    assert book(x)[0] == [(x.px("6.999"), x.sz("1"))]


def test_market_order_fills_what_it_can_and_cancels_the_rest() -> None:
    x = funded()
    assert rejected(x.market_order(ALICE, "open long", "1")) == ErrorCode.NOT_ENOUGH_LIQUIDITY
    x.limit(BOB, "open short", "1", "7.000")
    events = x.market_order(ALICE, "open long", "4")
    assert only(events, e.TradeExecuted).size == x.sz("1")
    assert only(events, e.OrderCancelled).reason == e.CancelReason.NO_LIQUIDITY


def test_market_order_fills_only_what_the_balance_pays_for() -> None:
    x = Exchange()
    x.deposit(ALICE, "10")
    x.deposit(BOB, "100000")
    x.limit(BOB, "open short", "100", "7.000")
    events = x.market_order(ALICE, "open long", "100", leverage=1)
    trade = only(events, e.TradeExecuted)
    # 10 USDT at 1x buys 1.42 APT at 7 (9.94 + fee 0.00497); 1.43 would cost 10.015
    assert trade.size == x.sz("1.42")
    # the book had more: what stopped it was the balance, and the cancel says so
    cancelled = only(events, e.OrderCancelled)
    assert cancelled.reason == e.CancelReason.INSUFFICIENT_BALANCE
    assert cancelled.remaining == x.sz("98.58")
    assert x.free(ALICE) >= 0


def test_a_market_order_the_balance_could_pay_further_cancels_for_liquidity() -> None:
    x = Exchange()
    x.deposit(ALICE, "10")
    x.deposit(BOB, "100000")
    x.limit(BOB, "open short", "1", "7.000")
    events = x.market_order(ALICE, "open long", "100", leverage=1)
    assert only(events, e.TradeExecuted).size == x.sz("1")
    assert only(events, e.OrderCancelled).reason == e.CancelReason.NO_LIQUIDITY


def test_a_market_order_whose_balance_pays_for_no_lot_is_refused() -> None:
    """Regression (found by the engine state machine): with a few units of free balance, an
    opening market order was accepted, filled nothing and was cancelled as "no liquidity"."""
    x = Exchange()
    x.deposit(ALICE, "10")
    x.deposit(BOB, "100000")
    x.do(c.Withdraw(timestamp=x.tick(), profile=ALICE, amount=x.usd("10") - 7))
    x.limit(BOB, "open short", "100", "7.000")
    # one lot (0.01 APT at 7.000, 10x) costs 7 000 units of margin plus 35 of fee
    assert rejected(x.market_order(ALICE, "open long", "1")) == 1014
    x.deposit(ALICE, "0.007035")
    assert x.free(ALICE) == 7_042
    assert only(x.market_order(ALICE, "open long", "1"), e.TradeExecuted).size == x.sz("0.01")


def test_self_match_cancels_the_resting_order_and_goes_on() -> None:
    x = funded()
    own = x.order_ids(x.limit(ALICE, "open short", "1", "7.000"))[0]
    x.limit(BOB, "open short", "1", "7.010")
    events = x.limit(ALICE, "open long", "1", "7.010")
    cancelled = only(events, e.OrderCancelled)
    assert cancelled.order_id == own and cancelled.reason == e.CancelReason.SELF_MATCH
    assert only(events, e.TradeExecuted).maker.profile == BOB


def test_cancel_releases_the_reservation_and_only_the_owner_may_cancel() -> None:
    x = funded()
    order_id = x.order_ids(x.limit(ALICE, "open long", "10", "7.000"))[0]
    assert x.reserved(ALICE) == x.usd("7")
    assert (
        rejected(
            x.do(c.CancelOrder(timestamp=x.tick(), profile=BOB, market_id=APT, order_id=order_id))
        )
        == ErrorCode.ORDER_NOT_FOUND
    )
    events = x.do(
        c.CancelOrder(timestamp=x.tick(), profile=ALICE, market_id=APT, order_id=order_id)
    )
    assert only(events, e.OrderCancelled).reason == e.CancelReason.USER
    assert only(events, e.BalanceChanged).reserved == 0
    assert x.free(ALICE) == x.usd("100000")
    again = c.CancelOrder(timestamp=x.tick(), profile=ALICE, market_id=APT, order_id=order_id)
    assert rejected(x.do(again)) == ErrorCode.ORDER_NOT_FOUND


def test_leverage_is_fixed_per_position() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "1", leverage=5)
    assert rejected(x.market_order(ALICE, "open long", "1", leverage=6)) == 1005
    assert rejected(x.market_order(ALICE, "close long", "1", leverage=6)) == 1004
    # a resting opening order fixes the leverage of the slot too
    x.limit(CAROL, "open long", "1", "6.000", leverage=3)
    assert rejected(x.limit(CAROL, "open long", "1", "6.000", leverage=4)) == 1005


def test_reduce_orders_may_not_exceed_the_position() -> None:
    x = funded()
    x.limit(BOB, "open short", "10", "7.000")
    assert rejected(x.limit(ALICE, "close long", "1", "8.000")) == 1011
    x.market_order(ALICE, "open long", "2")
    x.limit(ALICE, "close long", "1.5", "8.000")
    # 0.5 is still available to reduce; 1 is not
    assert rejected(x.limit(ALICE, "close long", "1", "8.000")) == 1011
    rest = x.limit(ALICE, "close long", "0.5", "8.100")
    assert only(rest, e.PositionChanged).available_size == 0


def test_batches_place_and_cancel_each_order_on_its_own() -> None:
    x = funded()

    def order(price: str, size: str = "1") -> c.PlaceLimitOrder:
        return c.PlaceLimitOrder(
            timestamp=x.now,
            profile=ALICE,
            market_id=APT,
            trade_side=True,
            direction=False,
            size=x.sz(size),
            price=x.px(price),
            leverage=10,
        )

    events = x.do(
        c.PlaceMultipleOrders(
            timestamp=x.tick(), profile=ALICE, orders=[order("6.9"), order("0"), order("6.8")]
        )
    )
    ids = x.order_ids(events)
    assert len(ids) == 2 and only(events, e.Rejected).code == ErrorCode.INVALID_PRICE
    events = x.do(
        c.CancelMultipleOrders(
            timestamp=x.tick(), profile=ALICE, market_id=APT, order_ids=[ids[0], 12345]
        )
    )
    assert only(events, e.OrderCancelled).order_id == ids[0]
    assert only(events, e.Rejected).code == ErrorCode.ORDER_NOT_FOUND
    events = x.do(
        c.CancelAndPlaceMultipleOrders(
            timestamp=x.tick(),
            profile=ALICE,
            market_id=APT,
            cancel_order_ids=[ids[1]],
            orders=[order("6.7")],
        )
    )
    assert len(of(events, e.OrderCancelled)) == 1 and len(x.order_ids(events)) == 1
    # cancels alone are a batch too; with nothing on either list it is refused
    (replacement,) = x.order_ids(events)
    pull = c.CancelAndPlaceMultipleOrders(
        timestamp=x.tick(), profile=ALICE, market_id=APT, cancel_order_ids=[replacement], orders=[]
    )
    assert only(x.do(pull), e.OrderCancelled).order_id == replacement
    nothing = c.CancelAndPlaceMultipleOrders(
        timestamp=x.tick(), profile=ALICE, market_id=APT, cancel_order_ids=[], orders=[]
    )
    assert rejected(x.do(nothing)) == ErrorCode.TOO_MANY_ORDERS
    too_many = c.PlaceMultipleOrders(timestamp=x.tick(), profile=ALICE, orders=[order("1")] * 21)
    assert rejected(x.do(too_many)) == ErrorCode.TOO_MANY_ORDERS
    empty = c.PlaceMultipleOrders(timestamp=x.tick(), profile=ALICE, orders=[])
    assert rejected(x.do(empty)) == ErrorCode.TOO_MANY_ORDERS
    foreign = c.PlaceMultipleOrders(timestamp=x.tick(), profile=BOB, orders=[order("6.5")])
    assert only(x.do(foreign), e.Rejected).code == ErrorCode.NOT_AUTHORISED


def test_max_position_value_is_enforced() -> None:
    x = funded()
    config = x.market()
    limit = x.do(
        c.PlaceLimitOrder(
            timestamp=x.tick(),
            profile=ALICE,
            market_id=APT,
            trade_side=True,
            direction=False,
            size=config.max_size,
            price=x.px("100"),
            leverage=20,
        )
    )
    assert rejected(limit) == ErrorCode.MAX_POSITION_VALUE


def test_not_enough_free_balance_for_initial_margin() -> None:
    x = Exchange()
    x.deposit(ALICE, "1")
    assert rejected(x.limit(ALICE, "open long", "10", "7.000", leverage=10)) == 1014
    assert rejected(x.limit(CAROL, "open long", "1", "7.000")) == 1014
    x.deposit(BOB, "1000")
    x.limit(BOB, "open short", "1", "7.000")
    assert rejected(x.market_order(CAROL, "open long", "1")) == 1014


def test_paused_market_refuses_orders_but_allows_cancels() -> None:
    x = funded()
    order_id = x.order_ids(x.limit(ALICE, "open long", "1", "7.000"))[0]
    paused = x.do(c.PauseMarket(timestamp=x.tick(), market_id=APT, paused=True))
    assert only(paused, e.MarketPaused).paused
    assert rejected(x.limit(ALICE, "open long", "1", "7.000")) == ErrorCode.MARKET_PAUSED
    cancel = c.CancelOrder(timestamp=x.tick(), profile=ALICE, market_id=APT, order_id=order_id)
    assert of(x.do(cancel), e.OrderCancelled)
    x.do(c.PauseMarket(timestamp=x.tick(), market_id=APT, paused=False))
    assert x.order_ids(x.limit(ALICE, "open long", "1", "7.000"))
