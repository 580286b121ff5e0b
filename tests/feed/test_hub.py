"""The hub's fan-out, without sockets: list states are built when they are written, at the
version they are written at; live records and book deltas are built per batch, in order."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import msgspec

from openperps.core import events as e
from openperps.feed.frames import text_frame
from openperps.feed.hub import Hub
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


def decode(frame: bytes) -> dict[str, Any]:
    value = msgspec.json.decode(frame)
    assert isinstance(value, dict)
    return value


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
        frame = decode(hub.render(subscription))
        assert frame["message"] == subscription.topic
        assert frame["transaction_version"] == models.version
        snapshot, covered = hub.snapshot(subscription)
        assert covered and decode(snapshot[0]) == frame  # the same as a new subscriber's


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
            frame = decode(push.frame)
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
