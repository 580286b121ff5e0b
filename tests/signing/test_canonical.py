"""The signed text and the headers, and the hand-signing example of docs/signing.md."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from openperps.signing import (
    PrivateKey,
    body_sha256_hex,
    canonical_request,
    request_target,
    sign_request,
    verify,
)
from tests.signing.vectors import (
    APTOS_ADDRESS,
    APTOS_PRIVATE_KEY,
    APTOS_PUBLIC_KEY,
    DOC_BODY,
    DOC_SIGNATURE,
    DOC_TEXT,
    DOC_TIMESTAMP,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "signing.md"
KEY = PrivateKey.from_hex(APTOS_PRIVATE_KEY)


def test_canonical_text() -> None:
    text = canonical_request(DOC_TIMESTAMP, "post", "/placeLimitOrder", DOC_BODY)
    assert text == DOC_TEXT
    assert text.split("\n")[3] == hashlib.sha256(DOC_BODY).hexdigest()


def test_empty_body_hashes_no_bytes() -> None:
    assert body_sha256_hex(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert canonical_request(5, "GET", "/a?b=1", b"").endswith("\n" + body_sha256_hex(b""))


def test_request_target() -> None:
    assert request_target("/getFills") == "/getFills"
    assert request_target("/getFills", "") == "/getFills"
    assert request_target("/getFills", "userAddress=0x1&limit=5") == (
        "/getFills?userAddress=0x1&limit=5"
    )


def test_sign_request_headers_known_answer() -> None:
    headers = sign_request(KEY, "POST", "/placeLimitOrder", DOC_BODY, DOC_TIMESTAMP)
    assert headers == {
        "x-wallet-address": APTOS_ADDRESS,
        "x-public-key": APTOS_PUBLIC_KEY,
        "x-timestamp": str(DOC_TIMESTAMP),
        "x-signature": DOC_SIGNATURE,
    }
    assert verify(APTOS_PUBLIC_KEY, DOC_TEXT.encode(), DOC_SIGNATURE)


def test_sign_request_for_another_wallet_names_it_normalised() -> None:
    headers = sign_request(KEY, "POST", "/deposit", b"{}", 1, wallet="0xAB")
    assert headers["x-wallet-address"] == "0x" + "0" * 62 + "ab"
    assert headers["x-public-key"] == APTOS_PUBLIC_KEY


@pytest.mark.parametrize(
    ("method", "path", "body", "timestamp"),
    [
        ("POST", "/deposit", b"", -1),
        ("POST", "/deposit", b"", True),
        ("POST", "/deposit", b"", 1.5),
        ("POST", "/deposit", b"", "1"),
        ("PO ST", "/deposit", b"", 1),
        ("", "/deposit", b"", 1),
        ("POST\n", "/deposit", b"", 1),
        ("POST", "deposit", b"", 1),
        ("POST", "", b"", 1),
        ("POST", "/deposit\n/withdraw", b"", 1),
        ("POST", "/a b", b"", 1),
        ("POST", "/dépôt", b"", 1),
        ("POST", "/deposit", "{}", 1),
    ],
)
def test_sign_request_refuses_what_cannot_be_sent(
    method: str, path: str, body: Any, timestamp: Any
) -> None:
    with pytest.raises((ValueError, TypeError)):
        sign_request(KEY, method, path, body, timestamp)


def _doc_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def test_the_documented_example_signs_exactly_as_we_do() -> None:
    namespace: dict[str, Any] = {}
    exec(_doc_python_blocks()[0], namespace)
    signed_headers = cast(Callable[..., dict[str, str]], namespace["signed_headers"])
    by_hand = signed_headers(APTOS_PRIVATE_KEY, "POST", "/placeLimitOrder", DOC_BODY, DOC_TIMESTAMP)
    assert by_hand == sign_request(KEY, "POST", "/placeLimitOrder", DOC_BODY, DOC_TIMESTAMP)
    for _ in range(20):
        key = PrivateKey.generate()
        path = "/getFills?userAddress=0x1&fromTimestamp=5"
        assert signed_headers(key.to_hex(), "get", path, b"", 99) == sign_request(
            key, "GET", path, b"", 99
        )


def test_the_documented_figures_are_true() -> None:
    text = DOCS.read_text()
    assert DOC_SIGNATURE in text
    assert DOC_TEXT in text
    assert APTOS_ADDRESS in text
    assert APTOS_PUBLIC_KEY in text
    assert body_sha256_hex(b"") in text
