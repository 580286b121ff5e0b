"""Resume: a client that drops at random moments and comes back with ``since_version`` gets
every live record exactly once, in order."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openperps.core import events as e
from openperps.feed.hub import Hub
from openperps.feed.session import Subscription
from openperps.indexer import ReadModels
from openperps.indexer.topics import TopicData
from tests.indexer.test_models import PROFILES, session

ENGINE, LOG = session(31, steps=900)
BATCHES: list[list[e.Event]] = []
for _event in LOG:
    if isinstance(_event, e.CommandExecuted | e.Rejected) or not BATCHES:
        BATCHES.append([])
    BATCHES[-1].append(_event)


def records(frames: list[bytes]) -> list[tuple[int, Any]]:
    out = []
    for frame in frames:
        value = msgspec.json.decode(frame)
        out.append((value["transaction_version"], value["data"]))
    return out


def run(topic: str, address: str, drops: set[int], lag: int) -> tuple[list[Any], list[Any]]:
    """Feeds every batch; ``drops`` are batch indexes after which the client disconnects,
    reconnecting ``lag`` batches later with the last version it saw."""
    models = ReadModels()
    hub = Hub(TopicData(models))
    steady, resumed = "steady", "resumed"
    subscription = Subscription(topic, address)
    hub.add(steady, subscription)
    hub.add(resumed, subscription)
    got: dict[str, list[tuple[int, Any]]] = {steady: [], resumed: []}
    offline_until = -1
    last_seen = 0
    for index, batch in enumerate(BATCHES):
        if index == offline_until:  # reconnects between two batches, as the server does
            frames, covered = hub.snapshot(subscription, last_seen)
            assert covered
            got[resumed] += records(frames)
            hub.add(resumed, subscription)
            offline_until = -1
        applied = models.apply_all(batch)
        pushes, changed = hub.collect(applied)  # live topics: pushes only, never states
        assert not changed
        for push in pushes:
            for conn in push.holders:
                got[str(conn)] += records([push.frame])
        if got[resumed]:
            last_seen = got[resumed][-1][0]
        if index in drops and offline_until < 0:
            hub.remove(resumed, subscription)
            offline_until = index + lag
    if offline_until >= 0:  # still away at the end: come back now
        frames, _ = hub.snapshot(subscription, last_seen)
        got[resumed] += records(frames)
    return got[steady], got[resumed]


@settings(max_examples=60, deadline=None)
@given(
    topic=st.sampled_from(["live_order_history", "live_trade_history"]),
    who=st.sampled_from(PROFILES),
    drops=st.sets(st.integers(0, len(BATCHES) - 1), max_size=40),
    lag=st.integers(1, 25),
)
def test_every_live_record_exactly_once_in_order(
    topic: str, who: str, drops: set[int], lag: int
) -> None:
    steady, resumed = run(topic, who, drops, lag)
    assert steady, "the address had live changes"
    assert resumed == steady
    versions = [v for v, _ in resumed]
    assert versions == sorted(versions)


def test_a_version_older_than_retention_is_reported() -> None:
    models = ReadModels(live_retention=5)
    hub = Hub(TopicData(models))
    for batch in BATCHES:
        models.apply_all(batch)
    subscription = Subscription("live_order_history", PROFILES[0])
    frames, covered = hub.snapshot(subscription, 0)
    assert not covered and len(frames) == 1  # the latest record, as a fresh snapshot
    recent = models.live_log[PROFILES[0]][0].version
    _frames, covered = hub.snapshot(subscription, recent)
    assert covered


def test_retention_set_at_start_applies_to_what_was_kept() -> None:
    """An operator lowering ``live_retention`` in ``[feed]``: older changes are dropped and
    a resume from before them is reported, exactly as if the feed had always kept fewer."""
    models = ReadModels()
    for batch in BATCHES:
        models.apply_all(batch)
    address = PROFILES[0]
    kept = list(models.live_log[address])
    assert len(kept) > 5
    models.set_live_retention(5)
    assert list(models.live_log[address]) == kept[-5:]
    newest_dropped = kept[-6].version  # rows can share a version: compare by version
    rows, covered = models.live_changes_since(address, newest_dropped)
    assert covered and rows == [row for row in kept[-5:] if row.version > newest_dropped]
    _rows, covered = models.live_changes_since(address, newest_dropped - 1)
    assert not covered
    # growing keeps what is there and makes room for more
    models.set_live_retention(50)
    assert models.live_log[address].maxlen == 50 and list(models.live_log[address]) == kept[-5:]
    with pytest.raises(ValueError):
        models.set_live_retention(0)


def test_each_live_topic_is_told_too_old_only_when_its_own_records_were_dropped() -> None:
    """Retention is shared by an address's order changes and fills, but a resume of one
    topic is exact when only records of the other kind fell out: an address placing
    orders and trading nothing is never told its fills are lost. Kept through a saved
    state; a state saved before the kinds were told apart is read conservatively."""
    from openperps.indexer.models import load_state, save_state

    models = ReadModels(live_retention=5)
    for batch in BATCHES:
        models.apply_all(batch)
    hub = Hub(TopicData(models))
    checked = 0
    for address, rows in models.live_log.items():
        dropped_orders = models.live_dropped.get(address, 0)
        dropped_fills = models.live_dropped_fills.get(address, 0)
        oldest = rows[0].version
        for topic, dropped in (
            ("live_order_history", dropped_orders),
            ("live_trade_history", dropped_fills),
        ):
            since = oldest - 1
            _frames, covered = hub.snapshot(Subscription(topic, address), since)
            assert covered == (since >= dropped), (address, topic)
            checked += since < max(dropped_orders, dropped_fills) and covered
        assert max(dropped_orders, dropped_fills) <= oldest
    assert checked > 0, "a topic was exact where the shared window had dropped the other kind"
    restored = load_state(
        msgspec.json.decode(msgspec.json.encode(save_state(models)), type=type(save_state(models)))
    )
    assert restored.live_dropped_fills == models.live_dropped_fills
    old = msgspec.structs.replace(save_state(models), live_dropped_fills=None)
    legacy = load_state(old)
    assert legacy.live_dropped_fills == models.live_dropped
