"""The sans-I/O session on its own: every error code, every limit, acks, and a fuzz run."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openperps.feed.session import (
    CLOSE_POLICY,
    CLOSE_TOO_LARGE,
    Close,
    FeedLimits,
    FeedSession,
    Send,
    Subscribe,
    Subscription,
    Unsubscribe,
    normalise_address,
)

MARKETS = frozenset({1338, 1339, 1340, 2387})
ALICE = "0x" + "a1" * 32


def session(**limits: Any) -> FeedSession:
    return FeedSession(MARKETS, FeedLimits(**limits))


def frames(actions: list[Any]) -> list[dict[str, Any]]:
    out = []
    for action in actions:
        if isinstance(action, Send):
            out.append(msgspec.json.decode(action.data))
        elif isinstance(action, Subscribe) and action.ack is not None:
            out.append(msgspec.json.decode(action.ack))
    return out


def error_code(actions: list[Any]) -> str:
    (frame,) = frames(actions)
    assert frame["message"] == "error"
    code = frame["error"]["code"]
    assert isinstance(code, str)
    return code


def send(s: FeedSession, request: Any, now: int = 0) -> list[Any]:
    return s.receive_text(json.dumps(request), now)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"address": ALICE}, "missing_param"),
        ({"topic": "nope"}, "unknown_topic"),
        ({"topic": 5}, "unknown_topic"),
        ({"topic": "positions"}, "missing_param"),
        ({"topic": "orderbook"}, "missing_param"),
        ({"topic": "positions", "address": "0xzz"}, "invalid_address"),
        ({"topic": "positions", "address": "a1"}, "invalid_address"),
        ({"topic": "positions", "address": "0x" + "1" * 65}, "invalid_address"),
        ({"topic": "positions", "address": 12}, "invalid_address"),
        ({"topic": "orderbook", "market_id": "14"}, "unknown_market"),
        ({"topic": "orderbook", "market_id": "abc"}, "unknown_market"),
        ({"topic": "orderbook", "market_id": True}, "unknown_market"),
        ({"topic": "orderbook", "market_id": 1.5}, "unknown_market"),
        ({"topic": "order_history", "address": ALICE, "limit": 0}, "invalid_param"),
        ({"topic": "order_history", "address": ALICE, "limit": 1001}, "invalid_param"),
        ({"topic": "order_history", "address": ALICE, "limit": "5"}, "invalid_param"),
        ({"topic": "positions", "address": ALICE, "limit": 5}, "invalid_param"),
        ({"topic": "recent_trades", "market_id": 1338, "mode": "delta"}, "invalid_param"),
        ({"topic": "orderbook", "market_id": 1338, "mode": "diff"}, "invalid_param"),
        ({"topic": "orderbook", "market_id": 1338, "since_version": 5}, "invalid_param"),
        ({"topic": "positions", "address": ALICE, "since_version": -1}, "invalid_param"),
        ({"method": "resubscribe", "topic": "positions"}, "invalid_param"),
        ({"method": "unsubscribe", "topic": "positions", "address": ALICE}, "not_subscribed"),
    ],
)
def test_bad_requests_get_coded_errors_with_the_request(request_: Any, code: str) -> None:
    s = session()
    actions = send(s, request_)
    assert error_code(actions) == code
    frame = frames(actions)[0]
    assert frame["error"]["request"] == request_ and frame["error"]["detail"]
    assert not s.closed and s.subscriptions == {}


def test_frames_that_are_not_requests() -> None:
    s = session()
    assert error_code(s.receive_text("{oops", 0)) == "invalid_json"
    assert error_code(s.receive_text(b"\xff\xfe", 0)) == "invalid_json"
    assert error_code(s.receive_text("[1, 2]", 0)) == "not_an_object"
    assert error_code(s.receive_text('"topic"', 0)) == "not_an_object"
    assert error_code(s.receive_binary(b"{}", 0)) == "unsupported_frame"
    big = json.dumps({"topic": "positions", "address": ALICE, "pad": "x" * 70_000})
    assert error_code(s.receive_text(big, 0)) == "frame_too_large"


def test_ids_are_echoed_on_acks_and_errors() -> None:
    s = session()
    (sub,) = send(s, {"topic": "positions", "address": ALICE[:-2] + "AB", "id": {"n": 1}})
    assert isinstance(sub, Subscribe)
    assert json.loads(sub.ack or b"") == {
        "message": "subscribed",
        "id": {"n": 1},
        "topic": "positions",
        "address": ALICE[:-2] + "ab",
    }
    assert frames(send(s, {"topic": "nope", "id": None}))[0]["id"] is None
    assert "id" not in frames(send(s, {"topic": "nope"}))[0]
    assert frames(send(s, {"method": "ping", "id": 9})) == [{"message": "pong", "id": 9}]
    listed = frames(send(s, {"method": "list_subscriptions", "id": 1}))[0]
    assert listed["subscriptions"] == [{"topic": "positions", "address": ALICE[:-2] + "ab"}]
    actions = send(
        s, {"method": "unsubscribe", "topic": "positions", "address": ALICE[:-2] + "ab", "id": 2}
    )
    assert isinstance(actions[0], Unsubscribe)
    assert frames(actions)[0]["message"] == "unsubscribed"


def test_a_plain_kana_request_gets_no_ack_and_the_same_subscription_once() -> None:
    s = session()
    (first,) = send(s, {"topic": "orderbook", "market_id": "1338"})
    (again,) = send(s, {"topic": "orderbook", "market_id": 1338})
    assert isinstance(first, Subscribe) and first.ack is None
    assert isinstance(again, Subscribe)
    assert first.subscription == again.subscription == Subscription("orderbook", 1338, 100)
    assert len(s.subscriptions) == 1


def test_options_reach_the_subscription() -> None:
    s = session()
    (sub,) = send(s, {"topic": "orderbook", "market_id": 1338, "mode": "delta", "limit": 10})
    assert isinstance(sub, Subscribe)
    assert sub.subscription == Subscription("orderbook", 1338, 10, True)
    (live,) = send(s, {"topic": "live_order_history", "address": ALICE, "since_version": 42})
    assert isinstance(live, Subscribe) and live.since_version == 42


def test_too_many_subscriptions() -> None:
    s = session(max_subscriptions=2, request_burst=100)
    send(s, {"topic": "positions", "address": ALICE})
    send(s, {"topic": "open_orders", "address": ALICE})
    assert error_code(send(s, {"topic": "trade_history", "address": ALICE})) == (
        "too_many_subscriptions"
    )
    assert isinstance(send(s, {"topic": "positions", "address": ALICE})[0], Subscribe)


def test_rate_limit_then_close_when_it_goes_on() -> None:
    s = session(requests_per_second=5, request_burst=5, max_violations=3)
    for _ in range(5):
        assert isinstance(send(s, {"method": "ping"})[0], Send)
    assert error_code(send(s, {"method": "ping"})) == "rate_limited"
    # tokens come back with time
    assert frames(send(s, {"method": "ping"}, now=1000)) == [{"message": "pong"}]
    actions: list[Any] = []
    for _ in range(10):
        actions = send(s, {"method": "ping"}, now=1000)
        if any(isinstance(a, Close) for a in actions):
            break
    assert isinstance(actions[-1], Close) and actions[-1].code == CLOSE_POLICY
    assert s.closed and s.receive_text("{}", 2000) == []


def test_oversized_frames_again_and_again_close_with_4009() -> None:
    s = session(max_frame_bytes=100, max_violations=2)
    big = "x" * 200
    s.receive_text(big, 0)
    s.receive_text(big, 0)
    actions = s.receive_text(big, 0)
    assert isinstance(actions[-1], Close) and actions[-1].code == CLOSE_TOO_LARGE


def test_violations_outside_the_window_are_forgiven() -> None:
    s = session(max_violations=2, violation_window_ms=1000)
    for t in range(0, 10_000, 600):
        actions = s.receive_text("{bad", t)
        assert not any(isinstance(a, Close) for a in actions)


def test_address_normalisation() -> None:
    assert normalise_address("0xABC") == "0x" + "0" * 61 + "abc"
    assert normalise_address(" 0x" + "f" * 64 + " ") == "0x" + "f" * 64


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
        ),
        max_leaves=12,
    )
)
def test_any_json_value_gets_an_answer_never_an_exception(value: Any) -> None:
    s = session(request_burst=10**6, max_violations=10**6)
    actions = s.receive_text(msgspec.json.encode(value), 0)
    assert actions, "every request is answered"


def test_fuzz_100000_random_and_mutated_frames() -> None:
    rng = random.Random(1234)
    valid = [
        {"topic": "order_history", "address": ALICE},
        {"topic": "orderbook", "market_id": "1338", "mode": "delta", "id": 1},
        {"method": "unsubscribe", "topic": "positions", "address": ALICE, "id": "u"},
        {"topic": "live_trade_history", "address": ALICE, "since_version": 3},
        {"method": "list_subscriptions"},
        {"method": "ping", "id": [1]},
    ]
    seeds = [json.dumps(v).encode() for v in valid]
    s = session(request_burst=10**7, max_violations=10**7, max_subscriptions=10**6)
    answered = errors = 0
    for i in range(100_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 4)):
            op = rng.random()
            pos = rng.randrange(len(data) + 1)
            if op < 0.4 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op < 0.7:
                data[pos:pos] = bytes([rng.randrange(256)])
            elif data:
                del data[min(pos, len(data) - 1)]
        if i % 10 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 64)))
        actions = s.receive_text(bytes(data), i)
        assert actions
        answered += 1
        for frame in frames(actions):
            if frame["message"] == "error":
                errors += 1
                assert isinstance(frame["error"]["code"], str) and frame["error"]["detail"]
    assert answered == 100_000 and errors > 50_000
