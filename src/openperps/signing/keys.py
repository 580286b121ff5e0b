"""Ed25519 keys, as in Aptos: a 32-byte seed is the private key, signatures are 64 bytes.

Keys travel as ``0x`` + lower-case hex. Parsing is strict (ASCII hex digits only, exact
length; ``bytes.fromhex`` alone would let spaces through) and ``verify`` never raises, so the
server can hand it whatever a client sent.
"""

from __future__ import annotations

import re
from typing import Final

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from openperps.signing.addresses import wallet_address
from openperps.signing.errors import SigningError, SigningErrorCode

SEED_SIZE: Final = 32
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64

# The Aptos CLI and SDKs write private keys as AIP-80 strings: "ed25519-priv-0x<hex>".
_AIP80_PREFIX: Final = "ed25519-priv-"
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")


def parse_hex(value: object, size: int) -> bytes | None:
    """Exactly ``size`` bytes from hex with an optional ``0x`` prefix, or None if malformed."""
    if not isinstance(value, str):
        return None
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    if len(digits) != 2 * size or _HEX_DIGITS.fullmatch(digits) is None:
        return None
    return bytes.fromhex(digits)


def normalise_public_key(value: object) -> str | None:
    """An Ed25519 public key as ``0x`` + 64 lower-case hex digits, or None if malformed."""
    raw = parse_hex(value, PUBLIC_KEY_SIZE)
    return None if raw is None else "0x" + raw.hex()


class PrivateKey:
    """An Ed25519 signing key. ``repr`` never shows the secret."""

    __slots__ = ("_key", "public_key_bytes")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise SigningError(SigningErrorCode.INVALID_KEY, "a private key is a 32-byte seed")
        self._key = SigningKey(seed)
        self.public_key_bytes: bytes = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(SigningKey.generate()))

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        """From ``0x`` + 64 hex digits (the prefix is optional; AIP-80's is accepted too)."""
        if isinstance(text, str):
            text = text.removeprefix(_AIP80_PREFIX)
        seed = parse_hex(text, SEED_SIZE)
        if seed is None:
            raise SigningError(
                SigningErrorCode.INVALID_KEY, "a private key is 0x followed by 64 hex digits"
            )
        return cls(seed)

    def to_hex(self) -> str:
        return "0x" + bytes(self._key).hex()

    @property
    def public_key_hex(self) -> str:
        return "0x" + self.public_key_bytes.hex()

    @property
    def address(self) -> str:
        """The wallet address this key controls (Aptos single-key Ed25519 derivation)."""
        return wallet_address(self.public_key_bytes)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return bytes(self._key.sign(message).signature)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and bytes(self._key) == bytes(other._key)

    def __hash__(self) -> int:
        return hash(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"PrivateKey(public_key={self.public_key_hex})"


def verify(public_key_hex: str, message: bytes, signature: bytes | str) -> bool:
    """True when ``signature`` (64 bytes, or their hex) signs ``message`` under the key.

    Never raises: malformed hex, wrong lengths and wrong types all answer False.
    """
    public_key = parse_hex(public_key_hex, PUBLIC_KEY_SIZE)
    if isinstance(signature, str):
        raw_signature = parse_hex(signature, SIGNATURE_SIZE)
    elif isinstance(signature, bytes) and len(signature) == SIGNATURE_SIZE:
        raw_signature = signature
    else:
        raw_signature = None
    if public_key is None or raw_signature is None or not isinstance(message, bytes):
        return False
    try:
        VerifyKey(public_key).verify(message, raw_signature)
    except (CryptoError, ValueError, TypeError):
        # libsodium refuses bad signatures, small-order keys and non-canonical S values
        return False
    return True
