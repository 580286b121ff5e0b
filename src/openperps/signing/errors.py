"""Signing errors: one exception, stable codes in the 2100-2199 family.

``core.errors`` reserves 2100-2199 for accounts, delegation and signing at the REST edge; these
are the codes of that family. They are written out, never derived from declaration order, and
append-only. ``core.errors.ErrorCode`` is owned by the engine, so the family lives here as its
own ``IntEnum`` and its own exception (``SigningError``) rather than as an ``OpenPerpsError``.

Every request-signing failure answers HTTP 401 (rest-api.md, "Envelope": bad or missing
signature); ``DELEGATE_FORBIDDEN`` is the 403 the REST layer raises when a delegate tries to
withdraw or change delegation. Key and key-file codes are for the SDK and the CLI and never
reach an HTTP answer; they carry 400 for completeness.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class SigningErrorCode(IntEnum):
    MALFORMED_HEADERS = 2101
    TIMESTAMP_OUTSIDE_WINDOW = 2102
    BAD_SIGNATURE = 2103
    KEY_NOT_AUTHORISED = 2104
    REPLAYED_SIGNATURE = 2105
    DELEGATE_FORBIDDEN = 2106
    INVALID_KEY = 2107
    KEY_FILE_NOT_FOUND = 2108
    KEY_FILE_MALFORMED = 2109
    KEY_FILE_TOO_OPEN = 2110
    KEY_FILE_EXISTS = 2111
    KEY_FILE_UNWRITABLE = 2112


MESSAGES: Final[dict[SigningErrorCode, str]] = {
    SigningErrorCode.MALFORMED_HEADERS: "missing or malformed signature headers",
    SigningErrorCode.TIMESTAMP_OUTSIDE_WINDOW: "request timestamp outside the accepted window",
    SigningErrorCode.BAD_SIGNATURE: "signature does not match the request",
    SigningErrorCode.KEY_NOT_AUTHORISED: "key is neither the wallet's nor its live delegate's",
    SigningErrorCode.REPLAYED_SIGNATURE: "signature already used",
    SigningErrorCode.DELEGATE_FORBIDDEN: "a delegate cannot withdraw or change delegation",
    SigningErrorCode.INVALID_KEY: "invalid Ed25519 key",
    SigningErrorCode.KEY_FILE_NOT_FOUND: "key file not found",
    SigningErrorCode.KEY_FILE_MALFORMED: "key file is malformed",
    SigningErrorCode.KEY_FILE_TOO_OPEN: "key file is readable by other users",
    SigningErrorCode.KEY_FILE_EXISTS: "key file already exists",
    SigningErrorCode.KEY_FILE_UNWRITABLE: "key file could not be written",
}

HTTP_STATUS: Final[dict[SigningErrorCode, int]] = {
    SigningErrorCode.MALFORMED_HEADERS: 401,
    SigningErrorCode.TIMESTAMP_OUTSIDE_WINDOW: 401,
    SigningErrorCode.BAD_SIGNATURE: 401,
    SigningErrorCode.KEY_NOT_AUTHORISED: 401,
    SigningErrorCode.REPLAYED_SIGNATURE: 401,
    SigningErrorCode.DELEGATE_FORBIDDEN: 403,
}


class SigningError(Exception):
    """A request, key or key file refused at the boundary; carries a stable code."""

    def __init__(self, code: SigningErrorCode, detail: str | None = None) -> None:
        self.code = code
        self.detail = detail or MESSAGES[code]
        super().__init__(f"{int(code)}: {self.detail}")

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)
