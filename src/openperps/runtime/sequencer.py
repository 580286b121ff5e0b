"""The sequencer: the one writer. It owns the engine and is the only place versions are made.

A command goes: stamp with the clock -> ``Engine.handle`` -> envelopes -> group commit ->
published on the bus -> acknowledged to the caller (architecture.md). Handling is synchronous
and happens in submission order, so the engine sees one command at a time; durability is
awaited afterwards, so many commands share one commit.

Nothing is acknowledged or published before it is durable. If the log refuses a batch (disk
full, database locked, connection lost) the engine has already moved past what is durable:
the sequencer stops taking commands, every caller whose events are not durable gets
``NotDurable``, and the engine is rebuilt from the log (snapshot + replay) before commands are
taken again. So a failed command never took effect, and nothing the log lacks is ever served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from openperps.bus.memory import InProcessBus, Published
from openperps.core.commands import Command
from openperps.core.engine import Engine
from openperps.core.errors import ErrorCode, OpenPerpsError
from openperps.core.events import Event, encode_event
from openperps.retry import Backoff
from openperps.store.envelope import Envelope
from openperps.store.writer import GroupCommitWriter

logger = logging.getLogger("openperps.sequencer")

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class NotDurable(OpenPerpsError):
    """The command's events could not be made durable; the command did not take effect."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.NOT_DURABLE, detail)


def to_envelopes(events: Sequence[Event]) -> list[Envelope]:
    return [
        Envelope(event.version, event.timestamp, type(event).__name__, encode_event(event))
        for event in events
    ]


class Sequencer:
    def __init__(
        self,
        engine: Engine,
        writer: GroupCommitWriter,
        bus: InProcessBus,
        *,
        rebuild: Callable[[], Awaitable[Engine]],
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.engine = engine
        self.writer = writer
        self.bus = bus
        self.clock = clock
        self._rebuild = rebuild
        self._recovering: asyncio.Task[None] | None = None
        self.commands = 0
        self.generation = 0  # bumped whenever the engine is rebuilt from the log

    @property
    def ready(self) -> bool:
        return self._recovering is None

    async def execute(self, command: Command) -> list[Event]:
        """Run one command; returns its events once they are durable and published.

        The command's ``timestamp`` is replaced by the sequencer's clock (never earlier than
        the previous command's).
        """
        if self._recovering is not None:
            await asyncio.shield(self._recovering)
        engine = self.engine
        stamped = msgspec.structs.replace(
            command, timestamp=max(self.clock(), engine.last_timestamp)
        )
        events = engine.handle(stamped)
        self.commands += 1
        envelopes = to_envelopes(events)
        bus = self.bus

        def outcome(exc: BaseException | None) -> None:
            # the writer calls this in version order, whether or not the caller still waits:
            # a durable batch is published, a failed one has the engine rebuilt
            if exc is None:
                bus.publish(Published(envelopes, events, time.time()))
            else:
                self._start_recovery(exc)

        try:
            # cancelling the caller withdraws nothing: the batch is stored and published
            await self.writer.enqueue(envelopes, outcome)
        except Exception as exc:
            raise NotDurable(f"events {events[0].version}..{events[-1].version}: {exc}") from exc
        return events

    def _start_recovery(self, cause: BaseException) -> None:
        if self._recovering is None:
            logger.error("the log refused a batch (%s); rebuilding the engine from the log", cause)
            self._recovering = asyncio.create_task(self._recover(), name="openperps-recover")

    async def _recover(self) -> None:
        backoff = Backoff(ceiling=5.0)
        try:
            while True:
                try:
                    engine = await self._rebuild()
                except Exception as exc:
                    logger.error("rebuild failed (%s); retrying in %.2f s", exc, backoff.next)
                    await backoff.pause()
                    continue
                self.engine = engine
                self.generation += 1
                logger.warning("engine rebuilt from the log at version %d", engine.version)
                return
        finally:
            self._recovering = None
