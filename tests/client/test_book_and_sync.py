"""The SDK's local order book (delta mode, gaps re-snapshotted) and its sync client."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

from openperps.client import Client, Feed, LocalBook, SyncClient
from openperps.signing import PrivateKey
from tests.client.test_sdk import APT, Server


def test_local_book_applies_deltas_and_reports_gaps() -> None:
    book = LocalBook(APT)
    level = {"market_id": APT, "price": 7.0, "size": "2", "is_ask": True}
    assert book.apply({"mode": "snapshot", "data": [level], "transaction_version": 10})
    assert book.best_ask() == (Decimal("7.0"), Decimal("2"))
    bid = {"market_id": APT, "price": 6.9, "size": "1", "is_ask": False}
    assert book.apply(
        {"mode": "delta", "data": [bid], "transaction_version": 12, "prev_version": 5}
    )
    assert book.best_bid() == (Decimal("6.9"), Decimal("1")) and book.version == 12
    assert repr(book) == (
        "LocalBook(market 1338, version 12, 1 bids, best 1 @ 6.9; 1 asks, best 2 @ 7.0)"
    )
    gone = {**level, "size": "0"}
    assert book.apply(
        {"mode": "delta", "data": [gone], "transaction_version": 15, "prev_version": 12}
    )
    assert book.best_ask() is None
    # a delta from after a version we never saw: a gap
    assert not book.apply(
        {"mode": "delta", "data": [], "transaction_version": 30, "prev_version": 20}
    )
    assert book.gaps == 1 and book.version is None


async def test_the_feed_keeps_a_local_book_equal_to_the_servers(server: Server) -> None:
    maker = Client(server.http, PrivateKey.generate())
    async with maker, Feed(server.ws) as feed:
        local = await feed.book(APT)
        await maker.mint_test_tokens("100000")
        await maker.deposit("100000")
        for i in range(20):
            await maker.place_limit_order(
                APT,
                long=i % 2 == 0,
                size="1",
                price=f"{7 + (1 if i % 2 else -1) * (i + 1) / 100}",
                leverage=5,
            )
        models = server.exchange.models
        for _ in range(100):
            await asyncio.sleep(0.05)
            if local.version is not None and local.version >= models.book_version_of(1338):
                break
        bids, asks = models.book_of(1338)
        assert len(local.bids) == len(bids) == 10 and len(local.asks) == len(asks) == 10
        # force a gap: the feed re-snapshots and the book comes back whole
        feed._deliver(
            json.dumps(
                {
                    "message": "orderbook",
                    "mode": "delta",
                    "data": [],
                    "transaction_version": 10**9,
                    "prev_version": 10**9 - 1,
                }
            )
        )
        assert local.version is None and local.gaps == 1
        for _ in range(100):
            await asyncio.sleep(0.05)
            if local.version is not None:
                break
        assert local.version is not None and len(local.bids) == 10


async def test_the_sync_client_works_without_an_event_loop(server: Server) -> None:
    def session() -> list[object]:
        sync = SyncClient(server.http, PrivateKey.generate())
        try:
            sync.mint_test_tokens("100")
            sync.deposit("60")
            return [sync.balance(), sync.positions(), sync.profile, sync.wallet_balance()]
        finally:
            sync.close()

    balance, positions, profile, wallet = await asyncio.to_thread(session)
    assert balance["freeBalance"] == Decimal("60")  # type: ignore[index]
    assert wallet == Decimal("40")
    assert positions == [] and str(profile).startswith("0x")


async def test_a_shallow_local_book_stays_the_servers_top_levels_as_better_ones_go(
    server: Server,
) -> None:
    """A book kept at depth 3: cancelling the best bids one by one brings deeper levels into
    view, and the local book shows them, level for level, as the server holds them."""
    maker = Client(server.http, PrivateKey.generate())
    models = server.exchange.models
    async with maker, Feed(server.ws) as feed:
        local = await feed.book(APT, depth=3)
        await maker.mint_test_tokens("100000")
        await maker.deposit("100000")
        for i in range(8):
            await maker.place_limit_order(
                APT, long=True, size=str(i + 1), price=f"{6.9 - i / 100:.2f}", leverage=5
            )

        def servers_top() -> list[tuple[Decimal, Decimal]]:
            bids, _asks = models.book_of(1338)
            return [(Decimal(p) / 1000, Decimal(s) / 100) for p, s in bids[:3]]

        async def caught_up() -> None:
            # a change deeper than the window sends nothing: read until the book matches
            async with asyncio.timeout(5):
                while local.version is None or local.levels(3)[0] != servers_top():
                    await feed.next()  # the book fills as the feed is read

        await caught_up()
        assert len(local.bids) == 3
        orders = sorted(await maker.open_orders(APT), key=lambda o: -Decimal(o.price))
        for order in orders[:5]:  # the best bid goes, a deeper one comes into view
            await maker.cancel_orders(APT, [order.order_id])
            await caught_up()
            assert len(local.bids) == 3, "exactly the depth asked for, nothing deeper"
        assert servers_top()[0][0] == Decimal("6.85")
