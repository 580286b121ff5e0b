"""Wallet and profile addresses (Aptos-style: 32 bytes, written ``0x`` + 64 hex digits).

Wallet (rest-api.md, "Signing"): the Aptos single-key Ed25519 authentication key,

    wallet = sha3_256(public_key(32) || 0x00)

where 0x00 is Aptos' Ed25519 scheme byte. A fresh Aptos account's address equals this key.

Profile (exchange-rules.md, "Accounts"): the Aptos named-object derivation
(``object::create_object_address``) with the wallet as creator and a fixed seed,

    profile = sha3_256(wallet(32) || b"openperps::profile" || 0xFE)

where 0xFE is Aptos' object-from-seed scheme byte. It is deterministic, so a client can compute
its profile address offline and ``getProfileAddress`` only confirms it. The seed is part of
the protocol: changing it moves every account.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from openperps.core.errors import ErrorCode, InvalidInput
from openperps.signing.errors import SigningError, SigningErrorCode

ED25519_SCHEME: Final = b"\x00"
OBJECT_FROM_SEED_SCHEME: Final = b"\xfe"
PROFILE_SEED: Final = b"openperps::profile"

_ADDRESS_DIGITS = re.compile(r"[0-9a-f]{1,64}")


def normalise_address(value: str) -> str:
    """``0x`` + 64 lower-case hex digits; the prefix is optional and leading zeros may be dropped
    (``0x1`` is ``0x00..01``). Raises ``InvalidInput(INVALID_ADDRESS)`` otherwise."""
    if not isinstance(value, str):
        raise InvalidInput(ErrorCode.INVALID_ADDRESS, "address must be a string")
    text = value.lower()
    digits = text.removeprefix("0x")
    if _ADDRESS_DIGITS.fullmatch(digits) is None:
        raise InvalidInput(ErrorCode.INVALID_ADDRESS, "address must be 0x and 1 to 64 hex digits")
    return "0x" + digits.rjust(64, "0")


def wallet_address(public_key: bytes) -> str:
    """The wallet address an Ed25519 public key (32 raw bytes) controls."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise SigningError(SigningErrorCode.INVALID_KEY, "an Ed25519 public key is 32 bytes")
    return "0x" + hashlib.sha3_256(public_key + ED25519_SCHEME).hexdigest()


def object_address(creator: str, seed: bytes) -> str:
    """Aptos ``object::create_object_address(creator, seed)``."""
    creator_bytes = bytes.fromhex(normalise_address(creator)[2:])
    return "0x" + hashlib.sha3_256(creator_bytes + seed + OBJECT_FROM_SEED_SCHEME).hexdigest()


def profile_address(wallet: str) -> str:
    """The profile (trading account) a wallet owns. Raises ``InvalidInput`` for a bad wallet."""
    return object_address(wallet, PROFILE_SEED)
