"""The invariant checker catches what it is there to catch (a checker that cannot fail
proves nothing)."""

from __future__ import annotations

from openperps.core import events as e
from openperps.core.invariants import conservation_gap, version_gaps, violations
from tests.core.harness import ALICE, APT, BOB, Exchange


def trading() -> Exchange:
    x = Exchange()
    x.deposit(ALICE, "1000")
    x.deposit(BOB, "1000")
    x.limit(BOB, "open short", "5", "7.000")
    x.market_order(ALICE, "open long", "2")
    x.limit(ALICE, "close long", "1", "8.000")
    x.limit(ALICE, "open long", "1", "6.000")
    return x


def test_a_healthy_exchange_has_no_violations() -> None:
    x = trading()
    assert violations(x.engine) == [] and conservation_gap(x.engine) == 0


def test_a_unit_created_from_nothing_is_caught() -> None:
    x = trading()
    x.engine.accounts[ALICE].free += 1
    assert conservation_gap(x.engine) == -1
    assert any("conservation" in v for v in violations(x.engine))


def test_broken_books_and_positions_are_caught() -> None:
    x = trading()
    market = x.engine.markets[APT]
    book = market.book
    long = market.slots[(ALICE, True)]
    long.size += 1
    long.pending_reduce += 5
    found = " | ".join(violations(x.engine))
    assert "long size" in found and "pending reduce" in found
    long.size -= 1
    long.pending_reduce -= 5
    some = next(iter(book.orders.values()))
    some.remaining = 0
    some.reserved += 3
    found = " | ".join(violations(x.engine))
    assert "remaining" in found and "reserved" in found


def test_a_crossed_or_misfiled_book_is_caught() -> None:
    x = trading()
    book = x.engine.markets[APT].book
    bid = next(o for o in book.orders.values() if o.is_buy)
    bid.price = 9_000
    found = " | ".join(violations(x.engine))
    assert "wrong level" in found
    book.bid_keys.append(9_500)
    found = " | ".join(violations(x.engine))
    assert "price index" in found
    assert any("crossed" in v for v in violations(x.engine))


def test_negative_balances_and_orphans_are_caught() -> None:
    x = trading()
    x.engine.accounts[BOB].free = -1
    x.engine.accounts[BOB].reserved = -2
    found = " | ".join(violations(x.engine))
    assert "negative free" in found and "negative reserved" in found
    x2 = trading()
    market = x2.engine.markets[APT]
    del market.slots[(ALICE, True)]
    assert any("no position slot" in v for v in violations(x2.engine))
    x3 = trading()
    market = x3.engine.markets[APT]
    market.slots[(BOB, True)] = type(market.slots[(ALICE, True)])(BOB, APT, True, 1, 1)
    assert any("idle slot" in v for v in violations(x3.engine))
    x4 = trading()
    del x4.engine.accounts[ALICE]
    assert any("without an account" in v for v in violations(x4.engine))


def test_version_gaps_are_caught() -> None:
    events = [e.MarketPaused(1, 0, APT, True), e.MarketPaused(3, 0, APT, False)]
    assert version_gaps(events) == ["version 3 where 2 was due"]
    assert version_gaps(events[1:], 2) == []
