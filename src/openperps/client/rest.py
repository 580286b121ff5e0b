"""The REST half of the SDK: every call signed with your key, answers decoded into the same
wire types the server uses.

    async with Client("http://127.0.0.1:8080", key) as client:
        await client.mint_test_tokens("1000")     # testnet faucet: into your wallet
        await client.deposit("1000")              # wallet -> trading account
        placed = await client.place_limit_order(1338, long=True, size="10", price="5.1",
                                                leverage=5)
        print(placed.orders[0].order_id, placed.transaction_version)
        for position in await client.positions():
            print(position.size, position.entry_price, position.liq_price)

Amounts, sizes and prices may be given as ``str``, ``int`` or ``Decimal`` (never ``float``);
they travel as decimal strings. Market and order ids may be ``str`` or ``int``.

A bot acting for a wallet through a delegate key (docs/signing.md, "Delegation") signs with
that key and names the wallet: ``Client(url, delegate_key, wallet="0x...")``. Its reads are
the wallet's, and the exchange refuses it what only the wallet's key may do (withdrawals,
delegation) with 403 and code 2106.

Errors: everything the SDK raises on purpose derives from ``ClientError``.

    ClientError
      ApiError        the exchange answered and refused: .status (HTTP), .code (stable, see
                      docs/exchange-rules.md), .message, .retry_after (seconds, on a 429).
                      Also raised, with code None, for an answer that is not the exchange's
                      (a wrong URL or port, a proxy's error page).
      NetworkError    no answer: the server could not be reached, the connection dropped, or
                      it did not answer within ``timeout``. .url, .cause (the underlying
                      exception), .may_have_run (True when the request had been sent: an
                      action may have taken effect, so check before repeating it, with a
                      fresh signature). Also an ``OSError``.
      ClientClosed    a call on a closed Client or SyncClient. Also a ``RuntimeError``.

Arguments the SDK can tell are wrong are refused before anything is sent: ``TypeError`` for a
float (or bool) amount, price or id, ``ValueError`` for a call without the key it needs, an
empty ``replace_orders`` or a delegation without an expiry.

Batches (``place_orders``, ``cancel_orders``, ``replace_orders``) run item by item: an item
the exchange refuses does not raise. The call returns an ``OrderResult`` whose ``refused``
lists each refused item (``code``, ``message``, ``list``, ``index`` and, for a cancel,
``order_id``) while the others took effect. Check ``refused`` after every batch. A batch
raises ``ApiError`` only when it is refused whole (malformed, too long, none of its new
orders readable, or the signature refused).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import pickle
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Self, TypeVar, overload

import httpx
import msgspec

from openperps.core.errors import InvalidInput
from openperps.signing import PrivateKey, normalise_address, profile_address, sign_request
from openperps.wire.shapes import (
    DepositWithdrawRecord,
    OpenOrderRecord,
    OrderHistoryRecord,
    PositionRecord,
    RecentTradeRecord,
    TradeHistoryRecord,
)

Number = str | int | Decimal
MarketId = str | int
OrderId = str | int
R = TypeVar("R")
P = ParamSpec("P")

# -- errors --------------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of everything the SDK raises on purpose. Every one pickles (a process pool hands
    exceptions back to its caller pickled), its attributes included."""

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        cause = state.get("cause")
        if cause is not None:
            try:
                pickle.dumps(cause)
            except Exception:  # a transport's exception holding its request, say
                state["cause"] = RuntimeError(f"{type(cause).__name__}: {cause}")
        return (_rebuilt, (type(self), self.args, state))


