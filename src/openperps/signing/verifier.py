"""Checking a signed request on the server (rest-api.md, "Signing").

``RequestVerifier.verify`` runs the checks in this order and raises ``SigningError`` with the
first failure (all HTTP 401):

    2101 MALFORMED_HEADERS         a header missing, repeated or not in its format
    2102 TIMESTAMP_OUTSIDE_WINDOW  |now - x-timestamp| > window (30 s by default)
    2103 BAD_SIGNATURE             the signature does not verify under x-public-key
    2104 KEY_NOT_AUTHORISED        the key neither derives the wallet nor is its live delegate
    2105 REPLAYED_SIGNATURE        the exact signature was accepted before

A signature is remembered only once accepted, and only until its timestamp leaves the window:
after that the timestamp check refuses it anyway. Memory is therefore bounded by the requests
accepted within one window (per-client rate limits belong to the caller). Signatures are
compared as bytes, so re-sending one in upper case or without ``0x`` is still a replay;
libsodium refuses non-canonical encodings, so no second valid form of a signature exists.

The clock is the caller's (``now_ms``); the verifier keeps its high-water mark so that a clock
stepping back cannot revive a signature it has already forgotten.

Where delegations are stored is not the verifier's business: it asks ``delegate_of(profile)``
for ``(public_key_hex, expires_at_ms)`` or None. A delegation is live while
``now < expires_at``, as in the engine. Whether a delegate may perform the action (never a
withdrawal or a delegation change) is the caller's rule: ``VerifiedRequest.require_wallet_key``.
"""

from __future__ import annotations

import heapq
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from openperps.core.errors import InvalidInput
from openperps.signing.addresses import normalise_address, profile_address, wallet_address
from openperps.signing.canonical import (
    HEADER_PUBLIC_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_WALLET,
    SIGNATURE_HEADERS,
    canonical_request,
)
from openperps.signing.errors import SigningError, SigningErrorCode
from openperps.signing.keys import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    normalise_public_key,
    parse_hex,
    verify,
)

DEFAULT_WINDOW_MS: Final = 30_000

# Unix milliseconds fit 13 digits until the year 2286; 16 keeps parsing cheap and bounded.
_TIMESTAMP = re.compile(r"[0-9]{1,16}")

DelegateLookup = Callable[[str], tuple[str, int] | None]


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """Who a verified request acts for, and with which key."""

    wallet: str
    """The wallet in ``x-wallet-address``, normalised."""
    profile: str
    """The profile (trading account) the request acts on: ``profile_address(wallet)``."""
    public_key: str
    """The key that signed, ``0x`` + 64 lower-case hex digits."""
    delegate: str | None
    """The signing key when it is the wallet's delegate, None when the wallet's own key signed;
    what ``core.commands.UserCommand.delegate`` takes."""
    timestamp_ms: int

    @property
    def is_delegate(self) -> bool:
        return self.delegate is not None

    def require_wallet_key(self) -> None:
        """Refuse a delegate (403): withdrawals and delegation changes need the wallet's key."""
        if self.delegate is not None:
            raise SigningError(SigningErrorCode.DELEGATE_FORBIDDEN)


def _malformed(detail: str) -> SigningError:
    return SigningError(SigningErrorCode.MALFORMED_HEADERS, detail)


def _signature_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The four headers by lower-case name; a missing or repeated one is malformed."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower() if isinstance(name, str) else ""
        if lowered in SIGNATURE_HEADERS:
            if lowered in found:
                raise _malformed(f"header {lowered} given more than once")
            if not isinstance(value, str):
                raise _malformed(f"header {lowered} must be text")
            found[lowered] = value
    missing = [name for name in SIGNATURE_HEADERS if name not in found]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise _malformed(f"missing header{plural} {', '.join(missing)}")
    return found


