"""A feed gateway: the WebSocket feed of an exchange that runs in another process.

``Gateway.start`` opens the event log read-only, loads the read models as ``openperps serve``
does at start (newest snapshot, then the log after it) at some version V, and joins the NATS
stream right after V (architecture.md: a gateway takes its state from the log at a known
version and the live stream after it). Each batch from the stream is folded into its read
models and pushed by its own ``FeedServer``, exactly as in the engine's process; a hole in
the stream is read from the log. It serves the feed only: no engine, no REST, and it never
writes the log. Any number of gateways can run behind a TCP load balancer; a restarted one
starts again from the log, so a client resuming with ``since_version`` loses and repeats
nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from openperps.bus import DEFAULT_NATS_URL, DEFAULT_STREAM, DEFAULT_SUBJECT, Published
from openperps.bus.nats import NatsConsumer
from openperps.feed.prometheus import build_lines, consumer_lines, feed_lines
from openperps.feed.server import FeedServer, ServerLimits
from openperps.feed.session import FeedLimits
from openperps.runtime.startup import load_read_models
from openperps.store import EventLog, open_log

logger = logging.getLogger("openperps.gateway")


@dataclass
class GatewaySettings:
    db: str  # the writer's event log: postgresql://...?schema=...
    nats: str = DEFAULT_NATS_URL
    stream: str = DEFAULT_STREAM
    subject: str = DEFAULT_SUBJECT
    host: str = "127.0.0.1"
    ws_port: int = 8765
    http_port: int | None = None  # /metrics and /health for operators; None: not served
    live_retention: int | None = None  # as in Settings: live changes kept for resuming
    feed_limits: FeedLimits = field(default_factory=FeedLimits)
    server_limits: ServerLimits = field(default_factory=ServerLimits)


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.log: EventLog | None = None
        self.consumer: NatsConsumer | None = None
        self.feed: FeedServer | None = None
        self.http: asyncio.Server | None = None

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
                self.http = await asyncio.start_server(
                    self._on_http, settings.host, settings.http_port
                )
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "gateway ready at version %d, following stream %s", models.version, settings.stream
        )

    def _on_published(self, batch: Published) -> None:
        assert self.feed is not None
        self.feed.on_applied(self.models.apply_all(batch.events), durable_at=batch.durable_at)

    @property
    def http_port(self) -> int | None:
        if self.http is None:
            return None
        return int(self.http.sockets[0].getsockname()[1])

    def metrics_text(self) -> str:
        lines = build_lines()
        if self.feed is not None:
            lines += feed_lines(self.feed)
        if self.consumer is not None:
            lines += consumer_lines(self.consumer)
        return "\n".join(lines) + "\n"

    async def _on_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 endpoint: ``GET /metrics`` (Prometheus text) and ``GET /health``
        (200 with the applied version while the gateway follows the stream and is not held
        back by a hole its log cannot fill yet; 503 otherwise); one request per connection."""
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method != b"GET":
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == b"/metrics":
                status, kind = "200 OK", "text/plain; version=0.0.4"
                body = self.metrics_text().encode()
            elif path == b"/health":
                consumer = self.consumer
                following = consumer is not None and consumer.following
                waiting = consumer is not None and consumer.waiting_for_log
                ok = following and not waiting
                status = "200 OK" if ok else "503 Service Unavailable"
                version = consumer.version if consumer is not None else 0
                body = json.dumps(
                    {"following": following, "waiting_for_log": waiting, "version": version}
                ).encode()
                kind = "application/json"
            else:
                status, body, kind = "404 Not Found", b"/metrics or /health\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sent no whole request, or went away
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.http is not None:
            self.http.close()
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
