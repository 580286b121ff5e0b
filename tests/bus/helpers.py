"""Helpers for the NATS bus tests: the server check, a unique stream, real batches, and a log
that holds them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
from nats.js.errors import NotFoundError

from openperps.bus import Published
from openperps.core import commands as c
from openperps.core.engine import Engine
from openperps.core.markets import default_markets
from openperps.runtime.sequencer import to_envelopes
from openperps.store import SqliteEventLog
from tests.services import unavailable

NATS_URL = os.environ.get("OPENPERPS_TEST_NATS", "nats://127.0.0.1:4222")


async def nats_or_skip() -> str:
    """The test server's URL if it answers; skip, or fail under CI, if it does not."""
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
        await nc.jetstream().account_info()
    except Exception as exc:
        unavailable(f"NATS JetStream at {NATS_URL} does not answer: {exc}")
    await nc.close()
    return NATS_URL


@asynccontextmanager
async def unique_stream(url: str) -> AsyncIterator[tuple[str, str]]:
    """A stream and subject name of their own, deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    stream, subject = f"TEST_{tag}", f"test.{tag}.events"
    try:
        yield stream, subject
    finally:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(stream)
        except NotFoundError:
            pass
        finally:
            await nc.close()


def batches(count: int, exchange: int = 0) -> list[Published]:
    """``count`` durable batches as the sequencer publishes them: one command's events each
    (a market listed, then faucet mints), versions 1, 2, 3, ... with no gap. Another
    ``exchange`` number gives the same versions with other events (another exchange's log)."""
    engine = Engine([])
    out: list[Published] = []
    for i in range(count):
        command: c.Command = (
            c.ListMarket(timestamp=i, market=default_markets()[0])
            if i == 0
            else c.Mint(
                timestamp=i, profile="0x" + f"{i % 250:02x}" * 32, amount=1_000 + i + exchange
            )
        )
        events = engine.handle(command)
        out.append(Published(to_envelopes(events), events))
    return out


@asynccontextmanager
async def filled(path: Path, items: list[Published]) -> AsyncIterator[SqliteEventLog]:
    """A SQLite log at ``path`` holding every batch of ``items``, closed afterwards."""
    log = SqliteEventLog(path)
    await log.open()
    try:
        for batch in items:
            await log.append(batch.envelopes)
        yield log
    finally:
        await log.close()
