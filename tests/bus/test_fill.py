"""A consumer's hole, filled from a log that does not have it yet (a read replica behind its
primary) or cannot be read for a while: delivery waits, then goes on in order, losing and
repeating nothing. No NATS server is needed: batches are handed to ``deliver`` as the
stream's messages would be."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
import pytest

from openperps.api.limits import RestLimits
from openperps.bus.nats import NatsConsumer
from openperps.feed.server import FeedServer
from openperps.indexer import ReadModels
from openperps.runtime.gateway import Gateway, GatewaySettings
from openperps.store import SqliteEventLog
from openperps.store.envelope import Envelope

from .helpers import batches, filled


class LaggingLog:
    """A log that shows versions up to ``visible`` only, and fails ``failures`` reads first."""

    def __init__(self, log: SqliteEventLog, visible: int, failures: int = 0) -> None:
        self.log = log
        self.visible = visible
        self.failures = failures
        self.reads = 0

    async def read_batches(
        self, from_version: int, to_version: int
    ) -> AsyncGenerator[list[Envelope], None]:
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        last = min(to_version, self.visible)
        if last < from_version:
            return
        async for chunk in self.log.read_batches(from_version, last, batch_size=7):
            yield chunk


def received_by(consumer: NatsConsumer) -> list[int]:
    versions: list[int] = []
    consumer.subscribe(lambda batch: versions.extend(e.version for e in batch.envelopes))
    return versions


async def test_a_hole_waits_for_a_lagging_log_then_goes_on_in_order(tmp_path: Path) -> None:
    items = batches(40)
    async with filled(tmp_path / "events.sqlite3", items) as log:
        # batches 10..29 never reached the stream, and the log shows only up to batch 14
        lagging = LaggingLog(log, visible=items[14].last_version)
        consumer = NatsConsumer(log=lagging)  # type: ignore[arg-type]
        versions = received_by(consumer)
        for batch in items[:10]:
            await consumer.deliver(batch.envelopes)
        delivering = asyncio.create_task(consumer.deliver(items[30].envelopes))
        async with asyncio.timeout(5):
            while lagging.reads < 3:
                await asyncio.sleep(0.01)
        assert not delivering.done()
        assert consumer.waiting_for_log
        assert versions == list(range(1, items[14].last_version + 1)), "what it has, in order"
        lagging.visible = items[-1].last_version  # the replica caught up
        await asyncio.wait_for(delivering, 5)
        assert not consumer.waiting_for_log
        for batch in items[31:]:
            await consumer.deliver(batch.envelopes)
        assert versions == list(range(1, items[-1].last_version + 1))
        assert (consumer.holes_filled, consumer.holes_unfilled) == (1, 0)


async def test_a_log_that_cannot_be_read_is_asked_again(tmp_path: Path) -> None:
    items = batches(12)
    async with filled(tmp_path / "events.sqlite3", items) as log:
        failing = LaggingLog(log, visible=items[-1].last_version, failures=3)
        consumer = NatsConsumer(log=failing)  # type: ignore[arg-type]
        versions = received_by(consumer)
        await consumer.deliver(items[0].envelopes)
        await asyncio.wait_for(consumer.deliver(items[-1].envelopes), 5)
        assert failing.reads == 4
        assert versions == list(range(1, items[-1].last_version + 1))


async def test_stopping_ends_the_wait(tmp_path: Path) -> None:
    items = batches(5)
    async with filled(tmp_path / "events.sqlite3", items) as log:
        consumer = NatsConsumer(log=LaggingLog(log, visible=0))  # type: ignore[arg-type]
        delivering = asyncio.create_task(consumer.deliver(items[-1].envelopes))
        async with asyncio.timeout(5):
            while not consumer.waiting_for_log:
                await asyncio.sleep(0.01)
        await consumer.stop()
        await asyncio.wait([delivering], timeout=5)
        assert delivering.cancelled()
        assert consumer.version == 0, "nothing after the hole was delivered"


async def test_gateway_health_is_503_while_a_hole_holds_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's HTTP port without NATS or a log: the consumer's state decides /health,
    and the REST reads answer from its read models once they are loaded."""
    gateway = Gateway(GatewaySettings(db="unused"))
    consumer = gateway.consumer = NatsConsumer()
    models = gateway.models = ReadModels()
    for event in batches(1)[0].events:  # the first market listed
        models.apply(event)
    await gateway._serve_http("127.0.0.1", 0)
    base = f"http://127.0.0.1:{gateway.http_port}"

    async def health() -> tuple[int, dict[str, object]]:
        """The status and the figures, from the envelope every REST answer has."""
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{base}/health")
        body = json.loads(answer.content)
        assert body["success"] is (answer.status_code == 200)
        assert body.get("code") == (None if body["success"] else 2031), body  # NOT_READY
        return answer.status_code, body["data"]

    try:
        # not connected to NATS: not following
        idle = {"log_version": 0, "behind_s": 0.0}
        assert await health() == (
            503,
            {"following": False, "waiting_for_log": False, "version": 0, **idle},
        )
        monkeypatch.setattr(NatsConsumer, "following", property(lambda self: True))
        assert (await health())[0] == 200
        consumer.waiting_for_log = True
        waiting = {"following": True, "waiting_for_log": True, "version": 0, **idle}
        assert await health() == (503, waiting)
        assert "openperps_gateway_waiting_for_log 1\n" in gateway.metrics_text()
        async with httpx.AsyncClient(base_url=base) as http:
            metrics = await http.get("/metrics")
            assert "openperps_gateway_waiting_for_log 1\n" in metrics.text
            # REST reads: refused while the read models load, then answered from them
            loading = await http.get("/getPerpetualAssetsInfo/allMarkets")
            assert loading.status_code == 503 and loading.json()["success"] is False
            gateway.feed = FeedServer(models)
            markets = (await http.get("/getPerpetualAssetsInfo/allMarkets")).json()["data"]
            assert [m["marketId"] for m in markets] == ["1338"]
            # the dashboard, pointed at the gateway's own feed
            gateway.feed.port = 18999
            page = await http.get("/")
            assert page.status_code == 200 and "OpenPerps" in page.text
            config = (await http.get("/dashboard/config")).json()
            assert config["feedUrl"] == "ws://127.0.0.1:18999/ws/"
            # actions are the exchange's: not here
            assert (await http.post("/placeLimitOrder", json={})).status_code == 404
            assert (await http.get("/nothing")).status_code == 404
    finally:
        gateway.feed = None
        await gateway.stop()


