"""The price-time order book of one market.

Each side maps a price to a level: a ``dict`` of resting orders keyed by order id. A Python
dict keeps insertion order, so a level is a FIFO queue that also removes any order in O(1)
(a cancel). The prices of each side are kept in a sorted list with the best price at the
end, so the best level is ``list[-1]`` and emptying it is a ``pop()``: bids ascending, asks
stored negated so that the lowest ask is also the largest key.

The book only stores and orders resting orders; matching, fees and margin are the engine's.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterator


class Order:
    """A resting or in-flight order. Mutable inside the engine; never leaves it."""

    __slots__ = (
        "direction",
        "is_buy",
        "is_market",
        "leverage",
        "market_id",
        "order_id",
        "order_type",
        "price",
        "profile",
        "remaining",
        "reserved",
        "restriction",
        "size",
        "stop_loss",
        "take_profit",
        "timestamp",
        "trade_id",
        "trade_side",
    )

    def __init__(
        self,
        order_id: int,
        profile: str,
        market_id: int,
        trade_side: bool,
        direction: bool,
        order_type: int,
        price: int,
        size: int,
        leverage: int,
        trade_id: int,
        timestamp: int,
        *,
        is_market: bool = False,
        restriction: int = 0,
        reserved: int = 0,
    ) -> None:
        self.order_id = order_id
        self.profile = profile
        self.market_id = market_id
        self.trade_side = trade_side
        self.direction = direction
        # long & open = buy, long & reduce = sell, short & open = sell, short & reduce = buy
        self.is_buy = trade_side != direction
        self.order_type = order_type
        self.price = price
        self.size = size
        self.remaining = size
        self.leverage = leverage
        self.trade_id = trade_id
        self.timestamp = timestamp
        self.is_market = is_market
        self.restriction = restriction
        self.reserved = reserved
        self.take_profit: int | None = None
        self.stop_loss: int | None = None


Level = dict[int, Order]


class Book:
    __slots__ = ("ask_keys", "asks", "bid_keys", "bids", "orders")

    def __init__(self) -> None:
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self.bid_keys: list[int] = []  # ascending prices: best bid last
        self.ask_keys: list[int] = []  # ascending negated prices: best ask last
        self.orders: dict[int, Order] = {}

    def best_bid(self) -> int | None:
        return self.bid_keys[-1] if self.bid_keys else None

    def best_ask(self) -> int | None:
        return -self.ask_keys[-1] if self.ask_keys else None

    def add(self, order: Order) -> None:
        """Rest an order at the back of its price level."""
        price = order.price
        if order.is_buy:
            level = self.bids.get(price)
            if level is None:
                level = self.bids[price] = {}
                insort(self.bid_keys, price)
        else:
            level = self.asks.get(price)
            if level is None:
                level = self.asks[price] = {}
                insort(self.ask_keys, -price)
        level[order.order_id] = order
        self.orders[order.order_id] = order

    def remove(self, order: Order) -> None:
        """Take a resting order off the book (cancelled or filled)."""
        del self.orders[order.order_id]
        price = order.price
        if order.is_buy:
            level = self.bids[price]
            del level[order.order_id]
            if not level:
                del self.bids[price]
                keys = self.bid_keys
                if keys[-1] == price:
                    keys.pop()
                else:
                    keys.remove(price)
        else:
            level = self.asks[price]
            del level[order.order_id]
            if not level:
                del self.asks[price]
                keys = self.ask_keys
                if keys[-1] == -price:
                    keys.pop()
                else:
                    keys.remove(-price)

    def best_level(self, is_buy_side: bool) -> tuple[int, Level] | None:
        """The best level of a side: bids when ``is_buy_side``, else asks."""
        if is_buy_side:
            if not self.bid_keys:
                return None
            price = self.bid_keys[-1]
            return price, self.bids[price]
        if not self.ask_keys:
            return None
        price = -self.ask_keys[-1]
        return price, self.asks[price]

    def levels(self, is_buy_side: bool) -> Iterator[tuple[int, Level]]:
        """Levels of a side from best to worst."""
        if is_buy_side:
            for price in reversed(self.bid_keys):
                yield price, self.bids[price]
        else:
            for key in reversed(self.ask_keys):
                yield -key, self.asks[-key]

    def depth(self, is_buy_side: bool) -> list[tuple[int, int]]:
        """Aggregated (price, total remaining size) per level, best first."""
        return [
            (price, sum(o.remaining for o in level.values()))
            for price, level in self.levels(is_buy_side)
        ]

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid >= ask
