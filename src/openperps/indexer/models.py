"""Read models: projections of the event log that answer every feed topic and REST read.

``ReadModels.apply(event)`` folds one event in; it is idempotent (an event at or below
``version`` is ignored) and it never re-runs an exchange rule: events carry the state they
leave behind. Rows hold integers in the engine's units; ``indexer.render`` turns them into
the wire records (decimal strings) the feed and the REST API serve.

``apply`` also says what changed, as ``Change`` keys (topic, address or market), so the feed
knows which subscriptions to push after a command, and ``live`` records (order and trade
changes) in order, for the two live topics.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from openperps.core import events as e
from openperps.core.engine import SYSTEM_ACCOUNTS
from openperps.core.markets import MarketConfig

HISTORY_LIMIT = 1000  # records kept per address and topic (feeds default to the newest 100)
LIVE_RETENTION = 10_000  # live changes kept per address for resuming (since_version)
RECENT_TRADES_LIMIT = 1000
T = TypeVar("T")

OPEN = "Open"
PARTIALLY_FILLED = "Partially Filled"
FILLED = "Filled"
CANCELLED = "Cancelled"


class OrderRow(msgspec.Struct):
    order_id: int
    address: str
    market_id: int
    order_type: int
    is_market: bool
    trade_side: bool
    direction: bool
    is_buy: bool
    size: int
    remaining: int
    price: int | None  # the limit price; None for a market order
    filled_value: int  # sum of price x size over fills (a market order's average is rendered)
    leverage: int
    status: str
    trade_id: int
    timestamp: int
    last_updated: int
    version: int


class FillRow(msgspec.Struct, frozen=True):
    address: str
    order_id: int
    trade_id: int
    market_id: int
    order_type: int
    size: int
    price: int
    leverage: int
    fee: int
    pnl: int
    timestamp: int
    version: int


class PositionRow(msgspec.Struct, frozen=True):
    address: str
    market_id: int
    trade_side: bool
    trade_id: int
    size: int
    entry_value: int
    margin: int
    leverage: int
    take_profit: int | None
    stop_loss: int | None
    available_size: int
    timestamp: int
    version: int


class TransferRow(msgspec.Struct, frozen=True):
    address: str
    amount: int
    is_deposit: bool
    timestamp: int
    version: int


class FundingRow(msgspec.Struct, frozen=True):
    """One position's payment at one settlement (positive: received)."""

    address: str
    market_id: int
    trade_side: bool
    trade_id: int
    size: int
    rate: int
    amount: int
    timestamp: int
    version: int


class MarketRow(msgspec.Struct):
    config: MarketConfig
    paused: bool = False
    index_price: int | None = None
    mark_price: int | None = None
    last_trade_price: int | None = None
    funding_rate: int = 0  # predicted rate of the running interval
    funding_timestamp: int = 0  # last settlement (ms), 0 before the first
    funding_updated: int = 0  # when the predicted rate was last refreshed (ms)
    funding_version: int = 0
    book_version: int = 0
    book_updated: int = 0


class AccountRow(msgspec.Struct):
    free: int = 0
    reserved: int = 0
    deposited: int = 0
    withdrawn: int = 0
    version: int = 0


class Change(msgspec.Struct, frozen=True, order=True):
    """A (topic, key) whose state changed: key is an address, a market id, or None."""

    topic: str
    key: str | int | None


class Applied(msgspec.Struct):
    """What one batch of events changed, and the live records it produced, in order."""

    changes: set[Change]
    live_orders: list[OrderRow]
    live_fills: list[FillRow]
    book_levels: dict[int, dict[tuple[bool, int], int]]  # market -> (is_ask, price) -> size


