"""The in-process bus: the embedded default, where everything runs in one process.

Subscribers are plain callables run in subscription order for every published batch, in
version order, on the event loop. They must not block: a reader with slow work queues it
and catches up on its own (back-pressure never reaches the writer, architecture.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import msgspec

from openperps.core.events import Event
from openperps.store.envelope import Envelope

logger = logging.getLogger("openperps.bus")


class Published(msgspec.Struct, frozen=True):
    """One durable command's worth of events, in version order."""

    envelopes: Sequence[Envelope]
    events: Sequence[Event]
    # wall-clock seconds when the batch became durable (0: unknown, as for a batch read back
    # from the log): where the feed's push latency is counted from, in any process
    durable_at: float = 0.0

    @property
    def first_version(self) -> int:
        return self.envelopes[0].version

    @property
    def last_version(self) -> int:
        return self.envelopes[-1].version


Subscriber = Callable[[Published], None]


class InProcessBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.last_version = 0

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a reader; returns a function that removes it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, batch: Published) -> None:
        if batch.first_version != self.last_version + 1 and self.last_version:
            logger.error(
                "bus: batch %d..%d does not follow %d",
                batch.first_version,
                batch.last_version,
                self.last_version,
            )
        self.last_version = batch.last_version
        for subscriber in list(self._subscribers):
            try:
                subscriber(batch)
            except Exception:
                # one broken reader must not stop the others or the writer
                logger.exception("bus subscriber %r failed on %d", subscriber, batch.first_version)
