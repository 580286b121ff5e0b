"""Start-up: newest snapshot, then the log after it, re-executed and checked.

The snapshot's blob must restore to the state hash it recorded (a corrupt snapshot is
reported and the log is replayed from the start instead). Every event after it is fed to
``core.replay.Replayer``, which re-executes the journaled commands and checks that versions
run gap-free and that re-execution produces exactly the logged events.

A fresh log starts from an engine with no markets: the runtime lists the configured markets
through commands, so the log alone always rebuilds the exchange.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import msgspec

from openperps.core.engine import Engine
from openperps.core.events import decode_event
from openperps.core.replay import Replayer
from openperps.indexer.models import ModelsState, ReadModels, load_state
from openperps.runtime.snapshots import unpack
from openperps.store.base import EventLog

logger = logging.getLogger("openperps.startup")

Progress = Callable[[int, int], None]  # (versions replayed, versions to replay)


async def load_engine(
    log: EventLog, *, progress: Progress | None = None, verify_bytes: bool = False
) -> Engine:
    started = time.perf_counter()
    last = await log.last_version()
    engine = Engine([])
    snapshot = await log.load_latest_snapshot()
    if snapshot is not None:
        try:
            restored = Engine.restore(unpack(snapshot.blob)[0])
        except Exception as exc:  # a blob that does not decode is corruption, not a bug
            logger.error(
                "snapshot at %d does not decode (%s); replaying from 1", snapshot.version, exc
            )
        else:
            if restored.version != snapshot.version or restored.state_hash() != snapshot.state_hash:
                logger.error(
                    "snapshot at %d does not match its recorded hash; replaying from 1",
                    snapshot.version,
                )
            else:
                engine = restored
    base = engine.version
    replayer = Replayer(engine, verify_bytes=verify_bytes)
    async for batch in log.read_batches(base + 1):
        for envelope in batch:
            replayer.apply(envelope.version, envelope.type, envelope.payload)
        if progress is not None:
            progress(batch[-1].version - base, last - base)
    replayer.finish()
    logger.info(
        "engine ready at version %d (snapshot %d, %d commands replayed) in %.2f s",
        engine.version,
        base,
        replayer.commands,
        time.perf_counter() - started,
    )
    return engine


async def load_read_models(
    log: EventLog,
    *,
    from_scratch: bool = False,
    progress: Progress | None = None,
    live_retention: int | None = None,
) -> ReadModels:
    """Read models from the newest snapshot that carries them, then the log after them.

    ``from_scratch`` ignores snapshots and folds in the whole log (``openperps reindex``).
    ``live_retention`` (live changes kept per address for resuming) overrides what the
    snapshot was taken with.
    """
    models = ReadModels()
    snapshot = None if from_scratch else await log.load_latest_snapshot()
    if snapshot is not None:
        _engine, blob = unpack(snapshot.blob)
        if blob is not None:
            try:
                models = load_state(msgspec.json.decode(blob, type=ModelsState))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                logger.error("read models in the snapshot do not decode (%s); rebuilding", exc)
                models = ReadModels()
    if live_retention is not None:
        models.set_live_retention(live_retention)
    last = await log.last_version()
    base = models.version
    async for batch in log.read_batches(base + 1):
        models.apply_all(decode_event(envelope.payload) for envelope in batch)
        if progress is not None:
            progress(batch[-1].version - base, last - base)
    return models


# Young objects collected once this many have been allocated (CPython's default is 700).
YOUNG_COLLECTION_THRESHOLD = 20_000


def settle_heap() -> None:
    """For a long-running server process, once started: what start-up built (modules, the
    engine and read models rebuilt from the log) is moved out of the cyclic collector's way,
    and young objects are collected less often.

    With CPython's defaults, a feed pushing 5 000 events/s to 1 000 connections ran a full
    collection of 20-30 ms, stopping every push, about every 1.5 s: each command's
    short-lived objects (tasks, futures, events) were often still alive at a young
    collection and got promoted. Only for the process that serves: the cyclic collector
    never looks at frozen objects again (reference counting still frees them).
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
