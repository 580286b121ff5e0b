"""The demo's simulated market, step by step (no clock): what a user watching the dashboard or
trading against the demo relies on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openperps.core import commands as c
from openperps.core.invariants import violations
from openperps.runtime.app import Exchange, Settings
from openperps.runtime.oracle import RandomWalkOracle
from openperps.runtime.sim import LEVELS, USDT, SimulatedMarket

STEPS = 400


async def test_every_book_is_two_sided_whenever_a_step_ends(tmp_path: Path) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    try:
        engine = exchange.sequencer.engine
        # big moves and frequent jumps: makers' inventories swing and liquidations sweep books
        oracle = RandomWalkOracle(
            [m.config for m in engine.markets.values()], seed=5, step_bps=25, jump_every=10
        )
        sim = SimulatedMarket(exchange.sequencer, seed=5)
        for tick in oracle.step():
            await exchange.keepers.set_price(tick.market_id, tick.price)
        await sim.fund()
        one_sided: list[tuple[int, int]] = []
        for step in range(1, STEPS + 1):
            if step % 5 == 0:
                for tick in oracle.step():
                    await exchange.keepers.set_price(tick.market_id, tick.price)
            await sim.step(step)
            for market_id, market in sorted(engine.markets.items()):
                book = market.book
                assert not book.is_crossed()
                if book.best_bid() is None or book.best_ask() is None:
                    one_sided.append((step, market_id))
        assert one_sided == []
        assert violations(engine) == []
        # every order was taken: no maker quote crossed or closed too much, and no trader's
        # take-profit or stop-loss stood on the wrong side of the mark
        assert exchange.log is not None
        refused = [
            json.loads(envelope.payload)
            async for batch in exchange.log.read_batches(1)
            for envelope in batch
            if envelope.type == "Rejected"
        ]
        assert refused == []
        assert sim.stats.commands > STEPS
        assert exchange.keepers.liquidations > 0  # the books were swept now and then
        # no maker rests more than its levels on a market: stale quotes are cancelled
        for (maker, market_id), ids in sim.quotes.items():
            resting = [i for i in ids if i in engine.markets[market_id].book.orders]
            assert len(resting) <= 2 * LEVELS, (maker, market_id, len(resting))
            book = engine.markets[market_id].book
            assert all(book.orders[i].profile == maker for i in resting)
        mine = {i for ids in sim.quotes.values() for i in ids}
        for market in engine.markets.values():
            makers_orders = [o for o in market.book.orders.values() if o.profile in sim.makers]
            assert {o.order_id for o in makers_orders} <= mine, "a quote the maker lost track of"
    finally:
        await exchange.stop()


@pytest.fixture
async def priced(tmp_path: Path) -> AsyncIterator[tuple[Exchange, SimulatedMarket]]:
    """An exchange with an index price on every market and the simulated traders funded."""
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    try:
        engine = exchange.sequencer.engine
        oracle = RandomWalkOracle([m.config for m in engine.markets.values()], seed=3)
        for tick in oracle.step():
            await exchange.keepers.set_price(tick.market_id, tick.price)
        sim = SimulatedMarket(exchange.sequencer, seed=3)
        await sim.fund()
        yield exchange, sim
    finally:
        await exchange.stop()


async def test_a_requote_at_an_unchanged_index_keeps_the_queue_places(
    priced: tuple[Exchange, SimulatedMarket],
) -> None:
    exchange, sim = priced
    engine = exchange.sequencer.engine
    maker, market_id = sim.makers[0], 1338
    await sim.quote(maker, market_id)
    first = list(sim.quotes[(maker, market_id)])
    assert len(first) == 2 * LEVELS
    await sim.quote(maker, market_id)
    again = sim.quotes[(maker, market_id)]
    # the prices are the same: every order stays where it was (sizes drawn anew do not
    # replace an order unless it is less than half the new size)
    kept = set(first) & set(again)
    assert kept, "a requote replaced every order"
    book = engine.markets[market_id].book
    assert all(i in book.orders for i in again)
    assert not any(i in book.orders for i in set(first) - kept)
    assert len(again) == 2 * LEVELS
    # the index moves by 1 %: every quote is replaced, in one command (one batch of the log: no
    # reader ever sees the maker's quotes half replaced)
    market = engine.markets[market_id]
    assert market.index_price is not None
    await exchange.keepers.set_price(market_id, market.index_price * 101 // 100)
    commands = sim.stats.commands
    await sim.quote(maker, market_id)
    moved = sim.quotes[(maker, market_id)]
    assert sim.stats.commands == commands + 1 and not set(moved) & set(again)
    assert len(moved) == 2 * LEVELS and all(i in book.orders for i in moved)
    assert not any(i in book.orders for i in again)


async def test_a_side_swept_by_a_large_order_is_quoted_again_at_once(
    priced: tuple[Exchange, SimulatedMarket],
) -> None:
    exchange, sim = priced
    engine = exchange.sequencer.engine
    await sim.refresh_empty_sides()  # every market gets its first quotes
    book = engine.markets[1338].book
    assert book.best_bid() is not None and book.best_ask() is not None
    whale = "0x" + "ab" * 32
    for command in (
        c.Mint(timestamp=0, profile=whale, amount=10_000_000 * USDT),
        c.Deposit(timestamp=0, profile=whale, amount=10_000_000 * USDT),
    ):
        await exchange.sequencer.execute(command)
    on_offer = sum(o.remaining for o in book.orders.values() if not o.is_buy)
    await exchange.sequencer.execute(
        c.PlaceMarketOrder(
            timestamp=0,
            profile=whale,
            market_id=1338,
            trade_side=True,
            direction=False,
            size=on_offer,
            leverage=5,
        )
    )
    assert book.best_ask() is None
    await sim.refresh_empty_sides()
    assert book.best_bid() is not None and book.best_ask() is not None
    assert not book.is_crossed()
