"""The REST API: Kana's endpoint names and parameters, over the running exchange.

Every response is the envelope ``{"success", "message", "data"}``; a failure adds ``"code"``
(1001..1014 and ours from 2000) and an HTTP status: 400 bad input, 401 bad or missing
signature, 403 not allowed, 404 unknown market or order, 409 refused by the exchange rules,
503 not ready. Nothing a client sends gets a 500.

Reads are unsigned GETs answered from the read models. Actions are signed POSTs
(``openperps.signing``): they run through the sequencer and answer once their events are
durable, with the records they produced and the ``transaction_version`` that made them.
``settlePnl`` is the one signed call that changes nothing: realised PnL is credited with every
reducing fill (docs/exchange-rules.md, "Margin"), so there is never anything left to settle;
it answers the profile's balances for Kana clients that call it after closing a position.

Money enters through wallets: ``mintTestTokens`` (testnet only) and the operator's
``/admin/creditWallet`` credit the wallet, ``deposit`` moves wallet -> trading account,
``withdraw`` back, and ``getWalletAccountBalance`` reads the wallet.
Amounts, sizes and prices are decimal strings in human units; a JSON number is accepted
only when it is exact at the field's precision.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from typing import Any, Final, NamedTuple, Protocol

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig

from openperps import __version__
from openperps.api.limits import Buckets, RestLimits, retry_after
from openperps.api.schema import document
from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.errors import MESSAGES, ErrorCode, InvalidInput, OpenPerpsError
from openperps.core.markets import MarketConfig, Network, market_from_table
from openperps.core.numbers import (
    MAX_ID,
    QUOTE_DECIMALS,
    format_scaled,
    parse_decimal,
    parse_id,
    parse_market_id,
)
from openperps.indexer import ReadModels
from openperps.indexer.render import Renderer
from openperps.runtime.app import Exchange
from openperps.runtime.sequencer import NotDurable
from openperps.signing import RequestVerifier, SigningError, normalise_address, profile_address
from openperps.wire.shapes import ENCODER

# exchange codes -> HTTP status (anything else refused by the rules: 409)
STATUS = {
    ErrorCode.NOT_AUTHORISED: 403,
    ErrorCode.MARKET_NOT_FOUND: 404,
    ErrorCode.ORDER_NOT_FOUND: 404,
    ErrorCode.INVALID_NUMBER: 400,
    ErrorCode.INVALID_SIZE: 400,
    ErrorCode.INVALID_PRICE: 400,
    ErrorCode.INVALID_ADDRESS: 400,
    ErrorCode.INVALID_AMOUNT: 400,
    ErrorCode.INVALID_FLAG: 400,
    ErrorCode.INVALID_DELEGATION: 400,
    ErrorCode.INVALID_RESTRICTION: 400,
    ErrorCode.INVALID_LEVERAGE: 400,
    ErrorCode.TOO_MANY_ORDERS: 400,
    ErrorCode.INVALID_MARKET_CONFIG: 400,
    ErrorCode.NOT_DURABLE: 503,
}
BAD_REQUEST = int(ErrorCode.BAD_REQUEST)  # request body or parameters malformed
NOT_READY = int(ErrorCode.NOT_READY)
FAUCET_CLOSED = int(ErrorCode.FAUCET_CLOSED)
ADMIN_ONLY = int(ErrorCode.ADMIN_ONLY)
INTERNAL_ERROR = int(ErrorCode.INTERNAL_ERROR)
UNKNOWN_ENDPOINT = int(ErrorCode.UNKNOWN_ENDPOINT)

logger = logging.getLogger("openperps.api")


class ApiError(Exception):
    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def envelope(data: Any, message: str = "ok", version: int | None = None) -> Response[bytes]:
    """A success answer; ``version``, for a read, is the ledger version its data reflects
    (``X-Transaction-Version``), so a client can tell whether it includes its own writes."""
    body = ENCODER.encode({"success": True, "message": message, "data": data})
    if version is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/json", headers={VERSION_HEADER: str(version)})


VERSION_HEADER = "X-Transaction-Version"


def failure(
    status: int, code: int, message: str, data: Any = None, headers: dict[str, str] | None = None
) -> Response[bytes]:
    body = ENCODER.encode({"success": False, "message": message, "code": code, "data": data})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, ApiError):
        return failure(exc.status, exc.code, exc.message, headers=exc.headers)
    if isinstance(exc, SigningError):
        return failure(exc.http_status, int(exc.code), exc.detail)
    if isinstance(exc, NotDurable):
        return failure(503, int(exc.code), exc.detail)
    if isinstance(exc, OpenPerpsError):
        return failure(STATUS.get(exc.code, 400), int(exc.code), exc.detail)
    if isinstance(exc, ValidationException):
        return failure(400, BAD_REQUEST, f"bad request: {exc.detail}")
    if isinstance(exc, NotFoundException):
        return failure(404, UNKNOWN_ENDPOINT, _unknown_endpoint(request))
    if isinstance(exc, MethodNotAllowedException):
        return failure(405, UNKNOWN_ENDPOINT, f"{request.method} {request.url.path}: {exc.detail}")
    if isinstance(exc, HTTPException):
        return failure(exc.status_code, BAD_REQUEST, exc.detail)
    # a fault of the server's, never blamed on the request: logged in full, answered plainly
    logger.exception("%s %s failed", request.method, request.url.path)
    return failure(500, INTERNAL_ERROR, MESSAGES[ErrorCode.INTERNAL_ERROR])


def _unknown_endpoint(request: Request[Any, Any, Any]) -> str:
    """Name the endpoint that does not exist, and the likeliest one that was meant."""
    path = request.url.path
    known = sorted({route.path for route in request.app.routes})
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.75)
    if not close:  # a wrong case, say: /getopenorders for /getOpenOrders
        lower = {k.lower(): k for k in known}
        close = [lower[path.lower()]] if path.lower() in lower else []
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"no endpoint {request.method} {path}{hint} (every endpoint is listed at /schema)"


# -- helpers ------------------------------------------------------------------------------------


class ReadSource(Protocol):
    """What the read endpoints need: read models, and whether they are loaded. The exchange
    is one; a feed gateway, whose read models follow the exchange's stream, is another."""

    @property
    def models(self) -> ReadModels: ...

    @property
    def ready(self) -> bool: ...

    @property
    def feed_port(self) -> int:
        """The port its WebSocket feed listens on (the dashboard connects there)."""
        ...

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether it is healthy, and the figures ``/health`` shows either way."""
        ...

    def metrics_text(self) -> str:
        """Its figures in the Prometheus text format."""
        ...


def _source(state: State) -> ReadSource:
    source: ReadSource = state.exchange
    if not source.ready:
        raise ApiError(503, NOT_READY, "the read models are loading")
    return source


def _read(source: ReadSource, data: Any) -> Response[bytes]:
    """A read's answer, with the version of the read models it came from (the handlers do
    not await between reading and answering, so the data is exactly at that version)."""
    return envelope(data, version=source.models.version)


def _exchange(state: State) -> Exchange:
    exchange = state.exchange
    assert isinstance(exchange, Exchange)
    if not exchange.ready:
        raise ApiError(503, NOT_READY, "the exchange is starting")
    return exchange


def _order_ids(value: object) -> list[int]:
    """``cancelOrderIds``: a list of order ids as decimal strings."""
    ids = [parse_id(i, MAX_ID) for i in value] if isinstance(value, list) else [None]
    parsed = [i for i in ids if i is not None]
    if len(parsed) != len(ids):
        raise ApiError(400, BAD_REQUEST, "cancelOrderIds is a list of decimal strings")
    return parsed


def _market(exchange: ReadSource, market_id: object) -> MarketConfig:
    number = parse_market_id(market_id)
    if number is None:
        raise ApiError(400, BAD_REQUEST, "marketId must be a decimal integer")
    row = exchange.models.markets.get(number)
    if row is None:
        raise ApiError(404, int(ErrorCode.MARKET_NOT_FOUND), MESSAGES[ErrorCode.MARKET_NOT_FOUND])
    return row.config


def _decimal(value: object, decimals: int, what: str) -> int:
    """A decimal string, an integer, or a JSON number exact at ``decimals`` places (bodies
    are decoded with numbers as ``Decimal``, so nothing passes through a float)."""
    if isinstance(value, Decimal):
        value = format(value, "f")
    try:
        return parse_decimal(value, decimals, what=what)
    except InvalidInput as exc:
        raise ApiError(400, int(exc.code), exc.detail) from None


def _amount(body: dict[str, Any]) -> int:
    """A body's USDT ``amount``: a decimal more than 0, in the quote's smallest units."""
    amount = _decimal(body.get("amount"), QUOTE_DECIMALS, "amount")
    if amount <= 0:
        raise ApiError(400, int(ErrorCode.INVALID_AMOUNT), "amount must be more than 0")
    return amount


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise ApiError(400, int(ErrorCode.INVALID_FLAG), f"{key} must be true or false")
    return value


def _profile_of(address: str | None) -> str:
    if not address:
        raise ApiError(400, BAD_REQUEST, "userAddress is required")
    try:
        return profile_address(normalise_address(address))
    except InvalidInput as exc:
        raise ApiError(400, int(exc.code), exc.detail) from None


# a timestamp filter past this (the year 5138) is milliseconds sent where seconds are read
LATEST_SECONDS: Final = 10**11


def _page(limit: int | None, offset: int | None) -> tuple[int, int]:
    limit = 100 if limit is None else limit
    offset = 0 if offset is None else offset
    if not 1 <= limit <= 1000 or offset < 0:
        raise ApiError(400, BAD_REQUEST, "limit is 1..1000 and offset at least 0")
    return limit, offset


def _to_builtins(records: Any) -> Any:
    return msgspec.json.decode(ENCODER.encode(records))


# -- reads --------------------------------------------------------------------------------------

DASHBOARD = resources.files("openperps.api").joinpath("dashboard.html")


@get("/", media_type="text/html", include_in_schema=False)
async def dashboard() -> str:
    """The web dashboard: one page, no build step, fed by this API and the WebSocket feed."""
    return DASHBOARD.read_text("utf-8")


@get("/dashboard/config", include_in_schema=False)
async def dashboard_config(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    source = _source(state)
    host = request.url.hostname or "127.0.0.1"
    return {
        "feedUrl": f"ws://{host}:{source.feed_port}/ws/",
        "startedAt": state.started_at,
    }


@get("/health", include_in_schema=True)
async def health(state: State) -> Response[bytes]:
    """200 and the version while the source is healthy (an exchange taking commands, a
    gateway following the stream); 503 otherwise, with the same figures in ``data``."""
    source: ReadSource = state.exchange
    ok, body = source.health()
    if ok:
        return envelope(body)
    return failure(503, NOT_READY, "not ready", body)


@get("/metrics", media_type="text/plain")
async def metrics(state: State) -> str:
    source: ReadSource = state.exchange
    return source.metrics_text()


@get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI document at the conventional path (also at /schema/openapi.json, beside
    the interactive docs at /schema)."""
    document = request.app.openapi_schema.to_schema()
    return Response(ENCODER.encode(document), media_type="application/json")


