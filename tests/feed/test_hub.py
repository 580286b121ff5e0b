"""The hub's fan-out, without sockets: list states are built when they are written, at the
version they are written at; live records and book deltas are built per batch, in order."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import msgspec
import pytest

from openperps.client import LocalBook
from openperps.core import events as e
from openperps.feed import hub as hub_module
from openperps.feed.frames import text_frame
from openperps.feed.hub import Hub, decode_frame, push_frame
from openperps.feed.session import Subscription
from openperps.indexer import ReadModels
from openperps.indexer.topics import TopicData
from tests.indexer.test_models import APT, PROFILES, session

ENGINE, LOG = session(17, steps=400)
BATCHES: list[list[e.Event]] = []
for _event in LOG:
    if isinstance(_event, e.CommandExecuted | e.Rejected) or not BATCHES:
        BATCHES.append([])
    BATCHES[-1].append(_event)

WHO = PROFILES[0]
BOOK = Subscription("orderbook", APT)
DELTA = Subscription("orderbook", APT, delta=True)
TRADES = Subscription("recent_trades", APT)
HISTORY = Subscription("order_history", WHO)
LIVE = Subscription("live_order_history", WHO)


def hub_with(*subscriptions: Subscription) -> Hub:
    hub = Hub(TopicData(ReadModels()))
    for subscription in subscriptions:
        hub.add("client", subscription)
    return hub


def test_a_list_state_is_named_per_batch_and_built_once_at_the_newest_version() -> None:
    hub = hub_with(BOOK, TRADES, HISTORY)
    models = hub.data.models
    changed: dict[Subscription, None] = {}
    for batch in BATCHES:
        pushes, subs = hub.collect(models.apply_all(batch))
        assert pushes == []  # list topics only: nothing is built yet
        changed.update(dict.fromkeys(subs))
    assert set(changed) == {BOOK, TRADES, HISTORY}
    for subscription in changed:
        frame = decode_frame(hub.render(subscription))
        assert frame["message"] == subscription.topic
        assert frame["transaction_version"] == models.version
        snapshot, covered = hub.snapshot(subscription)
        assert covered and decode_frame(snapshot[0]) == frame  # the same as a new subscriber's


def test_live_records_and_deltas_are_built_per_batch_in_version_order() -> None:
    hub = hub_with(LIVE, DELTA)
    models = hub.data.models
    live: list[int] = []
    deltas: list[tuple[int, int]] = []
    for batch in BATCHES:
        pushes, changed = hub.collect(models.apply_all(batch))
        assert changed == []  # nothing here is coalesced
        for push in pushes:
            assert push.holders is hub.holders[push.subscription]  # leavers are left out
            frame = decode_frame(push.frame)
            assert frame["transaction_version"] == push.version
            if push.subscription == LIVE:
                assert frame["data"]["transaction_version"] == push.version
                live.append(push.version)
            else:
                deltas.append((frame["prev_version"], push.version))
    assert live and live == sorted(live)
    assert deltas and all(now > previous for previous, now in deltas)
    assert all(b[0] == a[1] for a, b in pairwise(deltas))  # no gap


def test_a_push_is_framed_once_as_an_unmasked_text_frame() -> None:
    for size, header in (
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65_535, b"\x81\x7e\xff\xff"),
        (65_536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ):
        payload = b"x" * size
        assert text_frame(payload) == header + payload


class CountingData(TopicData):
    """Topic data that counts the snapshots taken of it."""

    def __init__(self, models: ReadModels) -> None:
        super().__init__(models)
        self.taken = 0

    def snapshot(
        self, topic: str, key: str | int | None, limit: int = 100
    ) -> Sequence[msgspec.Struct]:
        self.taken += 1
        return super().snapshot(topic, key, limit)


def fresh(data: TopicData, subscription: Subscription) -> bytes:
    """The state of ``subscription`` built from scratch, as a new subscriber must see it."""
    records = TopicData.snapshot(data, subscription.topic, subscription.key, subscription.limit)
    version = data.models.version
    if subscription.topic == "orderbook":
        extra: dict[str, Any] = {"market_id": str(subscription.key), "limit": subscription.limit}
        if subscription.delta:
            extra["mode"] = "snapshot"
        return push_frame("orderbook", records, version, **extra)
    return push_frame(subscription.topic, records, version)


def test_a_list_state_is_built_once_per_version_for_every_subscriber_and_never_served_stale() -> (
    None
):
    data = CountingData(ReadModels())
    hub = Hub(data)
    models = data.models
    half = len(BATCHES) // 2
    for batch in BATCHES[:half]:
        hub.collect(models.apply_all(batch))
    first = [hub.snapshot(TRADES)[0][0] for _ in range(1_000)]  # a reconnect storm
    assert data.taken == 1
    assert all(frame is first[0] for frame in first)  # the same bytes for everyone
    assert hub.render(TRADES) is first[0]  # and for the write of a change at that version
    assert first[0] == fresh(data, TRADES)
    # the same market in delta mode starts from a snapshot of its own kind
    book, delta = hub.snapshot(BOOK)[0][0], hub.snapshot(DELTA)[0][0]
    assert "mode" not in decode_frame(book)
    assert decode_frame(delta)["mode"] == "snapshot"
    assert (book, delta) == (fresh(data, BOOK), fresh(data, DELTA))
    assert data.taken == 3
    for batch in BATCHES[half:]:
        hub.collect(models.apply_all(batch))
        for subscription in (TRADES, BOOK, DELTA, HISTORY):
            assert hub.snapshot(subscription)[0][0] == fresh(data, subscription)
    assert decode_frame(hub.render(TRADES))["transaction_version"] == models.version


def test_states_over_the_cache_budget_are_dropped_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    data = CountingData(ReadModels())
    hub = Hub(data)
    for batch in BATCHES:
        hub.collect(data.models.apply_all(batch))
    trades = hub.render(TRADES)
    monkeypatch.setattr(hub_module, "STATE_CACHE_BYTES", len(trades) + 1)
    hub.render(BOOK)  # over the budget: the cache starts again from this state
    assert data.taken == 2
    assert hub.render(BOOK) == fresh(data, BOOK) and data.taken == 2
    assert hub.render(TRADES) == trades and data.taken == 3  # built again, the same


def test_book_deltas_keep_each_client_at_exactly_the_top_levels_it_asked_for() -> None:
    """Snapshot, then deltas, at several depths on one market at once, each kept by the SDK's
    LocalBook: after every batch each client's book is the server's own top ``depth`` levels
    a side, however levels leave and enter its window; each stream's prev_version is the
    version of its own previous delta; a stream whose last client left starts afresh when one
    comes back."""
    models = ReadModels()
    hub = Hub(TopicData(models))
    models.apply_all(BATCHES[0])
    depths = (1, 2, 5, 1000)
    subscriptions = {depth: Subscription("orderbook", APT, depth, delta=True) for depth in depths}
    books: dict[int, LocalBook] = {}
    chain: dict[int, int] = {}  # the version of each stream's last delta (0: none yet)

    def join(depth: int) -> None:  # a client per depth, named by it: a stream of its own
        subscription = subscriptions[depth]
        hub.add(depth, subscription)
        books[depth], chain[depth] = LocalBook(str(APT)), 0
        assert books[depth].apply(decode_frame(hub.snapshot(subscription)[0][0]))

    for depth in depths:
        join(depth)
    half = len(BATCHES) // 2
    sent = dict.fromkeys(depths, 0)
    for index, batch in enumerate(BATCHES[1:], 1):
        if index == half:  # the shallowest stream's only client leaves for one batch
            hub.remove(1, subscriptions[1])
            assert (APT, 1) not in hub.streams
        pushes, _changed = hub.collect(models.apply_all(batch))
        for push in pushes:
            depth = push.subscription.limit
            frame = decode_frame(push.frame)
            assert frame["prev_version"] == chain[depth], "chained to its stream's last delta"
            assert books[depth].apply(frame), "applies: no gap"
            assert books[depth].version == push.version
            chain[depth] = push.version
            sent[depth] += 1
        if index == half:
            assert (APT, 1) not in hub.streams, "nobody to send it to"
            join(1)
        for depth, subscription in subscriptions.items():
            truth = LocalBook(str(APT))
            truth.apply(decode_frame(fresh(hub.data, subscription)))
            held = (books[depth].bids, books[depth].asks)
            assert held == (truth.bids, truth.asks), f"depth {depth} at {models.version}"
    assert sent[1000] > 30
    assert sent[1] < sent[1000], "changes deeper than a window send it nothing"


def test_a_level_a_delta_removes_carries_the_time_it_went() -> None:
    """A removed level (size 0) is dated by the book change that removed it, not 0 (which
    reads as 1970)."""
    models = ReadModels()
    hub = Hub(TopicData(models))
    models.apply_all(BATCHES[0])
    subscription = Subscription("orderbook", APT, 1, delta=True)
    hub.add("client", subscription)
    hub.snapshot(subscription)
    gone = []
    for batch in BATCHES[1:]:
        pushes, _changed = hub.collect(models.apply_all(batch))
        for push in pushes:
            for level in decode_frame(push.frame)["data"]:
                if level["size"] == "0":
                    book_updated = models.markets[APT].book_updated
                    gone.append((level["last_updated"], book_updated))
    assert len(gone) > 5, "levels left the window"
    assert all(0 < at == updated // 1000 for at, updated in gone)


def test_a_plain_book_is_pushed_only_when_its_own_depth_changed() -> None:
    """A change deeper than a plain book's ``limit`` changes nothing its clients hold: no
    push for it; and no change within the depth goes without one."""
    models = ReadModels()
    hub = Hub(TopicData(models))
    models.apply_all(BATCHES[0])
    depths = (1, 2, 1000)
    subscriptions = {depth: Subscription("orderbook", APT, depth) for depth in depths}
    for depth, subscription in subscriptions.items():
        hub.add(depth, subscription)

    def levels(subscription: Subscription) -> Any:
        return decode_frame(fresh(hub.data, subscription))["data"]

    skipped = dict.fromkeys(depths, 0)
    for batch in BATCHES[1:]:
        before = {depth: levels(subscription) for depth, subscription in subscriptions.items()}
        applied = models.apply_all(batch)
        _pushes, changed = hub.collect(applied)
        for depth, subscription in subscriptions.items():
            if levels(subscription) != before[depth]:
                assert subscription in changed, f"depth {depth}: a visible change not pushed"
            elif APT in applied.book_levels and subscription not in changed:
                skipped[depth] += 1
    assert skipped[1] > 5 and skipped[2] > 0, "changes deeper than the depth were not pushed"
