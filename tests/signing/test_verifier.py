"""The server side: every refusal with its code, the window, replays, delegation, memory."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from openperps.signing import (
    DEFAULT_WINDOW_MS,
    PrivateKey,
    RequestVerifier,
    SigningError,
    SigningErrorCode,
    VerifiedRequest,
    profile_address,
    sign_request,
)

C = SigningErrorCode
NOW = 1_700_000_000_000
PATH = "/placeLimitOrder"
BODY = b'{"marketId":1338,"size":"1.5"}'
OWNER = PrivateKey.from_hex("0x" + "11" * 32)
DELEGATE = PrivateKey.from_hex("0x" + "22" * 32)
STRANGER = PrivateKey.from_hex("0x" + "33" * 32)


class Delegations:
    """A stand-in for wherever the server keeps delegations: profile -> (key, expires_at)."""

    def __init__(self) -> None:
        self.granted: dict[str, tuple[str, int]] = {}
        self.asked: list[str] = []

    def grant(self, wallet: str, key: PrivateKey, expires_at: int) -> None:
        self.granted[profile_address(wallet)] = (key.public_key_hex, expires_at)

    def __call__(self, profile: str) -> tuple[str, int] | None:
        self.asked.append(profile)
        return self.granted.get(profile)


def no_delegates(profile: str) -> tuple[str, int] | None:
    return None


def signed(
    key: PrivateKey = OWNER,
    *,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    timestamp: int = NOW,
    wallet: str | None = None,
) -> dict[str, str]:
    return sign_request(key, method, path, body, timestamp, wallet=wallet)


def refused(
    verifier: RequestVerifier,
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    now: int = NOW,
) -> C:
    with pytest.raises(SigningError) as caught:
        verifier.verify(headers, method, path, body, now)
    assert caught.value.http_status == 401
    return caught.value.code


def accepted(
    verifier: RequestVerifier,
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    now: int = NOW,
) -> VerifiedRequest:
    return verifier.verify(headers, method, path, body, now)


@pytest.fixture
def verifier() -> RequestVerifier:
    return RequestVerifier(no_delegates)


# -- accepted --------------------------------------------------------------------------------------


def test_the_wallet_key_is_accepted(verifier: RequestVerifier) -> None:
    result = accepted(verifier, signed())
    assert result == VerifiedRequest(
        wallet=OWNER.address,
        profile=profile_address(OWNER.address),
        public_key=OWNER.public_key_hex,
        delegate=None,
        timestamp_ms=NOW,
    )
    assert not result.is_delegate
    result.require_wallet_key()


def test_a_get_with_a_query_and_no_body(verifier: RequestVerifier) -> None:
    path = "/getOrderHistory?userAddress=0x1&limit=10"
    headers = signed(method="GET", path=path, body=b"")
    assert accepted(verifier, headers, method="get", path=path, body=b"").profile


def test_header_names_are_case_insensitive(verifier: RequestVerifier) -> None:
    headers = {name.upper(): value for name, value in signed().items()}
    accepted(verifier, headers)


def test_header_values_in_other_spellings(verifier: RequestVerifier) -> None:
    headers = signed()
    headers["x-public-key"] = headers["x-public-key"][2:].upper()
    headers["x-signature"] = "0X" + headers["x-signature"][2:].upper()
    headers["x-wallet-address"] = headers["x-wallet-address"].upper().replace("0X", "0x")
    assert accepted(verifier, headers).wallet == OWNER.address


def test_extra_headers_are_ignored(verifier: RequestVerifier) -> None:
    accepted(verifier, {**signed(), "content-type": "application/json", "x-other": "1"})


def test_a_short_wallet_address_is_normalised() -> None:
    # the zero-padded spelling of a wallet whose address starts with zeros
    while True:
        key = PrivateKey.generate()
        if key.address.startswith("0x0"):
            break
    headers = signed(key, wallet="0x" + key.address[2:].lstrip("0"))
    assert accepted(RequestVerifier(no_delegates), headers).wallet == key.address


# -- tampering -------------------------------------------------------------------------------------

SIGNED_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("method", {"method": "PUT"}),
    ("path", {"path": "/placeMarketOrder"}),
    ("query added", {"path": PATH + "?x=1"}),
    ("body", {"body": BODY.replace(b"1.5", b"15")}),
    ("body emptied", {"body": b""}),
]


@pytest.mark.parametrize(("what", "change"), SIGNED_FIELDS, ids=[w for w, _ in SIGNED_FIELDS])
def test_tampering_with_the_request_is_a_bad_signature(
    verifier: RequestVerifier, what: str, change: dict[str, Any]
) -> None:
    assert refused(verifier, signed(), **change) is C.BAD_SIGNATURE


def test_tampering_with_the_query(verifier: RequestVerifier) -> None:
    path = "/getFills?userAddress=0x1&limit=10"
    headers = signed(method="GET", path=path, body=b"")
    for other in [
        "/getFills?userAddress=0x1&limit=11",
        "/getFills?limit=10&userAddress=0x1",
        "/getFills",
        "/getFills?userAddress=0x1&limit=10&",
    ]:
        assert refused(verifier, headers, method="GET", path=other, body=b"") is C.BAD_SIGNATURE
    accepted(verifier, headers, method="GET", path=path, body=b"")


def test_tampering_with_the_timestamp(verifier: RequestVerifier) -> None:
    headers = signed()
    headers["x-timestamp"] = str(NOW + 1)
    assert refused(verifier, headers) is C.BAD_SIGNATURE
    headers["x-timestamp"] = "0" + str(NOW)  # same number, other text: not what was signed
    assert refused(verifier, headers) is C.BAD_SIGNATURE


def test_tampering_with_the_signature(verifier: RequestVerifier) -> None:
    headers = signed()
    signature = bytearray.fromhex(headers["x-signature"][2:])
    for index in (0, 31, 32, 63):
        flipped = bytearray(signature)
        flipped[index] ^= 1
        assert refused(verifier, {**headers, "x-signature": flipped.hex()}) is C.BAD_SIGNATURE
    other = signed(body=b"{}")["x-signature"]
    assert refused(verifier, {**headers, "x-signature": other}) is C.BAD_SIGNATURE


def test_another_public_key_does_not_verify(verifier: RequestVerifier) -> None:
    headers = {**signed(), "x-public-key": STRANGER.public_key_hex}
    assert refused(verifier, headers) is C.BAD_SIGNATURE


def test_another_wallet_is_not_the_keys(verifier: RequestVerifier) -> None:
    headers = {**signed(), "x-wallet-address": STRANGER.address}
    assert refused(verifier, headers) is C.KEY_NOT_AUTHORISED


def test_a_stranger_signing_for_a_wallet(verifier: RequestVerifier) -> None:
    assert refused(verifier, signed(STRANGER, wallet=OWNER.address)) is C.KEY_NOT_AUTHORISED


# -- the window ------------------------------------------------------------------------------------


def test_the_window_is_30_seconds_each_way(verifier: RequestVerifier) -> None:
    assert DEFAULT_WINDOW_MS == 30_000
    accepted(verifier, signed(timestamp=NOW - 30_000))
    accepted(verifier, signed(timestamp=NOW + 30_000))
    assert refused(verifier, signed(timestamp=NOW - 30_001)) is C.TIMESTAMP_OUTSIDE_WINDOW
    assert refused(verifier, signed(timestamp=NOW + 30_001)) is C.TIMESTAMP_OUTSIDE_WINDOW


@pytest.mark.parametrize("timestamp", [0, 1, NOW - 3_600_000, NOW + 86_400_000, 10**15])
def test_expired_and_future_timestamps(verifier: RequestVerifier, timestamp: int) -> None:
    assert refused(verifier, signed(timestamp=timestamp)) is C.TIMESTAMP_OUTSIDE_WINDOW


def test_a_configured_window() -> None:
    verifier = RequestVerifier(no_delegates, window_ms=5_000)
    accepted(verifier, signed(timestamp=NOW - 5_000))
    assert refused(verifier, signed(timestamp=NOW - 5_001)) is C.TIMESTAMP_OUTSIDE_WINDOW


@pytest.mark.parametrize("window", [0, -1, 1.5, True])
def test_the_window_must_be_a_positive_int(window: Any) -> None:
    with pytest.raises(ValueError):
        RequestVerifier(no_delegates, window_ms=window)


def test_a_stale_request_is_refused_before_its_signature_is_checked(
    verifier: RequestVerifier,
) -> None:
    headers = {**signed(timestamp=NOW - 60_000), "x-signature": "0x" + "00" * 64}
    assert refused(verifier, headers) is C.TIMESTAMP_OUTSIDE_WINDOW


# -- replays ---------------------------------------------------------------------------------------


def test_a_replay_is_refused(verifier: RequestVerifier) -> None:
    headers = signed()
    accepted(verifier, headers)
    assert refused(verifier, headers) is C.REPLAYED_SIGNATURE
    assert refused(verifier, headers, now=NOW + 30_000) is C.REPLAYED_SIGNATURE
    # once out of the window, the timestamp refuses it
    assert refused(verifier, headers, now=NOW + 30_001) is C.TIMESTAMP_OUTSIDE_WINDOW


def test_a_replay_in_another_spelling_is_refused(verifier: RequestVerifier) -> None:
    headers = signed()
    accepted(verifier, headers)
    for spelling in [headers["x-signature"][2:], headers["x-signature"].upper().replace("X", "x")]:
        assert refused(verifier, {**headers, "x-signature": spelling}) is C.REPLAYED_SIGNATURE


def test_a_replay_under_another_wallet_is_refused() -> None:
    # the wallet is not in the signed text: a delegate's signature must not be reusable for a
    # second wallet it also serves
    delegations = Delegations()
    second = PrivateKey.generate()
    delegations.grant(OWNER.address, DELEGATE, NOW + 60_000)
    delegations.grant(second.address, DELEGATE, NOW + 60_000)
    verifier = RequestVerifier(delegations)
    headers = signed(DELEGATE, wallet=OWNER.address)
    accepted(verifier, headers)
    assert refused(verifier, {**headers, "x-wallet-address": second.address}) is (
        C.REPLAYED_SIGNATURE
    )


def test_refused_requests_are_not_remembered(verifier: RequestVerifier) -> None:
    headers = signed()
    assert refused(verifier, {**headers, "x-wallet-address": STRANGER.address}) is (
        C.KEY_NOT_AUTHORISED
    )
    assert refused(verifier, headers, body=b"") is C.BAD_SIGNATURE
    assert len(verifier) == 0
    accepted(verifier, headers)
    assert len(verifier) == 1


def test_same_request_twice_in_one_millisecond_is_a_replay(verifier: RequestVerifier) -> None:
    accepted(verifier, signed())
    assert refused(verifier, signed()) is C.REPLAYED_SIGNATURE
    accepted(verifier, signed(body=b"{}"), body=b"{}")


def test_memory_is_bounded_by_the_window() -> None:
    window = 1_000
    verifier = RequestVerifier(no_delegates, window_ms=window)
    rng = random.Random(5)
    key = PrivateKey.from_hex("0x" + "44" * 32)
    live: list[int] = []
    peak = 0
    now = NOW
    for step in range(3_000):
        now += rng.randint(0, 3)  # about 1.5 ms a request: some 700 requests a window
        timestamp = now + rng.randint(-window, window)
        accepted(
            verifier,
            signed(key, body=b"%d" % step, timestamp=timestamp),
            body=b"%d" % step,
            now=now,
        )
        live = [t for t in [*live, timestamp] if t + window >= now]
        assert len(verifier) == len(live)
        peak = max(peak, len(verifier))
    assert peak < 1_500  # never the 3 000 accepted in all
    now += 2 * window + 1
    with pytest.raises(SigningError):
        verifier.verify({}, "GET", "/", b"", now)  # any call, even a malformed one, prunes
    assert len(verifier) == 0


def test_a_clock_stepping_back_does_not_revive_a_forgotten_signature(
    verifier: RequestVerifier,
) -> None:
    headers = signed()
    accepted(verifier, headers)
    later = NOW + 40_000
    accepted(verifier, signed(body=b"{}", timestamp=later), body=b"{}", now=later)
    assert len(verifier) == 1  # the first signature is forgotten
    assert refused(verifier, headers, now=NOW) is C.TIMESTAMP_OUTSIDE_WINDOW


# -- delegation ------------------------------------------------------------------------------------


def test_a_live_delegate_is_accepted_and_named() -> None:
    delegations = Delegations()
    delegations.grant(OWNER.address, DELEGATE, NOW + 1)
    result = accepted(RequestVerifier(delegations), signed(DELEGATE, wallet=OWNER.address))
    assert result.wallet == OWNER.address
    assert result.profile == profile_address(OWNER.address)
    assert result.public_key == DELEGATE.public_key_hex
    assert result.delegate == DELEGATE.public_key_hex
    assert result.is_delegate
    assert delegations.asked == [profile_address(OWNER.address)]
    with pytest.raises(SigningError) as caught:
        result.require_wallet_key()
    assert caught.value.code is C.DELEGATE_FORBIDDEN
    assert caught.value.http_status == 403


def test_the_delegate_key_may_come_back_in_another_spelling() -> None:
    verifier = RequestVerifier(lambda _: (DELEGATE.public_key_hex[2:].upper(), NOW + 1))
    assert accepted(verifier, signed(DELEGATE, wallet=OWNER.address)).is_delegate


def test_a_delegate_is_refused_from_its_expiry_on() -> None:
    delegations = Delegations()
    delegations.grant(OWNER.address, DELEGATE, NOW)
    verifier = RequestVerifier(delegations)
    assert accepted(verifier, signed(DELEGATE, wallet=OWNER.address), now=NOW - 1).is_delegate
    headers = signed(DELEGATE, wallet=OWNER.address, body=b"{}")
    assert refused(verifier, headers, body=b"{}", now=NOW) is C.KEY_NOT_AUTHORISED


def test_a_delegation_of_another_key_or_wallet_does_not_count() -> None:
    delegations = Delegations()
    delegations.grant(OWNER.address, STRANGER, NOW + 60_000)
    delegations.grant(STRANGER.address, DELEGATE, NOW + 60_000)
    verifier = RequestVerifier(delegations)
    assert refused(verifier, signed(DELEGATE, wallet=OWNER.address)) is C.KEY_NOT_AUTHORISED


def test_the_wallet_key_needs_no_delegation_lookup() -> None:
    delegations = Delegations()
    accepted(RequestVerifier(delegations), signed())
    assert delegations.asked == []


def test_a_delegate_signing_for_its_own_wallet_is_the_owner() -> None:
    delegations = Delegations()
    delegations.grant(OWNER.address, DELEGATE, NOW + 60_000)
    assert not accepted(RequestVerifier(delegations), signed(DELEGATE)).is_delegate


# -- malformed headers -----------------------------------------------------------------------------

MALFORMED: list[tuple[str, Callable[[dict[str, str]], object]]] = [
    ("no headers", lambda h: h.clear()),
    ("no wallet", lambda h: h.pop("x-wallet-address")),
    ("no public key", lambda h: h.pop("x-public-key")),
    ("no timestamp", lambda h: h.pop("x-timestamp")),
    ("no signature", lambda h: h.pop("x-signature")),
    ("empty wallet", lambda h: h.update({"x-wallet-address": ""})),
    ("wallet 0x only", lambda h: h.update({"x-wallet-address": "0x"})),
    ("wallet not hex", lambda h: h.update({"x-wallet-address": "0x" + "z" * 64})),
    ("wallet too long", lambda h: h.update({"x-wallet-address": "0x" + "1" * 65})),
    ("wallet with spaces", lambda h: h.update({"x-wallet-address": " " + OWNER.address})),
    ("empty public key", lambda h: h.update({"x-public-key": ""})),
    ("public key short", lambda h: h.update({"x-public-key": OWNER.public_key_hex[:-2]})),
    ("public key long", lambda h: h.update({"x-public-key": OWNER.public_key_hex + "00"})),
    ("public key not hex", lambda h: h.update({"x-public-key": "0x" + "q" * 64})),
    ("public key base64", lambda h: h.update({"x-public-key": "A" * 43 + "="})),
    ("empty timestamp", lambda h: h.update({"x-timestamp": ""})),
    ("negative timestamp", lambda h: h.update({"x-timestamp": "-1"})),
    ("signed timestamp", lambda h: h.update({"x-timestamp": "+" + str(NOW)})),
    ("decimal timestamp", lambda h: h.update({"x-timestamp": str(NOW) + ".0"})),
    ("seconds as float", lambda h: h.update({"x-timestamp": "1.7e12"})),
    ("timestamp with space", lambda h: h.update({"x-timestamp": str(NOW) + " "})),
    ("timestamp newline", lambda h: h.update({"x-timestamp": str(NOW) + "\n"})),
    ("timestamp underscore", lambda h: h.update({"x-timestamp": "1_700_000_000_000"})),
    ("timestamp arabic", lambda h: h.update({"x-timestamp": "\u0661\u0667" + "\u0660" * 11})),
    ("timestamp huge", lambda h: h.update({"x-timestamp": "9" * 17})),
    ("timestamp iso", lambda h: h.update({"x-timestamp": "2023-11-14T22:13:20Z"})),
    ("empty signature", lambda h: h.update({"x-signature": ""})),
    ("signature short", lambda h: h.update({"x-signature": h["x-signature"][:-2]})),
    ("signature long", lambda h: h.update({"x-signature": h["x-signature"] + "00"})),
    ("signature not hex", lambda h: h.update({"x-signature": "0x" + "k" * 128})),
    ("signature spaced", lambda h: h.update({"x-signature": h["x-signature"][:40] + " "})),
]


@pytest.mark.parametrize(("what", "damage"), MALFORMED, ids=[w for w, _ in MALFORMED])
def test_malformed_headers(
    verifier: RequestVerifier, what: str, damage: Callable[[dict[str, str]], object]
) -> None:
    headers = signed()
    damage(headers)
    assert refused(verifier, headers) is C.MALFORMED_HEADERS


class MultiHeaders:
    """A mapping whose items may repeat a name, as HTTP headers can."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs


