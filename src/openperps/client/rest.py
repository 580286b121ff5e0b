"""The REST half of the SDK: every call signed with your key, answers decoded into the same
wire types the server uses.

    async with Client("http://127.0.0.1:8080", key) as client:
        await client.mint_test_tokens("1000")     # testnet faucet: into your wallet
        await client.deposit("1000")              # wallet -> trading account
        placed = await client.place_limit_order("1338", long=True, size="10", price="5.1",
                                                leverage=5)
        for position in await client.positions():
            print(position.size, position.entry_price, position.liq_price)

Amounts, sizes and prices may be given as ``str``, ``int`` or ``Decimal`` (never ``float``);
they travel as decimal strings. A refused call raises ``ApiError`` with the server's code.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import msgspec

from openperps.signing import PrivateKey, profile_address, sign_request
from openperps.wire.shapes import (
    DepositWithdrawRecord,
    OpenOrderRecord,
    OrderHistoryRecord,
    PositionRecord,
    RecentTradeRecord,
    TradeHistoryRecord,
)

Number = str | int | Decimal
R = TypeVar("R")


class ApiError(Exception):
    """The server refused a call: ``code`` is its stable error code, ``status`` the HTTP one."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(f"{code}: {message}" if code is not None else message)
        self.status = status
        self.code = code
        self.message = message


def _number(value: Number, what: str) -> str:
    if isinstance(value, (float, bool)):
        raise TypeError(f"{what}: pass a str, int or Decimal, not {type(value).__name__}")
    return str(value)


