"""The NATS JetStream bus: how fast durable batches get from the writer to a gateway.

Workload: ``--batches`` real command batches (a faucet mint each: CommandExecuted + Minted,
about 150 bytes of envelopes), handed to ``NatsPublisher.publish`` as fast as the sequencer
could, into a fresh stream on the local server. Measured: how long ``publish`` itself takes
(what the writer pays), the rate at which the server acknowledges them (the publisher merges
what queued up into messages), and the rate at which a ``NatsConsumer`` starting after
version 0 delivers them back as ``Published`` batches with decoded events. Then
``--paced`` batches one at a time, each waiting for its acknowledgement (a quiet writer: one
message per batch), for the time from ``publish`` to the server's acknowledgement.

Prints figures, then as its last line one JSON object:
{"bench": "bus", "batches": N, "publish_call_us": U, "acked_batches_per_s": N,
 "messages": N, "consumed_batches_per_s": N, "paced_ack_p50_ms": M, "paced_ack_p99_ms": M}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

import nats

from openperps.bus import Published
from openperps.bus.nats import NatsConsumer, NatsPublisher
from openperps.core import commands as c
from openperps.core.engine import Engine
from openperps.core.markets import default_markets
from openperps.runtime.sequencer import to_envelopes
from percentiles import percentile


def batches(count: int) -> list[Published]:
    engine = Engine(default_markets())
    out = []
    for i in range(count):
        events = engine.handle(c.Mint(timestamp=i, profile="0x" + "ab" * 32, amount=1 + i))
        out.append(Published(to_envelopes(events), events))
    return out


async def run(url: str, count: int, paced: int) -> dict[str, object]:
    tag = uuid.uuid4().hex[:12]
    stream, subject = f"BENCH_{tag}", f"bench.{tag}"
    items = batches(count)
    last = items[-1].last_version
    publisher = NatsPublisher(url, stream=stream, subject=subject, max_queued=count)
    publisher.start()
    started = time.perf_counter()
    for batch in items:
        publisher.publish(batch)
    publish_call_us = (time.perf_counter() - started) / count * 1e6
    assert await publisher.flush(600)
    acked_s = time.perf_counter() - started
    messages = publisher.messages
    await publisher.close()

    delivered = asyncio.Event()
    received = 0

    def on_batch(batch: Published) -> None:
        nonlocal received
        received += 1
        if batch.last_version == last:
            delivered.set()

    consumer = NatsConsumer(url, after=0, stream=stream, subject=subject)
    consumer.subscribe(on_batch)
    started = time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(delivered.wait(), 600)
    consumed_s = time.perf_counter() - started
    await consumer.stop()
    assert received == count

    publisher = NatsPublisher(url, stream=stream, subject=subject)
    publisher.start()
    assert await publisher.flush(10)
    waits = []
    for batch in batches(count + paced)[count:]:
        started = time.perf_counter()
        publisher.publish(batch)
        assert await publisher.flush(10)
        waits.append((time.perf_counter() - started) * 1000)
    await publisher.close()
    p50, p99 = percentile(waits, 0.5), percentile(waits, 0.99)

    nc = await nats.connect(url)
    await nc.jetstream().delete_stream(stream)
    await nc.close()

    print(f"{count} batches ({last} events) through NATS JetStream at {url}")
    print(f"  publish() call (what the writer pays): {publish_call_us:.2f} us per batch")
    print(
        f"  acknowledged by the server: {count / acked_s:,.0f} batches/s "
        f"({messages} messages: the publisher merges what queued up)"
    )
    print(f"  delivered by a consumer from version 0: {count / consumed_s:,.0f} batches/s")
    print(f"  paced, one message per batch: acknowledged after p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return {
        "bench": "bus",
        "batches": count,
        "publish_call_us": round(publish_call_us, 3),
        "acked_batches_per_s": round(count / acked_s),
        "messages": messages,
        "consumed_batches_per_s": round(count / consumed_s),
        "paced_ack_p50_ms": round(p50, 3),
        "paced_ack_p99_ms": round(p99, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("OPENPERPS_NATS", "nats://127.0.0.1:4222"))
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--paced", type=int, default=2_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.batches, args.paced))))


if __name__ == "__main__":
    main()
