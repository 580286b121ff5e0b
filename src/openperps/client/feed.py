"""The streaming half of the SDK: subscribe, iterate, and never lose a live record.

    async with Feed("ws://127.0.0.1:8765/ws/") as feed:
        await feed.subscribe("live_trade_history", address=profile)
        await feed.subscribe("orderbook", market_id="1338")
        async for push in feed:
            print(push.topic, push.version, push.data)

The feed reconnects by itself after a drop (exponential backoff with jitter), subscribes
again, and resumes user topics with ``since_version`` from the last version it delivered, so
live records arrive exactly once and in order across reconnects. Heartbeats detect a silent
connection (the websockets library pings and gives up after ``ping_timeout``).

Requests keep to the server's request rate (feed-protocol.md, "Limits and closes": bursts of
40, then 20 a second per connection): they go out one at a time through a token bucket a
little under those figures, so subscribing again to a hundred topics after a reconnect is
never refused. A request the server still refuses as ``rate_limited`` is sent again; one it
refuses for good (an unknown topic or market, a bad address) reaches the reader as an
``error`` push, as before, and is not sent again after a reconnect. After a policy close
(4008, 4009) or a connection that did not last, the wait before reconnecting keeps growing
instead of starting again from its minimum.

Pushes wait for the reader in a queue of at most ``max_queue``. When it is full the feed
drops the connection rather than grow: it takes nothing more from the server until the
reader has emptied half of the queue, then reconnects and resumes (live topics from the last
version queued, list topics and books from a fresh snapshot), so nothing is lost or repeated.

Against a Kana endpoint pass ``extensions=False``: requests are then the plain Part-A
subscriptions, with no ``since_version``, ``limit`` or ``mode`` (and no ``book()``, which
needs delta mode).

Errors, all from this module (``FeedError`` is a ``ClientError``, the SDK's one base):

    FeedError                the base: catch this for anything the feed raises on purpose
     ├── FeedConnectError    start() found no feed at the URL within ``connect_timeout``,
     │                       or the URL cannot be a feed's (not ws:// or wss://, HTTP 4xx);
     │                       ``__cause__`` is the last attempt's exception. Also an OSError.
     ├── FeedClosedError     the feed was closed: start(), subscribe(), book(), next().
     │                       Also a RuntimeError.
     └── FeedFailedError     the feed's background task failed; ``__cause__`` says why

Once the feed has failed, start() and every reader raise the same error; once it is closed,
``async for`` ends and next() raises FeedClosedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import websockets
from websockets.asyncio.client import ClientConnection

from openperps.client.book import LocalBook
from openperps.client.rest import ClientError
from openperps.core.errors import InvalidInput
from openperps.ratelimit import TokenBucket
from openperps.signing import normalise_address

logger = logging.getLogger("openperps.client.feed")

USER_TOPICS = frozenset(
    {
        "order_history",
        "deposit_withdraw_history",
        "trade_history",
        "positions",
        "open_orders",
        "live_order_history",
        "live_trade_history",
    }
)
LIVE_TOPICS = frozenset({"live_order_history", "live_trade_history"})
ACKS: Final = frozenset({"subscribed", "unsubscribed", "pong", "subscriptions"})
# error codes that do not refuse the request: the subscription goes on after them
NOT_REFUSALS: Final = frozenset({"version_too_old", "version_ahead"})
POLICY_CLOSES: Final = frozenset({4008, 4009})  # too many refused requests, frames, connections

CLOSE_TIMEOUT_S: Final = 2.0  # for the server to answer our close frame
MIN_BACKOFF: Final = 0.1  # seconds before reconnecting after a connection that lasted
POLICY_BACKOFF: Final = 1.0  # at least this long after a policy close
STABLE_AFTER: Final = 2.0  # a connection that lasted this long resets the backoff


class FeedError(ClientError):
    """Base of the errors the feed client raises on purpose."""


class FeedConnectError(FeedError, OSError):
    """The first connection could not be made; the message names the URL and the cause."""


class FeedClosedError(FeedError, RuntimeError):
    """The feed was closed with close(); it cannot be started or subscribed again."""


class FeedFailedError(FeedError):
    """The feed's background task stopped on an unexpected error (its ``__cause__``)."""


class _Overflow(Exception):
    """The reader queue is full: drop the connection and resume once it has room."""


@dataclass(frozen=True)
class Push:
    topic: str
    data: Any
    version: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)