async def test_without_a_log_a_hole_is_counted_and_delivery_goes_on() -> None:
    items = batches(6)
    consumer = NatsConsumer()
    versions = received_by(consumer)
    await consumer.deliver(items[0].envelopes)
    await consumer.deliver(items[3].envelopes)  # 1 and 2 never came
    await consumer.deliver(items[2].envelopes)  # late: already skipped, not delivered twice
    await consumer.deliver(items[4].envelopes)
    expected = [e.version for b in (items[0], items[3], items[4]) for e in b.envelopes]
    assert versions == expected
    assert (consumer.holes_filled, consumer.holes_unfilled) == (0, 1)


async def test_a_silent_stream_is_made_up_for_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream brings nothing (no publisher, another stream's name, NATS down, a writer
    that died before publishing its tail) while the log grows: the consumer reads the log
    after seeing it ahead twice, loses and repeats nothing, and says how long it was behind."""
    monkeypatch.setattr("openperps.bus.nats.LOG_CHECK_S", 0.02)
    items = batches(30)
    async with filled(tmp_path / "events.sqlite3", items) as log:
        lagging = LaggingLog(log, visible=items[-1].last_version)
        lagging.last_version = log.last_version  # type: ignore[attr-defined]
        consumer = NatsConsumer(log=lagging)  # type: ignore[arg-type]
        versions = received_by(consumer)
        for batch in items[:5]:  # what the stream brought before it went silent
            await consumer.deliver(batch.envelopes)
        consumer._watching = asyncio.create_task(consumer._watch_log())
        try:
            async with asyncio.timeout(5):
                while consumer.version < items[-1].last_version:
                    await asyncio.sleep(0.01)
            assert versions == list(range(1, items[-1].last_version + 1))
            assert consumer.log_reads == 1 and consumer.log_version == items[-1].last_version
            assert consumer.watching_log
            async with asyncio.timeout(5):
                while consumer.behind_s:  # the next look finds it level with the log
                    await asyncio.sleep(0.01)
            # a log that holds more than it lets be read: behind, and it says so
            lagging.visible = items[-1].last_version
            more = batches(40)[30:]
            for batch in more:
                await log.append(batch.envelopes)
            async with asyncio.timeout(5):
                while not consumer.waiting_for_log:
                    await asyncio.sleep(0.01)
            assert consumer.behind_s > 0
            lagging.visible = more[-1].last_version
            async with asyncio.timeout(5):
                while consumer.version < more[-1].last_version:
                    await asyncio.sleep(0.01)
            assert versions == list(range(1, more[-1].last_version + 1))
        finally:
            await consumer.stop()
        assert not consumer.watching_log


async def test_gateway_health_follows_the_log_not_only_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Healthy while it keeps up: following the stream or watching the log, and not behind
    the log for STALE_S or more."""
    gateway = Gateway(GatewaySettings(db="unused"))
    consumer = gateway.consumer = NatsConsumer()
    assert gateway.health()[0] is False  # neither following nor watching
    monkeypatch.setattr(NatsConsumer, "watching_log", property(lambda self: True))
    assert gateway.health()[0] is True  # NATS down, but it reads the log
    consumer.log_version = 50
    consumer._behind_since = time.monotonic() - 6  # stuck behind the log for 6 s
    healthy, body = gateway.health()
    assert healthy is False and body["log_version"] == 50 and body["behind_s"] >= 6
    assert "openperps_gateway_behind_seconds 6." in gateway.metrics_text()
    consumer._behind_since = None
    assert gateway.health()[0] is True