def test_a_repeated_signature_header_is_malformed(verifier: RequestVerifier) -> None:
    headers = signed()
    for name in headers:
        pairs = [*headers.items(), (name.title(), headers[name])]
        with pytest.raises(SigningError) as caught:
            verifier.verify(MultiHeaders(pairs), "POST", PATH, BODY, NOW)  # type: ignore[arg-type]
        assert caught.value.code is C.MALFORMED_HEADERS
        assert name in caught.value.detail


def test_the_detail_names_what_is_missing(verifier: RequestVerifier) -> None:
    with pytest.raises(SigningError) as caught:
        verifier.verify({"x-timestamp": str(NOW)}, "POST", PATH, BODY, NOW)
    assert caught.value.detail == "missing headers x-wallet-address, x-public-key, x-signature"
    assert str(caught.value).startswith("2101: ")


def test_codes_are_stable() -> None:
    assert {code.name: int(code) for code in C} == {
        "MALFORMED_HEADERS": 2101,
        "TIMESTAMP_OUTSIDE_WINDOW": 2102,
        "BAD_SIGNATURE": 2103,
        "KEY_NOT_AUTHORISED": 2104,
        "REPLAYED_SIGNATURE": 2105,
        "DELEGATE_FORBIDDEN": 2106,
        "INVALID_KEY": 2107,
        "KEY_FILE_NOT_FOUND": 2108,
        "KEY_FILE_MALFORMED": 2109,
        "KEY_FILE_TOO_OPEN": 2110,
        "KEY_FILE_EXISTS": 2111,
        "KEY_FILE_UNWRITABLE": 2112,
    }


