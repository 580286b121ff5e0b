"""The feed's record shapes (ws-protocol.md, "Record shapes"), as msgspec Structs.

Field names, order and JSON types are exact: decimals are strings, timestamps integer Unix
seconds, ``transaction_version`` an integer, ``market_id`` a decimal string, ids decimal
strings of 128-bit integers. The one exception kept for compatibility is
``OrderbookLevel.price``, a JSON number: it is held as a ``Decimal`` (never a float) and
written as a number by ``ENCODER``.

Decoding refuses unknown fields, so a client built on these types notices a server that
drifts from the contract.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class _Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class OrderHistoryRecord(_Record, frozen=True):
    address: str
    order_id: str
    market_id: str
    order_type: int
    is_market_order: bool
    size: str
    price: str
    order_value: str
    leverage: int
    status: str
    timestamp: int
    last_updated: int
    trade_id: str
    transaction_version: int


class DepositWithdrawRecord(_Record, frozen=True):
    address: str
    amount: str
    is_deposit: bool
    timestamp: int
    last_updated: int
    transaction_version: int


class TradeHistoryRecord(_Record, frozen=True):
    address: str
    trade_id: str
    market_id: str
    order_type: int
    size: str
    price: str
    order_value: str
    leverage: int
    fee: str
    pnl: str
    timestamp: int
    last_updated: int
    transaction_version: int


class PositionRecord(_Record, frozen=True):
    address: str
    market_id: str
    trade_id: str
    size: str
    entry_price: str
    value: str
    leverage: int
    margin: str
    liq_price: str
    available_order_size: str
    trade_side: bool
    sl: str | None
    tp: str | None
    timestamp: int
    transaction_version: int


class OpenOrderRecord(_Record, frozen=True):
    address: str
    order_id: str
    market_id: str
    order_type: int
    price: str
    total_size: str
    remaining_size: str
    order_value: str
    leverage: int
    timestamp: int
    last_updated: int
    trade_id: str
    transaction_version: int


class OrderbookLevel(_Record, frozen=True):
    market_id: str
    price: Decimal
    size: str
    is_ask: bool
    last_updated: int
    transaction_version: int

    def __post_init__(self) -> None:
        # msgspec does not check types on construction: without this a float (or a NaN,
        # which ENCODER would write as invalid JSON) could reach the wire
        if not isinstance(self.price, Decimal) or not self.price.is_finite():
            raise ValueError("an order-book price is a finite Decimal, never a float")


class RecentTradeRecord(_Record, frozen=True):
    address: str
    market_id: str
    trade_id: str
    order_type: int
    price: str
    size: str
    order_value: str
    leverage: int
    fee: str
    pnl: str
    timestamp: int
    last_updated: int
    transaction_version: int


class FundingRateRecord(_Record, frozen=True):
    funding_rate: str
    funding_timestamp: int
    last_updated: int
    market_id: str
    transaction_timestamp: int
    transaction_version: int


class LiveTradeRecord(_Record, frozen=True):
    """A ``trade_history`` record plus the ``order_id`` of the filled order."""

    address: str
    trade_id: str
    market_id: str
    order_type: int
    size: str
    price: str
    order_value: str
    leverage: int
    fee: str
    pnl: str
    timestamp: int
    last_updated: int
    transaction_version: int
    order_id: str


# the one encoder of wire JSON: Decimal as a number (orderbook prices), everything else as is
ENCODER = msgspec.json.Encoder(decimal_format="number")