async def test_a_gateways_reads_keep_its_own_request_limit() -> None:
    """Behind a load balancer every client has the balancer's address: the gateway's REST
    limit per address is its own setting (``--rest-requests-per-second``)."""
    strict = RestLimits(requests_per_second=0.05, request_burst=2)
    gateway = Gateway(GatewaySettings(db="unused", rest_limits=strict))
    gateway.consumer = NatsConsumer()
    gateway.models = ReadModels()
    gateway.feed = FeedServer(gateway.models)
    await gateway._serve_http("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
            codes = [(await http.get("/getPerpetualAssetsInfo/allMarkets")).status_code]
            codes += [(await http.get("/getPerpetualAssetsInfo/allMarkets")).status_code]
            codes += [(await http.get("/getPerpetualAssetsInfo/allMarkets")).status_code]
            assert codes == [200, 200, 429]
            assert (await http.get("/health")).status_code == 503  # not counted, not limited
    finally:
        gateway.feed = None
        await gateway.stop()


async def test_a_stream_a_little_behind_the_log_is_not_read_around(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the stream always trails the log by a little: as long as what the log held
    at one look has come by the next, the consumer reads nothing from the log."""
    monkeypatch.setattr("openperps.bus.nats.LOG_CHECK_S", 0.05)
    items = batches(60)
    async with filled(tmp_path / "events.sqlite3", items[:1]) as log:
        consumer = NatsConsumer(log=log)
        versions = received_by(consumer)
        await consumer.deliver(items[0].envelopes)
        consumer._watching = asyncio.create_task(consumer._watch_log())
        try:
            for batch in items[1:]:  # durable first, on the stream 10 ms later
                await log.append(batch.envelopes)
                await asyncio.sleep(0.01)
                await consumer.deliver(batch.envelopes)
            assert consumer.log_reads == 0 and consumer.behind_s == 0
            assert versions == list(range(1, items[-1].last_version + 1))
        finally:
            await consumer.stop()
