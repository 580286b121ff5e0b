"""The feed server: picows connections driving ``FeedSession`` and ``Hub``.

Everything runs on the event loop's thread. Read models are updated by the bus callback and
the hub notes what each batch changed; a single flush per loop pass writes everything since
the last one. The flush starts one pass after the batch that asks for it, so whoever waited
for that batch (a REST handler answering an order) is resumed first: with a thousand
subscribers a round of writes takes milliseconds, and an answer does not wait for it. A
snapshot for a new subscription is taken inside the frame callback, between two batches, so
it joins the live pushes exactly.

The flush: live records and book deltas were built per batch; each changed list state is
built now, once, at the version it is written at (however many batches changed it). Every
push is framed once and the same bytes go to every holder, straight to its socket, in one
write per connection: no work per subscriber beyond that write. Connections with frames of
their own (acks, snapshots, errors) or a full socket go through their outbox instead, one by
one, where pushes built before their snapshot are left out.

Slow consumers: a connection's kernel send buffer is kept small and writing pauses as soon
as the socket takes less than a whole write, so a client that does not keep up has its
frames wait in its outbox rather than in the kernel. List and book pushes there are
coalesced (only the newest per subscription is kept); live pushes are never dropped. Past
``outbox_max_bytes`` or ``outbox_max_age_ms`` the client is closed with 4010: it resumes with
``since_version`` and loses nothing. The feed never waits for a client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, defaultdict
from collections.abc import KeysView
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from openperps.feed.frames import (
    COMPRESSED_TEXT,
    MessageReader,
    ProtocolFailure,
    deflated_frame,
    offers_deflate,
    text_frame,
    with_deflate,
)
from openperps.feed.hub import Hub, Push
from openperps.feed.session import (
    CLOSE_POLICY,
    CLOSE_SERVER_RESTART,
    CLOSE_SLOW_CONSUMER,
    Close,
    FeedLimits,
    FeedSession,
    Send,
    Subscribe,
    Subscription,
    Unsubscribe,
    check_limits,
    error_frame,
)
from openperps.indexer.models import Applied, ReadModels
from openperps.indexer.topics import LIVE_TOPICS, TopicData

logger = logging.getLogger("openperps.feed")

AHEAD_WAIT_S: Final = 2.0  # how long a resume past the feed's version waits for the feed
AHEAD_POLL_S: Final = 0.02
CLOSE_GRACE_S: Final = 2.0  # at least this long to read a close before the socket is dropped

PATHS = (b"/ws/", b"/ws", "/ws/", "/ws")
_DATA = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION})
PACKED_CACHE_BYTES = 8 * 1024 * 1024  # compressed snapshots kept; cleared when over


@dataclass(frozen=True)
class ServerLimits:
    outbox_max_bytes: int = 8 * 1024 * 1024
    outbox_max_age_ms: int = 10_000
    connections_per_ip: int = 64
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    # the kernel's send buffer per connection (0: the system's, which grows to megabytes);
    # kept small so a client that reads slowly gets the newest list state rather than a
    # backlog of stale ones queued in the kernel, but room for two of loopback's 64 KiB
    # segments: with one, every large frame waited on the reader's 40 ms delayed ACK
    socket_send_buffer: int = 128 * 1024
    # pushes of at least this many bytes go compressed to clients that offered
    # permessage-deflate (0: compression is never negotiated)
    deflate_min_bytes: int = 1024

    def __post_init__(self) -> None:
        # 0: the system's send buffer; compression never negotiated
        check_limits(self, zero_allowed=("socket_send_buffer", "deflate_min_bytes"))
        if self.ping_interval_s < 1 or self.ping_timeout_s < 1:
            # picows counts heartbeat time in whole seconds; below one it never answers
            raise ValueError("feed limits ping_interval_s and ping_timeout_s are at least 1 second")
        if self.ping_timeout_s > self.ping_interval_s:
            # picows then fails every opening handshake (2.3.1)
            raise ValueError("feed limit ping_timeout_s may not be longer than ping_interval_s")


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class FeedMetrics:
    def __init__(self) -> None:
        self.connections = 0
        self.messages_sent = 0
        self.bytes_sent = 0  # as written: compressed where it was
        self.compressed_sent = 0  # of messages_sent
        self.deflate_connections = 0
        self.closes: Counter[str] = Counter()
        # list states replaced in an outbox by a newer one before they were sent
        self.coalesced = 0
        self.latency_buckets = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
        self.latency_counts = [0] * (len(self.latency_buckets) + 1)
        self.latency_sum = 0.0

    def observe_latency(self, ms: float) -> None:
        self.latency_sum += ms
        for i, bound in enumerate(self.latency_buckets):
            if ms <= bound:
                self.latency_counts[i] += 1
                return
        self.latency_counts[-1] += 1


class Connection(WSListener):
    def __init__(self, server: FeedServer, deflate: bool = False) -> None:
        self.server = server
        self.session = FeedSession(server.market_ids(), server.limits)
        self.deflate = deflate  # the client negotiated permessage-deflate
        self.reader = MessageReader(server.limits.max_frame_bytes, deflate)
        self.transport: WSTransport | None = None
        self.raw: asyncio.Transport  # the socket under picows, once connected
        self.peer = "?"
        # pending frames, whole and ready for the wire: live ones in order; others keyed by
        # subscription (coalesced)
        self.queue: list[tuple[Subscription | None, bytes]] = []
        self.coalesced: dict[Subscription, int] = {}
        self.queued_bytes = 0
        self.oldest_ms = 0
        self.closing = False
        self.decided = False  # the feed closed it (and counted why)
        # subscriptions started since the last flush -> the version of their snapshot; pushes
        # built before it (at or below that version) are not written to this connection
        self.joined: dict[Subscription, int] = {}

    # -- picows callbacks ----------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.raw = transport.underlying_transport
        limits = self.server.server_limits
        if limits.socket_send_buffer:
            sock = self.raw.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.socket_send_buffer)
        # paused as soon as the socket takes less than a whole write: what follows waits in
        # the outbox, where a newer state replaces an older one
        self.raw.set_write_buffer_limits(high=0)
        peer = transport.underlying_transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        if not self.server.admit(self):
            self.server.metrics.closes[f"{CLOSE_POLICY}"] += 1
            self.close(CLOSE_POLICY, "too many connections from this address")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        handshake = transport.close_handshake
        sent = handshake.sent if handshake is not None else None
        if not self.decided and sent is not None and not handshake.recv_then_sent:
            # picows closed it itself: a frame over its size limit (1009), a protocol error
            # in a frame header (the feed's own closes are counted when decided)
            self.server.metrics.closes[f"{sent.code.value}"] += 1
        self.server.forget(self)

    def pause_writing(self) -> None:
        self.server.paused.add(self)

    def resume_writing(self) -> None:
        self.server.paused.discard(self)
        self.server.schedule_flush(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closing:
            return  # frames read after the close was decided (the same read, say): ignored
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            # echo the client's code; a close without one is answered with 1000
            code = frame.get_close_code()
            self.closing = True
            self.server.hub.drop(self, list(self.session.subscriptions))
            transport.send_close(WSCloseCode.OK if code == WSCloseCode.NO_INFO else code)
            transport.disconnect()
            return
        if kind not in _DATA:
            return  # pings are answered by picows
        try:
            message = self.reader.feed(
                kind, frame.fin, frame.rsv1, frame.rsv2 or frame.rsv3, frame.get_payload_as_bytes()
            )
        except ProtocolFailure as failure:
            self.server.metrics.closes["protocol_error"] += 1
            self.close(failure.code, failure.reason)
            return
        if message is None:
            return  # more fragments to come
        kind, data = message
        if kind == WSMsgType.TEXT:
            actions = self.session.receive_text(data, now_ms())
        else:
            actions = self.session.receive_binary(data, now_ms())
        for action in actions:
            if isinstance(action, Send):
                self.push(None, action.data)
            elif isinstance(action, Subscribe):
                self.start(action)
            elif isinstance(action, Unsubscribe):
                self.server.hub.remove(self, action.subscription)
            elif isinstance(action, Close):
                self.server.metrics.closes[f"{action.code}"] += 1
                self.close(action.code, action.reason)

    # -- work ---------------------------------------------------------------------------------

    def start(self, action: Subscribe) -> None:
        if action.ack is not None:
            self.push(None, action.ack)
        self._join(action, asyncio.get_running_loop().time() + AHEAD_WAIT_S)

    def _join(
        self, action: Subscribe, give_up_at: float, waited: bool = False, held: bool = False
    ) -> None:
        """Send the snapshot (or the changes after ``since_version``) and hold the
        subscription from the version they end at. Subscribing again to a subscription held
        sends its snapshot again (a client's way to start over); ``waited``: this is a resume
        that waited for the feed to catch up, and another request may have joined since
        (``held``: the connection held the subscription before this request)."""
        hub = self.server.hub
        subscription = action.subscription
        if self.closing or subscription not in self.session.subscriptions:
            return  # closed, or unsubscribed while it waited
        if waited and not held and self in hub.holders.get(subscription, ()):
            return  # subscribed again while it waited: that request has joined
        since_version = action.since_version
        if since_version is not None and since_version > hub.version:
            loop = asyncio.get_running_loop()
            if loop.time() < give_up_at:
                # a feed gateway trailing the one the client came from catches up in moments:
                # wait for it, and the resume stays exact
                if not waited:
                    held = self in hub.holders.get(subscription, ())
                loop.call_later(AHEAD_POLL_S, self._join, action, give_up_at, True, held)
                return
            # still past it: another (or a reset) log, whose versions cannot be matched
            self.push(
                None,
                error_frame(
                    "version_ahead",
                    f"since_version is past this feed's newest version ({hub.version}); "
                    "here is the current state",
                    action.request,
                    action.request_id,
                    action.has_id,
                ),
            )
            since_version = None
        frames, covered = hub.snapshot(subscription, since_version)
        if not covered:
            self.push(
                None,
                error_frame(
                    "version_too_old",
                    "since_version is older than the feed keeps; here is the current state",
                    action.request,
                    action.request_id,
                    action.has_id,
                ),
            )
        # a list's snapshot is a state like its pushes: a newer one waiting behind it in the
        # outbox replaces it (a reader that cannot keep up gets the newest, not both)
        listed = subscription.topic not in LIVE_TOPICS and not subscription.delta
        self.coalesced.pop(subscription, None)  # an older state still waiting goes before
        for frame in frames:
            self.push(subscription if listed else None, frame)
        hub.add(self, subscription)
        self.joined[subscription] = hub.version
        self.server.schedule_flush(self)

    def push(self, subscription: Subscription | None, payload: bytes) -> None:
        """Queue a message of this connection's own and have it written on this loop pass."""
        if self.enqueue(subscription, self.server.wire(payload, self.deflate)):
            self.server.schedule_flush(self)

    def enqueue(self, subscription: Subscription | None, frame: bytes) -> bool:
        """Queue a whole frame; a list state (``subscription`` given) replaces the one of the
        same subscription still waiting. False when the frame was not queued."""
        if self.closing:
            return False
        if subscription is not None:
            index = self.coalesced.get(subscription)
            if index is not None:  # a newer state replaces the one still waiting
                self.server.metrics.coalesced += 1
                self.queued_bytes += len(frame) - len(self.queue[index][1])
                self.queue[index] = (subscription, frame)
                return False
            self.coalesced[subscription] = len(self.queue)
        if not self.queue:
            self.oldest_ms = now_ms()
        self.queue.append((subscription, frame))
        self.queued_bytes += len(frame)
        return True

    def flush(self) -> None:
        transport = self.transport
        if transport is None or self.closing or not self.queue:
            return
        limits = self.server.server_limits
        backlog = transport.underlying_transport.get_write_buffer_size()
        if self in self.server.paused or backlog > limits.outbox_max_bytes:
            if (
                self.queued_bytes + backlog > limits.outbox_max_bytes
                or now_ms() - self.oldest_ms > limits.outbox_max_age_ms
            ):
                self.server.metrics.closes["slow_consumer"] += 1
                self.close(CLOSE_SLOW_CONSUMER, "too slow; resume with since_version")
            return
        metrics = self.server.metrics
        frames = [frame for _subscription, frame in self.queue]
        metrics.messages_sent += len(frames)
        metrics.bytes_sent += self.queued_bytes
        if self.deflate:
            metrics.compressed_sent += sum(frame[0] == COMPRESSED_TEXT for frame in frames)
        self.raw.writelines(frames)
        self.queue.clear()
        self.coalesced.clear()
        self.queued_bytes = 0

    def close(self, code: int, reason: str) -> None:
        if self.closing or self.transport is None:
            return
        self.decided = True
        if code != CLOSE_SLOW_CONSUMER:
            self.flush()  # what is queued goes out first (an error frame before a close)
        self.closing = True
        self.queue.clear()
        # nothing more is written to it: pushes go straight to the socket, past picows
        self.server.hub.drop(self, list(self.session.subscriptions))
        self.transport.send_close(_close_code(code), reason.encode())
        self.transport.disconnect()
        # the close frame waits behind whatever the client has not read; one that reads
        # nothing would hold the socket and its buffers until the heartbeat gave up on it
        limits = self.server.server_limits
        grace = max(CLOSE_GRACE_S, limits.outbox_max_age_ms / 1000)
        asyncio.get_running_loop().call_later(grace, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self in self.server.connections and self.transport is not None:
            self.server.metrics.closes["aborted_unread"] += 1
            self.transport.disconnect(graceful=False)


def _close_code(code: int) -> Any:
    """picows' enum for the standard codes; application codes (4000-4999) pass as ints."""
    try:
        return WSCloseCode(code)
    except ValueError:
        return code


class FeedServer:
    def __init__(
        self,
        models: ReadModels,
        *,
        limits: FeedLimits | None = None,
        server_limits: ServerLimits | None = None,
    ) -> None:
        self.models = models
        self.hub = Hub(TopicData(models))
        self.limits = limits or FeedLimits()
        self.server_limits = server_limits or ServerLimits()
        self.connections: set[Connection] = set()
        self.per_ip: Counter[str] = Counter()
        self.metrics = FeedMetrics()
        self.paused: set[Connection] = set()  # their socket buffer is full
        self._dirty: set[Connection] = set()  # frames of their own to write (or a backlog)
        self._pushes: list[Push] = []  # live records and book deltas since the last flush
        self._changed: dict[Subscription, None] = {}  # list subscriptions changed since then
        self._durable: list[float] = []  # when each batch with pushes since then was durable
        self._packed: dict[bytes, bytes] = {}  # snapshots compressed lately, by payload
        self._packed_bytes = 0  # what they hold, payloads included
        self._flush_scheduled = False
        self._server: asyncio.Server | None = None
        self.port = 0

    def market_ids(self) -> KeysView[int]:
        """The listed markets, live: a market listed later shows up without a reconnect."""
        return self.models.markets.keys()

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> None:
        limits = self.server_limits

        def factory(request: WSUpgradeRequest) -> Connection | WSUpgradeResponseWithListener | None:
            if request.path not in PATHS:
                return None
            deflate = bool(limits.deflate_min_bytes) and offers_deflate(request)
            conn = Connection(self, deflate)
            return with_deflate(conn) if deflate else conn

        self._server = await ws_create_server(
            factory,
            host,
            port,
            enable_auto_ping=True,
            auto_ping_idle_timeout=limits.ping_interval_s,
            auto_ping_reply_timeout=limits.ping_timeout_s,
            max_frame_size=max(self.limits.max_frame_bytes * 16, 1024 * 1024),
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else port
        logger.info("feed listening on ws://%s:%d/ws/", host, self.port)

    async def stop(self) -> None:
        """Close every client with 1012 (service restart) and stop listening."""
        for conn in list(self.connections):
            conn.close(CLOSE_SERVER_RESTART, "server shutting down")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- connections ------------------------------------------------------------------------------

    def outbox_stats(self) -> tuple[int, int, int]:
        """Frames and bytes waiting in every connection's outbox, and the largest outbox (in
        bytes, the socket's own backlog included): what an operator watches for slow readers."""
        frames = total = largest = 0
        for conn in self.connections:
            frames += len(conn.queue)
            backlog = conn.queued_bytes
            if conn.transport is not None:
                backlog += conn.transport.underlying_transport.get_write_buffer_size()
            total += conn.queued_bytes
            largest = max(largest, backlog)
        return frames, total, largest

    def subscription_count(self) -> int:
        return sum(len(conn.session.subscriptions) for conn in self.connections)

    def admit(self, conn: Connection) -> bool:
        self.connections.add(conn)
        self.per_ip[conn.peer] += 1
        self.metrics.connections = len(self.connections)
        self.metrics.deflate_connections += conn.deflate
        return self.per_ip[conn.peer] <= self.server_limits.connections_per_ip

    def forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.deflate_connections -= conn.deflate
            self.per_ip[conn.peer] -= 1
            if self.per_ip[conn.peer] <= 0:
                del self.per_ip[conn.peer]
        self.hub.drop(conn, list(conn.session.subscriptions))
        self._dirty.discard(conn)
        self.paused.discard(conn)
        self.metrics.connections = len(self.connections)

    # -- pushing ----------------------------------------------------------------------------------

    def on_applied(self, applied: Applied, durable_at: float = 0.0) -> None:
        """Take note of one applied batch's pushes; they are written on the next loop pass.
        ``durable_at`` (wall-clock seconds, 0 if unknown): when the batch became durable;
        the time from then until its pushes are handed to the sockets is the latency the
        metrics count."""
        pushes, changed = self.hub.collect(applied)
        if pushes or changed:
            self._pushes += pushes
            for subscription in changed:
                self._changed[subscription] = None
            if durable_at:
                self._durable.append(durable_at)
            self._schedule()

    def schedule_flush(self, conn: Connection) -> None:
        self._dirty.add(conn)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # one pass later: the batch's callers, woken right after it was applied, go first
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._flush)

    def wire(self, payload: bytes, deflate: bool) -> bytes:
        """``payload`` as a whole frame for a connection: compressed if it negotiated
        compression and the payload is large enough to be worth it. The same snapshot asked
        for by many clients at once (a reconnect storm) is compressed once."""
        limit = self.server_limits.deflate_min_bytes
        if deflate and limit and len(payload) >= limit:
            packed = self._packed.get(payload)
            if packed is None:
                packed = deflated_frame(payload)
                self._packed_bytes += len(payload) + len(packed)
                if self._packed_bytes > PACKED_CACHE_BYTES:
                    self._packed.clear()
                    self._packed_bytes = len(payload) + len(packed)
                self._packed[payload] = packed
            return packed
        return text_frame(payload)

    def _flush(self) -> None:
        """Write everything since the last pass: each connection's own frames, then the
        pushes, each built (and framed, and compressed if anyone takes it so) once and written
        to every holder as the same bytes, in one write per connection."""
        self._flush_scheduled = False
        hub = self.hub
        version = hub.version
        pushes, self._pushes = self._pushes, []
        changed, self._changed = self._changed, {}
        dirty, self._dirty = self._dirty, set()
        durable, self._durable = self._durable, []
        limit = self.server_limits.deflate_min_bytes
        # every push, in the order a connection must get them
        out: list[_Outgoing] = [
            _Outgoing(push.frame, push.version, push.subscription, False, push.holders)
            for push in pushes
            if push.holders
        ]
        for subscription in changed:
            holders = hub.holders.get(subscription)
            if holders:  # list state: built now, once, at the version it is written at
                out.append(
                    _Outgoing(hub.render(subscription), version, subscription, True, holders)
                )

        # connections with frames of their own, or that cannot take more, go through their
        # outbox; everyone else gets the shared bytes straight to the socket, in one write
        careful = dirty | self.paused if self.paused else dirty
        writes: defaultdict[Connection, list[bytes]] = defaultdict(list)
        # each payload framed once, and compressed only when a holder takes it so; book
        # deltas are the same bytes for every depth subscribed to
        framed: dict[int, tuple[bytes, bytes | None]] = {}
        messages = sent_bytes = compressed = 0  # what the shared path writes
        for item in out:
            payload = item.payload
            plain, packed = framed.get(id(payload)) or (text_frame(payload), None)
            compressible = limit and len(payload) >= limit
            written = taking = 0  # connections given it straight, of which compressed
            if not careful and not compressible:  # the common case, kept tight
                for conn in item.holders:
                    writes[conn].append(plain)
                messages += len(item.holders)
                sent_bytes += len(item.holders) * len(plain)
                framed[id(payload)] = (plain, packed)
                continue
            for conn in item.holders:
                if compressible and conn.deflate:
                    if packed is None:  # a list state: the one its new subscribers get too
                        packed = (
                            self.wire(payload, True) if item.coalesced else deflated_frame(payload)
                        )
                    wire = packed
                else:
                    wire = plain
                if careful and conn in careful:
                    if conn.joined.get(item.subscription, -1) < item.version:
                        conn.enqueue(item.subscription if item.coalesced else None, wire)
                    continue
                writes[conn].append(wire)
                written += 1
                taking += wire is packed
            framed[id(payload)] = (plain, packed)
            messages += written
            compressed += taking
            sent_bytes += (written - taking) * len(plain) + (taking * len(packed) if packed else 0)
        for conn in careful:
            conn.joined.clear()
            conn.flush()
        for conn, wires in writes.items():
            raw = conn.raw
            if raw.is_closing():  # picows closed it (a dead peer); it is about to be forgotten
                messages -= len(wires)  # counted as written above: not written after all
                sent_bytes -= sum(map(len, wires))
                compressed -= sum(wire[0] == COMPRESSED_TEXT for wire in wires)
                continue
            if len(wires) == 1:
                raw.write(wires[0])
            else:
                raw.writelines(wires)
        metrics = self.metrics
        metrics.messages_sent += messages
        metrics.bytes_sent += sent_bytes
        metrics.compressed_sent += compressed
        if durable:
            now = time.time()
            for moment in durable:
                metrics.observe_latency(max(now - moment, 0.0) * 1000)


class _Outgoing(NamedTuple):
    payload: bytes  # the push's JSON
    version: int
    subscription: Subscription
    coalesced: bool  # list state: a newer one may replace it in an outbox
    holders: set[Any]
