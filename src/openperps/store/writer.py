"""Group commit: many submitted batches, one durable transaction, acknowledgements after it.

The sequencer hands each command's events to ``GroupCommitWriter.enqueue`` (or awaits
``submit``) in version order and acknowledges the command once the returned future resolves,
that is once the events are durable (architecture.md: "Events are durable before anything is
acknowledged or published"). One task drains whatever is queued into a single
``EventLog.append``, so one fsync covers every batch that arrived while the previous commit
was in flight. The writer never waits for more work to arrive: at low load a batch is committed
as soon as the task runs, so batching adds no latency of its own; under load, groups grow by
themselves.

Faults. When an ``append`` fails (disk full, database locked, connection lost), every batch in
that group gets the exception and none of it is stored (``append`` is one transaction). Batches
queued behind the failed group get the same exception, since they cannot be stored without it.
The writer itself carries on: it re-reads ``last_version()`` from the log before its next
commit, so once the fault clears the sequencer can resubmit the failed batches (or restart from
the log) and later submissions are committed as usual.

Cancelling the await of ``submit`` does not withdraw the batch: the sequencer has already
applied those events, so the writer still stores them. A batch may come with a hook, called
with the outcome (None once durable, else the exception) right before its future resolves,
whether anyone still awaits it or not: what must happen once a batch is durable (publishing
it) or has failed (rebuilding the engine) does not depend on the submitter still waiting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import NamedTuple, Self

from openperps.store.base import EventLog
from openperps.store.envelope import Envelope
from openperps.store.errors import LogClosed, VersionGap
from openperps.store.records import check_batch

logger = logging.getLogger("openperps.store")

DEFAULT_MAX_GROUP_EVENTS = 100_000

# called with a batch's outcome: None once it is durable, else why it is not
Outcome = Callable[[BaseException | None], None]


class _Pending(NamedTuple):
    envelopes: Sequence[Envelope]
    future: asyncio.Future[None]
    on_done: Outcome | None


def _resolve(pending: _Pending, exc: BaseException | None = None) -> None:
    """Tell a batch's submitter its outcome: the hook first, then the future (unless the
    submitter stopped waiting)."""
    if pending.on_done is not None:
        try:
            pending.on_done(exc)
        except Exception:  # a broken hook must not stop the writer
            logger.exception(
                "the outcome hook of versions %d.. failed", pending.envelopes[0].version
            )
    future = pending.future
    if future.done():  # the submitter stopped waiting
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class GroupCommitWriter:
    """The single writer of an ``EventLog``; it does not own (open or close) the log."""

    def __init__(self, log: EventLog, *, max_group_events: int = DEFAULT_MAX_GROUP_EVENTS) -> None:
        if max_group_events < 1:
            raise ValueError(f"max_group_events must be positive, got {max_group_events}")
        self.log = log
        self.max_group_events = max_group_events
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next: int | None = None  # the version the next batch must start at; None: ask
        self._durable = 0
        self.groups_committed = 0

    @property
    def durable_version(self) -> int:
        """The newest version this writer has seen committed."""
        return self._durable

    async def start(self) -> None:
        if self._task is not None:
            return
        self._closing = False
        self._next = None
        self._task = asyncio.create_task(self._run(), name="openperps-group-commit")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        task = self._task
        if task is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await task
        finally:
            self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def enqueue(
        self, envelopes: Sequence[Envelope], on_done: Outcome | None = None
    ) -> asyncio.Future[None]:
        """Queue a batch; the future resolves once it is durable, or fails with the reason.
        ``on_done`` is called with the same outcome just before, in version order.

        Batches must be queued in version order. A batch that is not itself gap-free raises
        ``VersionGap`` here; one that does not continue the previous batch fails its future.
        """
        if self._task is None or self._closing:
            raise LogClosed("the group-commit writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not envelopes:
            future.set_result(None)
            if on_done is not None:
                on_done(None)
            return future
        check_batch(envelopes, envelopes[0].version)
        self._queue.append(_Pending(envelopes, future, on_done))
        self._wakeup.set()
        return future

    async def submit(self, envelopes: Sequence[Envelope]) -> None:
        """Queue a batch and return once it is durable."""
        await self.enqueue(envelopes)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._commit_next_group()
        finally:
            self._fail_queued(LogClosed("the group-commit writer stopped"))

    async def _commit_next_group(self) -> None:
        if self._next is None:
            try:
                self._durable = await self.log.last_version()
            except Exception as exc:
                self._fail_queued(exc)
                return
            self._next = self._durable + 1

        group: list[_Pending] = []
        events: list[Envelope] = []
        while self._queue and (
            not events or len(events) + len(self._queue[0].envelopes) <= self.max_group_events
        ):
            pending = self._queue.popleft()
            first = pending.envelopes[0].version
            if first != self._next:
                _resolve(pending, VersionGap(self._next, first))
                continue
            events.extend(pending.envelopes)
            self._next = pending.envelopes[-1].version + 1
            group.append(pending)
        if not group:
            return

        try:
            await self.log.append(events)
        except Exception as exc:
            logger.error(
                "group commit of versions %d..%d (%d batches) failed, nothing acknowledged: %s",
                events[0].version,
                events[-1].version,
                len(group),
                exc,
            )
            self._next = None
            for pending in group:
                _resolve(pending, exc)
            self._fail_queued(exc)
            return
        except BaseException:
            for pending in group:
                _resolve(pending, LogClosed("the group-commit writer was cancelled"))
            raise
        self._durable = events[-1].version
        self.groups_committed += 1
        for pending in group:
            _resolve(pending)

    def _fail_queued(self, exc: BaseException) -> None:
        while self._queue:
            _resolve(self._queue.popleft(), exc)
