"""A feed gateway: the WebSocket feed of an exchange that runs in another process.

``Gateway.start`` opens the event log read-only, loads the read models as ``openperps serve``
does at start (newest snapshot, then the log after it) at some version V, and joins the NATS
stream right after V (architecture.md: a gateway takes its state from the log at a known
version and the live stream after it). Each batch from the stream is folded into its read
models and pushed by its own ``FeedServer``, exactly as in the engine's process; a hole in
the stream is read from the log. With an HTTP port it also answers the REST reads from the
same read models (actions go to the exchange). It has no engine and never writes the log.
Any number of gateways can run behind a TCP load balancer; a restarted one starts again from
the log, so a client resuming with ``since_version`` loses and repeats nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openperps.api.limits import RestLimits
from openperps.bus import DEFAULT_NATS_URL, DEFAULT_STREAM, DEFAULT_SUBJECT, Published
from openperps.bus.nats import NatsConsumer
from openperps.feed.prometheus import consumer_lines, exposition, feed_lines
from openperps.feed.server import FeedServer, ServerLimits
from openperps.feed.session import FeedLimits
from openperps.runtime.startup import load_read_models
from openperps.store import EventLog, open_log

if TYPE_CHECKING:
    from openperps.api.serving import Serving

logger = logging.getLogger("openperps.gateway")

# behind the log this long, a gateway says it is unhealthy (its data is stale)
STALE_S = 5.0


@dataclass
class GatewaySettings:
    db: str  # the writer's event log: postgresql://...?schema=...
    nats: str = DEFAULT_NATS_URL
    stream: str = DEFAULT_STREAM
    subject: str = DEFAULT_SUBJECT
    host: str = "127.0.0.1"
    ws_port: int = 8765
    # the REST reads, /health and /metrics for operators; None: not served
    http_port: int | None = None
    live_retention: int | None = None  # as in Settings: live changes kept for resuming
    feed_limits: FeedLimits = field(default_factory=FeedLimits)
    server_limits: ServerLimits = field(default_factory=ServerLimits)
    rest_limits: RestLimits = field(default_factory=RestLimits)  # its REST reads


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.log: EventLog | None = None
        self.consumer: NatsConsumer | None = None
        self.feed: FeedServer | None = None
        self.http: Serving | None = None

    async def start(self) -> None:
        settings = self.settings
        self.log = log = await open_log(settings.db, read_only=True)
        try:
            self.models = models = await load_read_models(
                log, live_retention=settings.live_retention
            )
            self.feed = FeedServer(
                models, limits=settings.feed_limits, server_limits=settings.server_limits
            )
            self.consumer = NatsConsumer(
                settings.nats,
                after=models.version,
                log=log,
                stream=settings.stream,
                subject=settings.subject,
            )
            self.consumer.subscribe(self._on_published)
            await self.consumer.start()
            await self.feed.start(settings.host, settings.ws_port)
            if settings.http_port is not None:
                await self._serve_http(settings.host, settings.http_port)
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "gateway ready at version %d, following stream %s", models.version, settings.stream
        )

    def _on_published(self, batch: Published) -> None:
        assert self.feed is not None
        self.feed.on_applied(self.models.apply_all(batch.events), durable_at=batch.durable_at)

    async def _serve_http(self, host: str, port: int) -> None:
        """The REST reads, ``/health`` and ``/metrics`` (uvicorn, on a socket bound here so
        that a port in use fails the start)."""
        from openperps.api.app import create_read_app
        from openperps.api.serving import bind, start

        app = create_read_app(self, self.settings.rest_limits)
        self.http = await start(app, bind(host, port), "openperps-gateway-http")

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def metrics_text(self) -> str:
        return exposition(
            feed_lines(self.feed) if self.feed is not None else [],
            consumer_lines(self.consumer) if self.consumer is not None else [],
        )

    @property
    def feed_port(self) -> int:
        return self.feed.port if self.feed is not None else 0

    @property
    def ready(self) -> bool:
        """The read models are loaded (REST reads can be answered)."""
        return self.feed is not None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while it keeps up with the log: it follows the stream or watches the log,
        it applies what the log holds within STALE_S (from the stream or, when the stream is
        silent, from the log itself), and no hole the log cannot fill yet holds it back. The
        body says how: following the stream, waiting for the log, the version applied, the
        log's newest version and how long the gateway has been behind it."""
        consumer = self.consumer
        if consumer is None:
            return False, {"following": False, "waiting_for_log": False, "version": 0}
        behind = consumer.behind_s
        body = {
            "following": consumer.following,
            "waiting_for_log": consumer.waiting_for_log,
            "version": consumer.version,
            "log_version": consumer.log_version,
            "behind_s": round(behind, 3),
        }
        keeping_up = consumer.following or consumer.watching_log
        return keeping_up and not consumer.waiting_for_log and behind < STALE_S, body

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.consumer is not None:  # first: no batch may reach a stopped feed
            await self.consumer.stop()
            self.consumer = None
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
        if self.log is not None:
            await self.log.close()
            self.log = None
