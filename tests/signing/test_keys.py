"""Ed25519 keys: known answers, hex round trips, and a ``verify`` that never raises."""

from __future__ import annotations

from typing import Any

import pytest

from openperps.signing import (
    PrivateKey,
    SigningError,
    SigningErrorCode,
    normalise_public_key,
    verify,
)
from tests.signing.vectors import (
    APTOS_ADDRESS,
    APTOS_MESSAGE,
    APTOS_PRIVATE_KEY,
    APTOS_PUBLIC_KEY,
    APTOS_SIGNATURE,
)


def test_aptos_vector_public_key_address_and_signature() -> None:
    key = PrivateKey.from_hex(APTOS_PRIVATE_KEY)
    assert key.public_key_hex == APTOS_PUBLIC_KEY
    assert key.address == APTOS_ADDRESS
    assert "0x" + key.sign(APTOS_MESSAGE).hex() == APTOS_SIGNATURE
    assert verify(APTOS_PUBLIC_KEY, APTOS_MESSAGE, APTOS_SIGNATURE)


def test_hex_round_trip() -> None:
    key = PrivateKey.generate()
    text = key.to_hex()
    assert text.startswith("0x")
    assert len(text) == 66
    assert text == text.lower()
    assert PrivateKey.from_hex(text) == key


@pytest.mark.parametrize(
    "text",
    [
        APTOS_PRIVATE_KEY,
        APTOS_PRIVATE_KEY[2:],
        APTOS_PRIVATE_KEY.upper().replace("0X", "0x"),
        "0X" + APTOS_PRIVATE_KEY[2:],
        "ed25519-priv-" + APTOS_PRIVATE_KEY,
    ],
)
def test_from_hex_accepts_the_usual_spellings(text: str) -> None:
    assert PrivateKey.from_hex(text).public_key_hex == APTOS_PUBLIC_KEY


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        APTOS_PRIVATE_KEY[:-2],
        APTOS_PRIVATE_KEY + "00",
        APTOS_PRIVATE_KEY[:-1] + "g",
        APTOS_PRIVATE_KEY[:10] + " " + APTOS_PRIVATE_KEY[11:],
        "0x" + "٣" * 64,  # non-ASCII digits
        "0x0x" + APTOS_PRIVATE_KEY[4:],
    ],
)
def test_from_hex_refuses_malformed_keys(text: str) -> None:
    with pytest.raises(SigningError) as caught:
        PrivateKey.from_hex(text)
    assert caught.value.code is SigningErrorCode.INVALID_KEY


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_seed_must_be_32_bytes(seed: bytes) -> None:
    with pytest.raises(SigningError) as caught:
        PrivateKey(seed)
    assert caught.value.code is SigningErrorCode.INVALID_KEY


def test_repr_hides_the_secret() -> None:
    key = PrivateKey.from_hex(APTOS_PRIVATE_KEY)
    assert APTOS_PRIVATE_KEY[2:] not in repr(key)
    assert APTOS_PUBLIC_KEY in repr(key)


def test_generated_keys_differ() -> None:
    assert PrivateKey.generate() != PrivateKey.generate()


def test_sign_verify_round_trip() -> None:
    key = PrivateKey.generate()
    signature = key.sign(b"hello")
    assert len(signature) == 64
    assert verify(key.public_key_hex, b"hello", signature)
    assert verify(key.public_key_hex, b"hello", signature.hex())
    assert verify(key.public_key_hex, b"hello", "0X" + signature.hex().upper())
    assert not verify(key.public_key_hex, b"hellO", signature)
    assert not verify(PrivateKey.generate().public_key_hex, b"hello", signature)


GOOD_SIGNATURE = APTOS_SIGNATURE


@pytest.mark.parametrize(
    ("public_key", "message", "signature"),
    [
        ("", APTOS_MESSAGE, GOOD_SIGNATURE),
        ("0x", APTOS_MESSAGE, GOOD_SIGNATURE),
        (APTOS_PUBLIC_KEY[:-2], APTOS_MESSAGE, GOOD_SIGNATURE),
        (APTOS_PUBLIC_KEY + "00", APTOS_MESSAGE, GOOD_SIGNATURE),
        (APTOS_PUBLIC_KEY[:-1] + "z", APTOS_MESSAGE, GOOD_SIGNATURE),
        (None, APTOS_MESSAGE, GOOD_SIGNATURE),
        (bytes.fromhex(APTOS_PUBLIC_KEY[2:]), APTOS_MESSAGE, GOOD_SIGNATURE),
        (APTOS_PUBLIC_KEY, "7777", GOOD_SIGNATURE),
        (APTOS_PUBLIC_KEY, None, GOOD_SIGNATURE),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, ""),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, GOOD_SIGNATURE[:-2]),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, GOOD_SIGNATURE + "00"),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, GOOD_SIGNATURE[:-1] + "x"),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, b"\x00" * 63),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, b"\x00" * 64),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, bytearray(64)),
        (APTOS_PUBLIC_KEY, APTOS_MESSAGE, 12345),
        ("0x" + "00" * 32, APTOS_MESSAGE, GOOD_SIGNATURE),  # a small-order point
        ("0x" + "ff" * 32, APTOS_MESSAGE, GOOD_SIGNATURE),  # not a point at all
        ("0x" + "01" + "00" * 31, APTOS_MESSAGE, "0x" + "01" + "00" * 63),  # identity, forged
    ],
)
def test_verify_answers_false_and_never_raises(
    public_key: Any, message: Any, signature: Any
) -> None:
    assert verify(public_key, message, signature) is False


def test_verify_refuses_a_non_canonical_s() -> None:
    # S + L is the same scalar mod L; libsodium must refuse it so that a signature has one form
    order = 2**252 + 27742317777372353535851937790883648493
    raw = bytes.fromhex(APTOS_SIGNATURE[2:])
    s = int.from_bytes(raw[32:], "little")
    malleated = raw[:32] + (s + order).to_bytes(32, "little")
    assert verify(APTOS_PUBLIC_KEY, APTOS_MESSAGE, raw)
    assert not verify(APTOS_PUBLIC_KEY, APTOS_MESSAGE, malleated)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (APTOS_PUBLIC_KEY, APTOS_PUBLIC_KEY),
        (APTOS_PUBLIC_KEY[2:].upper(), APTOS_PUBLIC_KEY),
        (APTOS_PUBLIC_KEY[:-2], None),
        ("0x" + "g" * 64, None),
        (42, None),
    ],
)
def test_normalise_public_key(given: object, expected: str | None) -> None:
    assert normalise_public_key(given) == expected


def test_keys_compare_and_hash_by_value() -> None:
    assert (
        len({PrivateKey.from_hex(APTOS_PRIVATE_KEY), PrivateKey.from_hex(APTOS_PRIVATE_KEY)}) == 1
    )
    assert PrivateKey.from_hex(APTOS_PRIVATE_KEY) != APTOS_PRIVATE_KEY
