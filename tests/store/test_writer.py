"""Group commit (store/writer.py) on both backends, with faults injected around the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import pytest

from openperps.store import (
    Envelope,
    EventLog,
    GroupCommitWriter,
    LogClosed,
    Snapshot,
    StorageFull,
    StorageUnavailable,
    StoreError,
    VersionGap,
)
from openperps.store.base import DEFAULT_READ_BATCH

from .helpers import Backend, assert_log, envelopes


class FaultyLog(EventLog):
    """Delegates to a real log, recording appends, and fails them on demand."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.appends: list[list[int]] = []  # the versions of each append that reached the log
        self.fault: StoreError | None = None
        self.fault_after_commit = False  # commit, then report failure: an unknown outcome
        self.last_version_fault: StoreError | None = None
        self.in_append = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def last_version(self) -> int:
        if self.last_version_fault is not None:
            raise self.last_version_fault
        return await self.inner.last_version()

    async def append(self, batch: Sequence[Envelope]) -> None:
        self.in_append.set()
        await self.release.wait()
        fault = self.fault
        if fault is not None and not self.fault_after_commit:
            raise fault
        await self.inner.append(batch)
        self.appends.append([e.version for e in batch])
        if fault is not None:
            raise fault

    def read_batches(
        self,
        from_version: int,
        to_version: int | None = None,
        batch_size: int = DEFAULT_READ_BATCH,
    ) -> AsyncGenerator[list[Envelope], None]:
        return self.inner.read_batches(from_version, to_version, batch_size)

    async def save_snapshot(self, version: int, state_hash: str, blob: bytes) -> None:
        await self.inner.save_snapshot(version, state_hash, blob)

    async def load_latest_snapshot(self) -> Snapshot | None:
        return await self.inner.load_latest_snapshot()

    async def prune_snapshots(self, keep: int) -> int:
        return await self.inner.prune_snapshots(keep)


@pytest.fixture
async def faulty(log: EventLog) -> FaultyLog:
    return FaultyLog(log)


@pytest.fixture
async def writer(faulty: FaultyLog) -> AsyncIterator[GroupCommitWriter]:
    async with GroupCommitWriter(faulty) as started:
        yield started


async def test_submit_returns_once_the_batch_is_durable(
    backend: Backend, writer: GroupCommitWriter
) -> None:
    await writer.submit(envelopes(1, 5))
    assert writer.durable_version == 5
    async with backend.reader() as another_reader:
        await assert_log(another_reader, envelopes(1, 5))