def _market_info(config: MarketConfig) -> dict[str, Any]:
    return {
        "marketId": str(config.market_id),
        "symbol": config.symbol,
        "tickSize": format_scaled(config.tick, config.price_decimals),
        "lotSize": format_scaled(config.lot, config.size_decimals),
        "minSize": format_scaled(config.min_size, config.size_decimals),
        "maxSize": format_scaled(config.max_size, config.size_decimals),
        "maxLeverage": config.max_leverage,
        "maintenanceMarginRate": format_scaled(config.maintenance_margin_bps, 4),
        "makerFee": format_scaled(config.maker_fee_bps, 4),
        "takerFee": format_scaled(config.taker_fee_bps, 4),
        "maxPositionValue": format_scaled(config.max_position_value, QUOTE_DECIMALS),
        "fundingIntervalS": config.funding_interval_ms // 1000,
    }


@get("/getMarketInfo")
async def get_market_info(state: State, marketId: str) -> Response[bytes]:
    exchange = _source(state)
    return _read(exchange, _market_info(_market(exchange, marketId)))


@get("/getPerpetualAssetsInfo/allMarkets")
async def all_markets(state: State) -> Response[bytes]:
    exchange = _source(state)
    return _read(
        exchange, [_market_info(m.config) for _, m in sorted(exchange.models.markets.items())]
    )


