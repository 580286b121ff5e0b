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

import typing
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


# -- field types, as the engine checks them -------------------------------------------------
# The engine refuses a command whose fields don't have their declared types (a float size, a
# bool where an int belongs, a str market id) before it reads them: the compiled engine
# (mypyc) would otherwise coerce a bool to an int or raise TypeError where it reads a field.
INT, OPT_INT, BOOL, STR, OPT_STR, RESTRICTION, INT_LIST, STRUCT, STRUCT_LIST = range(9)


def _kind(annotation: object) -> tuple[int, tuple[type, ...]]:
    args = typing.get_args(annotation)
    if annotation is int:
        return INT, ()
    if annotation is bool:
        return BOOL, ()
    if annotation is str:
        return STR, ()
    if annotation is Restriction:
        return RESTRICTION, ()
    if annotation == int | None:
        return OPT_INT, ()
    if annotation == str | None:
        return OPT_STR, ()
    if typing.get_origin(annotation) is list and args == (int,):
        return INT_LIST, ()
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return STRUCT, (annotation,)
    if typing.get_origin(annotation) is list and len(args) == 1:
        members = typing.get_args(args[0]) or args
        if all(isinstance(m, type) and issubclass(m, msgspec.Struct) for m in members):
            return STRUCT_LIST, tuple(members)
    raise TypeError(f"no type check for {annotation!r}")


def field_kinds(cls: type[msgspec.Struct]) -> tuple[tuple[str, int, tuple[type, ...]], ...]:
    """(field name, kind, allowed struct classes) for every field of a command or struct."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (name, RESTRICTION, ()) if name == "restriction" else (name, *_kind(hints[name]))
        for name in cls.__struct_fields__
    )


FIELD_KINDS: dict[type, tuple[tuple[str, int, tuple[type, ...]], ...]] = {}
for _cls in (*typing.get_args(AnyCommand), MarketConfig):
    FIELD_KINDS[_cls] = field_kinds(_cls)
