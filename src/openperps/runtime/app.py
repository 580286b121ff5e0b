"""One process, the whole exchange: log, sequencer, read models, feed, keepers.

``Exchange.start`` opens the event log, rebuilds the engine (snapshot + replay) and the read
models (from the log), lists configured markets the log does not have yet, and starts the
feed. Every durable batch flows: sequencer -> bus -> read models -> feed pushes; with
``Settings.bus`` (a NATS URL) it also goes to the JetStream stream that feed gateways in other
processes follow (``openperps gateway``), without ever making the writer wait.
``Exchange.stop`` closes feed clients with 1012, flushes the writer, sends what is left for
the stream and closes the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openperps.bus import DEFAULT_STREAM, DEFAULT_SUBJECT, InProcessBus, Published
from openperps.core import commands as c
from openperps.core.markets import MarketConfig, default_markets
from openperps.feed.prometheus import exposition, feed_lines, publisher_lines, version_lines
from openperps.feed.server import FeedServer, ServerLimits
from openperps.feed.session import FeedLimits
from openperps.indexer import ReadModels
from openperps.runtime.keepers import Keepers
from openperps.runtime.oracle import RandomWalkOracle, Tick
from openperps.runtime.sequencer import Clock, NotDurable, Sequencer, wall_clock_ms
from openperps.runtime.snapshots import Snapshotter
from openperps.runtime.startup import Progress, load_engine, load_read_models
from openperps.store import EventLog, GroupCommitWriter, open_log

if TYPE_CHECKING:
    from openperps.bus.nats import NatsPublisher

logger = logging.getLogger("openperps.runtime")


@dataclass
class Settings:
    db: str | None = None  # event log URL; None: ./data/events.sqlite3
    markets: list[MarketConfig] = field(default_factory=default_markets)
    host: str = "127.0.0.1"
    ws_port: int = 8765
    feed_limits: FeedLimits = field(default_factory=FeedLimits)
    server_limits: ServerLimits = field(default_factory=ServerLimits)
    snapshot_every_events: int = 200_000
    snapshot_every_seconds: float = 300.0
    funding_check_seconds: float = 1.0
    # live changes kept per address for resuming; None: as the snapshot has it (10 000 new)
    live_retention: int | None = None
    bus: str | None = None  # nats://host:port: also publish every durable batch there
    bus_stream: str = DEFAULT_STREAM
    bus_subject: str = DEFAULT_SUBJECT


class ReplayClock:
    """A clock that only moves when recorded prices move it (deterministic replays)."""

    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


class Exchange:
    def __init__(self, settings: Settings, *, clock: Clock = wall_clock_ms) -> None:
        self.settings = settings
        self.clock = clock
        self.log: EventLog | None = None
        self.bus = InProcessBus()
        self.models = ReadModels()
        self.feed = FeedServer(
            self.models, limits=settings.feed_limits, server_limits=settings.server_limits
        )
        self.publisher: NatsPublisher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

    async def start(self, *, progress: Progress | None = None) -> None:
        settings = self.settings
        self.log = log = await open_log(settings.db)
        self.writer = GroupCommitWriter(log)
        await self.writer.start()
        engine = await load_engine(log, progress=progress)
        self.sequencer = Sequencer(
            engine, self.writer, self.bus, rebuild=lambda: load_engine(log), clock=self.clock
        )
        self.models = await load_read_models(log, live_retention=settings.live_retention)
        self.feed = FeedServer(
            self.models, limits=settings.feed_limits, server_limits=settings.server_limits
        )
        self.bus.subscribe(self._on_published)
        if settings.bus is not None:
            from openperps.bus.nats import NatsPublisher  # only a scaled-out exchange needs it

            self.publisher = NatsPublisher(
                settings.bus, stream=settings.bus_stream, subject=settings.bus_subject
            )
            self.publisher.start()
            self.bus.subscribe(self.publisher.publish)
        for market in settings.markets:
            if market.market_id not in self.sequencer.engine.markets:
                await self.sequencer.execute(c.ListMarket(timestamp=0, market=market))
        self.keepers = Keepers(self.sequencer)
        self.snapshotter = Snapshotter(
            self.sequencer,
            log,
            every_events=settings.snapshot_every_events,
            every_seconds=settings.snapshot_every_seconds,
            models=self.models,
        )
        await self.feed.start(settings.host, settings.ws_port)
        self._spawn(self.snapshotter.run(), "snapshots")
        if settings.funding_check_seconds > 0:  # 0: funding is driven by a price replay
            self._spawn(self.keepers.run_funding(settings.funding_check_seconds), "funding")
        self.ready = True

    def _spawn(self, work: object, name: str) -> None:
        assert asyncio.iscoroutine(work)
        self._tasks.append(asyncio.create_task(work, name=f"openperps-{name}"))

    def spawn(self, work: Callable[[], object], name: str) -> None:
        """Run extra work (an oracle, simulated traders) for the life of the exchange."""
        self._spawn(work(), name)

    async def run_walk(self, oracle: RandomWalkOracle, every: float = 1.0) -> None:
        """Feed the simulated index prices, liquidating after each (the demo's oracle)."""
        while True:
            for tick in oracle.step():
                try:
                    await self.keepers.set_price(tick.market_id, tick.price)
                except NotDurable as exc:
                    logger.warning("oracle price not durable: %s", exc.detail)
            await asyncio.sleep(every)

    async def run_replay(self, ticks: Iterable[Tick], clock: ReplayClock, speed: float) -> None:
        """Replay recorded prices. The sequencer's clock is the recording's, so the same file
        gives the same event log; ``speed`` 1 keeps the recorded pace, 0 goes flat out. On a
        log that already holds replayed prices (a restart), the replay goes on after the
        newest of them: ticks at or before its time are in the log already."""
        held = max(
            (m.funding_updated for m in self.models.markets.values() if m.index_price),
            default=0,
        )
        previous: int | None = None
        skipped = 0
        for tick in ticks:
            assert tick.timestamp is not None
            if tick.timestamp <= held:
                skipped += 1
                continue
            if skipped:
                logger.warning(
                    "the log holds prices up to %d: the replay goes on after them "
                    "(%d ticks at or before it skipped)",
                    held,
                    skipped,
                )
                skipped = 0
            if speed > 0 and previous is not None:
                await asyncio.sleep(max(tick.timestamp - previous, 0) / 1000 / speed)
            previous = tick.timestamp
            clock.now = max(clock.now, tick.timestamp)
            await self.keepers.settle_due_funding(clock.now)
            try:
                await self.keepers.set_price(tick.market_id, tick.price)
            except NotDurable as exc:
                logger.warning("replayed price not durable: %s", exc.detail)
        if skipped:  # every tick left was in the log already (a finished replay, started again)
            logger.warning(
                "the log holds prices up to %d: all %d remaining ticks were at or before it",
                held,
                skipped,
            )
        logger.info("price replay finished at %d", clock.now)

    @property
    def feed_port(self) -> int:
        return self.feed.port

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy once started and while taking commands (not while the engine is rebuilt
        from the log after a commit failed); the body gives the engine's version."""
        if not self.ready:
            return False, {"version": 0}
        sequencer = self.sequencer
        return sequencer.ready, {"version": sequencer.engine.version}

    def metrics_text(self) -> str:
        """The Prometheus text of ``/metrics``: build, version, feed, and the bus if any."""
        return exposition(
            version_lines(self.sequencer.engine.version) if self.ready else [],
            feed_lines(self.feed),
            publisher_lines(self.publisher) if self.publisher is not None else [],
        )

    def _on_published(self, batch: Published) -> None:
        applied = self.models.apply_all(batch.events)
        self.feed.on_applied(applied, durable_at=batch.durable_at)

    async def stop_work(self) -> None:
        """Stop what was spawned (oracle, simulated traders, keepers); idempotent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def stop(self) -> None:
        self.ready = False
        await self.stop_work()
        await self.feed.stop()
        if self.log is not None:
            await self.writer.close()
            if self.publisher is not None:  # after the writer: its last batches go out too
                await self.publisher.close()
                self.publisher = None
            await self.log.close()
            self.log = None
