"""Events: what happened (past tense, frozen), each with its ``version``.

``version`` is the exchange-wide ``transaction_version``: every event the engine emits takes
the next integer, with no gap, rejections included. ``timestamp`` is the command's (Unix
milliseconds). Events carry the state they leave behind (a position's size, margin and entry
value after a fill; an account's free balance), so read models are plain projections that
never re-run exchange rules, and applying an event twice changes nothing.

The event union is tagged by ``type`` for msgspec, so an event log encodes and decodes
without a registry.
"""

from __future__ import annotations

from enum import IntEnum
from typing import cast

import msgspec

from openperps.core.commands import AnyCommand
from openperps.core.markets import MarketConfig


class CancelReason(IntEnum):
    USER = 0
    IMMEDIATE_OR_CANCEL = 1
    SELF_MATCH = 2
    INSUFFICIENT_BALANCE = 3
    LIQUIDATION = 4
    POSITION_CLOSED = 5
    NO_LIQUIDITY = 6
    MAX_POSITION_VALUE = 7


class Event(msgspec.Struct, frozen=True, tag_field="type", tag=True):
    version: int
    timestamp: int


class CommandExecuted(Event, frozen=True):
    """The command the rules accepted; the events after it, up to the next command, are its
    effects. Journaling the command makes the log replayable by re-execution."""

    command: AnyCommand


class Minted(Event, frozen=True):
    """USDT credited to a wallet from outside the exchange; ``wallet`` is its balance after."""

    profile: str
    amount: int
    wallet: int


class Deposited(Event, frozen=True):
    """Wallet -> free balance. ``wallet`` is the wallet's balance after; None in logs written
    before wallets existed, when deposits came from nowhere."""

    profile: str
    amount: int
    free: int
    wallet: int | None = None


class Withdrawn(Event, frozen=True):
    """Free balance -> wallet. ``wallet`` as in ``Deposited``."""

    profile: str
    amount: int
    free: int
    wallet: int | None = None


class OrderAccepted(Event, frozen=True):
    order_id: int
    profile: str
    market_id: int
    trade_side: bool
    direction: bool
    order_type: int
    is_market: bool
    restriction: int
    price: int | None
    size: int
    leverage: int
    trade_id: int
    take_profit: int | None
    stop_loss: int | None


class FillLeg(msgspec.Struct, frozen=True):
    """One side of a trade: what it did to that order and account."""

    profile: str
    order_id: int
    order_type: int
    trade_id: int
    leverage: int
    is_buy: bool
    fee: int
    pnl: int
    remaining: int


class TradeExecuted(Event, frozen=True):
    """A match at the maker's price. ``pnl`` of each leg is realised PnL minus its fee."""

    market_id: int
    price: int
    size: int
    maker: FillLeg
    taker: FillLeg


class OrderCancelled(Event, frozen=True):
    order_id: int
    profile: str
    market_id: int
    remaining: int
    reason: int


class Rejected(Event, frozen=True):
    command: str
    profile: str | None
    market_id: int | None
    code: int
    detail: str


class PositionChanged(Event, frozen=True):
    """The position after a change; ``size == 0`` means it is closed.

    ``entry_value`` is the cost basis in quote units (entry price = entry_value / size);
    ``available_size`` is what reduce orders may still take (size minus resting reduces).
    """

    profile: str
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


class BalanceChanged(Event, frozen=True):
    profile: str
    free: int
    reserved: int


class MarginAdded(Event, frozen=True):
    profile: str
    market_id: int
    trade_side: bool
    amount: int


class PositionsCollapsed(Event, frozen=True):
    profile: str
    market_id: int
    size: int
    pnl: int


class TpSlTriggered(Event, frozen=True):
    profile: str
    market_id: int
    trade_side: bool
    take_profit: bool
    trigger_price: int
    mark_price: int


class OraclePriceSet(Event, frozen=True):
    """New index price; ``funding_rate`` is the predicted rate of the running interval."""

    market_id: int
    index_price: int
    mark_price: int
    funding_rate: int


class FundingPayment(msgspec.Struct, frozen=True):
    """Signed: positive when the position received funding, negative when it paid."""

    profile: str
    trade_side: bool
    trade_id: int
    size: int
    amount: int


class FundingSettled(Event, frozen=True):
    market_id: int
    rate: int
    mark_price: int
    payments: list[FundingPayment]
    house_remainder: int


class PositionLiquidated(Event, frozen=True):
    """Close-out summary. ``taken_over_size`` passed to the insurance fund at bankruptcy."""

    profile: str
    market_id: int
    trade_side: bool
    trade_id: int
    liquidator: str
    mark_price: int
    size: int
    taken_over_size: int
    collateral_left: int
    to_user: int
    to_liquidator: int
    to_insurance: int
    to_house: int
    shortfall: int


class MarketListed(Event, frozen=True):
    market: MarketConfig


class MarketPaused(Event, frozen=True):
    market_id: int
    paused: bool


class DelegationEnabled(Event, frozen=True):
    profile: str
    delegate_public_key: str
    expires_at: int


class DelegationDisabled(Event, frozen=True):
    profile: str


AnyEvent = (
    CommandExecuted
    | Minted
    | Deposited
    | Withdrawn
    | OrderAccepted
    | TradeExecuted
    | OrderCancelled
    | Rejected
    | PositionChanged
    | BalanceChanged
    | MarginAdded
    | PositionsCollapsed
    | TpSlTriggered
    | OraclePriceSet
    | FundingSettled
    | PositionLiquidated
    | MarketListed
    | MarketPaused
    | DelegationEnabled
    | DelegationDisabled
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    """The one JSON encoding of an event (its ``type`` tag included)."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    return cast(AnyEvent, _decoder.decode(data))