class ReadModels:
    """Every projection, in memory. One instance per process that serves reads."""

    def __init__(
        self,
        markets: Iterable[MarketConfig] = (),
        *,
        history_limit: int = HISTORY_LIMIT,
        live_retention: int = LIVE_RETENTION,
    ) -> None:
        self.history_limit = history_limit
        self.live_retention = live_retention
        # address -> every live change (order row copies and fills) in version order
        self.live_log: dict[str, deque[OrderRow | FillRow]] = {}
        # address -> the newest order change, and the newest fill, out of retention: a
        # resume of one topic is exact if nothing of its own kind newer was dropped
        self.live_dropped: dict[str, int] = {}
        self.live_dropped_fills: dict[str, int] = {}
        self.version = 0
        self.markets: dict[int, MarketRow] = {}
        self.orders: dict[int, OrderRow] = {}
        self.order_history: dict[str, deque[int]] = {}  # address -> order ids, newest last
        self.open_orders: dict[str, dict[int, None]] = {}  # address -> ids, oldest first
        self.fills: dict[str, deque[FillRow]] = {}
        self.positions: dict[tuple[str, int, bool], PositionRow] = {}
        self.transfers: dict[str, deque[TransferRow]] = {}
        self.funding: dict[str, deque[FundingRow]] = {}
        self.accounts: dict[str, AccountRow] = {}
        self.wallets: dict[str, int] = {}  # profile -> its owner's wallet balance
        self.delegations: dict[str, tuple[str, int]] = {}
        self.books: dict[int, dict[tuple[bool, int], int]] = {}  # (is_ask, price) -> size
        # (is_ask, price) -> (version, timestamp) of the level's last change
        self.level_versions: dict[int, dict[tuple[bool, int], tuple[int, int]]] = {}
        # market -> the prices of its levels, (bids, asks), each ascending: the best N of a
        # deep book without sorting it on every read
        self.level_prices: dict[int, tuple[list[int], list[int]]] = {}
        self.recent_trades: dict[int, deque[FillRow]] = {}
        self._pending: Applied = _empty()
        for config in markets:  # markets an engine was built with rather than listed on the log
            self.markets[config.market_id] = MarketRow(config)
            self.books[config.market_id] = {}

    # -- applying ---------------------------------------------------------------------------

    def apply_all(self, events: Iterable[e.Event]) -> Applied:
        """Fold in a batch (one or more commands' events) and return what it changed."""
        self._pending = _empty()
        for event in events:
            self.apply(event)
        applied, self._pending = self._pending, _empty()
        return applied

    def apply(self, event: e.Event) -> None:
        if event.version <= self.version:
            return  # idempotent: already folded in
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        self.version = event.version

    def _change(self, topic: str, key: str | int | None) -> None:
        self._pending.changes.add(Change(topic, key))

    def _history(self, table: dict[str, deque[T]], address: str) -> deque[T]:
        rows = table.get(address)
        if rows is None:
            rows = table[address] = deque(maxlen=self.history_limit)
        return rows

    def _level(self, market_id: int, is_ask: bool, price: int, delta: int, event: e.Event) -> None:
        book = self.books.setdefault(market_id, {})
        key = (is_ask, price)
        before = book.get(key, 0)
        size = before + delta
        if size:
            book[key] = size
            self.level_versions.setdefault(market_id, {})[key] = (event.version, event.timestamp)
            if not before:
                bisect.insort(self._prices(market_id)[is_ask], price)
        elif before:
            del book[key]
            self.level_versions.get(market_id, {}).pop(key, None)
            prices = self._prices(market_id)[is_ask]
            del prices[bisect.bisect_left(prices, price)]
        self._pending.book_levels.setdefault(market_id, {})[key] = size
        market = self.markets.get(market_id)
        if market is not None:
            market.book_version = event.version
            market.book_updated = event.timestamp
        self._change("orderbook", market_id)

    # -- handlers -----------------------------------------------------------------------------

    def _market_listed(self, ev: e.MarketListed) -> None:
        config = ev.market
        self.markets[config.market_id] = MarketRow(
            config, funding_updated=ev.timestamp, funding_version=ev.version
        )
        self.books.setdefault(config.market_id, {})
        self.recent_trades.setdefault(config.market_id, deque(maxlen=RECENT_TRADES_LIMIT))
        self._change("live_funding_rate", None)

    def _market_paused(self, ev: e.MarketPaused) -> None:
        self.markets[ev.market_id].paused = ev.paused

    def _account(self, address: str) -> AccountRow:
        row = self.accounts.get(address)
        if row is None:
            row = self.accounts[address] = AccountRow()
        return row

    def _minted(self, ev: e.Minted) -> None:
        self.wallets[ev.profile] = ev.wallet

    def _deposited(self, ev: e.Deposited) -> None:
        if ev.wallet is not None:  # None: a log from before wallets, deposits from nowhere
            self.wallets[ev.profile] = ev.wallet
        account = self._account(ev.profile)
        account.free = ev.free
        account.deposited += ev.amount
        account.version = ev.version
        self._history(self.transfers, ev.profile).append(
            TransferRow(ev.profile, ev.amount, True, ev.timestamp, ev.version)
        )
        self._change("deposit_withdraw_history", ev.profile)

    def _withdrawn(self, ev: e.Withdrawn) -> None:
        if ev.wallet is not None:
            self.wallets[ev.profile] = ev.wallet
        account = self._account(ev.profile)
        account.free = ev.free
        account.withdrawn += ev.amount
        account.version = ev.version
        self._history(self.transfers, ev.profile).append(
            TransferRow(ev.profile, ev.amount, False, ev.timestamp, ev.version)
        )
        self._change("deposit_withdraw_history", ev.profile)

    def _balance(self, ev: e.BalanceChanged) -> None:
        account = self._account(ev.profile)
        account.free = ev.free
        account.reserved = ev.reserved
        account.version = ev.version

    def _order_accepted(self, ev: e.OrderAccepted) -> None:
        is_buy = ev.trade_side != ev.direction
        row = OrderRow(
            ev.order_id,
            ev.profile,
            ev.market_id,
            ev.order_type,
            ev.is_market,
            ev.trade_side,
            ev.direction,
            is_buy,
            ev.size,
            ev.size,
            ev.price,
            0,
            ev.leverage,
            OPEN,
            ev.trade_id,
            ev.timestamp,
            ev.timestamp,
            ev.version,
        )
        self.orders[ev.order_id] = row
        history = self._history_ids(ev.profile)
        history.append(ev.order_id)
        if not ev.is_market and ev.price is not None:
            self.open_orders.setdefault(ev.profile, {})[ev.order_id] = None
            self._level(ev.market_id, not is_buy, ev.price, ev.size, ev)
            self._change("open_orders", ev.profile)
        self._live_order(row)
        self._change("order_history", ev.profile)
        self._change("live_order_history", ev.profile)

    def _live_order(self, row: OrderRow) -> None:
        copy = _copy(row)
        self._pending.live_orders.append(copy)
        self._record_live(row.address, copy)

    def set_live_retention(self, retention: int) -> None:
        """Keep ``retention`` live changes per address from now on (the operator's choice at
        start); shrinking drops the oldest and records what a resume can no longer cover."""
        if retention < 1:
            raise ValueError(f"live retention must be at least 1, got {retention}")
        if retention == self.live_retention:
            return
        self.live_retention = retention
        for address, rows in self.live_log.items():
            for row in list(rows)[: max(len(rows) - retention, 0)]:
                self._drop_live(address, row)
            self.live_log[address] = deque(rows, maxlen=retention)

    def _record_live(self, address: str, row: OrderRow | FillRow) -> None:
        rows = self.live_log.get(address)
        if rows is None:
            rows = self.live_log[address] = deque(maxlen=self.live_retention)
        elif len(rows) == rows.maxlen:
            self._drop_live(address, rows[0])  # falls out of retention
        rows.append(row)

    def _drop_live(self, address: str, row: OrderRow | FillRow) -> None:
        dropped = self.live_dropped_fills if isinstance(row, FillRow) else self.live_dropped
        dropped[address] = max(dropped.get(address, 0), row.version)

    def _history_ids(self, address: str) -> deque[int]:
        ids = self.order_history.get(address)
        if ids is None:
            ids = self.order_history[address] = deque()
        if len(ids) >= self.history_limit:
            dropped = ids.popleft()
            row = self.orders.get(dropped)
            if row is not None and row.status in (FILLED, CANCELLED):
                del self.orders[dropped]
        return ids

    def _trade(self, ev: e.TradeExecuted) -> None:
        for leg in (ev.maker, ev.taker):
            row = self.orders.get(leg.order_id)
            if row is not None:
                row.remaining = leg.remaining
                row.filled_value += ev.price * ev.size
                row.status = FILLED if leg.remaining == 0 else PARTIALLY_FILLED
                row.last_updated = ev.timestamp
                row.version = ev.version
                if not row.is_market and row.price is not None:
                    self._level(ev.market_id, not row.is_buy, row.price, -ev.size, ev)
                    if leg.remaining == 0:
                        self.open_orders.get(leg.profile, {}).pop(leg.order_id, None)
                    self._change("open_orders", leg.profile)
                self._live_order(row)
                self._change("order_history", leg.profile)
                self._change("live_order_history", leg.profile)
            fill = FillRow(
                leg.profile,
                leg.order_id,
                leg.trade_id,
                ev.market_id,
                leg.order_type,
                ev.size,
                ev.price,
                leg.leverage,
                leg.fee,
                leg.pnl,
                ev.timestamp,
                ev.version,
            )
            self._history(self.fills, leg.profile).append(fill)
            self._pending.live_fills.append(fill)
            self._record_live(leg.profile, fill)
            self._change("trade_history", leg.profile)
            self._change("live_trade_history", leg.profile)
            if leg is ev.taker:
                self.recent_trades.setdefault(
                    ev.market_id, deque(maxlen=RECENT_TRADES_LIMIT)
                ).append(fill)
                self._change("recent_trades", ev.market_id)
        market = self.markets.get(ev.market_id)
        if market is not None:
            market.last_trade_price = ev.price

    def _cancelled(self, ev: e.OrderCancelled) -> None:
        row = self.orders.get(ev.order_id)
        if row is None:
            return
        row.status = CANCELLED
        row.remaining = ev.remaining
        row.last_updated = ev.timestamp
        row.version = ev.version
        if not row.is_market and row.price is not None:
            self._level(ev.market_id, not row.is_buy, row.price, -ev.remaining, ev)
            self.open_orders.get(ev.profile, {}).pop(ev.order_id, None)
            self._change("open_orders", ev.profile)
        self._live_order(row)
        self._change("order_history", ev.profile)
        self._change("live_order_history", ev.profile)

    def _position(self, ev: e.PositionChanged) -> None:
        key = (ev.profile, ev.market_id, ev.trade_side)
        if ev.size == 0:
            self.positions.pop(key, None)
        else:
            self.positions[key] = PositionRow(
                ev.profile,
                ev.market_id,
                ev.trade_side,
                ev.trade_id,
                ev.size,
                ev.entry_value,
                ev.margin,
                ev.leverage,
                ev.take_profit,
                ev.stop_loss,
                ev.available_size,
                ev.timestamp,
                ev.version,
            )
        self._change("positions", ev.profile)

    def _oracle(self, ev: e.OraclePriceSet) -> None:
        market = self.markets.get(ev.market_id)
        if market is None:
            return
        market.index_price = ev.index_price
        market.mark_price = ev.mark_price
        market.funding_rate = ev.funding_rate
        market.funding_updated = ev.timestamp
        market.funding_version = ev.version
        self._change("live_funding_rate", None)

    def _funding(self, ev: e.FundingSettled) -> None:
        market = self.markets.get(ev.market_id)
        if market is not None:
            market.funding_timestamp = ev.timestamp
            market.funding_updated = ev.timestamp
            market.funding_version = ev.version
            # the new interval's rate is known at its next index price; until then the rate
            # just settled, which the predicted rate had been converging to (not 0)
            market.funding_rate = ev.rate
        for payment in ev.payments:
            if payment.profile in SYSTEM_ACCOUNTS:
                continue
            self._history(self.funding, payment.profile).append(
                FundingRow(
                    payment.profile,
                    ev.market_id,
                    payment.trade_side,
                    payment.trade_id,
                    payment.size,
                    ev.rate,
                    payment.amount,
                    ev.timestamp,
                    ev.version,
                )
            )
        self._change("live_funding_rate", None)

    def _delegation_enabled(self, ev: e.DelegationEnabled) -> None:
        self.delegations[ev.profile] = (ev.delegate_public_key, ev.expires_at)

    def _delegation_disabled(self, ev: e.DelegationDisabled) -> None:
        self.delegations.pop(ev.profile, None)

    # -- queries ------------------------------------------------------------------------------

    def live_changes_since(
        self, address: str, version: int, fills: bool | None = None
    ) -> tuple[list[OrderRow | FillRow], bool]:
        """Live changes of an address after ``version``, and whether retention covers them
        (False when older changes than the ones kept might be missing): of fills only
        (``fills`` True), of order changes only (False), or of both (None)."""
        dropped = 0
        if fills is not True:
            dropped = self.live_dropped.get(address, 0)
        if fills is not False:
            dropped = max(dropped, self.live_dropped_fills.get(address, 0))
        covered = version >= dropped
        rows = self.live_log.get(address, ())
        return [row for row in rows if row.version > version], covered

    def order_history_of(self, address: str, limit: int = 100, offset: int = 0) -> list[OrderRow]:
        """Newest first."""
        ids = self.order_history.get(address, ())
        rows = [self.orders[i] for i in reversed(ids) if i in self.orders]
        return rows[offset : offset + limit]

    def open_orders_of(self, address: str, market_id: int | None = None) -> list[OrderRow]:
        ids = self.open_orders.get(address, {})
        rows = [self.orders[i] for i in ids]
        return [r for r in rows if market_id is None or r.market_id == market_id]

    def fills_of(self, address: str, limit: int = 100, offset: int = 0) -> list[FillRow]:
        rows = list(reversed(self.fills.get(address, ())))
        return rows[offset : offset + limit]

    def wallet_of(self, address: str) -> int:
        """The wallet balance of a profile's owner (0 for a wallet never credited)."""
        return self.wallets.get(address, 0)

    def transfers_of(self, address: str, limit: int = 100, offset: int = 0) -> list[TransferRow]:
        rows = list(reversed(self.transfers.get(address, ())))
        return rows[offset : offset + limit]

    def funding_of(self, address: str, limit: int = 100, offset: int = 0) -> list[FundingRow]:
        rows = list(reversed(self.funding.get(address, ())))
        return rows[offset : offset + limit]

    def positions_of(self, address: str, market_id: int | None = None) -> list[PositionRow]:
        return [
            row
            for (owner, market, _side), row in sorted(self.positions.items())
            if owner == address and (market_id is None or market == market_id)
        ]

    def _prices(self, market_id: int) -> tuple[list[int], list[int]]:
        prices = self.level_prices.get(market_id)
        if prices is None:
            prices = self.level_prices[market_id] = ([], [])
        return prices

    def best_prices(self, market_id: int, is_ask: bool, depth: int | None = None) -> list[int]:
        """The prices of a side's best ``depth`` levels (all if None), best first."""
        bids, asks = self.level_prices.get(market_id, ([], []))
        if is_ask:
            return asks[:depth] if depth is not None else asks[:]
        start = max(len(bids) - depth, 0) if depth is not None else 0
        return bids[start:][::-1]

    def book_of(
        self, market_id: int, depth: int | None = None
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids best first, asks best first) as (price, size) levels, at most ``depth`` a
        side (all if None)."""
        book = self.books.get(market_id, {})
        bids = [(p, book[(False, p)]) for p in self.best_prices(market_id, False, depth)]
        asks = [(p, book[(True, p)]) for p in self.best_prices(market_id, True, depth)]
        return bids, asks

    def book_version_of(self, market_id: int) -> int:
        """The version of the last change to a market's book (0 before any)."""
        market = self.markets.get(market_id)
        return market.book_version if market is not None else 0

    def recent_trades_of(self, market_id: int, limit: int = 100) -> list[FillRow]:
        return list(reversed(self.recent_trades.get(market_id, ())))[:limit]