# an outgoing request: the stored request, its method, and who waits for it to be written
Outgoing = tuple[dict[str, Any], str, asyncio.Future[None] | None]


@dataclass
class _Link:
    """One connection: its socket, the requests waiting for their turn, when it opened."""

    ws: ClientConnection
    opened_at: float
    outbox: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    failure: BaseException | None = None


class _Pacer:
    """The client's side of the server's per-connection token bucket: a request goes out
    when a token is there, and a new connection starts with a full bucket, as on the
    server."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self.bucket = TokenBucket(per_second, burst, 0.0)

    def refill(self) -> None:
        self.bucket = TokenBucket(self.per_second, self.burst, asyncio.get_running_loop().time())

    def refused(self) -> None:
        """The server said ``rate_limited``: its bucket is empty, so is ours."""
        self.bucket.empty(asyncio.get_running_loop().time())

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        while wait := self.bucket.take(loop.time()):
            await asyncio.sleep(wait)


class Feed:
    """A feed connection that reconnects and resumes.

    ``connect_timeout``: how long start() tries to make the first connection before raising
    FeedConnectError (None: forever); later drops are retried without end. ``max_queue``:
    pushes waiting for the reader before the feed drops the connection (see the module
    docstring). ``requests_per_second`` and ``request_burst``: the pace of requests, a
    little under the server's documented 20 and 40; lower them for a server configured
    stricter.
    """

    def __init__(
        self,
        url: str,
        *,
        extensions: bool = True,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        max_backoff: float = 10.0,
        connect_timeout: float | None = 10.0,
        max_queue: int = 10_000,
        requests_per_second: float = 18.0,
        request_burst: int = 36,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        if requests_per_second <= 0 or request_burst < 1:
            raise ValueError("requests_per_second must be positive and request_burst at least 1")
        self.url = url
        self.extensions = extensions
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.max_queue = max_queue
        self.requests: list[dict[str, Any]] = []
        self.last_version: dict[tuple[str, str | None], int] = {}
        self.reconnects = 0
        self.books: dict[str, LocalBook] = {}
        # None marks the end: the feed was closed or failed (``_error``)
        self._queue: asyncio.Queue[Push | None] = asyncio.Queue()
        self._room = asyncio.Event()  # set when the reader has emptied half of a full queue
        self._pacer = _Pacer(requests_per_second, request_burst)
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._last_error: BaseException | None = None
        self._error: FeedError | None = None
        self._ended = False  # the end marker is in the queue
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        """Pushes received and not read yet."""
        return self._queue.qsize() - self._ended

    async def start(self) -> None:
        """Connect; return once connected. Raises FeedConnectError when no connection could
        be made within ``connect_timeout``, and the feed's error if it has failed."""
        self._check_usable()
        if self._task is None:
            self._task = asyncio.create_task(self._main(), name="openperps-feed-client")
        if self._connected.is_set():
            return
        waiter = asyncio.create_task(self._connected.wait())
        try:
            waited: set[asyncio.Task[Any]] = {waiter, self._task}
            await asyncio.wait(
                waited,
                timeout=self.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            # cancelled while connecting (a caller's own timeout, say): nothing is left
            # running in the background, and start() may be called again
            if not self._connected.is_set() and self._task is not None:
                self._task.cancel()
                self._task = None
            raise
        finally:
            waiter.cancel()
        if self._connected.is_set():
            return
        self._check_usable()
        cause = self._last_error
        said = _describe(cause) if cause is not None else "no answer"
        error = FeedConnectError(
            f"cannot connect to the feed at {self.url}: {said} "
            f"(gave up after {self.connect_timeout:g} s)"
        )
        error.__cause__ = cause
        self._finish(error)
        await self._stop_task()
        raise error

    async def close(self) -> None:
        """Disconnect for good. Readers end at once (``async for`` stops, next() raises
        FeedClosedError); pushes not read yet are dropped."""
        if self._closed:
            return
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        self._ended = True
        link = self._link
        if link is not None:
            await link.ws.close()
        await self._stop_task()

    async def subscribe(self, topic: str, **params: Any) -> None:
        """Subscribe (and re-subscribe after every reconnect). ``params``: ``address``,
        ``market_id``, and with extensions on ``limit`` or ``mode``. Returns once the request
        is written (waiting its turn under the request rate), or at once when not connected:
        it goes out on connecting. Subscribing again to what the feed follows does nothing.
        A refusal arrives as an ``error`` push."""
        self._check_usable()
        request = {"topic": topic, **{k: v for k, v in params.items() if v is not None}}
        json.dumps(request)  # not JSON (a Decimal, say): refused here, not in the background
        if request in self.requests:
            return
        self.requests.append(request)
        link = self._link
        if link is not None:
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            link.outbox.put_nowait((request, "subscribe", written))
            await written

    async def unsubscribe(self, topic: str, **params: Any) -> None:
        """Stop following a subscription made with ``subscribe()`` (the same ``params``) or
        ``book()`` (whose book is then dropped from ``books``); it is not made again after a
        reconnect. Pushes already queued stay. Unknown subscriptions are ignored."""
        self._check_usable()
        request = {"topic": topic, **{k: v for k, v in params.items() if v is not None}}
        if request not in self.requests:
            return
        self.requests.remove(request)
        for market, local in list(self.books.items()):
            if request == {"topic": "orderbook", **_book_params(market, local.depth or 100)}:
                del self.books[market]
        link = self._link
        if link is not None:
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            link.outbox.put_nowait((request, "unsubscribe", written))
            await written

    async def book(self, market_id: str | int, depth: int = 100) -> LocalBook:
        """Keep a local copy of a market's book from delta pushes: exactly the best ``depth``
        levels a side, as the server holds them (re-snapshots on a gap). One depth per
        market: asking again with the same depth returns the same book. The book is kept
        as pushes arrive, in the background: it may be ahead of the pushes you have read."""
        self._check_usable()
        if not self.extensions:
            raise ValueError(
                "book() keeps a book from delta pushes, an OpenPerps extension: use "
                "Feed(url) (extensions on), or subscribe to orderbook and read its snapshots"
            )
        market = str(market_id)
        local = self.books.get(market)
        if local is not None:
            if local.depth != depth:
                raise ValueError(
                    f"market {market}'s book is already kept at depth {local.depth}, not "
                    f"{depth}: keep the deeper one and read fewer levels with levels(n)"
                )
            return local
        local = self.books[market] = LocalBook(market, depth=depth)
        params = _book_params(market, depth)
        if {"topic": "orderbook", **params} in self.requests:
            self._resnapshot(local)  # subscribed by hand: its snapshot came and went
        else:
            await self.subscribe("orderbook", **params)
        return local

    def __aiter__(self) -> AsyncIterator[Push]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Push]:
        while True:
            item = await self._take(None)
            if item is None:
                if self._error is not None and not self._closed:
                    raise self._error
                return
            yield item

    async def next(self, timeout: float | None = None) -> Push:
        """The next push; TimeoutError after ``timeout`` seconds, FeedClosedError once the
        feed is closed, the feed's error once it has failed."""
        item = await self._take(timeout)
        if item is None:
            if self._error is not None and not self._closed:
                raise self._error
            raise FeedClosedError(f"the feed from {self.url} is closed")
        return item

    # -- internals ------------------------------------------------------------------------------

    async def _take(self, timeout: float | None) -> Push | None:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            self._queue.put_nowait(None)  # the end: every other reader learns it too
            return None
        if self._queue.qsize() <= self.max_queue // 2:
            self._room.set()
        return item

    def _check_usable(self) -> None:
        if self._closed:
            raise FeedClosedError(f"the feed from {self.url} is closed")
        if self._error is not None:
            raise self._error

    def _finish(self, error: FeedError | None) -> None:
        """The end of the feed: readers learn it (after the pushes already queued)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._queue.put_nowait(None)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _main(self) -> None:
        try:
            await self._run()
        except FeedError as exc:
            self._finish(exc)
        except Exception as exc:
            logger.exception("the feed from %s stopped", self.url)
            error = FeedFailedError(f"the feed from {self.url} stopped: {_describe(exc)}")
            error.__cause__ = exc
            self._finish(error)

    async def _run(self) -> None:
        delay = MIN_BACKOFF
        while not self._closed:
            try:
                ws = await websockets.connect(
                    self.url,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    max_size=None,
                    open_timeout=self.connect_timeout or 10.0,
                    close_timeout=CLOSE_TIMEOUT_S,
                )
            except (OSError, websockets.WebSocketException) as exc:
                if not self._connected.is_set():
                    self._last_error = exc
                    if _hopeless(exc):
                        raise FeedConnectError(
                            f"cannot connect to the feed at {self.url}: {_describe(exc)}"
                        ) from exc
                logger.info("cannot connect to the feed at %s (%s); retrying", self.url, exc)
                self.reconnects += 1
                await self._pause(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            overflow, lasted = await self._follow(ws)
            if self._closed:
                return
            self.reconnects += 1
            if overflow:
                # the reader fell behind: reconnect, and resume, once it has caught up half
                logger.info("the reader fell %d pushes behind; resuming later", self.max_queue)
                self._room.clear()
                while self._queue.qsize() > self.max_queue // 2:
                    await self._room.wait()
                    self._room.clear()
                continue
            code = ws.close_code
            if code in POLICY_CLOSES:
                delay = min(max(delay, POLICY_BACKOFF), self.max_backoff)
            elif lasted >= STABLE_AFTER:
                delay = MIN_BACKOFF
            logger.info("feed connection lost (close code %s); reconnecting", code)
            await self._pause(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _follow(self, ws: ClientConnection) -> tuple[bool, float]:
        """Read one connection until it ends. Whether it was dropped for a full queue, and
        how long it lasted."""
        self._connected.set()
        self._last_error = None
        loop = asyncio.get_running_loop()
        link = self._link = _Link(ws, loop.time())
        self._pacer.refill()
        for request in self.requests:  # resubscribe, in the order they were made
            link.outbox.put_nowait((request, "subscribe", None))
        sender = asyncio.create_task(self._send(link), name="openperps-feed-requests")
        overflow = False
        async with ws:
            try:
                async for frame in ws:
                    self._deliver(frame)
            except _Overflow:
                overflow = True
            except websockets.ConnectionClosed:
                pass
            finally:
                self._link = None
                sender.cancel()
                while not link.outbox.empty():  # sent again on the next connection
                    _request, _method, written = link.outbox.get_nowait()
                    if written is not None and not written.done():
                        written.set_result(None)
                for local in self.books.values():
                    local.mark_stale()  # until the next connection's snapshot
        if link.failure is not None:
            raise link.failure
        return overflow, loop.time() - link.opened_at

    async def _send(self, link: _Link) -> None:
        """Write the link's requests one at a time, each when the pacer has a token."""
        while True:
            request, method, written = await link.outbox.get()
            try:
                if method == "subscribe" and request not in self.requests:
                    continue  # refused for good meanwhile
                await self._pacer.take()
                wire = self._request(request)
                if method != "subscribe":
                    wire.pop("since_version", None)
                    wire["method"] = method
                await link.ws.send(json.dumps(wire))
            except websockets.ConnectionClosed:
                return  # the reader sees the close; the next connection sends them again
            except Exception as exc:
                link.failure = exc
                await link.ws.close(1011, "client error")
                return
            finally:
                if written is not None and not written.done():
                    written.set_result(None)

    async def _pause(self, delay: float) -> None:
        """Wait before reconnecting: ``delay`` seconds, give or take half (jitter, so that
        many clients dropped together do not come back together)."""
        await asyncio.sleep(delay * (0.5 + random.random()))

    def _resnapshot(self, local: LocalBook) -> None:
        """Take a fresh snapshot of a book (after a gap): subscribe again, which the server
        answers with the subscription's snapshot; its deltas go on from there."""
        link = self._link
        request = _book_params(local.market_id, local.depth or 100)
        request = {"topic": "orderbook", **request}
        if link is not None and request in self.requests:
            link.outbox.put_nowait((request, "subscribe", None))

    def _key(self, topic: str, data: Any) -> tuple[str, str | None]:
        address = None
        if topic in USER_TOPICS:
            record = data[0] if isinstance(data, list) and data else data
            if isinstance(record, dict):
                address = record.get("address")
        return topic, address

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.extensions:
            return {k: v for k, v in request.items() if k in ("topic", "address", "market_id")}
        out = dict(request)
        topic = request["topic"]
        if topic in LIVE_TOPICS and "address" in request:
            address = _address(request["address"])
            known = [v for (t, a), v in self.last_version.items() if t == topic and a == address]
            if known:
                out["since_version"] = max(known)
        return out

    def _ours(self, echoed: Any) -> tuple[dict[str, Any], str] | None:
        """The stored request an error's echoed request was sent for, and its method."""
        if not isinstance(echoed, dict):
            return None
        method = echoed.get("method", "subscribe")
        sent = {k: v for k, v in echoed.items() if k not in ("method", "id", "since_version")}
        for request in self.requests:
            mine = {
                k: v for k, v in self._request(request).items() if k not in ("id", "since_version")
            }
            if mine == sent:
                return request, method
        return None

    def _handled(self, error: Any) -> bool:
        """Deal with an error about a request of the feed's own making that the reader need
        not see: a ``rate_limited`` one is sent again; a ``not_subscribed`` one answers the
        unsubscribe of a book's re-snapshot."""
        if not isinstance(error, dict):
            return False
        code = error.get("code")
        ours = self._ours(error.get("request"))
        if code == "rate_limited":
            self._pacer.refused()
            link = self._link
            if ours is None or link is None:
                return ours is not None
            request, method = ours
            if method == "unsubscribe":  # a re-snapshot: its subscribe may have gone alone
                link.outbox.put_nowait((request, "unsubscribe", None))
            link.outbox.put_nowait((request, "subscribe", None))
            return True
        return code == "not_subscribed" and ours is not None and ours[1] == "unsubscribe"

    def _refused(self, error: Any) -> None:
        """An error the reader sees: a request refused for good is not sent again."""
        self._forget_versions_of(error)
        if not isinstance(error, dict) or error.get("code") in NOT_REFUSALS:
            return
        ours = self._ours(error.get("request"))
        if ours is None or ours[1] != "subscribe":
            return
        request = ours[0]
        self.requests.remove(request)
        if request.get("topic") == "orderbook" and request.get("mode") == "delta":
            local = self.books.get(str(request.get("market_id")))
            if local is not None and local.depth == request.get("limit"):
                del self.books[local.market_id]

    def _book_for(self, message: dict[str, Any], data: list[Any]) -> LocalBook | None:
        """The local book an orderbook push in delta mode is for. The push names its market
        and depth (OpenPerps); a Kana-style one only its market, through its levels."""
        named = message.get("market_id")
        if named is None and data and isinstance(data[0], dict):
            named = data[0].get("market_id")
        if named is not None:
            local = self.books.get(str(named))
        elif len(self.books) == 1:
            local = next(iter(self.books.values()))  # an empty push that names nothing
        else:
            local = None
        depth = message.get("limit")
        if local is not None and isinstance(depth, int) and depth != local.depth:
            return None  # another depth of the market, subscribed by hand
        return local

    def _deliver(self, frame: str | bytes) -> None:
        if self._ended:  # closed or failed: nothing is queued after the end
            return
        try:
            message = json.loads(frame)
        except json.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        topic = message.get("message")
        if topic in ACKS or topic is None:
            return
        if topic == "error" and self._handled(message.get("error")):
            return
        version = message.get("transaction_version")
        data = message.get("data")
        key = self._key(str(topic), data)
        live = version if topic in LIVE_TOPICS and isinstance(version, int) else None
        if live is not None and live <= self.last_version.get(key, 0):
            return  # already delivered before a reconnect
        if self._queue.qsize() >= self.max_queue:
            raise _Overflow  # before anything changed: the resume brings this push again
        if topic == "error":
            self._refused(message.get("error"))
        if topic == "orderbook" and "mode" in message and isinstance(data, list):
            local = self._book_for(message, data)
            if local is not None and not local.apply(message):
                self._resnapshot(local)
        if live is not None:
            self.last_version[key] = live
        self._queue.put_nowait(
            Push(str(topic), data, version if isinstance(version, int) else None, message)
        )

    def _forget_versions_of(self, error: Any) -> None:
        """After ``version_ahead`` the server's versions are not the ones counted so far (its
        log was reset, or it trails the one left): count that subscription's afresh, or every
        push would be dropped as already delivered."""
        if not isinstance(error, dict) or error.get("code") != "version_ahead":
            return
        request = error.get("request")
        if not isinstance(request, dict):
            return
        topic, address = request.get("topic"), _address(request.get("address"))
        for key in [k for k in self.last_version if k[0] == topic and k[1] == address]:
            del self.last_version[key]


def _book_params(market: str, depth: int) -> dict[str, Any]:
    return {"market_id": market, "mode": "delta", "limit": depth}


def _hopeless(exc: BaseException) -> bool:
    """A first connection that retrying cannot mend: a URL that is not a WebSocket one, or
    an HTTP server that answers it with a client error (the REST port, a wrong path)."""
    if isinstance(exc, websockets.InvalidURI):
        return True
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        return 400 <= status < 500 and status != 429
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _address(value: object) -> str:
    """An address as the server writes it in records (0x and 64 lower-case digits), so that a
    short or upper-case one given to ``subscribe`` matches; left as it is when malformed
    (the server will say so)."""
    try:
        return normalise_address(str(value))
    except InvalidInput:
        return str(value).lower()