def test_fuzzed_headers_never_crash(verifier: RequestVerifier) -> None:
    rng = random.Random(7)
    good = signed()
    alphabet = "0123456789abcdefABCDEFxX -+.\n\x00é٣"
    for _ in range(3_000):
        headers = dict(good)
        name = rng.choice(list(headers))
        value = list(headers[name])
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(value) + 1)
            operation = rng.randrange(3)
            if operation == 0:
                value.insert(position, rng.choice(alphabet))
            elif value:
                index = min(position, len(value) - 1)
                if operation == 1:
                    del value[index]
                else:
                    value[index] = rng.choice(alphabet)
        headers[name] = "".join(value)
        try:
            verifier.verify(headers, "POST", PATH, BODY, NOW)
        except SigningError as error:
            assert error.http_status == 401


def test_racing_replays_let_exactly_one_through(verifier: RequestVerifier) -> None:
    headers = signed()
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            verifier.verify(headers, "POST", PATH, BODY, NOW)
            outcomes.append("accepted")
        except SigningError as error:
            outcomes.append(error.code.name)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["REPLAYED_SIGNATURE"] * 7 + ["accepted"]


def test_a_header_value_that_is_not_text(verifier: RequestVerifier) -> None:
    headers: dict[str, Any] = {**signed(), "x-timestamp": NOW}
    assert refused(verifier, headers) is C.MALFORMED_HEADERS


def test_the_clock_must_be_an_int(verifier: RequestVerifier) -> None:
    with pytest.raises(TypeError):
        verifier.verify(signed(), "POST", PATH, BODY, NOW / 1)  # type: ignore[arg-type]
