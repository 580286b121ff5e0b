"""Simulated participants, so a demo exchange has real traffic on every topic.

- Market makers quote four levels on both sides around the index, re-quote as it moves
  (keeping orders that still stand at a wanted price, replacing the rest in one
  cancel-and-place batch), lean their quotes against their inventory, and re-quote at once a
  market a taker left one-sided: the demo's books are two-sided whenever a step ends.
- Takers cross the spread with small market orders, opening and closing.
- Leveraged traders open positions at high leverage, add, reduce and close them, set
  take-profits and stop-losses, and sometimes get liquidated by the keepers.

Each participant holds its own Ed25519 key; with ``rest_url`` (as ``openperps serve --sim``
runs it) every order is a signed request to the REST API, exactly as a user's bot sends it,
so the whole path is exercised; without, commands go straight to the sequencer. Seeded: the
same seed gives the same traders and, for the same prices, the same orders.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from openperps.core import commands as c
from openperps.core.book import Book, Order
from openperps.core.events import OrderAccepted, Rejected
from openperps.core.numbers import format_scaled
from openperps.runtime.sequencer import NotDurable, Sequencer
from openperps.signing import PrivateKey, profile_address, sign_request

logger = logging.getLogger("openperps.sim")

USDT = 10**6
LEVELS = 4  # levels each maker quotes a side
INVENTORY_LIMIT = 200  # in minimum sizes: past it, a maker quotes the side adding to it smaller


def sim_key(role: str, index: int, seed: int) -> PrivateKey:
    """A participant's wallet key, derived from the seed (the same seed, the same traders)."""
    return PrivateKey(hashlib.sha256(f"openperps-sim:{seed}:{role}:{index}".encode()).digest())


def sim_profile(role: str, index: int, seed: int) -> str:
    """The profile (trading account) a participant trades from."""
    return profile_address(sim_key(role, index, seed).address)


@dataclass
class SimStats:
    commands: int = 0
    rejected: int = 0
    by_profile: Counter[str] = field(default_factory=Counter)


