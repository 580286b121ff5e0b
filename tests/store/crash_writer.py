"""A writer under steady load that test_crash.py kills with SIGKILL and starts again.

Usage: ``python crash_writer.py DATABASE SEED``

On start it opens the SQLite log (repairing a torn tail), rebuilds its state the way the engine
does (latest snapshot, then the events after it) and prints ``ready <last_version> <state>``.
Then it submits batches through a ``GroupCommitWriter`` forever, several in flight, printing
``ack <first> <last>`` the moment each batch is durable, and saves a snapshot now and then.

Events are a pure function of their version and batch (``expected_event``), so the checker can
recompute every byte; the batch's first and last versions are in each payload, which is how it
tells a whole batch from part of one. The "state" is a hash chain over the payloads, standing in
for the engine's state hash.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
import sys
import time
from collections import deque

from openperps.store import Envelope, GroupCommitWriter, SqliteEventLog

IN_FLIGHT = 8
SNAPSHOT_EVERY = 1_000
MAX_LIFETIME_S = 120.0  # the test kills us within a second; this bounds a leak if it cannot


def expected_event(version: int, first: int, last: int) -> Envelope:
    digest = hashlib.blake2b(b"%d" % version, digest_size=32).hexdigest().encode()
    payload = b"%d|%d|%d|%s" % (version, first, last, digest * 2)
    return Envelope(version, 1_700_000_000_000 + 7 * version, f"Crash{version % 3}", payload)


def batch_of(envelope: Envelope) -> tuple[int, int]:
    """The first and last version of the batch this event was submitted in."""
    _, first, last, _ = envelope.payload.split(b"|", 3)
    return int(first), int(last)


def chain(state: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(state + payload, digest_size=32).digest()


def say(line: str) -> None:
    try:
        os.write(1, line.encode() + b"\n")  # one write: a kill never leaves half a line
    except OSError:
        os._exit(3)  # nobody reads us any more: the test is gone


def orphaned(parent: int, deadline: float) -> bool:
    """Whether the test that started us is gone (or forgot us), so we must not run on."""
    return os.getppid() != parent or time.monotonic() > deadline


def report(first: int, last: int, future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is None:
        say(f"ack {first} {last}")


async def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    parent, deadline = os.getppid(), time.monotonic() + MAX_LIFETIME_S
    async with SqliteEventLog(path) as log:
        snapshot = await log.load_latest_snapshot()
        state = snapshot.blob if snapshot else b""
        async for envelope in log.read(snapshot.version + 1 if snapshot else 1):
            state = chain(state, envelope.payload)
        last = await log.last_version()
        say(f"ready {last} {state.hex()}")

        last_snapshot = snapshot.version if snapshot else 0
        in_flight: deque[tuple[asyncio.Future[None], int, bytes]] = deque()
        async with GroupCommitWriter(log) as writer:
            nxt = last + 1
            while not orphaned(parent, deadline):
                size = rng.randint(1, 60)
                batch = [expected_event(v, nxt, nxt + size - 1) for v in range(nxt, nxt + size)]
                for envelope in batch:
                    state = chain(state, envelope.payload)
                future = writer.enqueue(batch)
                future.add_done_callback(functools.partial(report, nxt, nxt + size - 1))
                in_flight.append((future, batch[-1].version, state))
                nxt += size
                if len(in_flight) < IN_FLIGHT:
                    await asyncio.sleep(0)
                    continue
                oldest, version, its_state = in_flight.popleft()
                await oldest
                if version - last_snapshot >= SNAPSHOT_EVERY:
                    await log.save_snapshot(version, its_state.hex(), its_state)
                    await log.prune_snapshots(keep=3)
                    last_snapshot = version


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
