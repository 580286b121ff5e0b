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
        ({"topic": "orderbook", "market_id": "abc"}, "invalid_param"),
        ({"topic": "orderbook", "market_id": True}, "invalid_param"),
        ({"topic": "orderbook", "market_id": 1.5}, "invalid_param"),
        ({"topic": "orderbook", "market_id": "\u00b2"}, "invalid_param"),  # isdigit() but no int
        ({"topic": "orderbook", "market_id": "\u0661\u0663\u0663\u0668"}, "invalid_param"),
        ({"topic": "orderbook", "market_id": ""}, "invalid_param"),
        ({"topic": "orderbook", "market_id": -1338}, "invalid_param"),
        ({"topic": "order_history", "address": ALICE, "limit": 0}, "invalid_param"),
        ({"topic": "order_history", "address": ALICE, "limit": 1001}, "invalid_param"),
        ({"topic": "order_history", "address": ALICE, "limit": "5"}, "invalid_param"),
        ({"topic": "positions", "address": ALICE, "limit": 5}, "invalid_param"),
        ({"topic": "open_orders", "address": ALICE, "limit": 5}, "invalid_param"),
        ({"topic": "live_funding_rate", "limit": 5}, "invalid_param"),
        ({"topic": "live_trade_history", "address": ALICE, "limit": 5}, "invalid_param"),
        ({"topic": "positions", "address": ALICE, "since_version": "7"}, "invalid_param"),
        ({"topic": "positions", "address": ALICE, "since_version": 1.0}, "invalid_param"),
        ({"topic": "live_funding_rate", "since_version": 7}, "invalid_param"),
        ({"topic": "positions", "address": ALICE, "mode": "delta"}, "invalid_param"),
        ({"topic": "positions", "address": "0x"}, "invalid_address"),
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
    # the original page's open_orders example: 63 digits, a leading zero dropped
    short = "0x725c8b51b2c1b3d17336c48d75c56c19253f70e1de00e26c8138a29722d82da"
    assert len(short) == 2 + 63
    assert normalise_address(short) == "0x0" + short[2:]
    assert normalise_address(short.upper().replace("0X", "0x")) == "0x0" + short[2:]


def test_a_short_address_and_its_padded_form_are_one_subscription() -> None:
    s = session()
    short = "0x725c8b51b2c1b3d17336c48d75c56c19253f70e1de00e26c8138a29722d82da"
    (first,) = send(s, {"topic": "open_orders", "address": short, "id": 1})
    assert isinstance(first, Subscribe) and first.subscription.key == "0x0" + short[2:]
    assert json.loads(first.ack or b"")["address"] == "0x0" + short[2:]  # echoed normalised
    send(s, {"topic": "open_orders", "address": "0x0" + short[2:].upper()})
    assert len(s.subscriptions) == 1
    actions = send(s, {"method": "unsubscribe", "topic": "open_orders", "address": short})
    assert isinstance(actions[0], Unsubscribe) and s.subscriptions == {}


def test_market_id_as_string_or_integer_is_one_subscription() -> None:
    s = session()
    send(s, {"topic": "recent_trades", "market_id": 1338})
    (listed,) = frames(send(s, {"method": "list_subscriptions"}))
    assert listed["subscriptions"] == [
        {"topic": "recent_trades", "market_id": "1338", "limit": 100}
    ]
    actions = send(s, {"method": "unsubscribe", "topic": "recent_trades", "market_id": "1338"})
    assert isinstance(actions[0], Unsubscribe) and s.subscriptions == {}


def test_what_list_subscriptions_shows_unsubscribes_it() -> None:
    s = session()
    requests: list[dict[str, Any]] = [
        {"topic": "open_orders", "address": ALICE},
        {"topic": "order_history", "address": ALICE, "limit": 7},
        {"topic": "orderbook", "market_id": "1339", "mode": "delta", "limit": 3},
        {"topic": "live_trade_history", "address": ALICE},
        {"topic": "live_funding_rate"},
    ]
    for request in requests:
        (sub,) = send(s, {**request, "id": 0})
        assert isinstance(sub, Subscribe)
        ack = json.loads(sub.ack or b"")
        assert {
            k: v for k, v in ack.items() if k not in ("message", "id")
        } == sub.subscription.describe()
    (listed,) = frames(send(s, {"method": "list_subscriptions"}))
    assert len(listed["subscriptions"]) == len(requests)
    for described in listed["subscriptions"]:
        actions = send(s, {**described, "method": "unsubscribe"})
        assert isinstance(actions[0], Unsubscribe), actions
    assert s.subscriptions == {}


def test_a_rate_limited_request_still_gets_its_id_back() -> None:
    s = session(requests_per_second=1, request_burst=1)
    send(s, {"method": "ping"})
    (frame,) = frames(send(s, {"method": "ping", "id": "p2"}))
    assert frame["error"]["code"] == "rate_limited" and frame["id"] == "p2"
    assert frame["error"]["request"] == {"method": "ping", "id": "p2"}
    (frame,) = frames(s.receive_text("{not json", 0))
    assert frame["error"]["code"] == "rate_limited" and "id" not in frame


