"""Wallet and profile addresses: the Aptos derivations, checked against outside vectors and
recomputed here with hashlib alone."""

from __future__ import annotations

import hashlib

import pytest

from openperps.core.errors import ErrorCode, InvalidInput
from openperps.signing import (
    PROFILE_SEED,
    PrivateKey,
    SigningError,
    SigningErrorCode,
    normalise_address,
    object_address,
    profile_address,
    wallet_address,
)
from tests.signing.vectors import (
    APTOS_ADDRESS,
    APTOS_KEY_PROFILE,
    APTOS_OBJECT_ADDRESS,
    APTOS_OBJECT_CREATOR,
    APTOS_OBJECT_SEED,
    APTOS_PRIVATE_KEY,
    APTOS_PUBLIC_KEY,
)


def test_wallet_address_is_the_aptos_single_key_derivation() -> None:
    public_key = bytes.fromhex(APTOS_PUBLIC_KEY[2:])
    assert wallet_address(public_key) == APTOS_ADDRESS


def test_wallet_address_recomputed_with_hashlib() -> None:
    key = PrivateKey.generate()
    expected = hashlib.sha3_256(key.public_key_bytes + bytes([0])).hexdigest()
    assert key.address == "0x" + expected


@pytest.mark.parametrize("public_key", [b"", b"\x01" * 31, b"\x01" * 33])
def test_wallet_address_needs_32_bytes(public_key: bytes) -> None:
    with pytest.raises(SigningError) as caught:
        wallet_address(public_key)
    assert caught.value.code is SigningErrorCode.INVALID_KEY


def test_object_address_is_the_aptos_named_object_derivation() -> None:
    assert object_address(APTOS_OBJECT_CREATOR, APTOS_OBJECT_SEED) == APTOS_OBJECT_ADDRESS


def test_profile_address_known_answer() -> None:
    assert PrivateKey.from_hex(APTOS_PRIVATE_KEY).address == APTOS_ADDRESS
    assert profile_address(APTOS_ADDRESS) == APTOS_KEY_PROFILE


def test_profile_address_recomputed_with_hashlib() -> None:
    wallet = PrivateKey.generate().address
    material = bytes.fromhex(wallet[2:]) + b"openperps::profile" + bytes([0xFE])
    assert PROFILE_SEED == b"openperps::profile"
    assert profile_address(wallet) == "0x" + hashlib.sha3_256(material).hexdigest()


def test_profile_address_ignores_the_spelling_of_the_wallet() -> None:
    short = "0x" + APTOS_ADDRESS[2:].lstrip("0").upper()
    assert profile_address(short) == profile_address(APTOS_ADDRESS)
    assert profile_address("0x1") == profile_address("0x" + "0" * 63 + "1")


def test_profile_and_wallet_differ() -> None:
    assert profile_address(APTOS_ADDRESS) != APTOS_ADDRESS


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("0x1", "0x" + "0" * 63 + "1"),
        ("1", "0x" + "0" * 63 + "1"),
        ("0XAB", "0x" + "0" * 62 + "ab"),
        (APTOS_ADDRESS.upper().replace("0X", "0x"), APTOS_ADDRESS),
        (APTOS_ADDRESS[2:], APTOS_ADDRESS),
        ("0x" + "0" * 64, "0x" + "0" * 64),
    ],
)
def test_normalise_address(given: str, expected: str) -> None:
    assert normalise_address(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "0x",
        "0x" + "1" * 65,
        "0xg",
        "0x 1",
        " 0x1",
        "0x1\n",
        "0x-1",
        "0x0x1",
        "0x" + "٣",
        None,
        1,
    ],
)
def test_normalise_address_refuses(given: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_address(given)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_ADDRESS


def test_profile_address_refuses_a_bad_wallet() -> None:
    with pytest.raises(InvalidInput) as caught:
        profile_address("0xnope")
    assert caught.value.code is ErrorCode.INVALID_ADDRESS
