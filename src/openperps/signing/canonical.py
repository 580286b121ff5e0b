"""The signed text of a request and the headers that carry its signature (rest-api.md, "Signing").

    {x-timestamp}\\n{METHOD}\\n{path with query}\\n{hex sha256 of the raw body}

encoded as UTF-8. The path with query is the request target exactly as sent on the wire
(percent-encoding included, no scheme or host): ``/placeLimitOrder`` or
``/getOrderHistory?userAddress=0x..&limit=10``. An empty body hashes to the sha256 of no bytes.
The wallet and public-key headers are not in the text: the key is bound by the signature
verifying under it, and the wallet by the key having to own it or be its delegate.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from openperps.signing.addresses import normalise_address
from openperps.signing.keys import PrivateKey

HEADER_WALLET: Final = "x-wallet-address"
HEADER_PUBLIC_KEY: Final = "x-public-key"
HEADER_TIMESTAMP: Final = "x-timestamp"
HEADER_SIGNATURE: Final = "x-signature"
SIGNATURE_HEADERS: Final = (HEADER_WALLET, HEADER_PUBLIC_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)

_METHOD = re.compile(r"[A-Za-z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]*")  # visible ASCII, as an HTTP request target is


def body_sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_target(path: str, query: str = "") -> str:
    """The path with query as it is signed: ``path`` alone when there is no query string."""
    return f"{path}?{query}" if query else path


def canonical_request(timestamp: int | str, method: str, path_with_query: str, body: bytes) -> str:
    """The text whose UTF-8 bytes are signed. ``timestamp`` is the ``x-timestamp`` value."""
    return f"{timestamp}\n{method.upper()}\n{path_with_query}\n{body_sha256_hex(body)}"


def sign_request(
    key: PrivateKey,
    method: str,
    path_with_query: str,
    body: bytes,
    timestamp_ms: int,
    *,
    wallet: str | None = None,
) -> dict[str, str]:
    """The four signature headers for one request.

    ``wallet`` is the account acted upon; it defaults to the key's own address and is set
    when a delegate key signs for the wallet that authorised it.
    """
    if type(timestamp_ms) is not int or timestamp_ms < 0:
        raise ValueError("timestamp_ms must be a non-negative int (Unix milliseconds)")
    if _METHOD.fullmatch(method) is None:
        raise ValueError(f"not an HTTP method: {method!r}")
    if _TARGET.fullmatch(path_with_query) is None:
        raise ValueError("path_with_query must start with / and hold only visible ASCII")
    if not isinstance(body, bytes):
        raise TypeError("body must be the raw bytes sent")
    text = canonical_request(timestamp_ms, method, path_with_query, body)
    return {
        HEADER_WALLET: key.address if wallet is None else normalise_address(wallet),
        HEADER_PUBLIC_KEY: key.public_key_hex,
        HEADER_TIMESTAMP: str(timestamp_ms),
        HEADER_SIGNATURE: "0x" + key.sign(text.encode()).hex(),
    }