@get("/getMarketPrice")
async def get_market_price(state: State, marketId: str) -> Response[bytes]:
    exchange = _source(state)
    config = _market(exchange, marketId)
    bids, asks = exchange.models.book_of(config.market_id, 1)
    render = Renderer(exchange.models.markets)
    row = exchange.models.markets[config.market_id]
    return _read(
        exchange,
        {
            "marketId": str(config.market_id),
            "bestBidPrice": render.price(config.market_id, bids[0][0]) if bids else None,
            "bestAskPrice": render.price(config.market_id, asks[0][0]) if asks else None,
            "indexPrice": render.price(config.market_id, row.index_price)
            if row.index_price
            else None,
            "markPrice": render.price(config.market_id, row.mark_price) if row.mark_price else None,
        },
    )


@get("/getLastPlacedPrice")
async def get_last_price(state: State, marketId: str) -> Response[bytes]:
    exchange = _source(state)
    config = _market(exchange, marketId)
    row = exchange.models.markets[config.market_id]
    price = row.last_trade_price
    render = Renderer(exchange.models.markets)
    return _read(
        exchange,
        {
            "marketId": str(config.market_id),
            "lastPrice": render.price(config.market_id, price) if price else None,
        },
    )


@get("/getProfileAddress")
async def get_profile_address(state: State, userAddress: str) -> Response[bytes]:
    _source(state)
    return envelope(_profile_of(userAddress))  # computed from the address alone: no version


def _balances(exchange: ReadSource, profile: str) -> dict[str, str]:
    """A profile's balances as decimal strings, from the read models."""
    account = exchange.models.accounts.get(profile)
    free = account.free if account else 0
    reserved = account.reserved if account else 0
    margin = sum(p.margin for p in exchange.models.positions_of(profile))
    return {
        "profileAddress": profile,
        "freeBalance": format_scaled(free, QUOTE_DECIMALS),
        "reservedForOrders": format_scaled(reserved, QUOTE_DECIMALS),
        "positionMargin": format_scaled(margin, QUOTE_DECIMALS),
        "totalBalance": format_scaled(free + reserved + margin, QUOTE_DECIMALS),
    }


@get("/getProfileBalanceSnapshot")
async def get_balance(state: State, userAddress: str) -> Response[bytes]:
    exchange = _source(state)
    return _read(exchange, _balances(exchange, _profile_of(userAddress)))


@get("/getNetProfileBalance")
async def get_net_balance(state: State, userAddress: str) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    account = exchange.models.accounts.get(profile)
    return _read(exchange, format_scaled(account.free if account else 0, QUOTE_DECIMALS))


@get("/getWalletAccountBalance")
async def get_wallet_balance(state: State, userAddress: str) -> Response[bytes]:
    """The USDT the wallet holds outside the exchange (0 for a wallet never credited)."""
    exchange = _source(state)
    profile = _profile_of(userAddress)
    return _read(exchange, format_scaled(exchange.models.wallet_of(profile), QUOTE_DECIMALS))


def _market_filter(exchange: ReadSource, market_id: str | None) -> int | None:
    """An optional market filter; given empty (``marketId=``) it is malformed, not absent."""
    return _market(exchange, market_id).market_id if market_id is not None else None


