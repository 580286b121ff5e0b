"""The event log interface: one ordered, durable, append-only log of envelopes.

The log is the truth (architecture.md, "The log is the truth"): an event is acknowledged only
after ``append`` has returned for its batch, and every read model is derived from ``read``.
Two backends implement this interface, SQLite (``store/sqlite.py``, embedded default) and
PostgreSQL (``store/postgres.py``), and one test suite runs against both.

What every backend guarantees:

- **Gap-free order.** Versions are 1, 2, 3, ...; ``append`` refuses a batch that does not start
  at ``last_version() + 1`` or has a hole (``VersionGap``), checked inside the transaction.
- **All or nothing.** A batch is one transaction; when ``append`` raises, none of it is stored.
- **Verified reads.** Every row carries a checksum; ``read`` raises ``CorruptLog`` rather than
  serve a row that fails it, or skip a missing version.
- **Torn tails repaired on open.** Rows at the end that fail verification, or that form an
  incomplete batch, are logged and removed (see ``records.TailScanner``); snapshots above the
  new end go with them.
- **Schema checked on open.** Pending migrations are applied; a newer schema is refused
  (``SchemaTooNew``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

from openperps.store.envelope import Envelope, Snapshot

DEFAULT_READ_BATCH = 10_000


class EventLog(abc.ABC):
    """An ordered, durable log of envelopes plus the engine's snapshots.

    Use as ``async with log:`` or call ``open()`` and ``close()``; ``open()`` on an open log
    does nothing. Calls on a log that is not open raise ``LogClosed``.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, apply pending migrations, repair a torn tail."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def last_version(self) -> int:
        """The newest stored version, 0 when the log is empty."""

    @abc.abstractmethod
    async def append(self, batch: Sequence[Envelope]) -> None:
        """Store ``batch`` durably in one transaction; returns once it survives a power loss.

        ``batch`` must continue the log gap-free (``VersionGap`` otherwise). An empty batch is a
        no-op.
        """

    @abc.abstractmethod
    def read_batches(
        self,
        from_version: int,
        to_version: int | None = None,
        batch_size: int = DEFAULT_READ_BATCH,
    ) -> AsyncGenerator[list[Envelope], None]:
        """Envelopes ``from_version..to_version`` (inclusive) in version order, in chunks.

        ``to_version=None`` reads to the end of the log as it is when the reader gets there.
        The next chunk is read ahead while the caller works on the current one; a caller that
        stops early should close the generator (``contextlib.aclosing``).
        """

    async def read(
        self,
        from_version: int,
        to_version: int | None = None,
        batch_size: int = DEFAULT_READ_BATCH,
    ) -> AsyncGenerator[Envelope, None]:
        """Like ``read_batches``, one envelope at a time."""
        async for chunk in self.read_batches(from_version, to_version, batch_size):
            for envelope in chunk:
                yield envelope

    @abc.abstractmethod
    async def save_snapshot(self, version: int, state_hash: str, blob: bytes) -> None:
        """Store the engine state after ``version`` (replacing one at the same version).

        Raises ``SnapshotAhead`` if the log does not reach ``version`` yet.
        """

    @abc.abstractmethod
    async def load_latest_snapshot(self) -> Snapshot | None:
        """The newest snapshot that passes its checksum; corrupt ones are logged and skipped."""

    @abc.abstractmethod
    async def prune_snapshots(self, keep: int) -> int:
        """Delete all but the ``keep`` newest snapshots; returns how many were deleted."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def check_read_range(from_version: int, to_version: int | None, batch_size: int) -> None:
    """Bad arguments to ``read`` are a caller's bug: refuse them at the boundary."""
    if from_version < 1:
        raise ValueError(f"from_version must be at least 1, got {from_version}")
    if to_version is not None and to_version < from_version - 1:
        raise ValueError(f"to_version {to_version} is before from_version {from_version}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


async def prefetched(
    fetch: Callable[[int], Awaitable[list[Envelope]]],
    from_version: int,
    to_version: int,
    batch_size: int,
) -> AsyncGenerator[list[Envelope], None]:
    """The chunks ``fetch(first_version)`` returns, until one comes back short or reaches
    ``to_version``. The next chunk is requested before the current one is handed over, so the
    storage reads while the caller (say, the engine replaying at start-up) works."""
    if from_version > to_version:
        return
    pending: asyncio.Future[list[Envelope]] | None = asyncio.ensure_future(fetch(from_version))
    try:
        while pending is not None:
            chunk = await pending
            pending = None
            if len(chunk) == batch_size and chunk[-1].version < to_version:
                pending = asyncio.ensure_future(fetch(chunk[-1].version + 1))
            if chunk:
                yield chunk
    finally:
        if pending is not None:  # the caller stopped early
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
