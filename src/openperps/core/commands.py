"""Commands: what a caller asks the engine to do (imperative, frozen).

Every command carries the ``timestamp`` (Unix milliseconds) at which the sequencer accepted
it: the engine has no clock. Ids are assigned by the engine from its own counters, so the
same command log always yields the same event log.

User commands carry the ``profile`` address they act on and, when a delegate key signs
instead of the wallet, that ``delegate`` public key (exchange-rules.md, "Accounts").

Integers are in the units of ``core.numbers``. The engine validates every field itself
(types included): a command built with a float, a bool where an int belongs, or a number
past 64 bits is rejected with a code, not trusted.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec

from openperps.core.markets import MarketConfig


class Restriction(IntEnum):
    NONE = 0
    FILL_OR_KILL = 1
    IMMEDIATE_OR_CANCEL = 2
    POST_ONLY = 3


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="cmd", tag=True):
    timestamp: int


class UserCommand(Command, frozen=True, kw_only=True):
    profile: str
    delegate: str | None = None


class Deposit(UserCommand, frozen=True, kw_only=True):
    """Move ``amount`` from the owner's wallet into the profile's free balance."""

    amount: int


class Withdraw(UserCommand, frozen=True, kw_only=True):
    """Move ``amount`` of free balance back to the owner's wallet."""

    amount: int


class Mint(Command, frozen=True, kw_only=True):
    """Credit ``amount`` to the wallet of ``profile``'s owner: USDT arriving from outside the
    exchange (the testnet faucet, or an operator recording an on-chain transfer in). Wallets
    are keyed by profile, like everything in the engine."""

    profile: str
    amount: int


class PlaceLimitOrder(UserCommand, frozen=True, kw_only=True):
    market_id: int
    trade_side: bool
    direction: bool
    size: int
    price: int
    leverage: int
    restriction: int = 0
    take_profit: int | None = None
    stop_loss: int | None = None


class PlaceMarketOrder(UserCommand, frozen=True, kw_only=True):
    market_id: int
    trade_side: bool
    direction: bool
    size: int
    leverage: int
    take_profit: int | None = None
    stop_loss: int | None = None


class CancelOrder(UserCommand, frozen=True, kw_only=True):
    market_id: int
    order_id: int


class PlaceMultipleOrders(UserCommand, frozen=True, kw_only=True):
    """Several orders handled one after the other; each succeeds or is rejected alone."""

    orders: list[PlaceLimitOrder | PlaceMarketOrder]


class CancelMultipleOrders(UserCommand, frozen=True, kw_only=True):
    market_id: int
    order_ids: list[int]


class CancelAndPlaceMultipleOrders(UserCommand, frozen=True, kw_only=True):
    market_id: int
    cancel_order_ids: list[int]
    orders: list[PlaceLimitOrder | PlaceMarketOrder]


class UpdateTakeProfit(UserCommand, frozen=True, kw_only=True):
    """Set (or with ``price=None`` remove) the take-profit of a position."""

    market_id: int
    trade_side: bool
    price: int | None


class UpdateStopLoss(UserCommand, frozen=True, kw_only=True):
    market_id: int
    trade_side: bool
    price: int | None


class AddMargin(UserCommand, frozen=True, kw_only=True):
    market_id: int
    trade_side: bool
    amount: int


class CollapsePosition(UserCommand, frozen=True, kw_only=True):
    """Net a hedged long and short of one market against each other."""

    market_id: int


class EnableDelegation(UserCommand, frozen=True, kw_only=True):
    delegate_public_key: str
    expires_at: int


class DisableDelegation(UserCommand, frozen=True, kw_only=True):
    pass


class SetOraclePrice(Command, frozen=True, kw_only=True):
    """A new index price: updates mark price, samples the funding premium, fires TP/SL."""

    market_id: int
    price: int


class SettleFunding(Command, frozen=True, kw_only=True):
    market_id: int


class Liquidate(Command, frozen=True, kw_only=True):
    profile: str
    market_id: int
    trade_side: bool
    liquidator: str


class ListMarket(Command, frozen=True, kw_only=True):
    market: MarketConfig


class PauseMarket(Command, frozen=True, kw_only=True):
    market_id: int
    paused: bool


AnyCommand = (
    Deposit
    | Withdraw
    | Mint
    | PlaceLimitOrder
    | PlaceMarketOrder
    | CancelOrder
    | PlaceMultipleOrders
    | CancelMultipleOrders
    | CancelAndPlaceMultipleOrders
    | UpdateTakeProfit
    | UpdateStopLoss
    | AddMargin
    | CollapsePosition
    | EnableDelegation
    | DisableDelegation
    | SetOraclePrice
    | SettleFunding
    | Liquidate
    | ListMarket
    | PauseMarket
)