@get("/getOpenOrders")
async def get_open_orders(
    state: State,
    userAddress: str,
    marketId: str | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    render = Renderer(exchange.models.markets)
    rows = exchange.models.open_orders_of(profile, _market_filter(exchange, marketId))
    return _read(exchange, _to_builtins([render.open_order(r) for r in rows]))


@get("/getOrderHistory")
async def get_order_history(
    state: State,
    userAddress: str,
    marketId: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    size, start = _page(limit, offset)
    market = _market_filter(exchange, marketId)
    render = Renderer(exchange.models.markets)
    rows = [
        r
        for r in exchange.models.order_history_of(profile, 10**6)
        if market is None or r.market_id == market
    ][start : start + size]
    return _read(exchange, _to_builtins([render.order(r) for r in rows]))


@get("/getPositions")
async def get_positions(
    state: State,
    userAddress: str,
    marketId: str | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    render = Renderer(exchange.models.markets)
    rows = exchange.models.positions_of(profile, _market_filter(exchange, marketId))
    return _read(exchange, _to_builtins([render.position(r) for r in rows]))


@get(["/getTradeHistory", "/getFills"])
async def get_trade_history(
    state: State,
    userAddress: str,
    marketId: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
    fromTimestamp: int | None = None,
    toTimestamp: int | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    size, start = _page(limit, offset)
    market = _market_filter(exchange, marketId)
    for name, moment in (("fromTimestamp", fromTimestamp), ("toTimestamp", toTimestamp)):
        if moment is not None and not 0 <= moment < LATEST_SECONDS:
            raise ApiError(400, BAD_REQUEST, f"{name} is Unix seconds, like the records' timestamp")
    render = Renderer(exchange.models.markets)
    rows = [
        r
        for r in exchange.models.fills_of(profile, 10**6)
        if (market is None or r.market_id == market)
        and (fromTimestamp is None or r.timestamp // 1000 >= fromTimestamp)
        and (toTimestamp is None or r.timestamp // 1000 <= toTimestamp)
    ][start : start + size]
    return _read(exchange, _to_builtins([render.fill(r) for r in rows]))


@get("/getDepositAndWithdrawHistory")
async def get_transfers(
    state: State,
    userAddress: str,
    limit: int | None = None,
    offset: int | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    size, start = _page(limit, offset)
    render = Renderer(exchange.models.markets)
    rows = exchange.models.transfers_of(profile, size, start)
    return _read(exchange, _to_builtins([render.transfer(r) for r in rows]))


@get("/fetchOrderStatusById")
async def order_status(
    state: State,
    marketId: str,
    orderId: str,
) -> Response[bytes]:
    exchange = _source(state)
    config = _market(exchange, marketId)
    order_id = parse_id(orderId, MAX_ID)
    if order_id is None:
        raise ApiError(400, BAD_REQUEST, "orderId must be a decimal integer")
    row = exchange.models.orders.get(order_id)
    if row is None or row.market_id != config.market_id:
        raise ApiError(404, int(ErrorCode.ORDER_NOT_FOUND), MESSAGES[ErrorCode.ORDER_NOT_FOUND])
    return _read(exchange, _to_builtins(Renderer(exchange.models.markets).order(row)))


@get("/getAllTrades")
async def all_trades(
    state: State,
    marketId: str,
    limit: int | None = None,
    offset: int | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    config = _market(exchange, marketId)
    size, start = _page(limit, offset)
    render = Renderer(exchange.models.markets)
    rows = exchange.models.recent_trades_of(config.market_id, start + size)[start:]
    return _read(exchange, _to_builtins([render.recent_trade(r) for r in rows]))


# -- signed actions -----------------------------------------------------------------------------

_body_decoder = msgspec.json.Decoder(float_hook=Decimal)


async def _signed(
    request: Request[Any, Any, Any], *, wallet_only: bool = False
) -> tuple[str, str | None, dict[str, Any]]:
    """(profile acted on, delegate key or None, JSON body) of a verified request.
    ``wallet_only``: an action only the wallet's own key may take (a delegate gets 403, 2106)."""
    state = request.app.state
    verifier = state.verifier
    assert isinstance(verifier, RequestVerifier)
    raw = await request.body()
    target = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    if query:
        target = f"{target}?{query}"
    verified = verifier.verify(
        request.headers, request.method, target, raw, time.time_ns() // 1_000_000
    )
    if wallet_only:
        verified.require_wallet_key()
    actions: Buckets = state.actions
    wait = actions.take(verified.profile)
    if wait:
        raise _rate_limited(wait, f"{actions.per_second:g} signed actions per second an account")
    return verified.profile, verified.delegate, _json_object(raw)


def _json_object(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object (an empty body is an empty one). Text that is not UTF-8
    and nesting too deep to decode are bad JSON like any other."""
    try:
        body = _body_decoder.decode(raw) if raw else {}
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, BAD_REQUEST, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_REQUEST, "the body is a JSON object")
    return body


async def _run(exchange: Exchange, command: c.Command) -> list[e.Event]:
    events = await exchange.sequencer.execute(command)
    first = events[0]
    if isinstance(first, e.Rejected):
        code = ErrorCode(first.code)
        raise ApiError(STATUS.get(code, 409), first.code, first.detail)
    return events


def _outcome(
    exchange: Exchange, events: list[e.Event], profile: str, batch: _Batch | None = None
) -> dict[str, Any]:
    """What an action did to ``profile``: its orders, its side of each fill (never the
    counterparty's fee or PnL), rejections of batch items, the positions it left open after
    changing them, and the version that made them.
    A batch's refusals name their item: its list, its index there, and a cancel's order id."""
    render = Renderer(exchange.models.markets)
    orders = []
    fills = []
    refused: list[dict[str, Any]] = []
    positions: dict[tuple[int, bool], Any] = {}  # each position the action changed, as it is now
    items = batch.items if batch is not None else []
    at = 0  # the batch item the engine is on: each one starts with its acceptance or refusal
    for event in events:
        if isinstance(event, e.OrderAccepted | e.OrderCancelled):
            row = exchange.models.orders.get(event.order_id)
            if row is not None and event.profile == profile:
                orders.append(render.order(row))
            if at < len(items) and event.profile == profile:
                item = items[at]
                if (isinstance(event, e.OrderAccepted) and item.field == "orders") or (
                    isinstance(event, e.OrderCancelled)
                    and item.order_id == event.order_id
                    and event.reason == e.CancelReason.USER
                ):
                    at += 1
        elif isinstance(event, e.TradeExecuted):
            for leg in (event.maker, event.taker):
                if leg.profile != profile:
                    continue
                fills.append(
                    {
                        "orderId": str(leg.order_id),
                        "price": render.price(event.market_id, event.price),
                        "size": render.size(event.market_id, event.size),
                        "fee": format_scaled(leg.fee, QUOTE_DECIMALS),
                        "pnl": format_scaled(leg.pnl, QUOTE_DECIMALS),
                    }
                )
        elif isinstance(event, e.PositionChanged) and event.profile == profile:
            key = (event.market_id, event.trade_side)
            held = exchange.models.positions.get((profile, *key))
            positions[key] = render.position(held) if held is not None else None
        elif isinstance(event, e.Rejected):
            refusal: dict[str, Any] = {"code": event.code, "message": event.detail}
            if at < len(items):
                item = items[at]
                refusal |= {"list": item.field, "index": item.at}
                if item.order_id is not None:
                    refusal["orderId"] = str(item.order_id)
                at += 1
            refused.append(refusal)
    if batch is not None and batch.refused:  # the edge's, in the request's order
        refused = sorted(
            refused + batch.refused, key=lambda r: (r.get("list") == "orders", r.get("index", 0))
        )
    seen: dict[str, Any] = {}
    for record in orders:  # the latest state of each order
        seen[record.order_id] = record
    return {
        "transactionVersion": events[-1].version,
        "orders": _to_builtins(list(seen.values())),
        "fills": fills,
        "refused": refused,
        # a closed position is left out: it is gone from the reads too
        "positions": _to_builtins([p for p in positions.values() if p is not None]),
    }


def _order_command(
    exchange: Exchange, profile: str, delegate: str | None, body: dict[str, Any], market: bool
) -> c.PlaceLimitOrder | c.PlaceMarketOrder:
    config = _market(exchange, body.get("marketId"))
    pd, sd = config.price_decimals, config.size_decimals
    leverage = body.get("leverage")
    if type(leverage) is not int or not 0 < leverage <= config.max_leverage:
        raise ApiError(
            400,
            int(ErrorCode.INVALID_LEVERAGE),
            f"leverage is a whole number from 1 to {config.max_leverage}",
        )
    common: dict[str, Any] = {
        "timestamp": 0,
        "profile": profile,
        "delegate": delegate,
        "market_id": config.market_id,
        "trade_side": _flag(body, "tradeSide"),
        "direction": _flag(body, "direction"),
        "size": _decimal(body.get("size"), sd, "size"),
        "leverage": leverage,
        "take_profit": _decimal(body["takeProfit"], pd, "takeProfit")
        if body.get("takeProfit") is not None
        else None,
        "stop_loss": _decimal(body["stopLoss"], pd, "stopLoss")
        if body.get("stopLoss") is not None
        else None,
    }
    if market:
        # a bot that sends them believes its order is limited or post-only: it is not
        for ignored in ("price", "restriction"):
            if body.get(ignored) is not None:
                raise ApiError(
                    400,
                    BAD_REQUEST,
                    f"a market order takes no {ignored}: placeLimitOrder with restriction 2 "
                    "(immediate-or-cancel) takes what crosses up to a price",
                )
        return c.PlaceMarketOrder(**common)
    restriction = body.get("restriction", 0)
    if type(restriction) is not int:
        raise ApiError(
            400, int(ErrorCode.INVALID_RESTRICTION), MESSAGES[ErrorCode.INVALID_RESTRICTION]
        )
    return c.PlaceLimitOrder(
        **common, price=_decimal(body.get("price"), pd, "price"), restriction=restriction
    )


@post("/placeLimitOrder", status_code=200)
async def place_limit(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    events = await _run(exchange, _order_command(exchange, profile, delegate, body, False))
    return envelope(_outcome(exchange, events, profile), "order placed")


@post("/placeMarketOrder", status_code=200)
async def place_market(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    events = await _run(exchange, _order_command(exchange, profile, delegate, body, True))
    return envelope(_outcome(exchange, events, profile), "order placed")


@post("/cancelMultipleOrders", status_code=200)
async def cancel_orders(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    config = _market(exchange, body.get("marketId"))
    order_ids = _order_ids(body.get("cancelOrderIds"))
    events = await _run(
        exchange,
        c.CancelMultipleOrders(
            timestamp=0,
            profile=profile,
            delegate=delegate,
            market_id=config.market_id,
            order_ids=order_ids,
        ),
    )
    return envelope(_outcome(exchange, events, profile, _cancels(order_ids)), "orders cancelled")


@post("/deposit", status_code=200)
async def deposit(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    amount = _amount(body)
    events = await _run(
        exchange, c.Deposit(timestamp=0, profile=profile, delegate=delegate, amount=amount)
    )
    return envelope(_transfer(events), "deposited")


@post(["/withdraw", "/withdrawSpecifiMarket"], status_code=200)
async def withdraw(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, _delegate, body = await _signed(request, wallet_only=True)
    amount = _amount(body)
    events = await _run(exchange, c.Withdraw(timestamp=0, profile=profile, amount=amount))
    return envelope(_transfer(events), "withdrawn to the wallet")


def _transfer(events: list[e.Event]) -> dict[str, Any]:
    """A deposit's or withdrawal's answer: the balances on both sides after it."""
    moved = next(ev for ev in events if isinstance(ev, e.Deposited | e.Withdrawn))
    assert moved.wallet is not None  # the engine always reports it now
    return {
        "transactionVersion": events[-1].version,
        "freeBalance": format_scaled(moved.free, QUOTE_DECIMALS),
        "walletBalance": format_scaled(moved.wallet, QUOTE_DECIMALS),
    }


async def _mint(exchange: Exchange, profile: str, amount: int) -> dict[str, Any]:
    events = await _run(exchange, c.Mint(timestamp=0, profile=profile, amount=amount))
    minted = next(ev for ev in events if isinstance(ev, e.Minted))
    return {
        "transactionVersion": events[-1].version,
        "walletBalance": format_scaled(minted.wallet, QUOTE_DECIMALS),
    }


@post("/mintTestTokens", status_code=200)
async def mint_test_tokens(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Testnet faucet: credit test USDT to the signer's wallet (``deposit`` it to trade)."""
    exchange = _exchange(state)
    if not state.faucet:
        raise ApiError(404, FAUCET_CLOSED, "the faucet exists on testnet deployments only")
    profile, _delegate, body = await _signed(request)
    amount = _decimal(body.get("amount", "1000"), QUOTE_DECIMALS, "amount")
    if not 0 < amount <= 100_000 * 10**QUOTE_DECIMALS:
        raise ApiError(400, int(ErrorCode.INVALID_AMOUNT), "the faucet gives 0 to 100000 USDT")
    return envelope(await _mint(exchange, profile, amount), "test tokens minted to the wallet")


@post("/settlePnl", status_code=200)
async def settle_pnl(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Kana's settle call. Realised PnL reaches the free balance with every reducing fill, so
    nothing is pending and nothing moves; the answer is the profile's balances and the
    version they include."""
    exchange = _exchange(state)
    profile, _delegate, body = await _signed(request)
    data: dict[str, Any] = {}
    if body.get("marketId") is not None:
        data["marketId"] = str(_market(exchange, body["marketId"]).market_id)
    data.update(_balances(exchange, profile))
    data["netBalance"] = data["freeBalance"]  # as getNetProfileBalance answers
    data["settledPnl"] = "0"
    data["transactionVersion"] = exchange.models.version
    return envelope(data, "nothing to settle: PnL is settled with every fill")


async def _position_action(
    request: Request[Any, Any, Any], state: State, build: Any, message: str
) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    config = _market(exchange, body.get("marketId"))
    command = build(exchange, config, profile, delegate, body)
    events = await _run(exchange, command)
    return envelope(_outcome(exchange, events, profile), message)


def _trigger(key: str, cls: type[c.UpdateTakeProfit] | type[c.UpdateStopLoss]) -> Any:
    def build(
        exchange: Exchange,
        config: MarketConfig,
        profile: str,
        delegate: str | None,
        body: dict[str, Any],
    ) -> c.Command:
        # the key must be there: a misspelt one must not read as "remove my stop-loss"
        if key not in body:
            raise ApiError(
                400, BAD_REQUEST, f"{key} is required: a price, or null (or 0) to remove it"
            )
        raw = body[key]
        price = None if raw is None or raw == "" else _decimal(raw, config.price_decimals, key)
        return cls(
            timestamp=0,
            profile=profile,
            delegate=delegate,
            market_id=config.market_id,
            trade_side=_flag(body, "tradeSide"),
            price=price or None,  # 0, in any spelling, removes it too
        )

    return build


@post("/updateTakeProfit", status_code=200)
async def update_take_profit(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    build = _trigger("newTakeProfitPrice", c.UpdateTakeProfit)
    return await _position_action(request, state, build, "take-profit updated")


@post("/updateStopLoss", status_code=200)
async def update_stop_loss(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    build = _trigger("newStopLossPrice", c.UpdateStopLoss)
    return await _position_action(request, state, build, "stop-loss updated")


@post("/addMargin", status_code=200)
async def add_margin(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    def build(
        exchange: Exchange,
        config: MarketConfig,
        profile: str,
        delegate: str | None,
        body: dict[str, Any],
    ) -> c.Command:
        return c.AddMargin(
            timestamp=0,
            profile=profile,
            delegate=delegate,
            market_id=config.market_id,
            trade_side=_flag(body, "tradeSide"),
            amount=_amount(body),
        )

    return await _position_action(request, state, build, "margin added")


@post("/collapsePosition", status_code=200)
async def collapse_position(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    def build(
        exchange: Exchange,
        config: MarketConfig,
        profile: str,
        delegate: str | None,
        body: dict[str, Any],
    ) -> c.Command:
        return c.CollapsePosition(
            timestamp=0, profile=profile, delegate=delegate, market_id=config.market_id
        )

    return await _position_action(request, state, build, "positions collapsed")


class _Item(NamedTuple):
    field: str  # "orders" or "cancelOrderIds"
    at: int  # its index in that list
    order_id: int | None = None  # a cancel's


class _Batch(NamedTuple):
    """A batch request's items as the engine runs them (cancels first, then new orders),
    and the items refused at the edge, each by its place in the request."""

    commands: list[c.PlaceLimitOrder | c.PlaceMarketOrder]
    items: list[_Item]  # what each engine-side item is, in the engine's order
    refused: list[dict[str, Any]]


def _batch(
    exchange: Exchange,
    profile: str,
    delegate: str | None,
    items: object,
    *,
    cancels: Sequence[int] = (),
    market_id: int | None = None,
) -> _Batch:
    """Parse a batch's orders one by one: an item the edge refuses (bad number, unknown
    market, ...) is reported with its index and code, and the others still go to the engine,
    as an item the engine refuses would be. ``market_id``: every order must be in it."""
    if not isinstance(items, list) or not items:
        raise ApiError(400, BAD_REQUEST, "orders is a non-empty list")
    batch = _cancels(cancels)
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ApiError(400, BAD_REQUEST, "each order is a JSON object")
            command = _order_command(exchange, profile, delegate, item, item.get("price") is None)
            if market_id is not None and command.market_id != market_id:
                raise ApiError(
                    400,
                    BAD_REQUEST,
                    f"an order for market {command.market_id} in a request for market {market_id}",
                )
        except ApiError as refusal:
            batch.refused.append(
                {"code": refusal.code, "message": refusal.message, "list": "orders", "index": index}
            )
            continue
        batch.commands.append(command)
        batch.items.append(_Item("orders", index))
    if not batch.commands and not cancels:  # every order refused: the first is orders[0]
        first = batch.refused[0]
        raise ApiError(
            400, first["code"], f"no order could be placed; orders[0]: {first['message']}"
        )
    return batch


def _cancels(order_ids: Sequence[int]) -> _Batch:
    """A batch of cancels only, each known by its place in ``cancelOrderIds``."""
    return _Batch([], [_Item("cancelOrderIds", i, oid) for i, oid in enumerate(order_ids)], [])


@post("/placeMultipleOrders", status_code=200)
async def place_multiple(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    batch = _batch(exchange, profile, delegate, body.get("orders"))
    command = c.PlaceMultipleOrders(
        timestamp=0, profile=profile, delegate=delegate, orders=batch.commands
    )
    events = await _run(exchange, command)
    return envelope(_outcome(exchange, events, profile, batch), "orders placed")


@post("/cancelAndPlaceMultipleOrders", status_code=200)
async def cancel_and_place(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, delegate, body = await _signed(request)
    config = _market(exchange, body.get("marketId"))
    order_ids = _order_ids(body.get("cancelOrderIds", []))
    # with orders to cancel, the new ones may be left out (every quote pulled in one request)
    listed = body.get("orders")
    if listed is None or listed == []:
        if not order_ids:
            raise ApiError(400, BAD_REQUEST, "nothing to do: cancelOrderIds and orders are empty")
        batch = _cancels(order_ids)
    else:
        batch = _batch(
            exchange, profile, delegate, listed, cancels=order_ids, market_id=config.market_id
        )
    events = await _run(
        exchange,
        c.CancelAndPlaceMultipleOrders(
            timestamp=0,
            profile=profile,
            delegate=delegate,
            market_id=config.market_id,
            cancel_order_ids=order_ids,
            orders=batch.commands,
        ),
    )
    return envelope(_outcome(exchange, events, profile, batch), "orders replaced")


@post("/enableDelegation", status_code=200)
async def enable_delegation(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, _delegate, body = await _signed(request, wallet_only=True)
    expires = body.get("expiresAt")
    if type(expires) is not int or not 0 < expires < 2**63:
        raise ApiError(400, BAD_REQUEST, "expiresAt is Unix milliseconds")
    events = await _run(
        exchange,
        c.EnableDelegation(
            timestamp=0,
            profile=profile,
            delegate_public_key=str(body.get("delegatePublicKey")),
            expires_at=expires,
        ),
    )
    return envelope({"transactionVersion": events[-1].version}, "delegation enabled")


@post("/disableDelegation", status_code=200)
async def disable_delegation(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    exchange = _exchange(state)
    profile, _delegate, _body = await _signed(request, wallet_only=True)
    events = await _run(exchange, c.DisableDelegation(timestamp=0, profile=profile))
    return envelope({"transactionVersion": events[-1].version}, "delegation disabled")


@get("/getFundingHistory")
async def funding_history(
    state: State,
    userAddress: str,
    limit: int | None = None,
    offset: int | None = None,
    order: str | None = None,
) -> Response[bytes]:
    exchange = _source(state)
    profile = _profile_of(userAddress)
    size, start = _page(limit, offset)
    if order not in (None, "asc", "desc"):
        raise ApiError(400, BAD_REQUEST, "order is asc or desc")
    rows = exchange.models.funding_of(profile, 10**6)
    if order == "asc":
        rows.reverse()
    render = Renderer(exchange.models.markets)
    return _read(
        exchange,
        [
            {
                "marketId": str(r.market_id),
                "tradeSide": r.trade_side,
                "tradeId": str(r.trade_id),
                "size": render.size(r.market_id, r.size),
                "fundingRate": format_scaled(r.rate, 12),
                "amount": format_scaled(r.amount, QUOTE_DECIMALS),
                "timestamp": r.timestamp // 1000,
                "transactionVersion": r.version,
            }
            for r in rows[start : start + size]
        ],
    )


def _admin(request: Request[Any, Any, Any]) -> None:
    token = request.app.state.admin_token
    given = request.headers.get("authorization", "")
    if not token or given != f"Bearer {token}":
        raise ApiError(401, ADMIN_ONLY, "operator endpoints need the configured bearer token")


async def _admin_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return _json_object(await request.body())


@post("/admin/oraclePrice", status_code=200)
async def admin_oracle_price(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    _admin(request)
    exchange = _exchange(state)
    body = await _admin_body(request)
    config = _market(exchange, body.get("marketId"))
    price = _decimal(body.get("price"), config.price_decimals, "price")
    events = await exchange.keepers.set_price(config.market_id, price)
    if isinstance(events[0], e.Rejected):
        raise ApiError(400, events[0].code, events[0].detail)
    return envelope({"transactionVersion": events[-1].version}, "price set")


@post("/admin/pauseMarket", status_code=200)
async def admin_pause(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    _admin(request)
    exchange = _exchange(state)
    body = await _admin_body(request)
    config = _market(exchange, body.get("marketId"))
    events = await _run(
        exchange,
        c.PauseMarket(timestamp=0, market_id=config.market_id, paused=_flag(body, "paused")),
    )
    return envelope({"transactionVersion": events[-1].version}, "market updated")


@post("/admin/creditWallet", status_code=200)
async def admin_credit_wallet(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Record USDT arriving in a wallet from outside (an on-chain transfer in): how money
    reaches a deployment without a faucet. Body: ``{userAddress, amount}``."""
    _admin(request)
    exchange = _exchange(state)
    body = await _admin_body(request)
    address = body.get("userAddress")
    profile = _profile_of(address if isinstance(address, str) else None)
    amount = _amount(body)
    return envelope(await _mint(exchange, profile, amount), "wallet credited")


@post("/admin/listMarket", status_code=200)
async def admin_list_market(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """List a market while running. The body is one ``[[market]]`` table of ``markets.toml``
    as JSON: figures in human units as decimal strings, ``market_id`` (or the deployment
    network's ``testnet_id``/``mainnet_id``)."""
    _admin(request)
    exchange = _exchange(state)
    body = await _admin_body(request)
    table = {k: format(v, "f") if isinstance(v, Decimal) else v for k, v in body.items()}
    config = market_from_table(table, state.network)
    events = await _run(exchange, c.ListMarket(timestamp=0, market=config))
    data = {"transactionVersion": events[-1].version, "market": _market_info(config)}
    return envelope(data, "market listed")


# the GET endpoints over read models: the exchange serves them, and so does a gateway
READ_HANDLERS = [
    get_market_info,
    all_markets,
    get_market_price,
    get_last_price,
    get_profile_address,
    get_balance,
    get_net_balance,
    get_wallet_balance,
    get_open_orders,
    get_order_history,
    get_positions,
    get_trade_history,
    get_transfers,
    order_status,
    all_trades,
    funding_history,
]


def create_app(
    exchange: Exchange,
    *,
    faucet: bool = True,
    network: Network = "testnet",
    window_ms: int = 30_000,
    admin_token: str | None = None,
    limits: RestLimits | None = None,
) -> Litestar:
    """The REST app over a started (or starting) exchange. ``network`` picks which id of a
    market table ``/admin/listMarket`` uses; ``limits``: request rates (api/limits.py)."""

    def delegate_of(profile: str) -> tuple[str, int] | None:
        return exchange.models.delegations.get(profile)

    return _litestar(
        [
            dashboard,
            dashboard_config,
            health,
            metrics,
            *READ_HANDLERS,
            place_limit,
            place_market,
            cancel_orders,
            deposit,
            withdraw,
            mint_test_tokens,
            settle_pnl,
            update_take_profit,
            update_stop_loss,
            add_margin,
            collapse_position,
            place_multiple,
            cancel_and_place,
            enable_delegation,
            disable_delegation,
            admin_oracle_price,
            admin_pause,
            admin_credit_wallet,
            admin_list_market,
            openapi_document,
        ],
        {
            "exchange": exchange,
            "verifier": RequestVerifier(delegate_of, window_ms=window_ms),
            "faucet": faucet,
            "network": network,
            "admin_token": admin_token,
        },
        "OpenPerps",
        limits,
    )


def _rate_limited(wait: float, limit: str) -> ApiError:
    return ApiError(
        429,
        int(ErrorCode.RATE_LIMITED),
        f"too many requests: at most {limit}; retry in {wait:.2f} s",
        {"Retry-After": retry_after(wait)},
    )


UNCOUNTED = frozenset({"/health", "/metrics"})  # what monitors poll


async def _count_request(request: Request[Any, Any, Any]) -> None:
    """The per-address ceiling, on every request but the monitors'."""
    if request.url.path in UNCOUNTED:
        return
    requests: Buckets = request.app.state.requests
    wait = requests.take(request.client.host if request.client else "?")
    if wait:
        raise _rate_limited(wait, f"{requests.per_second:g} requests per second an address")


def _litestar(
    handlers: list[Any], state: dict[str, Any], title: str, limits: RestLimits | None
) -> Litestar:
    """An app of ``handlers``: coded errors, request rates, the OpenAPI document, and
    ``started_at`` (what the dashboard reloads on) in its state beside ``state``."""
    limits = limits or RestLimits()
    buckets = {
        "actions": Buckets(limits.actions_per_second, limits.action_burst),
        "requests": Buckets(limits.requests_per_second, limits.request_burst),
    }
    app = Litestar(
        route_handlers=handlers,
        state=State({**state, **buckets, "started_at": time.time_ns() // 1_000_000}),
        before_request=_count_request,
        exception_handlers={Exception: _handle_error},
        openapi_config=OpenAPIConfig(title=title, version=__version__),
        debug=False,
        logging_config=None,  # the process configures logging (openperps serve), not the app
    )
    document(app)  # bodies, signature headers and answers, which handlers do not declare
    return app


# -- a read-only REST app, for processes that follow the exchange (feed gateways) ------------


def create_read_app(replica: ReadSource, limits: RestLimits | None = None) -> Litestar:
    """The read endpoints (the same paths and answers as the exchange's own REST server), the
    dashboard, ``/health``, ``/metrics`` and ``/openapi.json``, over a replica's read models
    and feed. Actions are not here: they go to the exchange."""
    return _litestar(
        [*READ_HANDLERS, dashboard, dashboard_config, health, metrics, openapi_document],
        {"exchange": replica},
        "OpenPerps (read replica)",
        limits,
    )