async def test_batches_queued_together_are_committed_in_one_transaction(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    futures = [writer.enqueue(envelopes(first, 10)) for first in range(1, 200, 10)]
    await asyncio.gather(*futures)
    assert faulty.appends == [list(range(1, 201))]
    await assert_log(faulty, envelopes(1, 200))


async def test_an_idle_writer_commits_a_lone_batch_without_waiting_for_more(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    for first in (1, 4, 7):
        await writer.submit(envelopes(first, 3))
    assert faulty.appends == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


async def test_batches_that_arrive_during_a_commit_share_the_next_one(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    faulty.release.clear()
    first = writer.enqueue(envelopes(1, 2))
    await faulty.in_append.wait()  # the first commit is in flight
    later = [writer.enqueue(envelopes(v, 2)) for v in (3, 5, 7)]
    faulty.release.set()
    await asyncio.gather(first, *later)
    assert faulty.appends == [[1, 2], [3, 4, 5, 6, 7, 8]]


async def test_a_group_never_exceeds_the_configured_size(faulty: FaultyLog) -> None:
    async with GroupCommitWriter(faulty, max_group_events=25) as writer:
        await asyncio.gather(*(writer.enqueue(envelopes(v, 10)) for v in range(1, 101, 10)))
    assert [len(a) for a in faulty.appends] == [20, 20, 20, 20, 20]


async def test_a_batch_that_does_not_continue_the_previous_one_fails_alone(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    good = writer.enqueue(envelopes(1, 3))
    skipping = writer.enqueue(envelopes(5, 2))
    continuing = writer.enqueue(envelopes(4, 2))
    await good
    with pytest.raises(VersionGap) as refused:
        await skipping
    assert (refused.value.expected, refused.value.got) == (4, 5)
    await continuing
    await assert_log(faulty, envelopes(1, 5))


async def test_a_batch_with_a_hole_is_refused_when_queued(writer: GroupCommitWriter) -> None:
    with pytest.raises(VersionGap):
        writer.enqueue([*envelopes(1, 1), *envelopes(3, 1)])


async def test_a_failed_commit_acknowledges_nothing_and_the_writer_recovers(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    await writer.submit(envelopes(1, 2))
    faulty.fault = StorageFull("disk full (injected)")
    faulty.release.clear()
    failing = [writer.enqueue(envelopes(3, 2)), writer.enqueue(envelopes(5, 2))]
    await faulty.in_append.wait()
    queued_behind = writer.enqueue(envelopes(7, 2))
    faulty.release.set()

    for future in [*failing, queued_behind]:
        with pytest.raises(StorageFull):
            await future
    await assert_log(faulty, envelopes(1, 2))

    faulty.fault = None  # the disk has room again: the same batches go through
    await asyncio.gather(*(writer.enqueue(envelopes(v, 2)) for v in (3, 5, 7)))
    await writer.submit(envelopes(9, 1))
    await assert_log(faulty, envelopes(1, 9))


async def test_after_a_commit_of_unknown_outcome_the_writer_follows_the_log(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    faulty.fault = StorageUnavailable("connection lost during COMMIT (injected)")
    faulty.fault_after_commit = True
    with pytest.raises(StorageUnavailable):
        await writer.submit(envelopes(1, 3))
    faulty.fault = None

    # The commit did happen: resubmitting is refused, continuing is accepted.
    with pytest.raises(VersionGap):
        await writer.submit(envelopes(1, 3))
    await writer.submit(envelopes(4, 1))
    await assert_log(faulty, envelopes(1, 4))


async def test_a_writer_that_cannot_reach_the_log_fails_batches_until_it_can(
    faulty: FaultyLog,
) -> None:
    faulty.last_version_fault = StorageUnavailable("server down (injected)")
    async with GroupCommitWriter(faulty) as writer:
        with pytest.raises(StorageUnavailable):
            await writer.submit(envelopes(1, 2))
        faulty.last_version_fault = None
        await writer.submit(envelopes(1, 2))
    await assert_log(faulty, envelopes(1, 2))


async def test_closing_commits_what_is_queued_then_refuses_more(faulty: FaultyLog) -> None:
    writer = GroupCommitWriter(faulty)
    await writer.start()
    queued = [writer.enqueue(envelopes(v, 5)) for v in (1, 6)]
    await writer.close()
    assert all(f.done() and f.exception() is None for f in queued)
    await assert_log(faulty, envelopes(1, 10))
    with pytest.raises(LogClosed):
        writer.enqueue(envelopes(11, 1))


async def test_cancelling_a_submit_does_not_withdraw_the_batch(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    faulty.release.clear()
    task = asyncio.create_task(writer.submit(envelopes(1, 3)))
    await faulty.in_append.wait()
    task.cancel()
    faulty.release.set()
    await writer.submit(envelopes(4, 1))
    await assert_log(faulty, envelopes(1, 4))


async def test_an_empty_submission_is_acknowledged_at_once(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    await writer.submit([])
    assert faulty.appends == []


async def test_each_batch_hears_its_outcome_in_version_order_waited_for_or_not(
    faulty: FaultyLog, writer: GroupCommitWriter
) -> None:
    """The hook runs before the future resolves, for a submitter that stopped waiting too,
    with None once durable and the exception otherwise; a hook that raises stops nothing."""
    heard: list[tuple[int, str]] = []

    def hook(first: int) -> Callable[[BaseException | None], None]:
        def outcome(exc: BaseException | None) -> None:
            heard.append((first, type(exc).__name__))
            if first == 3:
                raise RuntimeError("a broken hook")

        return outcome

    faulty.release.clear()
    futures = [writer.enqueue(envelopes(v, 2), hook(v)) for v in (1, 3, 5)]
    await faulty.in_append.wait()
    futures[1].cancel()  # its submitter stopped waiting
    faulty.release.set()
    await futures[2]
    assert heard == [(1, "NoneType"), (3, "NoneType"), (5, "NoneType")]
    await assert_log(faulty, envelopes(1, 6))

    faulty.fault = StorageFull("disk full (injected)")
    with pytest.raises(StorageFull):
        await writer.enqueue(envelopes(7, 1), hook(7))
    assert heard[-1] == (7, "StorageFull")
    faulty.fault = None
    await writer.enqueue([], hook(0))
    assert heard[-1] == (0, "NoneType"), "an empty batch hears at once"
