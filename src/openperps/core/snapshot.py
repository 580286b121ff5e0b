"""The shapes of an engine snapshot: the whole state, canonical and versioned.

They live apart from ``core.engine`` so that the engine module can be compiled (see
DEVELOPERS.md, "The compiled engine") while these stay ordinary ``msgspec`` structs.
"""

from __future__ import annotations

import msgspec

from openperps.core.markets import MarketConfig


class OrderSnap(msgspec.Struct, frozen=True, array_like=True):
    order_id: int
    profile: str
    trade_side: bool
    direction: bool
    order_type: int
    price: int
    size: int
    remaining: int
    leverage: int
    trade_id: int
    timestamp: int
    restriction: int
    reserved: int
    take_profit: int | None
    stop_loss: int | None


class PositionSnap(msgspec.Struct, frozen=True, array_like=True):
    profile: str
    trade_side: bool
    trade_id: int
    leverage: int
    size: int
    entry_value: int
    margin: int
    take_profit: int | None
    stop_loss: int | None
    pending_open: int
    pending_reduce: int


class MarketSnap(msgspec.Struct, frozen=True):
    config: MarketConfig
    paused: bool
    index_price: int | None
    last_trade_price: int | None
    premium_acc: int
    last_premium: int
    last_sample_ts: int
    interval_start: int
    last_funding_ts: int
    funding_rate: int
    position_counter: int
    orders: list[OrderSnap]
    positions: list[PositionSnap]


class AccountSnap(msgspec.Struct, frozen=True, array_like=True):
    profile: str
    free: int
    reserved: int
    deposited: int
    withdrawn: int


class DelegationSnap(msgspec.Struct, frozen=True, array_like=True):
    profile: str
    public_key: str
    expires_at: int


class WalletSnap(msgspec.Struct, frozen=True, array_like=True):
    profile: str
    balance: int
    minted: int


class EngineSnapshot(msgspec.Struct, frozen=True):
    """The whole engine state at ``version``, in a canonical (sorted) order."""

    version: int
    last_timestamp: int
    order_counter: int
    markets: list[MarketSnap]
    accounts: list[AccountSnap]
    delegations: list[DelegationSnap]
    wallets: list[WalletSnap] = []  # absent from snapshots taken before wallets existed


# JSON rather than msgpack: ids are 128-bit integers, which msgpack cannot carry.
_snapshot_encoder = msgspec.json.Encoder()
_snapshot_decoder = msgspec.json.Decoder(EngineSnapshot)


def encode_snapshot(snapshot: EngineSnapshot) -> bytes:
    """The canonical bytes of a snapshot; ``state_hash`` is their SHA-256."""
    return _snapshot_encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> EngineSnapshot:
    return _snapshot_decoder.decode(data)
