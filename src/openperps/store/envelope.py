"""What the log stores: envelopes around already-encoded events, and engine snapshots.

An event is encoded once (msgspec, by the engine) and travels as bytes from there on
(architecture.md, "An event envelope"): the log never decodes ``payload``, it only checksums and
stores it. ``version`` is the gap-free ``transaction_version`` assigned by the sequencer; replay
order is that number, never ``timestamp`` (style.md, principle 4).
"""

from __future__ import annotations

import msgspec


class Envelope(msgspec.Struct, frozen=True):
    version: int
    """The event's ``transaction_version``: 1, 2, 3, ... with no gap."""
    timestamp: int
    """Milliseconds since the Unix epoch, as the command carried it."""
    type: str
    """The event's type tag, so readers can route without decoding ``payload``."""
    payload: bytes
    """The encoded event body, opaque to the log."""


class Snapshot(msgspec.Struct, frozen=True):
    """The engine's state after applying every event up to and including ``version``."""

    version: int
    state_hash: str
    """The engine's hash of that state; start-up checks the replayed state against it."""
    blob: bytes
    """The encoded state, opaque to the log."""
