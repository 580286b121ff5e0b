"""Request signing, shared by the REST server and the Python SDK (rest-api.md, "Signing").

A client holds an Ed25519 ``PrivateKey``; its wallet address is the Aptos single-key
derivation and its profile (trading account) the Aptos named-object derivation over the
wallet (``addresses``). Each request carries four headers signing the canonical text
``"{timestamp}\\n{METHOD}\\n{path with query}\\n{sha256(body) hex}"`` (``canonical``); the
server's ``RequestVerifier`` checks them, the timestamp window, the key's authority (the
wallet's own or its live delegate's) and replays (``verifier``). The CLI keeps keys in 0600
JSON files (``keyfile``).

Errors (``errors``): stable codes in core's 2100-2199 family.

    SigningError              .code: SigningErrorCode, .detail, .http_status
      2101-2105  a request refused (401)
      2106       a delegate doing what only the wallet's key may (403, raised by the caller)
      2107       a malformed key
      2108-2112  key files
    InvalidInput(INVALID_ADDRESS)   from normalise_address / profile_address (core.errors)
"""

from openperps.signing.addresses import (
    ED25519_SCHEME,
    OBJECT_FROM_SEED_SCHEME,
    PROFILE_SEED,
    normalise_address,
    object_address,
    profile_address,
    wallet_address,
)
from openperps.signing.canonical import (
    HEADER_PUBLIC_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_WALLET,
    SIGNATURE_HEADERS,
    body_sha256_hex,
    canonical_request,
    request_target,
    sign_request,
)
from openperps.signing.errors import HTTP_STATUS, MESSAGES, SigningError, SigningErrorCode
from openperps.signing.keyfile import load_key, save_key
from openperps.signing.keys import PrivateKey, normalise_public_key, parse_hex, verify
from openperps.signing.verifier import (
    DEFAULT_WINDOW_MS,
    DelegateLookup,
    RequestVerifier,
    VerifiedRequest,
)

__all__ = [
    "DEFAULT_WINDOW_MS",
    "ED25519_SCHEME",
    "HEADER_PUBLIC_KEY",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "HEADER_WALLET",
    "HTTP_STATUS",
    "MESSAGES",
    "OBJECT_FROM_SEED_SCHEME",
    "PROFILE_SEED",
    "SIGNATURE_HEADERS",
    "DelegateLookup",
    "PrivateKey",
    "RequestVerifier",
    "SigningError",
    "SigningErrorCode",
    "VerifiedRequest",
    "body_sha256_hex",
    "canonical_request",
    "load_key",
    "normalise_address",
    "normalise_public_key",
    "object_address",
    "parse_hex",
    "profile_address",
    "request_target",
    "save_key",
    "sign_request",
    "verify",
    "wallet_address",
]