class RequestVerifier:
    """Verifies signed requests and remembers accepted signatures for one window.

    Safe to share between threads; ``verify`` does no I/O beyond calling ``delegate_of``.
    """

    def __init__(self, delegate_of: DelegateLookup, *, window_ms: int = DEFAULT_WINDOW_MS) -> None:
        if type(window_ms) is not int or window_ms <= 0:
            raise ValueError("window_ms must be a positive int")
        self._delegate_of = delegate_of
        self.window_ms = window_ms
        self._seen: dict[bytes, int] = {}  # signature -> the last ms at which it is in window
        self._expiries: list[tuple[int, bytes]] = []  # min-heap of the same pairs
        self._high_water = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many accepted signatures are remembered now."""
        return len(self._seen)

    def verify(
        self,
        headers: Mapping[str, str],
        method: str,
        path_with_query: str,
        body: bytes,
        now_ms: int,
    ) -> VerifiedRequest:
        with self._lock:
            now = self._advance(now_ms)
        fields = _signature_headers(headers)
        try:
            wallet = normalise_address(fields[HEADER_WALLET])
        except InvalidInput:
            raise _malformed(f"{HEADER_WALLET} must be 0x followed by 1 to 64 hex digits") from None
        public_key = normalise_public_key(fields[HEADER_PUBLIC_KEY])
        if public_key is None:
            raise _malformed(
                f"{HEADER_PUBLIC_KEY} must be 0x followed by {2 * PUBLIC_KEY_SIZE} hex digits"
            )
        timestamp_text = fields[HEADER_TIMESTAMP]
        if _TIMESTAMP.fullmatch(timestamp_text) is None:
            raise _malformed(f"{HEADER_TIMESTAMP} must be Unix milliseconds in decimal digits")
        signature = parse_hex(fields[HEADER_SIGNATURE], SIGNATURE_SIZE)
        if signature is None:
            raise _malformed(
                f"{HEADER_SIGNATURE} must be 0x followed by {2 * SIGNATURE_SIZE} hex digits"
            )

        timestamp = int(timestamp_text)
        self._check_window(timestamp, now)
        text = canonical_request(timestamp_text, method, path_with_query, body)
        if not verify(public_key, text.encode(), signature):
            raise SigningError(SigningErrorCode.BAD_SIGNATURE)

        profile = profile_address(wallet)
        delegate = None
        if wallet_address(bytes.fromhex(public_key[2:])) != wallet:
            granted = self._delegate_of(profile)
            if granted is None or normalise_public_key(granted[0]) != public_key:
                raise SigningError(SigningErrorCode.KEY_NOT_AUTHORISED)
            if now >= granted[1]:
                raise SigningError(SigningErrorCode.KEY_NOT_AUTHORISED, "delegation has expired")
            delegate = public_key

        with self._lock:
            # another thread may have moved the clock on meanwhile and forgotten this signature
            self._check_window(timestamp, self._advance(now))
            if signature in self._seen:
                raise SigningError(SigningErrorCode.REPLAYED_SIGNATURE)
            expiry = timestamp + self.window_ms
            self._seen[signature] = expiry
            heapq.heappush(self._expiries, (expiry, signature))
        return VerifiedRequest(wallet, profile, public_key, delegate, timestamp)

    def _check_window(self, timestamp: int, now: int) -> None:
        if abs(now - timestamp) > self.window_ms:
            raise SigningError(
                SigningErrorCode.TIMESTAMP_OUTSIDE_WINDOW,
                f"{HEADER_TIMESTAMP} {timestamp} is more than {self.window_ms} ms from the "
                f"server clock {now}",
            )

    def _advance(self, now_ms: int) -> int:
        """Move the high-water clock to ``now_ms`` and forget signatures out of the window."""
        if type(now_ms) is not int:
            raise TypeError("now_ms must be an int (Unix milliseconds)")
        now = self._high_water = max(self._high_water, now_ms)
        expiries = self._expiries
        while expiries and expiries[0][0] < now:
            _, signature = heapq.heappop(expiries)
            del self._seen[signature]
        return now