# -- fuzzing ------------------------------------------------------------------------------------

# the codes the session itself answers with (version_too_old comes from the server)
SESSION_CODES = frozenset(
    {
        "invalid_json",
        "not_an_object",
        "unknown_topic",
        "missing_param",
        "invalid_address",
        "unknown_market",
        "invalid_param",
        "not_subscribed",
        "too_many_subscriptions",
        "rate_limited",
        "frame_too_large",
        "unsupported_frame",
    }
)
ACKS = frozenset({"subscribed", "unsubscribed", "subscriptions", "pong"})
TOPICS = (
    "order_history",
    "deposit_withdraw_history",
    "trade_history",
    "positions",
    "open_orders",
    "live_order_history",
    "live_trade_history",
    "orderbook",
    "recent_trades",
    "live_funding_rate",
)
# values that sit on the edges of what each parameter accepts
TRICKY: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**64, "", " ", "0x", "0X" + "F" * 64, "0x" + "1" * 65,
    "\u00b2", "\u0661\u0663\u0663\u0668", " 1338 ", "1338", 1338, "01338", "1e3", [], {}, [1338],
    {"a": 1}, "delta", "snapshot", "subscribe", "ping", ALICE, ALICE.upper(), ALICE[:-1], "\x00",
]  # fmt: skip
VALID: dict[str, list[Any]] = {
    "method": ["subscribe", "unsubscribe", "list_subscriptions", "ping"],
    "topic": list(TOPICS),
    "address": [ALICE, ALICE[:-1], "0xABC", "0x725c8b51b2c1b3d17336c48d75c56c19253f70e1de00e26c"],
    "market_id": [1338, "1338", 2387, "1340", 14],
    "limit": [1, 10, 1000, 0, 1001],
    "since_version": [0, 5, 2**40],
    "mode": ["delta", "snapshot"],
    "id": [1, "a", None, [1, {"x": 2}]],
}


def check_answer(request: Any, actions: list[Any], *, closing_allowed: bool = False) -> None:
    """Every frame is answered: an error with a known code (echoing the request and its id),
    a subscription change, or an ack. A close may follow only when limits allow it."""
    assert actions, "every frame is answered"
    for action in actions:
        assert isinstance(action, (Send, Subscribe, Unsubscribe, Close))
        if isinstance(action, Close):
            assert closing_allowed and action.code in (CLOSE_POLICY, CLOSE_TOO_LARGE)
            assert action is actions[-1]
    answers = frames(actions)
    errors = [f for f in answers if f["message"] == "error"]
    for frame in errors:
        code = frame["error"]["code"]
        assert code in SESSION_CODES and frame["error"]["detail"]
        if isinstance(request, dict) and code not in ("frame_too_large",):
            assert frame["error"]["request"] == request
            assert ("id" in frame) == ("id" in request)
            if "id" in request:
                assert frame["id"] == request["id"]
    if not errors:
        # exactly one outcome: a subscription change (an unsubscribe may add its ack), or
        # one ack (pong, the subscription list)
        changes = [a for a in actions if isinstance(a, (Subscribe, Unsubscribe))]
        assert len(changes) == 1 or (not changes and len(answers) == 1), actions
        for frame in answers:
            assert frame["message"] in ACKS
            assert ("id" in frame) == (isinstance(request, dict) and "id" in request)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
