"""The JetStream bus against the real server: batches arrive in version order, once, from
any starting version, across a consumer restart, with holes read from the event log."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest

from openperps.bus import Published
from openperps.bus import nats as nats_bus
from openperps.bus.nats import (
    ID_HEADER,
    LAST_HEADER,
    MAX_MESSAGE_BYTES,
    NatsConsumer,
    NatsPublisher,
    StreamMismatch,
    encode_batches,
)
from openperps.feed.prometheus import publisher_lines
from openperps.store import Envelope, SqliteEventLog
from tests.runtime.test_demo import free_port
from tests.services import unavailable

from .helpers import batches, filled, nats_or_skip, unique_stream

pytestmark = pytest.mark.nats


@pytest.fixture
async def names() -> AsyncIterator[tuple[str, str, str]]:
    url = await nats_or_skip()
    async with unique_stream(url) as (stream, subject):
        yield url, stream, subject


class Received:
    """A subscriber that keeps every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[Published] = []
        self.changed = asyncio.Event()
        self.messages = 0  # the stream messages the consumer read to get them

    def __call__(self, batch: Published) -> None:
        self.batches.append(batch)
        self.changed.set()

    @property
    def versions(self) -> list[int]:
        return [e.version for b in self.batches for e in b.envelopes]

    async def until(self, version: int) -> None:
        """Wait until ``version`` has arrived (the test's own timeout bounds it)."""
        while not self.versions or self.versions[-1] < version:
            self.changed.clear()
            await self.changed.wait()


