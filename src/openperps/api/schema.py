"""What the OpenAPI document says about bodies, signatures and answers.

The handlers read their JSON bodies themselves (the signature covers the raw bytes, and a bad
field must get the exchange's coded error, not a framework's), so the framework sees no body
type to document. The bodies are described here instead, as msgspec Structs turned into JSON
Schema, and added to the generated document with the signature headers every action needs
and the envelope every answer comes in. ``tests/api/test_openapi.py`` keeps it true: real
requests that the exchange accepts validate against these schemas, and so do its answers.

Numbers: sizes, prices and amounts are decimal strings in human units; a JSON number is
accepted too when it is exact at the market's precision, so both are allowed here.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from litestar import Litestar
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Parameter, RequestBody

from openperps.wire.shapes import (
    DepositWithdrawRecord,
    OpenOrderRecord,
    OrderHistoryRecord,
    PositionRecord,
    RecentTradeRecord,
    TradeHistoryRecord,
)

Number = Annotated[
    str | int | float,
    msgspec.Meta(description='a decimal string in human units ("7.25"), or an exact number'),
]
MarketId = Annotated[str | int, msgspec.Meta(description='a market id, e.g. "1338"')]
OrderId = Annotated[str, msgspec.Meta(pattern="^[0-9]{1,39}$", description="an order id")]


class OrderBody(msgspec.Struct, rename="camel"):
    """One order of a batch: a limit order with a price, a market order without."""

    market_id: MarketId
    trade_side: Annotated[bool, msgspec.Meta(description="true long, false short")]
    direction: Annotated[bool, msgspec.Meta(description="false opens or adds, true reduces")]
    size: Number
    leverage: Annotated[int, msgspec.Meta(ge=1)]
    price: Number | None = None
    restriction: Annotated[
        int, msgspec.Meta(ge=0, le=3, description="0 none, 1 fill-or-kill, 2 IOC, 3 post-only")
    ] = 0
    take_profit: Number | None = None
    stop_loss: Number | None = None


class LimitOrderBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    trade_side: bool
    direction: bool
    size: Number
    price: Number
    leverage: Annotated[int, msgspec.Meta(ge=1)]
    restriction: Annotated[
        int, msgspec.Meta(ge=0, le=3, description="0 none, 1 fill-or-kill, 2 IOC, 3 post-only")
    ] = 0
    take_profit: Number | None = None
    stop_loss: Number | None = None


class MarketOrderBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    trade_side: bool
    direction: bool
    size: Number
    leverage: Annotated[int, msgspec.Meta(ge=1)]
    take_profit: Number | None = None
    stop_loss: Number | None = None


class OrdersBody(msgspec.Struct, rename="camel"):
    orders: Annotated[list[OrderBody], msgspec.Meta(min_length=1, max_length=20)]


class CancelsBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    cancel_order_ids: Annotated[list[OrderId], msgspec.Meta(min_length=1, max_length=20)]


class ReplaceBody(msgspec.Struct, rename="camel"):
    """Cancels first, then new orders, all in ``marketId``; either list may be empty or left
    out, not both."""

    market_id: MarketId
    cancel_order_ids: Annotated[list[OrderId], msgspec.Meta(max_length=20)] = []
    orders: Annotated[list[OrderBody], msgspec.Meta(max_length=20)] | None = None


class AmountBody(msgspec.Struct, rename="camel"):
    amount: Number


class FaucetBody(msgspec.Struct, rename="camel"):
    amount: Annotated[Number, msgspec.Meta(description="USDT, at most 100000")] = "1000"


class MaybeMarketBody(msgspec.Struct, rename="camel"):
    market_id: MarketId | None = None


class MarketBody(msgspec.Struct, rename="camel"):
    market_id: MarketId


class TakeProfitBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    trade_side: bool
    new_take_profit_price: Annotated[
        Number | None, msgspec.Meta(description='the new price; null, "" or 0 removes it')
    ]


class StopLossBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    trade_side: bool
    new_stop_loss_price: Annotated[
        Number | None, msgspec.Meta(description='the new price; null, "" or 0 removes it')
    ]


class MarginBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    trade_side: bool
    amount: Number


class DelegationBody(msgspec.Struct, rename="camel"):
    delegate_public_key: Annotated[
        str, msgspec.Meta(description="the delegate's Ed25519 public key, 32 bytes of hex")
    ]
    expires_at: Annotated[int, msgspec.Meta(ge=1, description="Unix milliseconds")]


class EmptyBody(msgspec.Struct, rename="camel"):
    pass


class OraclePriceBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    price: Number


class PauseBody(msgspec.Struct, rename="camel"):
    market_id: MarketId
    paused: bool


class CreditBody(msgspec.Struct, rename="camel"):
    user_address: Annotated[str, msgspec.Meta(description="the wallet to credit")]
    amount: Number


class ListedMarketBody(msgspec.Struct):
    """One ``[[market]]`` table of ``markets.toml``, as JSON."""

    symbol: str
    price_decimals: int
    size_decimals: int
    tick: str
    lot: str
    min_size: str
    max_size: str
    max_position_value: str
    max_leverage: int
    maintenance_margin_bps: int
    maker_fee_bps: int
    taker_fee_bps: int
    funding_interval_s: int
    funding_cap_bps: int
    interest_bps_per_8h: int
    market_id: int | None = None
    testnet_id: int | None = None
    mainnet_id: int | None = None


BODIES: Final[dict[str, type[msgspec.Struct]]] = {
    "/placeLimitOrder": LimitOrderBody,
    "/placeMarketOrder": MarketOrderBody,
    "/placeMultipleOrders": OrdersBody,
    "/cancelMultipleOrders": CancelsBody,
    "/cancelAndPlaceMultipleOrders": ReplaceBody,
    "/deposit": AmountBody,
    "/withdraw": AmountBody,
    "/withdrawSpecifiMarket": AmountBody,
    "/mintTestTokens": FaucetBody,
    "/settlePnl": MaybeMarketBody,
    "/updateTakeProfit": TakeProfitBody,
    "/updateStopLoss": StopLossBody,
    "/addMargin": MarginBody,
    "/collapsePosition": MarketBody,
    "/enableDelegation": DelegationBody,
    "/disableDelegation": EmptyBody,
    "/admin/oraclePrice": OraclePriceBody,
    "/admin/pauseMarket": PauseBody,
    "/admin/creditWallet": CreditBody,
    "/admin/listMarket": ListedMarketBody,
}

# what a read's ``data`` holds, where it is a list of the feed's own records
READ_RECORDS: Final[dict[str, type[msgspec.Struct]]] = {
    "/getPositions": PositionRecord,
    "/getOpenOrders": OpenOrderRecord,
    "/getOrderHistory": OrderHistoryRecord,
    "/getTradeHistory": TradeHistoryRecord,
    "/getFills": TradeHistoryRecord,
    "/getDepositAndWithdrawHistory": DepositWithdrawRecord,
    "/getAllTrades": RecentTradeRecord,
}

SIGNATURE_HEADERS: Final = (
    ("x-wallet-address", "the wallet acted on (a delegate signs for it)"),
    ("x-public-key", "the signing Ed25519 public key, hex"),
    ("x-timestamp", "Unix milliseconds; within the server's window"),
    ("x-signature", "Ed25519 signature of timestamp, method, path and body hash (signing.md)"),
)

ADMIN_HEADER: Final = Parameter(
    name="authorization",
    param_in="header",
    required=True,
    description="Bearer ADMIN_TOKEN",
    schema={"type": "string"},  # type: ignore[arg-type]  # plain JSON Schema
)
REF = "#/components/schemas/{name}"


def envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "message", "data"],
        "properties": {
            "success": {"type": "boolean"},
            "message": {"type": "string"},
            "data": data,
            "code": {"type": "integer", "description": "on failure: the exchange's error code"},
        },
    }


FAILURE: Final = {
    "description": "refused: success false, a code (docs/exchange-rules.md) and a message; "
    "429 also carries Retry-After",
    "content": {"application/json": {"schema": envelope({"type": "null"})}},
}
FAILURE_STATUSES: Final = ("400", "401", "403", "404", "409", "429", "500", "503")


def document(app: Litestar) -> None:
    """Complete the app's generated OpenAPI document in place (once, before it is served)."""
    schema = app.openapi_schema
    records = list(READ_RECORDS.values())
    _, components = msgspec.json.schema_components([*BODIES.values(), *records], ref_template=REF)
    if schema.components.schemas is None:
        schema.components.schemas = {}
    schema.components.schemas.update(components)
    headers = [
        Parameter(
            name=name,
            param_in="header",
            required=True,
            description=text,
            schema={"type": "string"},  # type: ignore[arg-type]  # plain JSON Schema
        )
        for name, text in SIGNATURE_HEADERS
    ]
    for path, item in (schema.paths or {}).items():
        for operation in (item.get, item.post):
            if operation is None:
                continue
            data: dict[str, Any] = {}
            if path in READ_RECORDS:
                name = READ_RECORDS[path].__name__
                data = {"type": "array", "items": {"$ref": REF.format(name=name)}}
            answer = operation.responses.get("200") if operation.responses else None
            if isinstance(answer, OpenAPIResponse):
                answer.content = {
                    "application/json": OpenAPIMediaType(schema=envelope(data))  # type: ignore[arg-type]
                }
            operation.responses = {**(operation.responses or {})}
            for status in FAILURE_STATUSES:
                operation.responses.setdefault(status, FAILURE)  # type: ignore[arg-type]
        if item.post is not None and path in BODIES:
            body = BODIES[path]
            item.post.request_body = RequestBody(
                content={
                    "application/json": OpenAPIMediaType(
                        schema={"$ref": REF.format(name=body.__name__)}  # type: ignore[arg-type]
                    )
                },
                required=True,
                description=(body.__doc__ or "").strip() or None,
            )
            auth = headers if not path.startswith("/admin/") else [ADMIN_HEADER]
            item.post.parameters = [*(item.post.parameters or []), *auth]