USER_TOPICS = TOPICS[:7]
MARKET_TOPICS = ("orderbook", "recent_trades")


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request near the valid ones: the topic's own parameter usually there and usually
    right, the options now and then, any value now and then tricky or junk."""
    topic = draw(st.sampled_from(TOPICS) if draw(st.integers(0, 9)) else _junk)
    request: dict[str, Any] = {"topic": topic}
    for key, values in VALID.items():
        needed = (key == "address" and topic in USER_TOPICS) or (
            key == "market_id" and topic in MARKET_TOPICS
        )
        kind = draw(
            st.sampled_from(
                ("valid",) * 6 + ("tricky",) * 2 + ("junk", "absent")
                if needed
                else ("absent",) * 6 + ("valid",) * 2 + ("tricky", "junk")
            )
        )
        if kind == "valid":
            request[key] = draw(st.sampled_from(values))
        elif kind == "tricky":
            request[key] = draw(st.sampled_from(TRICKY))
        elif kind == "junk":
            request[key] = draw(_junk)
    return request


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
    data = msgspec.json.encode(value)
    check_answer(msgspec.json.decode(data), s.receive_text(data, 0))


@settings(max_examples=500, deadline=None)
@given(st.lists(_requests(), min_size=1, max_size=8))
def test_requests_built_from_valid_and_tricky_parameters(requests: list[dict[str, Any]]) -> None:
    """Requests close to valid reach every branch of the parser; what gets subscribed is
    exactly what list_subscriptions shows, and that form unsubscribes it."""
    s = session(request_burst=10**6, max_violations=10**6, max_subscriptions=5)
    for built in requests:
        data = msgspec.json.encode(built)
        request = msgspec.json.decode(data)  # as the server reads it (an infinity is null)
        actions = s.receive_text(data, 0)
        check_answer(request, actions)
        for action in actions:
            if isinstance(action, Subscribe):
                assert action.subscription in s.subscriptions
                assert action.subscription.topic == request["topic"]
    assert len(s.subscriptions) <= 5
    (listed,) = frames(s.receive_text(b'{"method": "list_subscriptions"}', 0))
    assert listed["subscriptions"] == [sub.describe() for sub in sorted(s.subscriptions)]
    for described in listed["subscriptions"]:
        (action, *_) = s.receive_text(
            msgspec.json.encode({**described, "method": "unsubscribe"}), 0
        )
        assert isinstance(action, Unsubscribe)
    assert s.subscriptions == {}


def _mutate_value(rng: random.Random, request: dict[str, Any]) -> dict[str, Any]:
    out = dict(request)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        key = rng.choice(list(VALID))
        if op < 0.5:
            out[key] = rng.choice(TRICKY)
        elif op < 0.75:
            out[key] = rng.choice(VALID[key])
        elif out:
            del out[rng.choice(list(out))]
    return out


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(buf) + 1)
        if op < 0.4 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op < 0.7:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif buf:
            del buf[min(pos, len(buf) - 1)]
    return bytes(buf)


def random_frames(rng: random.Random, count: int) -> list[bytes | str]:
    """Valid requests, requests with tricky values, byte-mutated requests, random bytes."""
    seeds: list[dict[str, Any]] = [
        {"topic": "order_history", "address": ALICE},
        {"topic": "orderbook", "market_id": "1338", "mode": "delta", "id": 1},
        {"method": "unsubscribe", "topic": "positions", "address": ALICE, "id": "u"},
        {"topic": "live_trade_history", "address": ALICE, "since_version": 3},
        {"topic": "recent_trades", "market_id": 2387, "limit": 20},
        {"topic": "live_funding_rate"},
        {"method": "list_subscriptions"},
        {"method": "ping", "id": [1]},
    ]
    out: list[bytes | str] = []
    for _ in range(count):
        kind = rng.random()
        request = rng.choice(seeds)
        if kind < 0.1:
            out.append(json.dumps(request))
        elif kind < 0.4:
            out.append(json.dumps(_mutate_value(rng, request)))
        elif kind < 0.9:
            out.append(_mutate_bytes(rng, json.dumps(request).encode()))
        else:
            out.append(rng.randbytes(rng.randint(0, 64)))
    return out


def decoded_or_none(data: bytes | str) -> tuple[bool, Any]:
    try:
        return True, msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False, None


def test_fuzz_100000_random_and_mutated_frames() -> None:
    rng = random.Random(1234)
    s = session(request_burst=10**7, max_violations=10**7, max_subscriptions=10**6)
    errors = subscribed = 0
    for i, data in enumerate(random_frames(rng, 100_000)):
        actions = s.receive_text(data, i)
        readable, request = decoded_or_none(data)
        check_answer(request, actions)
        codes = [f["error"]["code"] for f in frames(actions) if f["message"] == "error"]
        # the two cases anyone can check without the parser
        if not readable:
            assert codes == ["invalid_json"]
        elif not isinstance(request, dict):
            assert codes == ["not_an_object"]
        errors += bool(codes)
        subscribed += any(isinstance(a, Subscribe) for a in actions)
    assert errors > 50_000 and subscribed > 5_000


def test_fuzz_with_real_limits_closes_only_abusers() -> None:
    """Default limits, time moving on: every frame is answered until a close, and a close
    comes only after more refusals in the window than the limit allows."""
    rng = random.Random(99)
    limits = FeedLimits()
    s, now, refused, closes = FeedSession(MARKETS, limits), 0, list[int](), 0
    for data in random_frames(rng, 20_000):
        now += rng.choice((0, 0, 1, 5, 50, 400))
        if rng.random() < 0.02:
            actions = s.receive_binary(b"\x00", now)
            request: Any = None
        elif rng.random() < 0.01:
            actions = s.receive_text(b" " * (limits.max_frame_bytes + 1), now)
            request = None
        else:
            actions = s.receive_text(data, now)
            request = decoded_or_none(data)[1]
        check_answer(request, actions, closing_allowed=True)
        if any(f["message"] == "error" for f in frames(actions)):
            refused.append(now)
        if isinstance(actions[-1], Close):
            window = [t for t in refused if now - t < limits.violation_window_ms]
            assert len(window) > limits.max_violations
            assert s.closed and s.receive_text(b"{}", now) == []
            s, refused, closes = FeedSession(MARKETS, limits), [], closes + 1
    assert closes > 10


def test_a_session_learns_markets_listed_after_it_opened() -> None:
    listed = dict.fromkeys(MARKETS)  # the read models' market table, as the server passes it
    s = FeedSession(listed.keys(), FeedLimits())
    request = {"topic": "orderbook", "market_id": "4242"}
    assert error_code(send(s, request)) == "unknown_market"
    listed[4242] = None
    actions = send(s, request, 10_000)
    assert any(isinstance(a, Subscribe) for a in actions), actions
