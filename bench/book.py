"""Reading a deep order book: what the feed and REST pay per read when a market holds
thousands of levels.

A maker rests ``--levels`` (2 000) bids and as many asks at distinct prices on APT-USD, through
the engine, and the read models fold in the events. Then, best of ``--rounds``:

- ``book_of``: the best 100 levels a side as (price, size), which the order-book push, REST's
  market price and the delta streams read; the read models keep each side's prices in order,
  so this costs the 100 levels, not the book;
- the baseline, in the same run: the same 100 levels a side found by sorting the book's levels,
  as a reader without kept order must;
- ``orderbook_push_us``: the whole ``orderbook`` push state at depth 100, its records as the
  feed gets them (a level unchanged since the last read is not rendered again);
- ``delta_batch_us``: one top-of-book change (the best bid cancelled, a new best bid placed)
  folded into the read models and turned into the delta of a depth-100 stream;
- ``level_apply_us``: the read models' cost per level event while the book was built.

Prints figures, then as its last line one JSON object:
{"bench": "book", "levels_per_side": N, "book_of_us": X, "sorted_baseline_us": X,
 "speedup": R, "orderbook_push_us": X, "delta_batch_us": X, "level_apply_us": X}
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.markets import default_markets
from openperps.feed.hub import Hub
from openperps.feed.session import Subscription
from openperps.indexer import ReadModels
from openperps.indexer.topics import TopicData

MARKET = 1338  # APT-USD: prices in 0.001
MAKER = "0x" + "a1" * 32
DEPTH = 100


def best_us(work: Callable[[], object], rounds: int, per_round: int) -> float:
    """The best round's time per call, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            work()
        best = min(best, (time.perf_counter() - started) / per_round)
    return best * 1e6


def sorted_top(book: dict[tuple[bool, int], int]) -> tuple[list[tuple[int, int]], ...]:
    """The baseline: the best levels a side by sorting the whole book."""
    bids = sorted(((p, s) for (ask, p), s in book.items() if not ask), reverse=True)
    asks = sorted((p, s) for (ask, p), s in book.items() if ask)
    return bids[:DEPTH], asks[:DEPTH]


def accepted(events: list[e.Event]) -> int:
    """The id of the order a PlaceLimitOrder's events accepted."""
    return next(event.order_id for event in events if isinstance(event, e.OrderAccepted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--levels", type=int, default=2_000, help="levels a side")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    levels = args.levels

    engine = Engine(default_markets())
    models = ReadModels(default_markets())
    models.apply_all(engine.handle(c.Mint(timestamp=1, profile=MAKER, amount=10**15)))
    models.apply_all(engine.handle(c.Deposit(timestamp=1, profile=MAKER, amount=10**15)))
    orders: list[list[e.Event]] = []
    for i in range(levels):
        for long, price in ((True, 6_000 - i), (False, 8_000 + i)):
            order = c.PlaceLimitOrder(
                timestamp=2,
                profile=MAKER,
                market_id=MARKET,
                trade_side=long,
                direction=False,
                size=100,
                price=price,
                leverage=10,
            )
            orders.append(engine.handle(order))
    started = time.perf_counter()
    for batch in orders:
        models.apply_all(batch)
    level_apply_us = (time.perf_counter() - started) / len(orders) * 1e6
    book = models.books[MARKET]
    assert len(book) == 2 * levels, "every order rests at a level of its own"
    assert models.book_of(MARKET, DEPTH) == sorted_top(book)

    data = TopicData(models)
    per_round = max(20, 200_000 // levels)
    book_of_us = best_us(lambda: models.book_of(MARKET, DEPTH), args.rounds, per_round)
    baseline_us = best_us(lambda: sorted_top(book), args.rounds, per_round)
    push_us = best_us(lambda: data.orderbook(MARKET, DEPTH), args.rounds, per_round)

    hub = Hub(data)
    hub.add("client", Subscription("orderbook", MARKET, DEPTH, delta=True))
    changes = 0

    best_order = accepted(orders[0])

    def top_of_book_change() -> None:
        nonlocal best_order, changes
        events = engine.handle(
            c.CancelOrder(timestamp=3, profile=MAKER, market_id=MARKET, order_id=best_order)
        )
        placed = engine.handle(
            c.PlaceLimitOrder(
                timestamp=3,
                profile=MAKER,
                market_id=MARKET,
                trade_side=True,
                direction=False,
                size=100,
                price=6_001 + changes,  # better than the bid just cancelled
                leverage=10,
            )
        )
        best_order = accepted(placed)
        pushes, _changed = hub.collect(models.apply_all(events + placed))
        changes += len(pushes)

    delta_us = best_us(top_of_book_change, args.rounds, 200)
    assert changes == args.rounds * 200, "one delta per change"

    print(f"book:     {levels:,} levels a side on APT-USD (one maker, one order a level)")
    print(
        f"book_of:  the best {DEPTH} a side in {book_of_us:,.1f} us; sorting the book for them "
        f"takes {baseline_us:,.1f} us ({baseline_us / book_of_us:,.0f}x)"
    )
    print(
        f"push:     the orderbook state at depth {DEPTH}, its levels unchanged since the last "
        f"read: {push_us:,.1f} us"
    )
    print(
        f"delta:    a top-of-book change (cancel the best bid, place a better one) folded in "
        f"and turned into a depth-{DEPTH} delta: {delta_us:,.1f} us (the engine's part included)"
    )
    print(f"apply:    {level_apply_us:,.2f} us a level event while the book was built")
    print(
        json.dumps(
            {
                "bench": "book",
                "levels_per_side": levels,
                "book_of_us": round(book_of_us, 1),
                "sorted_baseline_us": round(baseline_us, 1),
                "speedup": round(baseline_us / book_of_us, 1),
                "orderbook_push_us": round(push_us, 1),
                "delta_batch_us": round(delta_us, 1),
                "level_apply_us": round(level_apply_us, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