async def publish_all(
    url: str,
    stream: str,
    subject: str,
    items: list[Published],
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> None:
    """Publish ``items``; with ``max_message_bytes`` set small, about one message each."""
    publisher = NatsPublisher(
        url, stream=stream, subject=subject, max_message_bytes=max_message_bytes
    )
    publisher.start()
    for batch in items:
        publisher.publish(batch)
    assert await publisher.flush(30)
    assert publisher.connected and "openperps_bus_connected 1" in publisher_lines(publisher)
    await publisher.close()


async def consume(
    url: str,
    stream: str,
    subject: str,
    *,
    after: int,
    until: int,
    log: SqliteEventLog | None = None,
) -> Received:
    received = Received()
    consumer = NatsConsumer(url, after=after, stream=stream, subject=subject, log=log)
    consumer.subscribe(received)
    await consumer.start()
    try:
        await received.until(until)
    finally:
        await consumer.stop()
    received.messages = consumer.messages
    return received


async def stream_messages(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


async def test_every_batch_arrives_once_in_version_order_with_its_events(
    names: tuple[str, str, str],
) -> None:
    url, stream, subject = names
    items = batches(600)
    last = items[-1].last_version
    await publish_all(url, stream, subject, items)

    received = await consume(url, stream, subject, after=0, until=last)
    assert received.versions == list(range(1, last + 1))
    assert [e for b in received.batches for e in b.events] == [e for b in items for e in b.events]
    # the batches as the sequencer published them, however they were merged into messages
    assert [b.envelopes for b in received.batches] == [b.envelopes for b in items]


async def test_gateways_learn_when_each_message_became_durable(
    names: tuple[str, str, str], tmp_path: Path
) -> None:
    """The durable time travels in a header (the first batch's, for a merged message) and
    comes out on every batch of the message; a batch read back from the log has none."""
    url, stream, subject = names
    items = [
        msgspec.structs.replace(batch, durable_at=1_796_000_000.25 + i)
        for i, batch in enumerate(batches(40))
    ]
    async with filled(tmp_path / "events.sqlite3", items) as log:
        # one message each, and batches 10..19 missing from the stream
        await publish_all(url, stream, subject, items[:10] + items[20:], max_message_bytes=1)
        received = await consume(
            url, stream, subject, after=0, until=items[-1].last_version, log=log
        )
    hole = range(items[10].first_version, items[19].last_version + 1)
    from_log = [b for b in received.batches if b.first_version in hole]
    assert [e.version for b in from_log for e in b.envelopes] == list(hole), "read from the log"
    assert [b.durable_at for b in from_log] == [0.0] * len(from_log), "from the log: unknown"
    by_version = {b.first_version: b.durable_at for b in received.batches}
    for batch in items[:10] + items[20:]:
        assert by_version[batch.first_version] == batch.durable_at


async def test_a_merged_message_carries_its_first_batch_durable_time(
    names: tuple[str, str, str],
) -> None:
    url, stream, subject = names
    items = [
        msgspec.structs.replace(batch, durable_at=1_796_000_000.5 + i)
        for i, batch in enumerate(batches(5))
    ]
    await publish_all(url, stream, subject, items)  # queued together: one message
    assert await stream_messages(url, stream) == 1
    received = await consume(url, stream, subject, after=0, until=items[-1].last_version)
    assert [b.durable_at for b in received.batches] == [items[0].durable_at] * len(items)


async def test_a_consumer_starts_after_any_version(names: tuple[str, str, str]) -> None:
    url, stream, subject = names
    items = batches(300)
    last = items[-1].last_version
    # many messages, so that starting after a version must find the one that holds it
    await publish_all(url, stream, subject, items, max_message_bytes=1)
    assert await stream_messages(url, stream) == len(items)

    for after in (0, 1, 2, 57, last // 2, last - 1):
        received = await consume(url, stream, subject, after=after, until=last)
        assert received.versions == list(range(after + 1, last + 1))
        # read from the message that holds the next version, not from the stream's start
        holding = next(i for i, b in enumerate(items) if b.last_version > after)
        assert received.messages == len(items) - holding


async def test_a_version_published_again_is_stored_once(names: tuple[str, str, str]) -> None:
    url, stream, subject = names
    items = batches(5)
    publisher = NatsPublisher(url, stream=stream, subject=subject)
    publisher.start()
    for batch in items:
        publisher.publish(batch)
        assert await publisher.flush(10)  # one message per batch
    stored = await stream_messages(url, stream)
    publisher.publish(items[2])  # a retry whose acknowledgement was lost, say
    assert await publisher.flush(10)
    await publisher.close()
    assert publisher.duplicates == 1
    assert await stream_messages(url, stream) == stored == 5

    # a message with an id the stream already holds is dropped even with other contents
    nc = await nats.connect(url)
    try:
        ack = await nc.jetstream().publish(
            subject,
            encode_batches([items[3].envelopes]),
            headers={ID_HEADER: str(items[3].first_version)},
        )
        assert ack.duplicate
    finally:
        await nc.close()

    received = await consume(url, stream, subject, after=0, until=items[-1].last_version)
    assert received.versions == list(range(1, items[-1].last_version + 1))


async def test_a_message_with_nothing_new_is_skipped_unread(
    names: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old batches in the stream again, under an id the server does not know (published once
    more after its duplicate window, say): a consumer past them reads their last version in
    the header and does not decode them."""
    url, stream, subject = names
    items = batches(6)
    await publish_all(url, stream, subject, items[:4], max_message_bytes=1)  # one each
    decoded: list[bytes] = []
    decode = nats_bus.decode_batches

    def counted(data: bytes) -> list[list[Envelope]]:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(nats_bus, "decode_batches", counted)
    received = Received()
    consumer = NatsConsumer(url, after=0, stream=stream, subject=subject)
    consumer.subscribe(received)
    await consumer.start()
    try:
        await received.until(items[3].last_version)
        reading = len(decoded)
        nc = await nats.connect(url)
        try:
            again = encode_batches([b.envelopes for b in items[1:3]])
            headers = {ID_HEADER: f"{items[1].first_version}-again"}
            await nc.jetstream().publish(
                subject, again, headers={**headers, LAST_HEADER: str(items[2].last_version)}
            )
        finally:
            await nc.close()
        await publish_all(url, stream, subject, items[4:], max_message_bytes=1)
        await received.until(items[-1].last_version)
    finally:
        await consumer.stop()
    assert consumer.messages == 7
    assert again not in decoded[reading:], "the old batches were not decoded"
    assert len(decoded) == 6
    assert received.versions == list(range(1, items[-1].last_version + 1))
    # a consumer starting where its search for the next version meets that message's id
    after = items[3].first_version
    later = await consume(url, stream, subject, after=after, until=items[-1].last_version)
    assert later.versions == list(range(after + 1, items[-1].last_version + 1))


async def test_a_restarted_consumer_carries_on_from_where_it_stopped(
    names: tuple[str, str, str],
) -> None:
    url, stream, subject = names
    items = batches(400)
    first_half, second_half = items[:200], items[200:]
    publisher = NatsPublisher(url, stream=stream, subject=subject)
    publisher.start()
    for batch in first_half:
        publisher.publish(batch)

    received = Received()
    consumer = NatsConsumer(url, after=0, stream=stream, subject=subject)
    consumer.subscribe(received)
    await consumer.start()
    await received.until(first_half[-1].last_version)
    await consumer.stop()
    stopped_at = consumer.version

    for batch in second_half:  # published while no consumer runs
        publisher.publish(batch)
    assert await publisher.flush(30)
    await publisher.close()

    again = await consume(url, stream, subject, after=stopped_at, until=items[-1].last_version)
    assert received.versions + again.versions == list(range(1, items[-1].last_version + 1))


async def test_a_hole_in_the_stream_is_read_from_the_event_log(
    names: tuple[str, str, str], tmp_path: Path
) -> None:
    url, stream, subject = names
    items = batches(50)
    async with filled(tmp_path / "events.sqlite3", items) as log:
        # batches 10..19 never reached the stream (dropped while NATS was down, say)
        await publish_all(url, stream, subject, items[:10] + items[20:])

        received = await consume(
            url, stream, subject, after=0, until=items[-1].last_version, log=log
        )
    assert received.versions == list(range(1, items[-1].last_version + 1))
    assert [e for b in received.batches for e in b.events] == [e for b in items for e in b.events]


async def test_a_stream_of_another_log_is_refused_not_mixed_in(
    names: tuple[str, str, str], tmp_path: Path
) -> None:
    """A gateway whose log is not the stream's (another exchange on a shared stream name, a
    log wiped and started again) would apply one exchange's events on another's state: it is
    refused at start, naming the fix; its own log's stream is taken."""
    url, stream, subject = names
    items = batches(30)
    await publish_all(url, stream, subject, items)
    async with filled(tmp_path / "shorter.sqlite3", items[:10]) as shorter:  # stream past it
        consumer = NatsConsumer(url, stream=stream, subject=subject, log=shorter)
        with pytest.raises(StreamMismatch, match="is past this log's newest"):
            await consumer.start()
        await consumer.stop()
    other = batches(30, exchange=1)  # the same versions, other events: another exchange's
    async with filled(tmp_path / "other.sqlite3", other) as foreign:
        consumer = NatsConsumer(url, stream=stream, subject=subject, log=foreign)
        with pytest.raises(StreamMismatch, match="--nats-stream"):
            await consumer.start()
        await consumer.stop()
    async with filled(tmp_path / "own.sqlite3", items) as own:
        received = await consume(
            url, stream, subject, after=0, until=items[-1].last_version, log=own
        )
    assert received.versions == list(range(1, items[-1].last_version + 1))


async def test_a_subject_another_stream_carries_is_named_not_reported_missing(
    names: tuple[str, str, str],
) -> None:
    """Creating a stream for a subject another stream already carries fails; the error says
    which subject and what to do, instead of "stream not found"."""
    url, stream, subject = names
    await publish_all(url, stream, subject, batches(2))  # the stream exists, with the subject
    async with unique_stream(url) as (other, _unused):
        consumer = NatsConsumer(url, stream=other, subject=subject)
        with pytest.raises(StreamMismatch, match=f"does another stream carry {subject}"):
            await consumer.start()
        await consumer.stop()


async def test_a_batch_too_large_for_nats_is_dropped_not_retried_for_ever(
    names: tuple[str, str, str],
) -> None:
    """NATS refuses a message over its payload limit every time: the publisher drops it
    (gateways read it from the log) and goes on with the next one."""
    url, stream, subject = names
    small = batches(3)
    first = small[0].envelopes[0]
    huge = Published(
        [msgspec.structs.replace(first, payload=bytes(2 * 1024 * 1024))], small[0].events
    )
    publisher = NatsPublisher(url, stream=stream, subject=subject, max_message_bytes=1)
    publisher.start()
    publisher.publish(huge)
    for batch in small[1:]:
        publisher.publish(batch)
    assert await publisher.flush(10), "the publisher is not stuck on the large batch"
    await publisher.close()
    assert publisher.dropped == 1
    assert publisher.published_version == small[-1].last_version
    assert await stream_messages(url, stream) == len(small) - 1


async def test_publishing_never_waits_for_nats(tmp_path: Path) -> None:
    """Nothing listens on the URL: publish returns at once and the queue stays bounded."""
    publisher = NatsPublisher("nats://127.0.0.1:9", max_queued=10)
    publisher.start()
    items = batches(25)
    for batch in items:
        publisher.publish(batch)
    assert publisher.queued == 10
    assert publisher.dropped == 15
    assert publisher.last_version == items[-1].last_version
    assert publisher.published_version == 0
    assert not await publisher.flush(0.01)
    # an operator sees it: not connected, and the failed attempt counted
    async with asyncio.timeout(10):
        while not publisher.failures:
            await asyncio.sleep(0.01)
    lines = publisher_lines(publisher)
    assert "openperps_bus_connected 0" in lines and not publisher.connected
    await publisher.close(timeout=0.01)


class PrivateNats:
    """A NATS server of this test's own (JetStream, files in ``directory``) that it can stop
    and start again on the same port, as an outage does."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            unavailable("nats-server is not installed")
        self.port = free_port()
        self.command = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        self.command += ["-sd", str(directory)]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while True:  # until JetStream answers (the test's timeout bounds it)
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            nc = await nats.connect(self.url, allow_reconnect=False)
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                await asyncio.sleep(0.05)
            finally:
                await nc.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


async def test_an_outage_of_nats_delays_the_stream_and_loses_nothing(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "jetstream")
    await server.start()
    items = batches(300)
    publisher = NatsPublisher(server.url)
    received = Received()
    consumer = NatsConsumer(server.url, after=0)
    consumer.subscribe(received)
    try:
        publisher.start()
        await consumer.start()
        for batch in items[:100]:
            publisher.publish(batch)
        await received.until(items[99].last_version)
        assert await publisher.flush(10)
        first_subscription = consumer._sub

        server.stop()
        for batch in items[100:200]:  # the writer goes on; publish never waits
            publisher.publish(batch)
        assert publisher.published_version == items[99].last_version

        await server.start()
        for batch in items[200:]:
            publisher.publish(batch)
        assert await publisher.flush(60)
        await received.until(items[-1].last_version)
        # the consumer was made again on reconnecting (the restarted server forgot it), not
        # left for the client library to notice missed heartbeats
        assert consumer._sub is not None and consumer._sub is not first_subscription
        assert consumer.following
    finally:
        await consumer.stop()
        await publisher.close()
        server.stop()
    assert received.versions == list(range(1, items[-1].last_version + 1))
