"""Replay: rebuild an engine from its event log by re-executing the journaled commands.

The log holds, for every accepted command, a ``CommandExecuted`` event carrying the command,
followed by the events it produced; a refused command left a single ``Rejected``. Because
the engine is deterministic, re-executing the commands in version order rebuilds the state
bit for bit, and the events the engine produces again must be exactly the ones in the log:
the replayer checks their versions and types always, and their bytes when asked to.

Feed ``apply`` the log in version order (from a snapshot's version + 1, or from 1 with a fresh
engine); events at or below the engine's version are skipped, so feeding a little too early
is harmless. Only ``CommandExecuted`` and ``Rejected`` payloads are decoded.
"""

from __future__ import annotations

from collections import deque

from openperps.core.engine import Engine
from openperps.core.errors import ErrorCode, OpenPerpsError
from openperps.core.events import CommandExecuted, Event, Rejected, decode_event, encode_event


class ReplayDiverged(OpenPerpsError):
    """The log and the engine disagree: a gap, a foreign event, or different effects."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.REPLAY_DIVERGED, detail)


class Replayer:
    def __init__(self, engine: Engine, *, verify_bytes: bool = False) -> None:
        self.engine = engine
        self.verify_bytes = verify_bytes
        self._effects: deque[Event] = deque()
        self.commands = 0

    def apply(self, version: int, kind: str, payload: bytes) -> None:
        """Apply one logged event (its version, type tag and encoded body)."""
        engine = self.engine
        if self._effects:
            expected = self._effects.popleft()
            if expected.version != version or type(expected).__name__ != kind:
                raise ReplayDiverged(
                    f"version {version}: the log has {kind}, re-execution gave "
                    f"{type(expected).__name__} at {expected.version}"
                )
            if self.verify_bytes and encode_event(expected) != payload:
                raise ReplayDiverged(f"version {version}: {kind} differs from re-execution")
            return
        if version <= engine.version:
            return  # already part of the state we started from
        if version != engine.version + 1:
            raise ReplayDiverged(f"gap in the log: version {version} after {engine.version}")
        if kind == "CommandExecuted":
            event = decode_event(payload)
            assert isinstance(event, CommandExecuted)
            produced = engine.handle(event.command)
            if not produced or not isinstance(produced[0], CommandExecuted):
                refusal = produced[0] if produced and isinstance(produced[0], Rejected) else None
                why = f" ({refusal.code}: {refusal.detail})" if refusal else ""
                raise ReplayDiverged(
                    f"version {version}: the journaled {type(event.command).__name__} is refused "
                    f"by this engine{why}; the log was written under other rules, by another "
                    "version of OpenPerps: run that version, or start a new log (--db)"
                )
            if produced[0].version != version:
                raise ReplayDiverged(f"version {version}: re-execution started elsewhere")
            self._effects.extend(produced[1:])
            self.commands += 1
        elif kind == "Rejected":
            event = decode_event(payload)
            assert isinstance(event, Rejected)
            engine.skip_rejection(version, event.timestamp)
        else:
            raise ReplayDiverged(f"version {version}: {kind} without the command that caused it")

    def finish(self) -> None:
        """The log must not end in the middle of a command's effects."""
        if self._effects:
            raise ReplayDiverged(
                f"the log ends before version {self._effects[-1].version}, mid-command"
            )


def replay_events(engine: Engine, events: list[Event], *, verify_bytes: bool = True) -> Engine:
    """Replay decoded events (tests, tools); the log's path is ``Replayer.apply``."""
    replayer = Replayer(engine, verify_bytes=verify_bytes)
    for event in events:
        replayer.apply(event.version, type(event).__name__, encode_event(event))
    replayer.finish()
    return engine
