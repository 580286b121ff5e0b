"""One feed connection as a sans-I/O state machine: request frames in, actions out.

No sockets, no event loop, no clock: the driver passes the time in and carries out what
``receive_text`` returns (send these bytes, fetch this snapshot, close with this code). The
same class runs behind the picows server and in tests (ws-protocol.md, parts A and B).

Requests (one JSON object per text frame):

    {"topic": T, "address": ..., "market_id": ...}         subscribe (Part A)
    {"method": "subscribe" | "unsubscribe", "topic": ..., "id": ..., "limit": N,
     "since_version": V, "mode": "delta"}                  Part B options
    {"method": "list_subscriptions" | "ping", "id": ...}

Every bad request is answered with an error frame carrying a stable code and the request;
the connection stays open. Only abuse closes it: more than ``max_violations`` refused
requests within ``violation_window_ms``, with close code 4008 (policy) or 4009 (frames too
large).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from openperps.core.numbers import parse_market_id
from openperps.indexer.topics import ALL_TOPICS, MARKET_TOPICS, USER_TOPICS
from openperps.ratelimit import TokenBucket

# close codes, in one place
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002  # a frame the websocket protocol forbids
CLOSE_INVALID_DATA: Final = 1007  # a compressed message that is not deflate data
CLOSE_SERVER_RESTART: Final = 1012
CLOSE_POLICY: Final = 4008  # too many refused or rate-limited requests
CLOSE_TOO_LARGE: Final = 4009  # frames over the size limit, again and again
CLOSE_SLOW_CONSUMER: Final = 4010  # fell behind a live topic: resume from your last version
CLOSE_IDLE: Final = 4011  # no answer to heartbeats

METHODS: Final = frozenset({"subscribe", "unsubscribe", "list_subscriptions", "ping"})
HISTORY_TOPICS: Final = frozenset(
    {"order_history", "deposit_withdraw_history", "trade_history", "recent_trades"}
)
_HEX: Final = frozenset("0123456789abcdef")


def check_limits(limits: Any, zero_allowed: Collection[str] = (), what: str = "feed") -> None:
    """Refuse (``ValueError``) a limit of a limits dataclass that is not a positive number of
    its default's kind: an integer where the default is one, never a bool; 0 only for the
    fields in ``zero_allowed``. ``what`` names the limits in the message."""
    for spec in dataclasses.fields(limits):
        value = getattr(limits, spec.name)
        fractional = isinstance(spec.default, float)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not fractional)
            or value < 0
            or (value == 0 and spec.name not in zero_allowed)
        ):
            kind = "a positive number" if fractional else "a positive integer"
            if spec.name in zero_allowed:
                kind += " or 0"
            raise ValueError(f"{what} limit {spec.name} must be {kind}, not {value!r}")


@dataclass(frozen=True)
class FeedLimits:
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    requests_per_second: float = 20.0
    request_burst: int = 40
    max_violations: int = 20
    violation_window_ms: int = 10_000
    default_limit: int = 100
    max_limit: int = 1000

    def __post_init__(self) -> None:
        check_limits(self)


class Subscription(msgspec.Struct, frozen=True, order=True):
    """What a connection subscribed to; equal requests are one subscription."""

    topic: str
    key: str | int | None
    limit: int = 100
    delta: bool = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic}
        if self.topic in USER_TOPICS:
            out["address"] = self.key
        elif self.topic in MARKET_TOPICS:
            out["market_id"] = str(self.key)
        if self.topic in HISTORY_TOPICS or self.topic == "orderbook":
            out["limit"] = self.limit
        if self.delta:
            out["mode"] = "delta"
        return out


# -- actions the driver carries out -----------------------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Subscribe:
    """Start a subscription: the driver sends ``ack`` (if any), then the snapshot, then live
    pushes (or, with ``since_version``, the changes after it first)."""

    subscription: Subscription
    ack: bytes | None
    since_version: int | None
    request_id: Any = None
    has_id: bool = False
    request: Any = None  # as the client sent it: what an error about it echoes


@dataclass(frozen=True)
class Unsubscribe:
    subscription: Subscription


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


Action = Send | Subscribe | Unsubscribe | Close

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class RequestError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def normalise_address(value: object) -> str:
    """``0x`` + 64 lower-case hex digits; leading zeros may have been dropped by the client."""
    if not isinstance(value, str):
        raise RequestError("invalid_address", "address must be a string")
    text = value.strip().lower()
    if not text.startswith("0x"):
        raise RequestError("invalid_address", "address must start with 0x")
    digits = text[2:]
    if not digits or len(digits) > 64 or not _HEX.issuperset(digits):
        raise RequestError("invalid_address", "address must be 0x and 1 to 64 hex digits")
    return "0x" + digits.rjust(64, "0")


def error_frame(code: str, detail: str, request: Any, request_id: Any, has_id: bool) -> bytes:
    frame: dict[str, Any] = {
        "message": "error",
        "error": {"code": code, "detail": detail, "request": request},
    }
    if has_id:
        frame["id"] = request_id
    return _encoder.encode(frame)


@dataclass
class FeedSession:
    """The state of one connection. ``markets`` is consulted on every subscription, so a
    live view (the read models' market keys) lets a connection subscribe to a market listed
    after it opened."""

    markets: Collection[int]
    limits: FeedLimits = field(default_factory=FeedLimits)
    subscriptions: dict[Subscription, None] = field(default_factory=dict)
    _bucket: TokenBucket | None = None  # the request rate; full at the first request
    _violations: deque[int] = field(default_factory=deque)
    closed: bool = False

    # -- entry points -------------------------------------------------------------------------

    def receive_text(self, data: str | bytes, now_ms: int) -> list[Action]:
        if self.closed:
            return []
        size = len(data.encode() if isinstance(data, str) else data)
        if size > self.limits.max_frame_bytes:
            actions: list[Action] = [
                Send(
                    error_frame(
                        "frame_too_large",
                        f"request frames are limited to {self.limits.max_frame_bytes} bytes",
                        None,
                        None,
                        False,
                    )
                )
            ]
            return actions + self._violation(now_ms, CLOSE_TOO_LARGE, "frames too large")
        try:
            request: Any = _decoder.decode(data)
            readable = True
        except (msgspec.DecodeError, UnicodeDecodeError):
            request, readable = None, False
        is_object = isinstance(request, dict)
        if not self._take_token(now_ms):
            # not carried out, but a client matching answers by id still gets its id back
            return [
                Send(
                    error_frame(
                        "rate_limited",
                        f"at most {self.limits.requests_per_second:g} requests per second",
                        request if is_object else None,
                        request.get("id") if is_object else None,
                        is_object and "id" in request,
                    )
                ),
                *self._violation(now_ms, CLOSE_POLICY, "rate limit exceeded repeatedly"),
            ]
        if not readable:
            return self._refuse("invalid_json", "the frame is not valid JSON", None, now_ms)
        if not is_object:
            return self._refuse("not_an_object", "a request is a JSON object", request, now_ms)
        has_id = "id" in request
        request_id = request.get("id")
        try:
            return self._handle(request, request_id, has_id)
        except RequestError as exc:
            return self._refuse(exc.code, exc.detail, request, now_ms, request_id, has_id)

    def receive_binary(self, data: bytes, now_ms: int) -> list[Action]:
        if self.closed:
            return []
        return self._refuse("unsupported_frame", "send requests as text frames", None, now_ms)

    # -- internals ----------------------------------------------------------------------------

    def _take_token(self, now_ms: int) -> bool:
        now = now_ms / 1000.0
        if self._bucket is None:
            limits = self.limits
            self._bucket = TokenBucket(limits.requests_per_second, limits.request_burst, now)
        return self._bucket.take(now) == 0.0

    def _violation(self, now_ms: int, code: int, reason: str) -> list[Action]:
        window = self.limits.violation_window_ms
        violations = self._violations
        while violations and now_ms - violations[0] >= window:
            violations.popleft()
        violations.append(now_ms)
        if len(self._violations) > self.limits.max_violations:
            self.closed = True
            return [Close(code, reason)]
        return []

    def _refuse(
        self,
        code: str,
        detail: str,
        request: Any,
        now_ms: int,
        request_id: Any = None,
        has_id: bool = False,
    ) -> list[Action]:
        actions: list[Action] = [Send(error_frame(code, detail, request, request_id, has_id))]
        return actions + self._violation(now_ms, CLOSE_POLICY, "too many refused requests")

    def _handle(self, request: dict[str, Any], request_id: Any, has_id: bool) -> list[Action]:
        method = request.get("method", "subscribe")
        if not isinstance(method, str) or method not in METHODS:
            raise RequestError(
                "invalid_param", "method is subscribe, unsubscribe, list_subscriptions or ping"
            )
        if method == "ping":
            return [Send(_ack("pong", request_id, has_id))]
        if method == "list_subscriptions":
            frame: dict[str, Any] = {
                "message": "subscriptions",
                "subscriptions": [s.describe() for s in sorted(self.subscriptions)],
            }
            if has_id:
                frame["id"] = request_id
            return [Send(_encoder.encode(frame))]
        subscription, since_version = self._parse_subscription(request, method)
        if method == "unsubscribe":
            if subscription not in self.subscriptions:
                raise RequestError("not_subscribed", "no such subscription on this connection")
            del self.subscriptions[subscription]
            actions: list[Action] = [Unsubscribe(subscription)]
            if has_id:
                actions.append(Send(_ack("unsubscribed", request_id, has_id, subscription)))
            return actions
        if subscription not in self.subscriptions:
            if len(self.subscriptions) >= self.limits.max_subscriptions:
                raise RequestError(
                    "too_many_subscriptions",
                    f"at most {self.limits.max_subscriptions} subscriptions per connection",
                )
            self.subscriptions[subscription] = None
        ack = _ack("subscribed", request_id, has_id, subscription) if has_id else None
        return [Subscribe(subscription, ack, since_version, request_id, has_id, request)]

    def _parse_subscription(
        self, request: dict[str, Any], method: str
    ) -> tuple[Subscription, int | None]:
        topic = request.get("topic")
        if topic is None:
            raise RequestError("missing_param", "topic is required")
        if not isinstance(topic, str) or topic not in ALL_TOPICS:
            raise RequestError(
                "unknown_topic", f"unknown topic; topics are {', '.join(ALL_TOPICS)}"
            )
        key: str | int | None = None
        if topic in USER_TOPICS:
            if "address" not in request:
                raise RequestError("missing_param", f"{topic} needs an address")
            key = normalise_address(request["address"])
        elif topic in MARKET_TOPICS:
            if "market_id" not in request:
                raise RequestError("missing_param", f"{topic} needs a market_id")
            key = self._market(request["market_id"])
        limit = self.limits.default_limit
        if "limit" in request:
            raw = request["limit"]
            if topic not in HISTORY_TOPICS and topic != "orderbook":  # open_orders: every one
                raise RequestError("invalid_param", f"limit does not apply to {topic}")
            if type(raw) is not int or not 1 <= raw <= self.limits.max_limit:
                raise RequestError(
                    "invalid_param", f"limit is an integer from 1 to {self.limits.max_limit}"
                )
            limit = raw
        delta = False
        if "mode" in request:
            mode = request["mode"]
            if mode not in ("delta", "snapshot"):
                raise RequestError("invalid_param", "mode is delta or snapshot")
            if mode == "delta" and topic != "orderbook":
                raise RequestError("invalid_param", "mode delta applies to orderbook only")
            delta = mode == "delta"
        since_version: int | None = None
        if "since_version" in request and method == "subscribe":
            raw = request["since_version"]
            if topic not in USER_TOPICS:
                raise RequestError("invalid_param", "since_version applies to user topics only")
            if type(raw) is not int or raw < 0:
                raise RequestError("invalid_param", "since_version is a non-negative integer")
            since_version = raw
        return Subscription(topic, key, limit, delta), since_version

    def _market(self, value: object) -> int:
        market_id = parse_market_id(value)
        if market_id is None:
            raise RequestError("invalid_param", "market_id is a decimal string or an integer")
        if market_id not in self.markets:
            known = ", ".join(str(m) for m in sorted(self.markets))
            raise RequestError(
                "unknown_market", f"market {market_id} is not listed; markets: {known}"
            )
        return market_id


def _ack(
    message: str, request_id: Any, has_id: bool, subscription: Subscription | None = None
) -> bytes:
    frame: dict[str, Any] = {"message": message}
    if has_id:
        frame["id"] = request_id
    if subscription is not None:
        frame.update(subscription.describe())
    return _encoder.encode(frame)