class SimulatedMarket:
    def __init__(
        self,
        sequencer: Sequencer,
        *,
        rest_url: str | None = None,
        seed: int = 7,
        rate: float = 20.0,
        makers: int = 3,
        takers: int = 4,
        leveraged: int = 4,
    ) -> None:
        self.sequencer = sequencer
        self.rng = random.Random(seed)
        self.rate = rate
        self.rest_url = rest_url
        self.keys: dict[str, PrivateKey] = {}
        groups: list[list[str]] = [[], [], []]
        for group, role, count in zip(
            groups, ("maker", "taker", "leveraged"), (makers, takers, leveraged), strict=True
        ):
            for i in range(count):
                key = sim_key(role, i, seed)
                profile = profile_address(key.address)
                self.keys[profile] = key
                group.append(profile)
        self.makers, self.takers, self.leveraged = groups
        self._http: httpx.AsyncClient | None = None
        self.quotes: dict[tuple[str, int], list[int]] = {}
        self.stats = SimStats()

    async def fund(self) -> None:
        """Give every participant a balance (topped up when it runs low): the operator credits
        the wallet (a transfer in, which works on any network), then the participant
        deposits it like any user."""
        engine = self.sequencer.engine
        for who, amount in (
            *((m, 2_000_000) for m in self.makers),
            *((t, 50_000) for t in self.takers),
            *((t, 5_000) for t in self.leveraged),
        ):
            account = engine.accounts.get(who)
            if account is None or account.free < amount * USDT // 4:
                try:
                    await self.sequencer.execute(
                        c.Mint(timestamp=0, profile=who, amount=amount * USDT)
                    )
                except NotDurable as exc:
                    logger.warning("simulated wallet credit not durable: %s", exc.detail)
                    continue
                await self._run(c.Deposit(timestamp=0, profile=who, amount=amount * USDT))

    async def _run(self, command: c.Command) -> list[int]:
        """Send one participant's command; returns the ids of the orders it placed."""
        self.stats.commands += 1
        if isinstance(command, c.UserCommand):
            self.stats.by_profile[command.profile] += 1
        if self.rest_url is not None:
            return await self._send(command)
        try:
            events = await self.sequencer.execute(command)
        except NotDurable as exc:
            logger.warning("simulated order not durable: %s", exc.detail)
            return []
        self.stats.rejected += sum(isinstance(e, Rejected) for e in events)
        return [e.order_id for e in events if isinstance(e, OrderAccepted)]

    async def _send(self, command: c.Command) -> list[int]:
        """The same command as a signed REST call, as any user's bot would send it."""
        assert isinstance(command, c.UserCommand) and self.rest_url is not None
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.rest_url, timeout=10)
        path, body = self._rest_request(command)
        data = json.dumps(body).encode()
        headers = sign_request(
            self.keys[command.profile], "POST", path, data, time.time_ns() // 1_000_000
        )
        headers["content-type"] = "application/json"
        try:
            response = await self._http.post(path, content=data, headers=headers)
        except httpx.TransportError as exc:
            logger.warning("simulated %s not sent: %s", path, exc)
            return []
        if response.status_code != 200:
            self.stats.rejected += 1
            return []
        if path == "/deposit":
            return []
        data = response.json()["data"]
        self.stats.rejected += len(data.get("refused", []))
        # the orders it placed (a replace also lists the ones it cancelled)
        return [int(o["order_id"]) for o in data["orders"] if o["status"] != "Cancelled"]

    def _rest_request(self, command: c.UserCommand) -> tuple[str, dict[str, Any]]:
        if isinstance(command, c.Deposit):
            return "/deposit", {"amount": format_scaled(command.amount, 6)}
        if isinstance(command, c.CancelMultipleOrders):
            return "/cancelMultipleOrders", {
                "marketId": str(command.market_id),
                "cancelOrderIds": [str(i) for i in command.order_ids],
            }
        if isinstance(command, c.CancelAndPlaceMultipleOrders):
            return "/cancelAndPlaceMultipleOrders", {
                "marketId": str(command.market_id),
                "cancelOrderIds": [str(i) for i in command.cancel_order_ids],
                "orders": [self._order_body(order) for order in command.orders],
            }
        assert isinstance(command, c.PlaceLimitOrder | c.PlaceMarketOrder)
        path = (
            "/placeMarketOrder" if isinstance(command, c.PlaceMarketOrder) else "/placeLimitOrder"
        )
        return path, self._order_body(command)

    def _order_body(self, command: c.PlaceLimitOrder | c.PlaceMarketOrder) -> dict[str, Any]:
        config = self.sequencer.engine.markets[command.market_id].config
        body: dict[str, Any] = {
            "marketId": str(command.market_id),
            "tradeSide": command.trade_side,
            "direction": command.direction,
            "size": format_scaled(command.size, config.size_decimals),
            "leverage": command.leverage,
        }
        for key, value in (("takeProfit", command.take_profit), ("stopLoss", command.stop_loss)):
            if value is not None:
                body[key] = format_scaled(value, config.price_decimals)
        if isinstance(command, c.PlaceLimitOrder):
            body["price"] = format_scaled(command.price, config.price_decimals)
            body["restriction"] = command.restriction
        return body

    async def run(self) -> None:
        await self.fund()
        step = 0
        while True:
            await asyncio.sleep(1.0 / self.rate)
            step += 1
            try:
                await self.step(step)
            except Exception:
                logger.exception("simulation step failed")

    async def step(self, step: int) -> None:
        engine = self.sequencer.engine
        markets = [m for m in sorted(engine.markets) if engine.markets[m].index_price is not None]
        if not markets:
            return
        if step % 200 == 0:
            await self.fund()
        await self.refresh_empty_sides()  # a liquidation since the last step may have swept one
        market_id = self.rng.choice(markets)
        roll = self.rng.random()
        if roll < 0.45:
            await self.quote(self.rng.choice(self.makers), market_id)
        elif roll < 0.75:
            await self.take(self.rng.choice(self.takers), market_id)
        else:
            await self.lever(self.rng.choice(self.leveraged), market_id)
        await self.refresh_empty_sides()

    # -- market makers ----------------------------------------------------------------------------

    async def quote(self, maker: str, market_id: int) -> None:
        """Re-quote ``LEVELS`` levels a side around the index, leaning against inventory.

        As a real market maker does: an order already resting at a wanted price (and not mostly
        filled) is kept, with its place in the queue; the stale quotes are cancelled and the
        new ones placed in one ``cancelAndPlaceMultipleOrders``, so no one ever sees the
        maker's quotes half replaced."""
        market = self.sequencer.engine.markets[market_id]
        wanted = self._wanted_quotes(maker, market_id)
        resting = [
            order
            for order_id in self.quotes.pop((maker, market_id), [])
            if (order := market.book.orders.get(order_id)) is not None
        ]
        kept: list[int] = []
        for order in resting:
            match = next((w for w in wanted if w[:2] == (order.price, order.is_buy)), None)
            if match is not None and order.remaining * 2 >= match[2]:
                wanted.remove(match)
                kept.append(order.order_id)
        stale = [o for o in resting if o.order_id not in kept]
        placed: list[int] = []
        if wanted:  # one command: the stale quotes go and the new ones come in together
            placed = await self._run(
                c.CancelAndPlaceMultipleOrders(
                    timestamp=0,
                    profile=maker,
                    market_id=market_id,
                    cancel_order_ids=[o.order_id for o in stale],
                    orders=self._quote_orders(maker, market_id, wanted, stale),
                )
            )
        elif stale:
            await self._run(
                c.CancelMultipleOrders(
                    timestamp=0,
                    profile=maker,
                    market_id=market_id,
                    order_ids=[o.order_id for o in stale],
                )
            )
        self.quotes[(maker, market_id)] = kept + placed

    def _wanted_quotes(self, maker: str, market_id: int) -> list[tuple[int, bool, int]]:
        """(price, is_buy, size) for each level the maker wants on each side."""
        engine = self.sequencer.engine
        market = engine.markets[market_id]
        config = market.config
        index = market.index_price
        assert index is not None
        long = engine.position(maker, market_id, True)
        short = engine.position(maker, market_id, False)
        inventory = (long.size if long else 0) - (short.size if short else 0)
        limit = config.min_size * INVENTORY_LIMIT
        tick = config.tick
        spread = max(index * 4 // 10_000 // tick, 1) * tick  # about 4 bps each side
        # long: every quote moves down (sell more readily, buy less), up to two spreads
        lean = max(-2 * spread, min(2 * spread, inventory * 2 * spread // limit))
        wanted: list[tuple[int, bool, int]] = []
        for level in range(LEVELS):
            lots = self.rng.randint(5, 25)
            size, half = config.min_size * lots, config.min_size * (lots // 2)
            bid = (index - lean - spread * (level + 1)) // tick * tick
            ask = -(-(index - lean + spread * (level + 1)) // tick) * tick
            # past the inventory limit, the side that adds to it is quoted at half size
            wanted.append((bid, True, half if inventory >= limit else size))
            wanted.append((ask, False, half if inventory <= -limit else size))
        # another maker's stale quote past the index would make a post-only quote cross: a side
        # is moved back as a whole, to a tick behind the best price the others show
        other_bid = self._best_other(market.book, True, maker)
        other_ask = self._best_other(market.book, False, maker)
        first_ask = min(p for p, is_buy, _ in wanted if not is_buy)
        first_bid = max(p for p, is_buy, _ in wanted if is_buy)
        ask_shift = 0 if other_bid is None else max(0, other_bid + tick - first_ask)
        bid_shift = 0 if other_ask is None else max(0, first_bid - other_ask + tick)
        moved = [(p - bid_shift if b else p + ask_shift, b, size) for p, b, size in wanted]
        return [quote for quote in moved if quote[0] > 0]

    @staticmethod
    def _best_other(book: Book, is_buy: bool, maker: str) -> int | None:
        """The best bid (or ask) on ``book`` that is not ``maker``'s own."""
        keys, levels = (book.bid_keys, book.bids) if is_buy else (book.ask_keys, book.asks)
        for key in reversed(keys):
            price = key if is_buy else -key
            if any(order.profile != maker for order in levels[price].values()):
                return price
        return None

    def _quote_orders(
        self,
        maker: str,
        market_id: int,
        wanted: list[tuple[int, bool, int]],
        cancelled: list[Order],
    ) -> list[c.PlaceLimitOrder | c.PlaceMarketOrder]:
        """Post-only quotes. A quote closes an opposite position while the batch has some of it
        left to close (what the cancelled quotes were closing counts as free again), and opens
        (or adds to) one after that."""
        engine = self.sequencer.engine
        # a buy closes a short, a sell a long
        positions = {buy: engine.position(maker, market_id, not buy) for buy in (True, False)}
        closable = {
            is_buy: (pos.size - pos.pending_reduce if pos else 0)
            + sum(o.remaining for o in cancelled if o.direction and o.is_buy == is_buy)
            for is_buy, pos in positions.items()
        }
        orders: list[c.PlaceLimitOrder | c.PlaceMarketOrder] = []
        for price, is_buy, size in wanted:
            pos = positions[is_buy]
            closes = pos is not None and closable[is_buy] >= size
            if closes:
                closable[is_buy] -= size
            orders.append(
                c.PlaceLimitOrder(
                    timestamp=0,
                    profile=maker,
                    market_id=market_id,
                    trade_side=(not is_buy) if closes else is_buy,
                    direction=closes,
                    size=size,
                    price=price,
                    leverage=pos.leverage if closes and pos else 5,
                    restriction=int(c.Restriction.POST_ONLY),
                )
            )
        return orders

    async def refresh_empty_sides(self) -> None:
        """Makers watch the books: a market a taker or a liquidation left one-sided is
        re-quoted at once, by a maker picked at random."""
        engine = self.sequencer.engine
        for market_id in sorted(engine.markets):
            market = engine.markets[market_id]
            if market.index_price is None:
                continue
            if market.book.best_bid() is None or market.book.best_ask() is None:
                await self.quote(self.rng.choice(self.makers), market_id)

    # -- takers and leveraged traders -----------------------------------------------------

    async def take(self, taker: str, market_id: int) -> None:
        engine = self.sequencer.engine
        config = engine.markets[market_id].config
        long = self.rng.random() < 0.5
        pos = engine.position(taker, market_id, long)
        size = config.min_size * self.rng.randint(1, 10)
        if pos is not None and self.rng.random() < 0.5:
            await self._run(
                c.PlaceMarketOrder(
                    timestamp=0,
                    profile=taker,
                    market_id=market_id,
                    trade_side=long,
                    direction=True,
                    size=min(size, pos.size - pos.pending_reduce) or pos.size,
                    leverage=pos.leverage,
                )
            )
            return
        await self._run(
            c.PlaceMarketOrder(
                timestamp=0,
                profile=taker,
                market_id=market_id,
                trade_side=long,
                direction=False,
                size=size,
                leverage=pos.leverage if pos else 3,
            )
        )

    async def lever(self, trader: str, market_id: int) -> None:
        engine = self.sequencer.engine
        market = engine.markets[market_id]
        config = market.config
        long = self.rng.random() < 0.5
        pos = engine.position(trader, market_id, long)
        if pos is None:
            leverage = self.rng.choice([10, 15, 20])
            # triggers are checked against the mark price, which a jump can carry past the
            # index: a trader sets them from the mark, as a screen shows it
            mark = market.mark_price() or 0
            tick = config.tick
            move = mark * self.rng.randint(50, 300) // 10_000 // tick * tick
            tp = mark + move if long else mark - move
            sl = mark - move if long else mark + move
            await self._run(
                c.PlaceMarketOrder(
                    timestamp=0,
                    profile=trader,
                    market_id=market_id,
                    trade_side=long,
                    direction=False,
                    size=config.min_size * self.rng.randint(5, 40),
                    leverage=leverage,
                    take_profit=tp if self.rng.random() < 0.5 and tp > 0 else None,
                    stop_loss=sl if self.rng.random() < 0.3 and sl > 0 else None,
                )
            )
            return
        roll = self.rng.random()
        available = pos.size - pos.pending_reduce
        if roll < 0.4:
            size = config.min_size * self.rng.randint(1, 10)
            await self._run(
                c.PlaceMarketOrder(
                    timestamp=0,
                    profile=trader,
                    market_id=market_id,
                    trade_side=long,
                    direction=False,
                    size=size,
                    leverage=pos.leverage,
                )
            )
        elif roll < 0.8 and available:
            size = max(available // 2 // config.lot * config.lot, config.min_size)
            await self._run(
                c.PlaceMarketOrder(
                    timestamp=0,
                    profile=trader,
                    market_id=market_id,
                    trade_side=long,
                    direction=True,
                    size=min(size, available),
                    leverage=pos.leverage,
                )
            )
        elif available:
            await self._run(
                c.PlaceMarketOrder(
                    timestamp=0,
                    profile=trader,
                    market_id=market_id,
                    trade_side=long,
                    direction=True,
                    size=available,
                    leverage=pos.leverage,
                )
            )
