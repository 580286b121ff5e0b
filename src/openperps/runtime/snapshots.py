"""Periodic snapshots of the engine and the read models, written in the background.

Capturing the state is a short synchronous step between two commands (so the snapshot is
at a command boundary); encoding and hashing run in a worker thread and the write waits,
off the sequencer's path, until the log holds the snapshot's version. A snapshot taken from
an engine that was since rebuilt (after a storage fault) is discarded.

A stored blob is ``MAGIC``, the length of the engine part, the engine snapshot (whose SHA-256
is the recorded state hash) and the read models' state (``indexer.models.ModelsState``, at
its own version, which may trail the engine's by what was not yet durable). A blob without
``MAGIC`` is an engine snapshot alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import msgspec

from openperps.core.snapshot import EngineSnapshot, encode_snapshot
from openperps.indexer.models import ReadModels, save_state
from openperps.runtime.sequencer import Sequencer
from openperps.store.base import EventLog

MAGIC = b"OPSNAP1\n"


def pack(engine_blob: bytes, models_blob: bytes | None) -> bytes:
    return MAGIC + len(engine_blob).to_bytes(8, "big") + engine_blob + (models_blob or b"")


def unpack(blob: bytes) -> tuple[bytes, bytes | None]:
    """(engine snapshot, read models state or None)."""
    if not blob.startswith(MAGIC):
        return blob, None
    start = len(MAGIC) + 8
    size = int.from_bytes(blob[len(MAGIC) : start], "big")
    engine, models = blob[start : start + size], blob[start + size :]
    return engine, models or None


logger = logging.getLogger("openperps.snapshots")


def _encode(snapshot: EngineSnapshot) -> tuple[bytes, str]:
    blob = encode_snapshot(snapshot)
    return blob, hashlib.sha256(blob).hexdigest()


class Snapshotter:
    def __init__(
        self,
        sequencer: Sequencer,
        log: EventLog,
        *,
        models: ReadModels | None = None,
        every_events: int = 200_000,
        every_seconds: float = 300.0,
        keep: int = 3,
    ) -> None:
        self.sequencer = sequencer
        self.log = log
        self.models = models
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.keep = keep
        self.last_version = 0
        self._last_time = time.monotonic()

    def due(self) -> bool:
        behind = self.sequencer.engine.version - self.last_version
        if behind <= 0:
            return False
        return (
            behind >= self.every_events or time.monotonic() - self._last_time >= self.every_seconds
        )

    async def run(self, check_every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(check_every)
            if self.due():
                try:
                    await self.take()
                except Exception:
                    logger.exception("snapshot failed; the log is intact, will try again")

    async def take(self) -> int | None:
        """Snapshot the engine now; returns the version saved, or None if discarded."""
        sequencer = self.sequencer
        generation = sequencer.generation
        snapshot = sequencer.engine.snapshot()
        version = snapshot.version
        if version == 0:
            return None
        # read-model rows are mutable: encode them now, between two batches
        models_blob = (
            msgspec.json.encode(save_state(self.models)) if self.models is not None else None
        )
        engine_blob, digest = await asyncio.to_thread(_encode, snapshot)
        blob = pack(engine_blob, models_blob)
        while sequencer.writer.durable_version < version:
            if sequencer.generation != generation:
                return None
            await asyncio.sleep(0.002)
        if sequencer.generation != generation:
            return None
        await self.log.save_snapshot(version, digest, blob)
        await self.log.prune_snapshots(self.keep)
        self.last_version = version
        self._last_time = time.monotonic()
        logger.info("snapshot at version %d (%d bytes)", version, len(blob))
        return version