def _empty() -> Applied:
    return Applied(set(), [], [], {})


def _copy(row: OrderRow) -> OrderRow:
    return msgspec.structs.replace(row)


_HANDLERS: dict[type, Callable[[ReadModels, Any], None]] = {
    e.MarketListed: ReadModels._market_listed,
    e.MarketPaused: ReadModels._market_paused,
    e.Minted: ReadModels._minted,
    e.Deposited: ReadModels._deposited,
    e.Withdrawn: ReadModels._withdrawn,
    e.BalanceChanged: ReadModels._balance,
    e.OrderAccepted: ReadModels._order_accepted,
    e.TradeExecuted: ReadModels._trade,
    e.OrderCancelled: ReadModels._cancelled,
    e.PositionChanged: ReadModels._position,
    e.OraclePriceSet: ReadModels._oracle,
    e.FundingSettled: ReadModels._funding,
    e.DelegationEnabled: ReadModels._delegation_enabled,
    e.DelegationDisabled: ReadModels._delegation_disabled,
}


class ModelsState(msgspec.Struct):
    """Everything ``ReadModels`` holds at ``version``, for snapshots (no tuple-keyed maps)."""

    version: int
    history_limit: int
    live_retention: int
    markets: list[MarketRow]
    orders: list[OrderRow]
    order_history: list[tuple[str, list[int]]]
    open_orders: list[tuple[str, list[int]]]
    fills: list[tuple[str, list[FillRow]]]
    positions: list[PositionRow]
    transfers: list[tuple[str, list[TransferRow]]]
    funding: list[tuple[str, list[FundingRow]]]
    accounts: list[tuple[str, AccountRow]]
    delegations: list[tuple[str, str, int]]
    levels: list[tuple[int, bool, int, int, int, int]]  # market, is_ask, price, size, v, ts
    recent_trades: list[tuple[int, list[FillRow]]]
    live_orders: list[tuple[str, list[OrderRow]]]
    live_fills: list[tuple[str, list[FillRow]]]
    live_dropped: list[tuple[str, int]]  # order changes (before fills had their own: any)
    wallets: list[tuple[str, int]] = []  # absent from states saved before wallets existed
    # absent from states saved before: then fills count as dropped where anything was
    live_dropped_fills: list[tuple[str, int]] | None = None


