"""The NATS JetStream bus: durable batches from the one writer to feed gateways elsewhere.

One stream (``OPENPERPS`` by default) holds one subject (``openperps.events``). A message is
a run of consecutive durable batches (one command's events each, as the sequencer published
them: a gateway's feed then pushes what the engine's own feed pushes), encoded once as a
msgpack array of arrays of the envelopes the log stores (the events' own bytes travel as
they are; nobody re-encodes an event). Its ``Nats-Msg-Id`` header is the first version it
carries, so a message published again (a retry whose acknowledgement was lost) is dropped by
the server inside the stream's duplicate window; ``Openperps-Last-Version`` names the last,
so that a reader (or an operator's tool) knows a message's range without decoding it.

The writer's side, ``NatsPublisher``, is handed batches by the in-process bus and never makes
the writer wait (architecture.md, "Back-pressure"): ``publish`` only appends to a bounded
queue, and one task sends the queue in order, a message at a time, merging whatever has
queued up meanwhile into one message. A message that fails (NATS down, no acknowledgement in
time) is sent again, the same bytes under the same id, until the server takes it; so the
stream never holds a batch out of order. While NATS stays down the queue fills; past
``max_queued`` batches the oldest queued batch is dropped, counted and logged. The stream
then has a hole, which every consumer fills from the durable log, the truth: nothing is lost
for a reader, only made slower. The engine keeps working throughout.

The reader's side, ``NatsConsumer``, delivers ``Published`` batches to its subscribers, in
version order, starting after any version: it looks up the message that holds the next
version (a binary search over the stream by the id header) and consumes from there with an
ordered consumer. Envelopes at or below the version already delivered are skipped (a
duplicate, an overlap; a message whose last version says it holds nothing new is not even
decoded), and a hole (a dropped batch, a stream trimmed by its limits, a writer
that crashed between its commit and its publish) is read from the event log before the
message that follows it; a log that does not have it yet (a read replica behind) is asked
again until it does, and nothing after the hole is delivered meanwhile. So a gateway that
restarts at the version its read models hold loses and repeats nothing. When its
connection comes back after an outage, the consumer is made again from the version after the
last one delivered (a restarted server has forgotten it), rather than waiting for the client
to notice missed heartbeats. A consumer with a log also looks at the log's newest version
every second: when what the log held at one look has not come by the next, it reads the
rest from the log, so a silent stream (NATS down, no publisher, a stream of another name, a
writer that died before publishing its tail) delays a gateway by a second or two instead of
stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec
import nats
from nats.errors import MaxPayloadError
from nats.js import api
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

from openperps.bus import DEFAULT_NATS_URL, DEFAULT_STREAM, DEFAULT_SUBJECT
from openperps.bus.memory import InProcessBus, Published, Subscriber
from openperps.core.events import decode_event
from openperps.retry import Backoff
from openperps.store.base import EventLog
from openperps.store.envelope import Envelope

logger = logging.getLogger("openperps.bus.nats")

ID_HEADER = "Nats-Msg-Id"
LAST_HEADER = "Openperps-Last-Version"
# wall-clock seconds when the message's first batch became durable: gateways count their
# push latency from it (across machines, as well as their clocks agree)
DURABLE_HEADER = "Openperps-Durable-At"
DUPLICATE_WINDOW_S = 120.0
# the log is the truth: the stream keeps a day for gateways to catch up from, then trims
STREAM_MAX_AGE_S = 24 * 3600.0
# below NATS' default max_payload (1 MiB); a single batch larger than this still goes alone
MAX_MESSAGE_BYTES = 512 * 1024
CONNECT_TIMEOUT_S = 5.0
# how often a consumer with a log looks at the log's newest version; what the log held at one
# look and the stream has not brought by the next is read from the log
LOG_CHECK_S = 1.0
ENVELOPE_OVERHEAD = 48  # msgpack framing and the type tag, roughly, per envelope

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[list[Envelope]])


def encode_batches(batches: Sequence[Sequence[Envelope]]) -> bytes:
    return _encoder.encode(batches)


def decode_batches(data: bytes) -> list[list[Envelope]]:
    return _decoder.decode(data)


def to_published(envelopes: Sequence[Envelope], durable_at: float = 0.0) -> Published:
    """A batch as the in-process bus carries it: envelopes plus their decoded events."""
    events = [decode_event(envelope.payload) for envelope in envelopes]
    return Published(envelopes, events, durable_at)


async def connect(
    url: str,
    name: str,
    timeout: float = CONNECT_TIMEOUT_S,
    reconnected: Callable[[], None] | None = None,
) -> Any:
    """A NATS connection that reconnects for ever once made; raises ``TimeoutError`` if the
    first connect does not succeed within ``timeout``. An outage is logged once, when it
    starts, and again when it ends (not at every attempt); ``reconnected`` is called then."""
    down = False

    async def on_error(exc: Exception) -> None:
        nonlocal down
        if not down:
            down = True
            logger.warning("NATS at %s: %s: %s", url, type(exc).__name__, exc)

    async def on_reconnected() -> None:
        nonlocal down
        if down:
            down = False
            logger.warning("NATS at %s: connected again", url)
        if reconnected is not None:
            reconnected()

    return await asyncio.wait_for(
        nats.connect(
            url,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=on_error,
            reconnected_cb=on_reconnected,
        ),
        timeout,
    )


async def ensure_stream(js: Any, stream: str, subject: str) -> None:
    """Create the stream if it does not exist (publisher and consumers may start in any
    order); an existing one is used as it is."""
    try:
        await js.stream_info(stream)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(
            name=stream,
            subjects=[subject],
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            max_age=STREAM_MAX_AGE_S,
        )
    except BadRequestError as refused:
        try:
            await js.stream_info(stream)  # created meanwhile by another process
        except NotFoundError:
            # not created at all: most likely another stream already carries the subject
            raise StreamMismatch(
                f"cannot create stream {stream} for subject {subject}: "
                f"{refused.description or refused} (does another stream carry {subject}? "
                "give each log its own --nats-stream and --nats-subject)"
            ) from None


class _Queued(NamedTuple):
    """A batch waiting to be sent: not its decoded events, which are not sent and would
    double what an outage keeps queued."""

    envelopes: Sequence[Envelope]
    durable_at: float  # when it became durable (0: unknown)


class NatsPublisher:
    """The writer's side: ``publish`` queues a durable batch and returns at once."""

    def __init__(
        self,
        url: str = DEFAULT_NATS_URL,
        *,
        stream: str = DEFAULT_STREAM,
        subject: str = DEFAULT_SUBJECT,
        max_queued: int = 100_000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        publish_timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject
        self.max_queued = max_queued
        self.max_message_bytes = max_message_bytes
        self.publish_timeout_s = publish_timeout_s
        self.last_version = 0  # the newest version handed to ``publish``
        self.published_version = 0  # the newest version the server acknowledged
        self.messages = 0  # messages acknowledged
        self.duplicates = 0  # of which the server had already stored
        self.dropped = 0  # batches dropped from a full queue (readers fill them from the log)
        self.failures = 0  # failed attempts to connect or to send a message
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def connected(self) -> bool:
        """Connected to NATS now (what an operator alerts on beside the published version)."""
        return self._nc is not None and bool(self._nc.is_connected)

    def start(self) -> None:
        """Start sending in the background; connecting (and reconnecting) happens there, so
        a NATS that is down at start delays the stream, never the exchange."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="openperps-nats-publisher")

    def publish(self, batch: Published) -> None:
        """Queue ``batch`` (a subscriber of the in-process bus); never blocks."""
        if len(self._queue) >= self.max_queued:
            lost = self._queue.popleft()
            if not self.dropped:
                logger.warning(
                    "NATS publish queue full (%d batches): dropping the oldest, from version "
                    "%d; readers fill the hole from the event log",
                    self.max_queued,
                    lost.envelopes[0].version,
                )
            self.dropped += 1
        self._queue.append(_Queued(batch.envelopes, batch.durable_at))
        self.last_version = batch.last_version
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is acknowledged; False if ``timeout`` passed first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``, if NATS is there), then disconnect."""
        if self._task is not None:
            connected = self._nc is not None and self._nc.is_connected
            if not await self.flush(timeout if connected else 0):
                logger.warning(
                    "NATS: closing with %d batches unsent (up to version %d); readers fill "
                    "them from the event log",
                    len(self._queue),
                    self.last_version,
                )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    def _next_message(self) -> tuple[list[Sequence[Envelope]], float]:
        """Take queued batches for one message: consecutive versions, within the size; and
        when the first of them became durable."""
        queue = self._queue
        first, durable_at = queue.popleft()
        batches = [first]
        size = sum(len(e.payload) + ENVELOPE_OVERHEAD for e in first)
        while queue and queue[0].envelopes[0].version == batches[-1][-1].version + 1:
            following = queue[0].envelopes
            more = sum(len(e.payload) + ENVELOPE_OVERHEAD for e in following)
            if size + more > self.max_message_bytes:
                break
            queue.popleft()
            batches.append(following)
            size += more
        return batches, durable_at

    async def _run(self) -> None:
        backoff = Backoff()
        while self._nc is None:
            try:
                self._nc = await connect(self.url, "openperps-publisher")
                js = self._nc.jetstream()
                await ensure_stream(js, self.stream, self.subject)
            except Exception as exc:
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await self._nc.close()
                    self._nc = None
                self.failures += 1  # a connection that fails is a failure to publish too
                if not backoff.pauses:  # once; the attempts go on quietly
                    detail = f" ({exc})" if str(exc) else ""
                    logger.warning(
                        "NATS at %s: %s%s; publishing when it answers",
                        self.url,
                        type(exc).__name__,
                        detail,
                    )
                await backoff.pause()
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._send(js, *self._next_message())

    async def _send(self, js: Any, batches: list[Sequence[Envelope]], durable_at: float) -> None:
        """Send one message until the server takes it: the same bytes under the same id."""
        data = encode_batches(batches)
        first, last = batches[0][0].version, batches[-1][-1].version
        backoff = Backoff()
        headers = {ID_HEADER: str(first), LAST_HEADER: str(last)}
        if durable_at:
            headers[DURABLE_HEADER] = f"{durable_at:.6f}"
        while True:
            try:
                ack = await js.publish(
                    self.subject,
                    data,
                    timeout=self.publish_timeout_s,
                    stream=self.stream,
                    headers=headers,
                )
            except asyncio.CancelledError:
                raise
            except MaxPayloadError:
                # never fits however often it is sent: drop it, readers fill it from the log
                self.dropped += len(batches)
                logger.error(
                    "NATS refused %d..%d as too large (%d bytes); gateways read it from the log",
                    first,
                    last,
                    len(data),
                )
                return
            except Exception as exc:
                self.failures += 1
                if isinstance(exc, NoStreamResponseError | NotFoundError):
                    # the stream went away (a server that lost its files, an operator):
                    # make it again, then send again
                    with contextlib.suppress(Exception):
                        await ensure_stream(js, self.stream, self.subject)
                if not backoff.pauses:  # once per message; the retries go on quietly
                    logger.warning(
                        "NATS publish of %d..%d failed (%s: %s); sending it again until "
                        "the server takes it",
                        first,
                        last,
                        type(exc).__name__,
                        exc,
                    )
                await backoff.pause()
                continue
            self.messages += 1
            if ack.duplicate:
                self.duplicates += 1
            self.published_version = last
            return


class NatsConsumer:
    """The reader's side: ``Published`` batches after version ``after``, in version order.

    ``log`` is the durable log a hole in the stream is read from; without one a hole is
    logged and counted in ``holes_unfilled`` and delivery goes on after it.
    """

    def __init__(
        self,
        url: str = DEFAULT_NATS_URL,
        *,
        after: int = 0,
        log: EventLog | None = None,
        stream: str = DEFAULT_STREAM,
        subject: str = DEFAULT_SUBJECT,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject
        self.log = log
        self.version = after  # the newest version delivered
        self.messages = 0
        self.holes_filled = 0
        self.holes_unfilled = 0
        self.waiting_for_log = False  # a hole the log could not fill yet holds delivery back
        self.log_version = after  # the log's newest version, as last seen (LOG_CHECK_S)
        self.log_reads = 0  # times the stream was silent while the log was ahead
        self._behind_since: float | None = None  # monotonic time the log was first seen ahead
        self._watching: asyncio.Task[None] | None = None
        self._stopping = False
        self._bus = InProcessBus()
        self._bus.last_version = after
        self._nc: Any = None
        self._sub: Any = None
        self._js: Any = None
        self._delivering = asyncio.Lock()  # one message at a time, across resubscriptions
        self._resubscribing: asyncio.Task[None] | None = None

    @property
    def following(self) -> bool:
        """Connected to NATS and subscribed to the stream (what a gateway's health reports)."""
        return self._nc is not None and bool(self._nc.is_connected) and self._sub is not None

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        return self._bus.subscribe(subscriber)

    async def start(self) -> None:
        """Connect and start delivering; ``ConnectionError`` if NATS does not answer now."""
        try:
            self._nc = await connect(
                self.url, "openperps-consumer", reconnected=self._on_reconnected
            )
        except TimeoutError:
            raise ConnectionError(f"NATS at {self.url} does not answer") from None
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, self.stream, self.subject)
        if self.log is not None:
            await self._check_stream(self.log)
        await self._subscribe()
        if self.log is not None:
            self._watching = asyncio.create_task(self._watch_log())

    async def _check_stream(self, log: EventLog) -> None:
        """The stream must carry this log's batches: its newest envelope is in the log, byte
        for byte. A stream is never ahead of its log (only durable batches
        are published), so one that is, or that differs, belongs to another log (another
        exchange on a shared stream name, or a log wiped and started again): following it
        would mix two exchanges' records. ``StreamMismatch`` says so."""
        state = (await self._js.stream_info(self.stream)).state
        if not state.messages:
            return
        try:
            message = await self._js.get_msg(self.stream, int(state.last_seq))
        except NotFoundError:
            return  # trimmed under us: the next start checks again
        try:
            last = decode_batches(message.data)[-1][-1]  # the stream's newest envelope
        except Exception:
            return  # not ours to judge (a broken message is reported when it is delivered)
        newest = await log.last_version()
        logged = [e async for e in log.read(last.version, last.version)]
        if last.version <= newest and logged and logged[0].payload == last.payload:
            return
        why = (
            f"its version {last.version} is past this log's newest, {newest}"
            if last.version > newest
            else f"its version {last.version} differs from this log's"
        )
        raise StreamMismatch(
            f"stream {self.stream} carries another event log's batches ({why}): give each "
            "log its own --nats-stream and --nats-subject"
        )

    @property
    def watching_log(self) -> bool:
        """It looks at the log every LOG_CHECK_S and reads what the stream has not brought."""
        return self._watching is not None and not self._watching.done()

    @property
    def behind_s(self) -> float:
        """How long the log has held versions this consumer has not delivered (0: none)."""
        since = self._behind_since
        return 0.0 if since is None else time.monotonic() - since

    async def _watch_log(self) -> None:
        """Every LOG_CHECK_S, look at the log's newest version. If what the log held at the
        previous look has still not come from the stream (no publisher, another stream's
        name, NATS down, an exchange that died before publishing its tail), read the rest
        from the log: what the stream would have brought, a little later. Under load the
        stream is always a little behind the log; only a look's worth of lag counts.
        ``behind_s`` tells how long versions the log held have waited."""
        assert self.log is not None
        previous: tuple[int, float] | None = None  # the log's newest version at the last look
        while True:
            await asyncio.sleep(LOG_CHECK_S)
            try:
                newest = await self.log.last_version()
            except Exception as exc:  # the database went away: the hole check will wait
                logger.debug("NATS consumer: the log's version could not be read (%s)", exc)
                continue
            self.log_version = max(self.log_version, newest)
            if previous is not None and self.version < previous[0]:
                if self._behind_since is None:
                    self._behind_since = previous[1]
                async with self._delivering:
                    if newest > self.version:
                        self.log_reads += 1
                        await self._fill(self.version + 1, newest)
            if previous is None or self.version >= previous[0]:
                self._behind_since = None
            previous = (newest, time.monotonic())

    async def _subscribe(self) -> None:
        """Consume from the message that holds the version after ``version``."""
        start = await self._start_sequence(self._js)
        self._sub = await self._js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
            cb=self._on_message,
        )

    def _on_reconnected(self) -> None:
        """A server that restarted has forgotten the consumer (its state lives in memory):
        start a new one after the version delivered rather than wait for the client to
        notice missing heartbeats."""
        if self._sub is not None and self._resubscribing is None:
            self._resubscribing = asyncio.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        backoff = Backoff()
        try:
            while self._nc is not None:
                old, self._sub = self._sub, None
                if old is not None:
                    with contextlib.suppress(Exception):
                        await old.unsubscribe()
                try:
                    async with self._delivering:
                        await self._subscribe()
                    return
                except Exception as exc:  # JetStream not ready yet after a restart, say
                    logger.debug("NATS consumer: subscribing again failed (%s)", exc)
                    await backoff.pause()
        finally:
            self._resubscribing = None

    async def stop(self) -> None:
        self._stopping = True
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        if self._resubscribing is not None:
            self._resubscribing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resubscribing
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def _start_sequence(self, js: Any) -> int:
        """The stream sequence of the last message whose first version is at most the next
        one wanted (the first message if none; past the end if the stream is empty)."""
        state = (await js.stream_info(self.stream)).state
        if not state.messages:
            return int(state.last_seq) + 1
        wanted = self.version + 1
        low, high, found = int(state.first_seq), int(state.last_seq), int(state.first_seq)
        while low <= high:
            middle = (low + high) // 2
            try:
                message = await js.get_msg(self.stream, middle)
            except NotFoundError:
                return found  # a message deleted under us: start lower, skipping is cheap
            first = _header_number(message.headers, ID_HEADER)
            if 0 < first <= wanted:
                found, low = middle, middle + 1
            else:  # later, or an id that is no version (not ours): look lower, it is safe
                high = middle - 1
        return found

    async def _on_message(self, msg: Any) -> None:
        self.messages += 1
        last = _header_number(msg.headers, LAST_HEADER)
        if last and last <= self.version:  # nothing new in it (published again, say)
            return
        try:
            durable_at = _durable_at(msg.headers)
            async with self._delivering:
                for batch in decode_batches(msg.data):
                    await self.deliver(batch, durable_at)
        except Exception:
            # a broken message or a log that cannot be read: reported, and the next
            # message's hole check reads what this one missed from the log
            logger.exception("NATS consumer: a message could not be delivered")

    async def deliver(self, envelopes: Sequence[Envelope], durable_at: float = 0.0) -> None:
        """Deliver what one batch adds after ``version``, filling a hole from the log (in
        the log's chunks: a hole is where the feed may merge several commands' pushes)."""
        fresh = [e for e in envelopes if e.version > self.version]
        if not fresh:
            return
        if fresh[0].version > self.version + 1:
            await self._fill(self.version + 1, fresh[0].version - 1)
        self._emit(fresh, durable_at)

    async def _fill(self, first: int, last: int) -> None:
        """Deliver ``first..last`` from the log, and nothing after them before they are all
        in: a log that does not have them yet (a read replica behind its primary) or cannot
        be read is asked again, with growing pauses, for as long as it takes. Skipping would
        lose records for good; waiting only delays them (``waiting_for_log`` tells)."""
        if self.log is None:
            self.holes_unfilled += 1
            logger.error("NATS consumer: versions %d..%d are missing from the stream", first, last)
            self.version = last
            self._bus.last_version = last
            return
        logger.warning("NATS consumer: reading versions %d..%d from the event log", first, last)
        self.holes_filled += 1
        backoff = Backoff()
        try:
            while True:
                try:
                    async with contextlib.aclosing(
                        self.log.read_batches(self.version + 1, last)
                    ) as chunks:
                        async for chunk in chunks:
                            if chunk[0].version != self.version + 1:
                                break  # the log is missing versions: ask it again later
                            self._emit(chunk)
                except Exception as exc:  # the database went away, say: ask it again later
                    logger.warning("NATS consumer: the event log could not be read (%s)", exc)
                if self.version >= last:
                    return
                if self._stopping:
                    raise asyncio.CancelledError
                self.waiting_for_log = True
                waited = backoff.waited
                if not backoff.pauses or int(waited + backoff.next) // 10 > int(waited) // 10:
                    logger.warning(  # at first, then every ten seconds or so
                        "NATS consumer: the event log does not have versions %d..%d yet; "
                        "waiting for it (%.1f s so far)",
                        self.version + 1,
                        last,
                        waited,
                    )
                await backoff.pause()
        finally:
            self.waiting_for_log = False

    def _emit(self, envelopes: Sequence[Envelope], durable_at: float = 0.0) -> None:
        self.version = envelopes[-1].version
        self._bus.publish(to_published(envelopes, durable_at))


class StreamMismatch(Exception):
    """The NATS stream holds another event log's batches than the one a consumer reads."""


def _durable_at(headers: dict[str, str] | None) -> float:
    """The message's durable time from its header; 0 when absent or unreadable."""
    try:
        value = float((headers or {}).get(DURABLE_HEADER, 0))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _header_number(headers: dict[str, str] | None, name: str) -> int:
    """A version in a header; 0 when absent or unreadable."""
    value = (headers or {}).get(name, "")
    return int(value) if value.isascii() and value.isdigit() else 0
