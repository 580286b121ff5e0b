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

Against a Kana endpoint pass ``extensions=False``: requests are then the plain Part-A
subscriptions, with no ``id``, ``since_version`` or ``mode``.
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
from typing import Any, Self

import websockets
from websockets.asyncio.client import ClientConnection

from openperps.client.book import LocalBook
from openperps.core.errors import InvalidInput
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


@dataclass(frozen=True)
class Push:
    topic: str
    data: Any
    version: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)


class Feed:
    def __init__(
        self,
        url: str,
        *,
        extensions: bool = True,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.url = url
        self.extensions = extensions
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_backoff = max_backoff
        self.requests: list[dict[str, Any]] = []
        self.last_version: dict[tuple[str, str | None], int] = {}
        self.reconnects = 0
        self._queue: asyncio.Queue[Push | BaseException] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.books: dict[str, LocalBook] = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="openperps-feed-client")
        await self._connected.wait()

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def subscribe(self, topic: str, **params: Any) -> None:
        """Subscribe (and re-subscribe after every reconnect). ``params``: ``address``,
        ``market_id``, and with extensions on ``limit`` or ``mode``."""
        request = {"topic": topic, **{k: v for k, v in params.items() if v is not None}}
        self.requests.append(request)
        if self._ws is not None:
            await self._ws.send(json.dumps(self._request(request)))

    async def book(self, market_id: str, depth: int = 100) -> LocalBook:
        """Keep a local copy of a market's book from delta pushes: exactly the best ``depth``
        levels a side, as the server holds them (re-snapshots on a gap)."""
        local = self.books.get(str(market_id))
        if local is None:
            local = self.books[str(market_id)] = LocalBook(str(market_id))
            await self.subscribe("orderbook", market_id=str(market_id), mode="delta", limit=depth)
        return local

    async def _resnapshot(self, market_id: str) -> None:
        request = next(
            (
                r
                for r in self.requests
                if r["topic"] == "orderbook" and str(r.get("market_id")) == market_id
            ),
            None,
        )
        if request is not None and self._ws is not None:
            await self._ws.send(json.dumps({**request, "method": "unsubscribe"}))
            await self._ws.send(json.dumps(request))

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

    async def _run(self) -> None:
        backoff = 0.1
        while not self._closing:
            try:
                async with websockets.connect(
                    self.url,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    max_size=None,
                ) as ws:
                    self._ws = ws
                    for request in self.requests:
                        await ws.send(json.dumps(self._request(request)))
                    self._connected.set()
                    backoff = 0.1
                    async for frame in ws:
                        self._deliver(frame)
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                if self._closing:
                    return
                logger.info("feed connection lost (%s); reconnecting", exc)
            finally:
                self._ws = None
            if self._closing:
                return
            self.reconnects += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)

    def _deliver(self, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
        except json.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        topic = message.get("message")
        if topic in ("subscribed", "unsubscribed", "pong", "subscriptions") or topic is None:
            return
        if topic == "error":
            self._forget_versions_of(message.get("error"))
        version = message.get("transaction_version")
        data = message.get("data")
        if topic == "orderbook" and "mode" in message and isinstance(data, list):
            # the push names its market (OpenPerps); a Kana-style one only through its levels
            named = message.get("market_id") or (data[0]["market_id"] if data else None)
            market = str(named) if named is not None else None
            local = self.books.get(market) if market else None
            if local is None and len(self.books) == 1:
                local = next(iter(self.books.values()))  # an empty push that names nothing
            if local is not None and not local.apply(message):
                asyncio.get_running_loop().create_task(self._resnapshot(local.market_id))
        if topic in LIVE_TOPICS and isinstance(version, int):
            key = self._key(topic, data)
            if version <= self.last_version.get(key, 0):
                return  # already delivered before a reconnect
            self.last_version[key] = version
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

    def __aiter__(self) -> AsyncIterator[Push]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Push]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def next(self, timeout: float | None = None) -> Push:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item


def _address(value: object) -> str:
    """An address as the server writes it in records (0x and 64 lower-case digits), so that a
    short or upper-case one given to ``subscribe`` matches; left as it is when malformed
    (the server will say so)."""
    try:
        return normalise_address(str(value))
    except InvalidInput:
        return str(value).lower()
