"""The fan-out: which connections hold which subscription, and the frames each one gets.

Sans-I/O like the session: the server calls ``snapshot`` when a subscription starts,
``collect`` after each batch has been applied to the read models, and ``render`` for each
changed list subscription when it writes. A frame is built and encoded once per subscription
(topic, key, options) and version, and the same bytes object goes to every connection holding
it, or starting it at that version: a thousand clients reconnecting to one market's
``recent_trades`` cost one rendering, not a thousand.

Pushes (ws-protocol.md):
- list topics: ``{"message": T, "data": [...], "transaction_version": V}``, the current
  state, at most once per topic and key per write (coalesced: the server writes once per
  loop pass, whatever number of batches was applied in it);
- live topics: one frame per change, ``"data"`` a single record, in version order;
- orderbook in delta mode: ``{"message": "orderbook", "mode": "delta", "data": [changed
  levels, size "0" = removed], "transaction_version": V, "prev_version": P}``; a client whose
  book is at version B applies it when P <= B < V and re-subscribes when P > B (a gap). Each
  depth (``limit``) is a stream of its own that keeps its clients at exactly the top N levels
  a side: besides the changed levels inside the window, a delta names every level that
  entered it (a better level went away) with its size and every level that left it (a
  better one came in) with size "0".

The snapshot join: a snapshot is taken between two applied batches, at the read models'
version V, so the pushes of the next batch (all above V) follow it with nothing missing or
repeated.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from openperps.feed.session import Subscription
from openperps.indexer.models import Applied, FillRow, OrderRow
from openperps.indexer.topics import LIVE_TOPICS, TopicData
from openperps.wire.shapes import ENCODER

Conn = Hashable

STATE_CACHE_BYTES = 8 * 1024 * 1024  # list states kept at one version; cleared when over


class Push(NamedTuple):
    """A frame that is never coalesced, for every holder of ``subscription`` (the set itself,
    so a connection that leaves before it is written does not get it)."""

    frame: bytes
    version: int  # the version it brings its subscription to
    subscription: Subscription
    holders: set[Conn]


def push_frame(topic: str, data: Any, version: int, **extra: Any) -> bytes:
    frame: dict[str, Any] = {"message": topic, "data": data, "transaction_version": version}
    frame.update(extra)
    return ENCODER.encode(frame)


def book_frame(
    levels: Any, version: int, market_id: Any, depth: int, mode: str | None, **extra: Any
) -> bytes:
    """An ``orderbook`` push. Beyond Kana's keys it names its market and depth (``limit``),
    so that an empty book, or one of two depths of a market on one connection, is known."""
    if mode is not None:
        extra = {"mode": mode, **extra}
    return push_frame("orderbook", levels, version, market_id=str(market_id), limit=depth, **extra)


class Hub:
    def __init__(self, data: TopicData) -> None:
        self.data = data
        self.holders: dict[Subscription, set[Conn]] = {}
        self.by_key: dict[tuple[str, str | int | None], set[Subscription]] = {}
        # delta streams, one per (market, depth), while anyone holds one
        self.streams: dict[tuple[int, int], DeltaStream] = {}
        # list states rendered at ``_states_version``, and the bytes they hold
        self._states: dict[Subscription, bytes] = {}
        self._states_version = -1
        self._states_bytes = 0

    @property
    def version(self) -> int:
        return self.data.models.version

    # -- membership -----------------------------------------------------------------------------

    def add(self, conn: Conn, subscription: Subscription) -> None:
        """``conn`` holds ``subscription`` from the current version on (its snapshot's)."""
        holders = self.holders.get(subscription)
        if holders is None:
            holders = self.holders[subscription] = set()
            key = (subscription.topic, subscription.key)
            self.by_key.setdefault(key, set()).add(subscription)
            if subscription.delta:  # a new stream: its window is the snapshot's
                stream = _stream(subscription)
                self.streams[stream] = DeltaStream(*self._window(*stream))
        holders.add(conn)

    def remove(self, conn: Conn, subscription: Subscription) -> None:
        holders = self.holders.get(subscription)
        if holders is None:
            return
        holders.discard(conn)
        if not holders:
            del self.holders[subscription]
            if subscription.delta:
                del self.streams[_stream(subscription)]
            key = (subscription.topic, subscription.key)
            subs = self.by_key.get(key)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self.by_key[key]

    def drop(self, conn: Conn, subscriptions: Sequence[Subscription]) -> None:
        for subscription in subscriptions:
            self.remove(conn, subscription)

    # -- frames ---------------------------------------------------------------------------------

    def snapshot(
        self, subscription: Subscription, since_version: int | None = None
    ) -> tuple[list[bytes], bool]:
        """The frames a new subscription starts with, and False when ``since_version`` is
        older than retention (the caller reports ``version_too_old``; a snapshot follows)."""
        topic, key = subscription.topic, subscription.key
        if topic in LIVE_TOPICS:
            if since_version is not None:
                fills = topic == "live_trade_history"
                rows, covered = self.data.models.live_changes_since(str(key), since_version, fills)
                frames = [frame for _version, frame in self._live_frames(topic, rows)]
                if covered:
                    return frames, True
                return self._latest_live(topic, str(key)), False
            return self._latest_live(topic, str(key)), True
        return [self.render(subscription)], True

    def _latest_live(self, topic: str, address: str) -> list[bytes]:
        records = self.data.snapshot(topic, address)
        if not records:
            return []
        record = records[0]
        version = getattr(record, "transaction_version", self.version)
        return [push_frame(topic, record, version)]

    def _live_frames(
        self, topic: str, rows: Sequence[OrderRow | FillRow]
    ) -> list[tuple[int, bytes]]:
        render = self.data.render
        frames = []
        for row in rows:
            if topic == "live_order_history" and isinstance(row, OrderRow):
                frames.append((row.version, push_frame(topic, render.order(row), row.version)))
            elif topic == "live_trade_history" and isinstance(row, FillRow):
                frames.append((row.version, push_frame(topic, render.live_fill(row), row.version)))
        return frames

    def collect(self, applied: Applied) -> tuple[list[Push], list[Subscription]]:
        """What ``applied`` changed: the frames that are never coalesced (live records and
        book deltas), built now and in the order they must be written, and the list
        subscriptions whose state changed, for ``render`` to build once when they are
        written, however many batches changed them in between."""
        pushes: list[Push] = []
        changed: list[Subscription] = []
        deltas: dict[tuple[int, int], bytes | None] = {}
        version = self.version
        for change in sorted(applied.changes):
            subs = self.by_key.get((change.topic, change.key))
            if not subs:
                continue
            topic, key = change.topic, change.key
            if topic in LIVE_TOPICS:
                rows: list[OrderRow | FillRow] = [
                    *(r for r in applied.live_orders if r.address == key),
                    *(r for r in applied.live_fills if r.address == key),
                ]
                rows.sort(key=lambda r: r.version)
                frames = self._live_frames(topic, rows)
                for subscription in sorted(subs):
                    holders = self.holders[subscription]
                    for row_version, frame in frames:
                        pushes.append(Push(frame, row_version, subscription, holders))
                continue
            for subscription in sorted(subs):
                if subscription.delta:
                    stream = _stream(subscription)
                    if stream not in deltas:
                        deltas[stream] = self._delta(stream, applied, version)
                    delta = deltas[stream]
                    if delta is not None:
                        pushes.append(
                            Push(delta, version, subscription, self.holders[subscription])
                        )
                    continue
                if topic == "orderbook":
                    levels = applied.book_levels.get(int(key or 0))
                    if levels and not self._touches(int(key or 0), subscription.limit, levels):
                        continue  # deeper than this book's depth: nothing in it changed
                changed.append(subscription)
        return pushes, changed

    def _touches(self, market_id: int, depth: int, levels: Iterable[tuple[bool, int]]) -> bool:
        """Whether changed levels are among a side's best ``depth`` (a removed one: where it
        was, which is no worse than the window's worst now)."""
        bids, asks = self.data.models.level_prices.get(market_id, ([], []))
        for is_ask, price in levels:
            side = asks if is_ask else bids
            if len(side) < depth:
                return True
            if price <= side[depth - 1] if is_ask else price >= side[-depth]:
                return True
        return False

    def render(self, subscription: Subscription) -> bytes:
        """The push of a list subscription's current state (an order book in delta mode: the
        full book its deltas start from, marked ``"mode": "snapshot"``), built once per
        version however many connections ask for it."""
        version = self.version
        if version != self._states_version:
            self._states.clear()
            self._states_version, self._states_bytes = version, 0
        frame = self._states.get(subscription)
        if frame is None:
            topic = subscription.topic
            records = self.data.snapshot(topic, subscription.key, subscription.limit)
            if topic == "orderbook":  # which book and depth, even when it is empty
                mode = "snapshot" if subscription.delta else None
                frame = book_frame(records, version, subscription.key, subscription.limit, mode)
            else:
                frame = push_frame(topic, records, version)
            self._states_bytes += len(frame)
            if self._states_bytes > STATE_CACHE_BYTES:  # many different states at one version
                self._states.clear()
                self._states_bytes = len(frame)
            self._states[subscription] = frame
        return frame

    def _window(self, market_id: int, depth: int) -> tuple[frozenset[int], frozenset[int]]:
        """The prices of the best ``depth`` levels a side: what a delta stream's clients hold."""
        models = self.data.models
        return (
            frozenset(models.best_prices(market_id, False, depth)),
            frozenset(models.best_prices(market_id, True, depth)),
        )

    def _delta(self, stream: tuple[int, int], applied: Applied, version: int) -> bytes | None:
        """What moves a stream's clients from its last window to the current one: the changed
        levels inside either, and the levels that entered or left it; None when nothing did."""
        market_id, depth = stream
        changed = applied.book_levels.get(market_id)
        if not changed:
            return None
        held = self.streams[stream]
        bids, asks = self._window(market_id, depth)
        book = self.data.models.books.get(market_id, {})
        levels: dict[tuple[bool, int], int] = {}
        for is_ask, before, now in ((False, held.bids, bids), (True, held.asks, asks)):
            for price in now:
                if price not in before or (is_ask, price) in changed:  # entered, or changed
                    levels[(is_ask, price)] = book[(is_ask, price)]
            for price in before - now:  # gone, or pushed out by better levels
                levels[(is_ask, price)] = 0
        held.bids, held.asks = bids, asks
        if not levels:
            return None
        render = self.data.render
        models = self.data.models
        versions = models.level_versions.get(market_id, {})
        market = models.markets.get(market_id)
        gone_at = market.book_updated if market is not None else 0  # the book's last change
        data = []
        for (is_ask, price), size in sorted(levels.items()):
            # a level still there has its last change; a gone one is gone as of now
            level_version, ts = versions[(is_ask, price)] if size else (version, gone_at)
            data.append(render.level(market_id, is_ask, price, size, level_version, ts))
        previous, held.version = held.version, version
        return book_frame(data, version, market_id, depth, "delta", prev_version=previous)


@dataclass
class DeltaStream:
    """One (market, depth) of book deltas: the prices its clients hold, and the version of the
    last delta sent (0 before any: the first one applies to any snapshot)."""

    bids: frozenset[int]
    asks: frozenset[int]
    version: int = 0


def _stream(subscription: Subscription) -> tuple[int, int]:
    """The delta stream of an order-book subscription: its market and depth."""
    return int(subscription.key or 0), subscription.limit


def decode_frame(data: bytes) -> dict[str, Any]:
    """For tests and tools: a frame as plain JSON values."""
    value = msgspec.json.decode(data)
    assert isinstance(value, dict)
    return value