def _rebuilt(kind: type[ClientError], args: tuple[Any, ...], state: dict[str, Any]) -> ClientError:
    error = kind.__new__(kind, *args)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ApiError(ClientError):
    """The exchange refused a call: ``code`` is its stable error code, ``status`` the HTTP one.
    ``retry_after``: the seconds a rate-limited (429) caller should wait, when the server says.
    ``code`` is None when the answer was not the exchange's (the message says so)."""

    def __init__(
        self, status: int, code: int | None, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if code is not None else message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class NetworkError(ClientError, OSError):
    """No answer from the exchange at ``url``: ``cause`` is the transport's exception.
    ``may_have_run``: the request had been sent when the connection failed or timed out, so an
    action may have taken effect; look (``open_orders``, ``balance``) before repeating it."""

    def __init__(self, message: str, *, url: str, cause: Exception, may_have_run: bool) -> None:
        super().__init__(message)
        self.url = url
        self.cause = cause
        self.may_have_run = may_have_run


class ClientClosed(ClientError, RuntimeError):
    """A call on a client after ``close()``."""


# transport failures that happen before the request leaves: nothing can have run
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _network_error(method: str, url: str, exc: Exception, timeout: float) -> NetworkError:
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        message = f"{url} is not a URL the SDK can reach ({cause}): use http://host:port"
        return NetworkError(message, url=url, cause=exc, may_have_run=False)
    if isinstance(exc, _NOT_SENT):
        message = f"no connection to {url} ({cause}): is the exchange running at that address?"
        return NetworkError(message, url=url, cause=exc, may_have_run=False)
    if isinstance(exc, httpx.TimeoutException):
        what = f"no answer within {timeout:g} s"
    else:
        what = "the connection failed after the request was sent"
    message = (
        f"{method} {url}: {what} ({cause}); the exchange may have acted on it, so check "
        "before repeating it"
    )
    return NetworkError(message, url=url, cause=exc, may_have_run=True)


# -- answers -------------------------------------------------------------------------------------


class Fill(msgspec.Struct, frozen=True, rename="camel"):
    """Your side of one trade an action made: its price, size, fee and ``pnl`` (realised PnL
    minus the fee), as decimal strings."""

    order_id: str
    price: str
    size: str
    fee: str
    pnl: str


class Refusal(msgspec.Struct, frozen=True, rename="camel"):
    """A batch item the exchange refused: ``list`` is ``"orders"`` or ``"cancelOrderIds"``,
    ``index`` the item's place in that list, ``order_id`` a cancel's order id."""

    code: int
    message: str
    list: str | None = None
    index: int | None = None
    order_id: str | None = None


class FundingPayment(msgspec.Struct, frozen=True, rename="camel"):
    """One funding settlement of one position: ``amount`` is what it paid (a long when the
    rate is positive) or received, ``funding_rate`` the interval's rate; ``timestamp`` is
    Unix seconds."""

    market_id: str
    trade_side: bool
    trade_id: str
    size: str
    funding_rate: str
    amount: str
    timestamp: int
    transaction_version: int


class ActionResult(dict[str, Any]):
    """An action's answer. It is the server's JSON object, keyed by its wire names as in
    earlier versions (``result["transactionVersion"]``), with typed attributes."""

    __slots__ = ()

    @property
    def transaction_version(self) -> int:
        """The ledger version that includes the action (compare with ``read_version``)."""
        return int(self["transactionVersion"])


class OrderResult(ActionResult):
    """What an order action did to your account: the orders it touched (each in its latest
    state), your fills, the positions it left open, and, for a batch, the items refused
    (empty when all went through)."""

    __slots__ = ()

    @property
    def orders(self) -> list[OrderHistoryRecord]:
        return msgspec.convert(self.get("orders", []), list[OrderHistoryRecord])

    @property
    def fills(self) -> list[Fill]:
        return msgspec.convert(self.get("fills", []), list[Fill])

    @property
    def refused(self) -> list[Refusal]:
        return msgspec.convert(self.get("refused", []), list[Refusal])

    @property
    def positions(self) -> list[PositionRecord]:
        """Your positions the action changed and left open, as ``positions()`` reads them."""
        return msgspec.convert(self.get("positions", []), list[PositionRecord])


class TransferResult(ActionResult):
    """The balances after a faucet mint, a deposit or a withdrawal (a mint has no
    ``free_balance``)."""

    __slots__ = ()

    @property
    def wallet_balance(self) -> Decimal:
        return Decimal(self["walletBalance"])

    @property
    def free_balance(self) -> Decimal | None:
        free = self.get("freeBalance")
        return None if free is None else Decimal(free)


@dataclass(frozen=True, slots=True)
class NewOrder:
    """One order of a batch (``place_orders``, ``replace_orders``), with the fields of
    ``place_limit_order``. Without a ``price`` it is a market order."""

    market_id: MarketId
    _: KW_ONLY
    long: bool
    size: Number
    leverage: int
    price: Number | None = None
    reduce: bool = False
    restriction: int = 0
    take_profit: Number | None = None
    stop_loss: Number | None = None

    def __post_init__(self) -> None:
        self.wire()  # a float, or a restriction on a market order, fails here, not at send time

    def wire(self) -> dict[str, Any]:
        """The order as the REST API takes it."""
        body: dict[str, Any] = {
            "marketId": _id(self.market_id, "market_id"),
            "tradeSide": _flag(self.long, "long"),
            "direction": _flag(self.reduce, "reduce"),
            "size": _number(self.size, "size"),
            "leverage": _whole(self.leverage, "leverage"),
        }
        if self.price is not None:
            body["price"] = _number(self.price, "price")
            body["restriction"] = _whole(self.restriction, "restriction")
        elif self.restriction:
            raise ValueError("a restriction applies to limit orders: give a price")
        if self.take_profit is not None:
            body["takeProfit"] = _number(self.take_profit, "take_profit")
        if self.stop_loss is not None:
            body["stopLoss"] = _number(self.stop_loss, "stop_loss")
        return body


def _number(value: Number, what: str) -> str:
    if isinstance(value, (float, bool)) or not isinstance(value, (str, int, Decimal)):
        raise TypeError(f"{what}: pass a str, int or Decimal, not {type(value).__name__}")
    return str(value)


def _whole(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}: pass an int, not {type(value).__name__}")
    return value


def _flag(value: bool, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what}: pass True or False, not {type(value).__name__}")
    return value


def _id(value: MarketId, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{what}: pass a str or int, not {type(value).__name__}")
    return str(value)


def _optional_id(value: MarketId | None, what: str) -> str | None:
    return None if value is None else _id(value, what)


# -- the client ----------------------------------------------------------------------------------

KEEPALIVE_EXPIRY_S = 3.0  # under the server's 5 s


class _Stamps:
    """Signing timestamps for this process, per key: the clock's milliseconds, but always
    later than the last one the key signed with. Two identical requests signed in the same
    millisecond would have the same signature, and the exchange refuses the second as a
    replay (2105); with their own timestamps they are two requests, as the caller meant.
    (Per key, so that only one key's own burst, which the exchange's rate limit keeps far
    under a thousand a second, can move its stamps ahead of the clock.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def next(self, key: str) -> int:
        with self._lock:
            stamp = max(time.time_ns() // 1_000_000, self._last.get(key, 0) + 1)
            self._last[key] = stamp
            return stamp


_STAMPS = _Stamps()


class Client:
    """Signed REST calls with ``key``, for ``wallet`` (by default the key's own).

    With ``wallet`` set to another address, ``key`` is that wallet's delegate: requests are
    signed with it and act on the wallet's account, and reads are the wallet's. (A delegate
    key without ``wallet`` acts on its own account, which holds nothing.) Without a key, a
    client with a ``wallet`` reads that wallet's account and cannot act.
    ``timeout``: seconds to wait for each answer before ``NetworkError``.
    """

    def __init__(
        self,
        base_url: str,
        key: PrivateKey | None = None,
        *,
        wallet: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        try:
            self._wallet = None if wallet is None else normalise_address(wallet)
        except InvalidInput as exc:
            raise ValueError(f"wallet: {exc.detail}") from None
        self.timeout = timeout
        # connections idle for 3 s are not reused: the server closes them at 5 s, and a
        # request sent as it does fails after sending, with no way to know it did not run
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )
        self._closed = False
        # the ledger version the last read reflected (its X-Transaction-Version), if any: a
        # read from a gateway includes an action once this reaches the action's version
        self.read_version: int | None = None

    @property
    def wallet(self) -> str:
        """The wallet acted on and read: ``wallet`` if given, else the key's own address."""
        if self._wallet is not None:
            return self._wallet
        if self.key is None:
            raise ValueError("this client has no key and no wallet")
        return self.key.address

    @property
    def profile(self) -> str:
        """The trading account of ``wallet``."""
        return profile_address(self.wallet)

    @property
    def is_delegate(self) -> bool:
        """True when the key signs for another wallet (as its delegate)."""
        return self.key is not None and self.wallet != self.key.address

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the connections; a call still waiting for its answer raises
        ``NetworkError`` (``may_have_run`` if it was sent), later calls ``ClientClosed``."""
        self._closed = True
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- transport -------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        if self._closed:
            raise ClientClosed("this client is closed")
        url = self.base_url + path
        try:
            return await self._http.request(method, path, **options)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise _network_error(method, url, exc, self.timeout) from exc

    @staticmethod
    def _unwrap(response: httpx.Response) -> Any:
        """An envelope's ``data``, or ``ApiError`` for a refusal or an answer that is not an
        envelope at all (the URL of something else)."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        status = response.status_code
        if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
            text = response.text.strip()
            shown = repr(text[:80]) + ("..." if len(text) > 80 else "") if text else "no body"
            raise ApiError(
                status,
                None,
                f"{response.request.method} {response.request.url} answered HTTP {status} "
                f"with {shown}, which is not an OpenPerps answer: check that the URL is the "
                "exchange's REST address (serve --api-port, 8080 by default), not its feed's "
                "or another server's",
            )
        if body["success"]:
            return body.get("data")
        code = body.get("code")
        wait = response.headers.get("retry-after", "")
        raise ApiError(
            status,
            code if type(code) is int else None,
            str(body.get("message") or f"HTTP {status}"),
            retry_after=int(wait) if wait.isascii() and wait.isdigit() else None,
        )

    async def get(self, path: str, /, **params: Any) -> Any:
        """A read of any endpoint: its ``data``. Parameters that are None are left out."""
        query = {k: v for k, v in params.items() if v is not None}
        response = await self._send("GET", path, params=query)
        data = self._unwrap(response)
        version = response.headers.get("x-transaction-version", "")
        self.read_version = int(version) if version.isascii() and version.isdigit() else None
        return data

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """A signed action on any endpoint: its ``data``."""
        if self.key is None:
            raise ValueError("signed calls need a key")
        data = json.dumps(body).encode()
        stamp = _STAMPS.next(self.key.public_key_hex)
        headers = sign_request(self.key, "POST", path, data, stamp, wallet=self._wallet)
        headers["content-type"] = "application/json"
        return self._unwrap(await self._send("POST", path, content=data, headers=headers))

    @staticmethod
    def _records(data: Any, kind: type[R]) -> list[R]:
        return msgspec.convert(data, list[kind])  # type: ignore[valid-type]

    async def _order_action(self, path: str, body: dict[str, Any]) -> OrderResult:
        return OrderResult(await self.post(path, body))

    # -- reads -----------------------------------------------------------------------------------

    async def markets(self) -> list[dict[str, Any]]:
        data = await self.get("/getPerpetualAssetsInfo/allMarkets")
        return list(data)

    async def market_price(self, market_id: MarketId) -> dict[str, Any]:
        """Best bid and ask, index and mark prices (decimal strings, None when unknown)."""
        return dict(await self.get("/getMarketPrice", marketId=_id(market_id, "market_id")))

    async def last_price(self, market_id: MarketId) -> Decimal | None:
        """The price of the market's latest trade (None before the first)."""
        data = await self.get("/getLastPlacedPrice", marketId=_id(market_id, "market_id"))
        price = data.get("lastPrice")
        return None if price is None else Decimal(price)

    async def balance(self) -> dict[str, Decimal]:
        data = await self.get("/getProfileBalanceSnapshot", userAddress=self.wallet)
        return {k: Decimal(v) for k, v in data.items() if k != "profileAddress"}

    async def wallet_balance(self) -> Decimal:
        """USDT in your wallet, outside the exchange (what ``deposit`` can move in)."""
        return Decimal(await self.get("/getWalletAccountBalance", userAddress=self.wallet))

    async def positions(self, market_id: MarketId | None = None) -> list[PositionRecord]:
        data = await self.get(
            "/getPositions",
            userAddress=self.wallet,
            marketId=_optional_id(market_id, "market_id"),
        )
        return self._records(data, PositionRecord)

    async def open_orders(self, market_id: MarketId | None = None) -> list[OpenOrderRecord]:
        data = await self.get(
            "/getOpenOrders",
            userAddress=self.wallet,
            marketId=_optional_id(market_id, "market_id"),
        )
        return self._records(data, OpenOrderRecord)

    async def order_status(self, market_id: MarketId, order_id: OrderId) -> OrderHistoryRecord:
        """One order of any account, resting or done (``ApiError`` 404, code 2007, for an
        unknown id or an order of another market)."""
        data = await self.get(
            "/fetchOrderStatusById",
            marketId=_id(market_id, "market_id"),
            orderId=_id(order_id, "order_id"),
        )
        return msgspec.convert(data, OrderHistoryRecord)

    # History reads page from the newest record: ``limit`` (1..1000) records after skipping
    # ``offset`` of them.

    async def order_history(
        self, limit: int = 100, *, offset: int = 0, market_id: MarketId | None = None
    ) -> list[OrderHistoryRecord]:
        data = await self.get(
            "/getOrderHistory",
            userAddress=self.wallet,
            limit=limit,
            offset=offset,
            marketId=_optional_id(market_id, "market_id"),
        )
        return self._records(data, OrderHistoryRecord)

    async def fills(
        self,
        limit: int = 100,
        *,
        offset: int = 0,
        market_id: MarketId | None = None,
        from_timestamp: int | None = None,
        to_timestamp: int | None = None,
    ) -> list[TradeHistoryRecord]:
        """Your fills, newest first; ``from_timestamp``/``to_timestamp`` (Unix seconds,
        inclusive) bound their time."""
        data = await self.get(
            "/getFills",
            userAddress=self.wallet,
            limit=limit,
            offset=offset,
            marketId=_optional_id(market_id, "market_id"),
            fromTimestamp=from_timestamp,
            toTimestamp=to_timestamp,
        )
        return self._records(data, TradeHistoryRecord)

    async def transfers(self, limit: int = 100, *, offset: int = 0) -> list[DepositWithdrawRecord]:
        data = await self.get(
            "/getDepositAndWithdrawHistory", userAddress=self.wallet, limit=limit, offset=offset
        )
        return self._records(data, DepositWithdrawRecord)

    async def funding_history(
        self, limit: int = 100, *, offset: int = 0, order: Literal["asc", "desc"] = "desc"
    ) -> list[FundingPayment]:
        """Your positions' funding payments, newest first (``order="asc"``: oldest first)."""
        data = await self.get(
            "/getFundingHistory", userAddress=self.wallet, limit=limit, offset=offset, order=order
        )
        return self._records(data, FundingPayment)

    async def all_trades(
        self, market_id: MarketId, limit: int = 100, *, offset: int = 0
    ) -> list[RecentTradeRecord]:
        data = await self.get(
            "/getAllTrades", marketId=_id(market_id, "market_id"), limit=limit, offset=offset
        )
        return self._records(data, RecentTradeRecord)

    # -- actions ---------------------------------------------------------------------------------

    async def mint_test_tokens(self, amount: Number = "1000") -> TransferResult:
        return TransferResult(
            await self.post("/mintTestTokens", {"amount": _number(amount, "amount")})
        )

    async def deposit(self, amount: Number) -> TransferResult:
        return TransferResult(await self.post("/deposit", {"amount": _number(amount, "amount")}))

    async def withdraw(self, amount: Number) -> TransferResult:
        """Free balance back to the wallet (the wallet's own key only: a delegate gets
        ``ApiError`` 403, code 2106)."""
        return TransferResult(await self.post("/withdraw", {"amount": _number(amount, "amount")}))

    async def settle_pnl(self, market_id: MarketId | None = None) -> ActionResult:
        """Kana's settle call: PnL is already settled with every fill, so this moves nothing
        and answers your balances and the ``transactionVersion`` they include."""
        body = {} if market_id is None else {"marketId": _id(market_id, "market_id")}
        return ActionResult(await self.post("/settlePnl", body))

    async def place_limit_order(
        self,
        market_id: MarketId,
        *,
        long: bool,
        size: Number,
        price: Number,
        leverage: int,
        reduce: bool = False,
        restriction: int = 0,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
    ) -> OrderResult:
        """``restriction``: 0 none, 1 fill-or-kill, 2 immediate-or-cancel, 3 post-only.
        ``reduce``: reduce or close your ``long`` (True) or short position."""
        order = NewOrder(
            market_id,
            long=long,
            size=size,
            price=price,
            leverage=leverage,
            reduce=reduce,
            restriction=restriction,
            take_profit=take_profit,
            stop_loss=stop_loss,
        )
        return await self._order_action("/placeLimitOrder", order.wire())

    async def place_market_order(
        self,
        market_id: MarketId,
        *,
        long: bool,
        size: Number,
        leverage: int,
        reduce: bool = False,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
    ) -> OrderResult:
        order = NewOrder(
            market_id,
            long=long,
            size=size,
            leverage=leverage,
            reduce=reduce,
            take_profit=take_profit,
            stop_loss=stop_loss,
        )
        return await self._order_action("/placeMarketOrder", order.wire())

    async def place_orders(self, orders: Sequence[NewOrder]) -> OrderResult:
        """1 to 20 orders, of any markets, in one request, run in order. A batch: check
        ``refused`` (see the module docstring)."""
        return await self._order_action(
            "/placeMultipleOrders", {"orders": [order.wire() for order in orders]}
        )

    async def cancel_orders(self, market_id: MarketId, order_ids: Sequence[OrderId]) -> OrderResult:
        """Cancel 1 to 20 of your resting orders of one market. A batch: an unknown or
        already finished order is in ``refused`` (code 2007), not raised."""
        return await self._order_action(
            "/cancelMultipleOrders",
            {
                "marketId": _id(market_id, "market_id"),
                "cancelOrderIds": [_id(i, "order_id") for i in order_ids],
            },
        )

    async def replace_orders(
        self,
        market_id: MarketId,
        *,
        cancel: Sequence[OrderId] = (),
        place: Sequence[NewOrder] = (),
    ) -> OrderResult:
        """Cancel up to 20 orders, then place up to 20 new ones, all of ``market_id``, as one
        command: the book never shows half-replaced quotes. Either list may be empty (cancels
        alone pull every quote in one call), not both. A batch: check ``refused``."""
        if not cancel and not place:
            raise ValueError("replace_orders needs orders to cancel, orders to place, or both")
        body: dict[str, Any] = {
            "marketId": _id(market_id, "market_id"),
            "cancelOrderIds": [_id(i, "order_id") for i in cancel],
            "orders": [order.wire() for order in place],
        }
        return await self._order_action("/cancelAndPlaceMultipleOrders", body)

    async def update_take_profit(
        self, market_id: MarketId, *, long: bool, price: Number | None
    ) -> OrderResult:
        """Set the position's take-profit, or remove it with ``price=None``."""
        return await self._order_action(
            "/updateTakeProfit",
            {
                "marketId": _id(market_id, "market_id"),
                "tradeSide": _flag(long, "long"),
                "newTakeProfitPrice": None if price is None else _number(price, "price"),
            },
        )

    async def update_stop_loss(
        self, market_id: MarketId, *, long: bool, price: Number | None
    ) -> OrderResult:
        """Set the position's stop-loss, or remove it with ``price=None``."""
        return await self._order_action(
            "/updateStopLoss",
            {
                "marketId": _id(market_id, "market_id"),
                "tradeSide": _flag(long, "long"),
                "newStopLossPrice": None if price is None else _number(price, "price"),
            },
        )

    async def add_margin(self, market_id: MarketId, *, long: bool, amount: Number) -> OrderResult:
        return await self._order_action(
            "/addMargin",
            {
                "marketId": _id(market_id, "market_id"),
                "tradeSide": _flag(long, "long"),
                "amount": _number(amount, "amount"),
            },
        )

    async def collapse_position(self, market_id: MarketId) -> OrderResult:
        """Net your long and short of one market: both shrink by the smaller size, with no
        trade and no fee (docs/exchange-rules.md, "Margin")."""
        return await self._order_action(
            "/collapsePosition", {"marketId": _id(market_id, "market_id")}
        )

    async def enable_delegation(
        self,
        delegate_public_key: str,
        *,
        expires_at_ms: int | None = None,
        valid_for: timedelta | None = None,
    ) -> ActionResult:
        """Let ``delegate_public_key`` (``0x`` + 64 hex digits) trade for this wallet until
        ``expires_at_ms`` (Unix milliseconds, exclusive) or for ``valid_for`` from now; give
        one of the two. It replaces any earlier delegate. The wallet's own key only."""
        if (expires_at_ms is None) == (valid_for is None):
            raise ValueError("give expires_at_ms or valid_for (exactly one)")
        if valid_for is not None:
            expires_at_ms = time.time_ns() // 1_000_000 + valid_for // timedelta(milliseconds=1)
        if type(expires_at_ms) is not int:
            raise TypeError("expires_at_ms: Unix milliseconds as an int")
        body = {"delegatePublicKey": delegate_public_key, "expiresAt": expires_at_ms}
        return ActionResult(await self.post("/enableDelegation", body))

    async def disable_delegation(self) -> ActionResult:
        """Revoke the delegate: its requests are refused (401, code 2104) from now on."""
        return ActionResult(await self.post("/disableDelegation", {}))


# -- the same, without an event loop -------------------------------------------------------------


class _Blocking(Generic[P, R]):
    """A ``Client`` method as a ``SyncClient`` method: same parameters and result, blocking."""

    def __init__(self, method: Callable[Concatenate[Client, P], Coroutine[Any, Any, R]]) -> None:
        self._name = method.__name__
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, instance: SyncClient, owner: type[Any]) -> Callable[P, R]: ...
    def __get__(self, instance: SyncClient | None, owner: type[Any]) -> Self | Callable[P, R]:
        if instance is None:
            return self
        client = instance._client
        name = self._name

        method: Callable[P, Coroutine[Any, Any, R]] = getattr(client, name)

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return instance._run(lambda: method(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = self.__doc__
        return call


SHUTDOWN_GRACE_S = 1.0  # for calls to end on their own when a SyncClient closes


class SyncClient:
    """``Client`` for code without an event loop: the same methods, called plainly, on a
    private event loop in a background thread. Safe to call from several threads.

        with SyncClient("http://127.0.0.1:8080", key) as client:
            client.mint_test_tokens("1000")
            client.deposit("1000")
            print(client.wallet_balance(), client.positions())

    After ``close()`` (or the ``with`` block) every call raises ``ClientClosed``.
    """

    def __init__(
        self,
        base_url: str,
        key: PrivateKey | None = None,
        *,
        wallet: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        # built here, not on the loop: httpx binds nothing to a loop until the first request
        self._client = Client(base_url, key, wallet=wallet, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="openperps-sync-client", daemon=True
        )
        self._thread.start()

    def _run(self, work: Callable[[], Coroutine[Any, Any, R]]) -> R:
        with self._lock:  # close() cannot stop the loop between this check and the submit
            if self._closed:
                raise ClientClosed("this SyncClient is closed")
            future = asyncio.run_coroutine_threadsafe(work(), self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientClosed("this SyncClient was closed during the call") from None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connections, end calls still running and stop the background thread.
        A call waiting for its answer raises ``NetworkError`` (``may_have_run`` when the
        request was sent, as with ``Client``); one that had not reached the network raises
        ``ClientClosed``. Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _shutdown(self) -> None:
        # the connections first: a call waiting for its answer then fails as the async
        # client's would, with NetworkError (may_have_run when it was sent), not ClientClosed
        await self._client.close()
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if running:
            await asyncio.wait(running, timeout=SHUTDOWN_GRACE_S)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def key(self) -> PrivateKey | None:
        return self._client.key

    @property
    def wallet(self) -> str:
        return self._client.wallet

    @property
    def profile(self) -> str:
        return self._client.profile

    @property
    def is_delegate(self) -> bool:
        return self._client.is_delegate

    @property
    def timeout(self) -> float:
        return self._client.timeout

    @property
    def read_version(self) -> int | None:
        return self._client.read_version

    get = _Blocking(Client.get)
    post = _Blocking(Client.post)
    markets = _Blocking(Client.markets)
    market_price = _Blocking(Client.market_price)
    last_price = _Blocking(Client.last_price)
    balance = _Blocking(Client.balance)
    wallet_balance = _Blocking(Client.wallet_balance)
    positions = _Blocking(Client.positions)
    open_orders = _Blocking(Client.open_orders)
    order_status = _Blocking(Client.order_status)
    order_history = _Blocking(Client.order_history)
    fills = _Blocking(Client.fills)
    transfers = _Blocking(Client.transfers)
    funding_history = _Blocking(Client.funding_history)
    all_trades = _Blocking(Client.all_trades)
    mint_test_tokens = _Blocking(Client.mint_test_tokens)
    deposit = _Blocking(Client.deposit)
    withdraw = _Blocking(Client.withdraw)
    settle_pnl = _Blocking(Client.settle_pnl)
    place_limit_order = _Blocking(Client.place_limit_order)
    place_market_order = _Blocking(Client.place_market_order)
    place_orders = _Blocking(Client.place_orders)
    cancel_orders = _Blocking(Client.cancel_orders)
    replace_orders = _Blocking(Client.replace_orders)
    update_take_profit = _Blocking(Client.update_take_profit)
    update_stop_loss = _Blocking(Client.update_stop_loss)
    add_margin = _Blocking(Client.add_margin)
    collapse_position = _Blocking(Client.collapse_position)
    enable_delegation = _Blocking(Client.enable_delegation)
    disable_delegation = _Blocking(Client.disable_delegation)