def save_state(models: ReadModels) -> ModelsState:
    levels = [
        (market, is_ask, price, size, *models.level_versions[market][(is_ask, price)])
        for market, book in sorted(models.books.items())
        for (is_ask, price), size in sorted(book.items())
    ]
    return ModelsState(
        version=models.version,
        history_limit=models.history_limit,
        live_retention=models.live_retention,
        markets=[models.markets[m] for m in sorted(models.markets)],
        orders=list(models.orders.values()),
        order_history=[(a, list(ids)) for a, ids in models.order_history.items()],
        open_orders=[(a, list(ids)) for a, ids in models.open_orders.items()],
        fills=[(a, list(rows)) for a, rows in models.fills.items()],
        positions=list(models.positions.values()),
        transfers=[(a, list(rows)) for a, rows in models.transfers.items()],
        funding=[(a, list(rows)) for a, rows in models.funding.items()],
        accounts=list(models.accounts.items()),
        delegations=[(a, key, expiry) for a, (key, expiry) in models.delegations.items()],
        levels=levels,
        recent_trades=[(m, list(rows)) for m, rows in models.recent_trades.items()],
        live_orders=[
            (a, [r for r in rows if isinstance(r, OrderRow)]) for a, rows in models.live_log.items()
        ],
        live_fills=[
            (a, [r for r in rows if isinstance(r, FillRow)]) for a, rows in models.live_log.items()
        ],
        live_dropped=list(models.live_dropped.items()),
        wallets=sorted(models.wallets.items()),
        live_dropped_fills=list(models.live_dropped_fills.items()),
    )


