"""The event-log contract (store/base.py), run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import logging

import pytest

from openperps.store import (
    SCHEMA_VERSION,
    CorruptLog,
    Envelope,
    EventLog,
    LogClosed,
    SchemaTooNew,
    Snapshot,
    SnapshotAhead,
    StoreErrorCode,
    VersionGap,
)

from .helpers import Backend, assert_log, envelopes, read_all

# -- appending and reading -------------------------------------------------------------------


async def test_an_empty_log_has_version_zero_and_nothing_to_read(log: EventLog) -> None:
    await assert_log(log, [])
    assert await log.load_latest_snapshot() is None


async def test_appended_batches_read_back_in_version_order(log: EventLog) -> None:
    await log.append(envelopes(1, 3))
    await log.append(envelopes(4, 1))
    await log.append(envelopes(5, 250))
    await assert_log(log, envelopes(1, 254))


async def test_an_empty_batch_is_a_no_op(log: EventLog) -> None:
    await log.append([])
    await assert_log(log, [])


@pytest.mark.parametrize(
    ("batch", "expected", "got"),
    [
        (envelopes(5, 2), 4, 5),  # skips version 4
        (envelopes(3, 2), 4, 3),  # repeats version 3
        (envelopes(4, 1) + envelopes(6, 1), 5, 6),  # a hole inside the batch
    ],
    ids=["skip", "repeat", "hole-inside"],
)
async def test_a_batch_that_does_not_continue_the_log_is_refused_whole(
    log: EventLog, batch: list[Envelope], expected: int, got: int
) -> None:
    await log.append(envelopes(1, 3))
    with pytest.raises(VersionGap) as refused:
        await log.append(batch)
    assert (refused.value.expected, refused.value.got) == (expected, got)
    assert refused.value.code == StoreErrorCode.VERSION_GAP
    assert int(refused.value.code) == 2301
    await assert_log(log, envelopes(1, 3))


async def test_the_first_batch_starts_at_version_one(log: EventLog) -> None:
    with pytest.raises(VersionGap):
        await log.append(envelopes(2, 1))
    await assert_log(log, [])


@pytest.mark.parametrize(
    ("first", "last", "batch_size"),
    [(1, None, 7), (10, 20, 3), (50, 50, 10), (100, None, 1), (95, 200, 100)],
)
async def test_read_returns_the_inclusive_range(
    log: EventLog, first: int, last: int | None, batch_size: int
) -> None:
    await log.append(envelopes(1, 100))
    got = [e async for e in log.read(first, last, batch_size=batch_size)]
    assert got == envelopes(first, min(last or 100, 100) - first + 1)


async def test_read_batches_yields_chunks_of_at_most_batch_size(log: EventLog) -> None:
    await log.append(envelopes(1, 25))
    sizes = [len(chunk) async for chunk in log.read_batches(1, batch_size=10)]
    assert sizes == [10, 10, 5]


async def test_a_reader_that_stops_early_leaves_the_log_usable(log: EventLog) -> None:
    await log.append(envelopes(1, 50))
    async with contextlib.aclosing(log.read_batches(1, batch_size=10)) as chunks:
        async for chunk in chunks:
            assert chunk == envelopes(1, 10)
            break
    await log.append(envelopes(51, 1))
    await assert_log(log, envelopes(1, 51))


async def test_reading_past_the_end_yields_nothing(log: EventLog) -> None:
    await log.append(envelopes(1, 5))
    assert await read_all(log, 6) == []
    assert await read_all(log, 1000) == []


@pytest.mark.parametrize(("first", "last"), [(0, None), (-1, 5), (10, 5)])
async def test_read_refuses_a_nonsense_range(log: EventLog, first: int, last: int | None) -> None:
    with pytest.raises(ValueError):
        await read_all_range(log, first, last)


async def read_all_range(log: EventLog, first: int, last: int | None) -> None:
    async for _ in log.read(first, last):
        pass


# -- opening, reopening, schema ---------------------------------------------------------------


async def test_events_survive_close_and_reopen(backend: Backend) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 10))
    async with backend.make() as log:
        await assert_log(log, envelopes(1, 10))
        await log.append(envelopes(11, 5))
        await assert_log(log, envelopes(1, 15))


async def test_open_is_idempotent(backend: Backend) -> None:
    log = backend.make()
    await log.open()
    await log.open()
    await log.append(envelopes(1, 3))
    async with backend.reader() as again, backend.reader() as third:
        await assert_log(again, envelopes(1, 3))
        await assert_log(third, envelopes(1, 3))
    await log.close()
    await log.close()


async def test_a_log_that_is_not_open_refuses_calls(backend: Backend) -> None:
    log = backend.make()
    with pytest.raises(LogClosed):
        await log.last_version()
    async with log:
        await log.append(envelopes(1, 1))
    with pytest.raises(LogClosed) as closed:
        await log.append(envelopes(2, 1))
    assert closed.value.code == StoreErrorCode.LOG_CLOSED
    with pytest.raises(LogClosed):
        await read_all(log)


async def test_a_database_from_a_newer_schema_is_refused(backend: Backend) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 2))
    await backend.set_schema_version(SCHEMA_VERSION + 1)

    with pytest.raises(SchemaTooNew) as refused:
        await backend.make().open()
    assert (refused.value.found, refused.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert refused.value.code == StoreErrorCode.SCHEMA_TOO_NEW
    assert "newer" in str(refused.value)

    await backend.set_schema_version(SCHEMA_VERSION)  # untouched: opens again when allowed
    async with backend.make() as log:
        await assert_log(log, envelopes(1, 2))


# -- snapshots ---------------------------------------------------------------------------------


async def test_the_latest_snapshot_round_trips(log: EventLog) -> None:
    await log.append(envelopes(1, 30))
    await log.save_snapshot(10, "hash-10", b"state at 10")
    await log.save_snapshot(30, "hash-30", b"\x00state at 30\xff")
    await log.save_snapshot(20, "hash-20", b"state at 20")
    assert await log.load_latest_snapshot() == Snapshot(30, "hash-30", b"\x00state at 30\xff")


async def test_saving_a_snapshot_again_replaces_it(log: EventLog) -> None:
    await log.append(envelopes(1, 5))
    await log.save_snapshot(5, "first", b"a")
    await log.save_snapshot(5, "second", b"b")
    assert await log.load_latest_snapshot() == Snapshot(5, "second", b"b")


async def test_a_snapshot_ahead_of_the_log_is_refused(log: EventLog) -> None:
    await log.append(envelopes(1, 5))
    with pytest.raises(SnapshotAhead) as refused:
        await log.save_snapshot(6, "h", b"")
    assert refused.value.code == StoreErrorCode.SNAPSHOT_AHEAD
    assert await log.load_latest_snapshot() is None


async def test_pruning_keeps_the_newest_snapshots(log: EventLog) -> None:
    await log.append(envelopes(1, 50))
    for version in (10, 20, 30, 40, 50):
        await log.save_snapshot(version, f"h{version}", b"")
    assert await log.prune_snapshots(keep=2) == 3
    assert await log.prune_snapshots(keep=2) == 0
    assert await log.load_latest_snapshot() == Snapshot(50, "h50", b"")
    assert await log.prune_snapshots(keep=0) == 2
    assert await log.load_latest_snapshot() is None


async def test_a_corrupt_snapshot_is_skipped_for_the_one_before(
    backend: Backend, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    await log.append(envelopes(1, 20))
    await log.save_snapshot(10, "h10", b"ten")
    await log.save_snapshot(20, "h20", b"twenty")
    await backend.corrupt_snapshot(20)
    with caplog.at_level(logging.ERROR, logger="openperps.store"):
        assert await log.load_latest_snapshot() == Snapshot(10, "h10", b"ten")
    assert "snapshot at version 20 is corrupt" in caplog.text


# -- torn tails and corruption -----------------------------------------------------------------


async def test_a_corrupt_last_batch_is_reported_and_dropped_on_open(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 10))
        await log.append(envelopes(11, 5))
        await log.save_snapshot(10, "h10", b"")
        await log.save_snapshot(14, "h14", b"")
    await backend.corrupt_event(15)

    with caplog.at_level(logging.ERROR, logger="openperps.store"):
        async with backend.make() as log:
            await assert_log(log, envelopes(1, 10))
            assert await log.load_latest_snapshot() == Snapshot(10, "h10", b"")
            # The log continues right after the last intact batch.
            await log.append(envelopes(11, 2))
            await assert_log(log, envelopes(1, 12))
    assert "dropping events 11..15 (5 rows)" in caplog.text
    assert "dropped 1 snapshot(s) above version 10" in caplog.text


async def test_a_corrupt_row_inside_the_last_batch_drops_the_whole_batch(
    backend: Backend,
) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 10))
        await log.append(envelopes(11, 10))
    await backend.corrupt_event(13)
    async with backend.make() as log:
        await assert_log(log, envelopes(1, 10))


async def test_an_incomplete_last_batch_is_dropped_on_open(backend: Backend) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 10))
        await log.append(envelopes(11, 10))
    await backend.delete_events(19, 20)  # rows 11..18 remain, claiming a batch up to 20
    async with backend.make() as log:
        await assert_log(log, envelopes(1, 10))


async def test_several_torn_batches_are_dropped_down_to_an_intact_one(backend: Backend) -> None:
    async with backend.make() as log:
        for first in (1, 6, 11, 16):
            await log.append(envelopes(first, 5))
    await backend.corrupt_event(12)
    await backend.corrupt_event(20)
    async with backend.make() as log:
        await assert_log(log, envelopes(1, 10))


async def test_a_healthy_log_is_left_alone_on_open(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async with backend.make() as log:
        for first in range(1, 100, 3):
            await log.append(envelopes(first, 3))
    with caplog.at_level(logging.ERROR, logger="openperps.store"):
        async with backend.make() as log:
            await assert_log(log, envelopes(1, 99))
    assert caplog.text == ""


async def test_a_corrupt_row_below_the_tail_is_never_served(backend: Backend) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 10))
        await log.append(envelopes(11, 10))
    await backend.corrupt_event(4)
    async with backend.make() as log:
        assert await log.last_version() == 20  # acknowledged events are not thrown away
        assert await read_all_until_error(log) == envelopes(1, 3)
        assert [e async for e in log.read(5)] == envelopes(5, 16)
        with pytest.raises(CorruptLog) as refused:
            await read_all(log)
        assert refused.value.version == 4
        assert refused.value.code == StoreErrorCode.CORRUPT_LOG


async def test_a_missing_row_below_the_tail_is_never_skipped(backend: Backend) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 10))
        await log.append(envelopes(11, 10))
    await backend.delete_events(7)
    async with backend.make() as log:
        with pytest.raises(CorruptLog) as refused:
            await read_all(log)
        assert refused.value.version == 7


@pytest.mark.parametrize("batch_size", [1, 7, 9, 100])
async def test_a_hole_is_found_wherever_it_falls_in_a_chunk(
    backend: Backend, batch_size: int
) -> None:
    async with backend.make() as log:
        for first in (1, 6, 11, 16):
            await log.append(envelopes(first, 5))
    await backend.delete_events(8, 9)
    async with backend.make() as log:
        with pytest.raises(CorruptLog, match="version 8: version missing"):
            async for _ in log.read(1, batch_size=batch_size):
                pass


async def test_a_log_without_one_intact_batch_is_refused_not_emptied(backend: Backend) -> None:
    async with backend.make() as log:
        await log.append(envelopes(1, 3))
    await backend.corrupt_event(1)
    await backend.corrupt_event(3)
    with pytest.raises(CorruptLog):
        await backend.make().open()


async def read_all_until_error(log: EventLog) -> list[object]:
    got: list[object] = []
    try:
        async for envelope in log.read(1, batch_size=1):
            got.append(envelope)
    except CorruptLog:
        pass
    return got