class Client:
    def __init__(
        self, base_url: str, key: PrivateKey | None = None, *, timeout: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        # the ledger version the last read reflected (its X-Transaction-Version), if any: a
        # read from a gateway includes an action once this reaches the action's version
        self.read_version: int | None = None

    @property
    def wallet(self) -> str:
        if self.key is None:
            raise ValueError("this client has no key")
        return self.key.address

    @property
    def profile(self) -> str:
        return profile_address(self.wallet)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- transport -------------------------------------------------------------------------------

    @staticmethod
    def _unwrap(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except json.JSONDecodeError:
            raise ApiError(response.status_code, None, response.text[:200]) from None
        if not isinstance(body, dict) or not body.get("success"):
            message = body.get("message", "") if isinstance(body, dict) else str(body)
            code = body.get("code") if isinstance(body, dict) else None
            raise ApiError(response.status_code, code, message)
        return body.get("data")

    async def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        response = await self._http.get(path, params=query)
        data = self._unwrap(response)
        version = response.headers.get("x-transaction-version", "")
        self.read_version = int(version) if version.isascii() and version.isdigit() else None
        return data

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        if self.key is None:
            raise ValueError("signed calls need a key")
        data = json.dumps(body).encode()
        headers = sign_request(self.key, "POST", path, data, time.time_ns() // 1_000_000)
        headers["content-type"] = "application/json"
        return self._unwrap(await self._http.post(path, content=data, headers=headers))

    @staticmethod
    def _records(data: Any, kind: type[R]) -> list[R]:
        return msgspec.convert(data, list[kind])  # type: ignore[valid-type]

    # -- reads -----------------------------------------------------------------------------------

    async def markets(self) -> list[dict[str, Any]]:
        data = await self.get("/getPerpetualAssetsInfo/allMarkets")
        return list(data)

    async def market_price(self, market_id: str) -> dict[str, Any]:
        return dict(await self.get("/getMarketPrice", marketId=market_id))

    async def balance(self) -> dict[str, Decimal]:
        data = await self.get("/getProfileBalanceSnapshot", userAddress=self.wallet)
        return {k: Decimal(v) for k, v in data.items() if k != "profileAddress"}

    async def wallet_balance(self) -> Decimal:
        """USDT in your wallet, outside the exchange (what ``deposit`` can move in)."""
        return Decimal(await self.get("/getWalletAccountBalance", userAddress=self.wallet))

    async def positions(self, market_id: str | None = None) -> list[PositionRecord]:
        data = await self.get("/getPositions", userAddress=self.wallet, marketId=market_id)
        return self._records(data, PositionRecord)

    async def open_orders(self, market_id: str | None = None) -> list[OpenOrderRecord]:
        data = await self.get("/getOpenOrders", userAddress=self.wallet, marketId=market_id)
        return self._records(data, OpenOrderRecord)

    async def order_history(self, limit: int = 100) -> list[OrderHistoryRecord]:
        data = await self.get("/getOrderHistory", userAddress=self.wallet, limit=limit)
        return self._records(data, OrderHistoryRecord)

    async def fills(self, limit: int = 100) -> list[TradeHistoryRecord]:
        data = await self.get("/getFills", userAddress=self.wallet, limit=limit)
        return self._records(data, TradeHistoryRecord)

    async def transfers(self, limit: int = 100) -> list[DepositWithdrawRecord]:
        data = await self.get("/getDepositAndWithdrawHistory", userAddress=self.wallet, limit=limit)
        return self._records(data, DepositWithdrawRecord)

    async def all_trades(self, market_id: str, limit: int = 100) -> list[RecentTradeRecord]:
        data = await self.get("/getAllTrades", marketId=market_id, limit=limit)
        return self._records(data, RecentTradeRecord)

    # -- actions ---------------------------------------------------------------------------------

    async def mint_test_tokens(self, amount: Number = "1000") -> Any:
        return await self.post("/mintTestTokens", {"amount": _number(amount, "amount")})

    async def deposit(self, amount: Number) -> Any:
        return await self.post("/deposit", {"amount": _number(amount, "amount")})

    async def withdraw(self, amount: Number) -> Any:
        return await self.post("/withdraw", {"amount": _number(amount, "amount")})

    async def settle_pnl(self, market_id: str | None = None) -> dict[str, Any]:
        """Kana's settle call: PnL is already settled with every fill, so this moves nothing
        and answers your balances and the ``transactionVersion`` they include."""
        body = {} if market_id is None else {"marketId": market_id}
        return dict(await self.post("/settlePnl", body))

    async def place_limit_order(
        self,
        market_id: str,
        *,
        long: bool,
        size: Number,
        price: Number,
        leverage: int,
        reduce: bool = False,
        restriction: int = 0,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
    ) -> Any:
        body: dict[str, Any] = {
            "marketId": market_id,
            "tradeSide": long,
            "direction": reduce,
            "size": _number(size, "size"),
            "price": _number(price, "price"),
            "leverage": leverage,
            "restriction": restriction,
        }
        if take_profit is not None:
            body["takeProfit"] = _number(take_profit, "take_profit")
        if stop_loss is not None:
            body["stopLoss"] = _number(stop_loss, "stop_loss")
        return await self.post("/placeLimitOrder", body)

    async def place_market_order(
        self,
        market_id: str,
        *,
        long: bool,
        size: Number,
        leverage: int,
        reduce: bool = False,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
    ) -> Any:
        body: dict[str, Any] = {
            "marketId": market_id,
            "tradeSide": long,
            "direction": reduce,
            "size": _number(size, "size"),
            "leverage": leverage,
        }
        if take_profit is not None:
            body["takeProfit"] = _number(take_profit, "take_profit")
        if stop_loss is not None:
            body["stopLoss"] = _number(stop_loss, "stop_loss")
        return await self.post("/placeMarketOrder", body)

    async def cancel_orders(self, market_id: str, order_ids: list[str]) -> Any:
        return await self.post(
            "/cancelMultipleOrders", {"marketId": market_id, "cancelOrderIds": order_ids}
        )

    async def update_take_profit(self, market_id: str, *, long: bool, price: Number | None) -> Any:
        return await self.post(
            "/updateTakeProfit",
            {
                "marketId": market_id,
                "tradeSide": long,
                "newTakeProfitPrice": None if price is None else _number(price, "price"),
            },
        )

    async def update_stop_loss(self, market_id: str, *, long: bool, price: Number | None) -> Any:
        return await self.post(
            "/updateStopLoss",
            {
                "marketId": market_id,
                "tradeSide": long,
                "newStopLossPrice": None if price is None else _number(price, "price"),
            },
        )

    async def add_margin(self, market_id: str, *, long: bool, amount: Number) -> Any:
        return await self.post(
            "/addMargin",
            {"marketId": market_id, "tradeSide": long, "amount": _number(amount, "amount")},
        )


class SyncClient:
    """``Client`` for code without an event loop: the same methods, called plainly.

    client = SyncClient("http://127.0.0.1:8080", key)
    client.mint_test_tokens("1000")
    client.deposit("1000")
    print(client.wallet_balance(), client.positions())
    client.close()
    """

    def __init__(self, base_url: str, key: PrivateKey | None = None, **options: Any) -> None:
        import asyncio
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = self._call(self._make(base_url, key, options))

    @staticmethod
    async def _make(base_url: str, key: PrivateKey | None, options: dict[str, Any]) -> Client:
        return Client(base_url, key, **options)

    def _call(self, work: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(attribute(*args, **kwargs))

        return call

    def close(self) -> None:
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