def load_state(state: ModelsState) -> ReadModels:
    models = ReadModels(history_limit=state.history_limit, live_retention=state.live_retention)
    models.version = state.version
    limit = state.history_limit
    for market in state.markets:
        models.markets[market.config.market_id] = market
        models.books[market.config.market_id] = {}
    models.orders = {row.order_id: row for row in state.orders}
    models.order_history = {a: deque(ids) for a, ids in state.order_history}
    models.open_orders = {a: dict.fromkeys(ids) for a, ids in state.open_orders}
    models.fills = {a: deque(rows, maxlen=limit) for a, rows in state.fills}
    models.positions = {(r.address, r.market_id, r.trade_side): r for r in state.positions}
    models.transfers = {a: deque(rows, maxlen=limit) for a, rows in state.transfers}
    models.funding = {a: deque(rows, maxlen=limit) for a, rows in state.funding}
    models.accounts = dict(state.accounts)
    models.delegations = {a: (key, expiry) for a, key, expiry in state.delegations}
    for market_id, is_ask, price, size, version, ts in state.levels:
        models.books.setdefault(market_id, {})[(is_ask, price)] = size
        models.level_versions.setdefault(market_id, {})[(is_ask, price)] = (version, ts)
    for market_id, book in models.books.items():
        models.level_prices[market_id] = (
            sorted(price for is_ask, price in book if not is_ask),
            sorted(price for is_ask, price in book if is_ask),
        )
    models.recent_trades = {
        m: deque(rows, maxlen=RECENT_TRADES_LIMIT) for m, rows in state.recent_trades
    }
    fills_by_address = dict(state.live_fills)
    for address, orders in state.live_orders:
        merged: list[OrderRow | FillRow] = [*orders, *fills_by_address.get(address, [])]
        # within one trade event an order's change comes before its fill
        merged.sort(key=lambda r: (r.version, isinstance(r, FillRow)))
        models.live_log[address] = deque(merged, maxlen=state.live_retention)
    models.live_dropped = dict(state.live_dropped)
    fills = state.live_dropped if state.live_dropped_fills is None else state.live_dropped_fills
    models.live_dropped_fills = dict(fills)
    models.wallets = dict(state.wallets)
    return models
