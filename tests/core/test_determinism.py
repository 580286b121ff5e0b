"""One command log, one event log: byte for byte, hash for hash, with or without a snapshot."""

from __future__ import annotations

import msgspec
import pytest

from openperps.core import commands as c
from openperps.core.engine import Engine
from openperps.core.events import encode_event
from openperps.core.replay import replay_events
from tests.indexer.test_models import session


def recorded_commands(seed: int) -> list[c.Command]:
    """The commands of a seeded random session (listings, orders, prices, liquidations...)."""
    commands: list[c.Command] = []
    original = Engine.handle

    def recording(self: Engine, command: c.Command) -> list:  # type: ignore[type-arg]
        commands.append(command)
        return original(self, command)

    Engine.handle = recording  # type: ignore[method-assign]
    try:
        session(seed, steps=1200)
    finally:
        Engine.handle = original  # type: ignore[method-assign]
    return commands


def run(commands: list[c.Command], engine: Engine | None = None) -> tuple[Engine, list[bytes]]:
    engine = engine or Engine([])
    out = [encode_event(ev) for command in commands for ev in engine.handle(command)]
    return engine, out


@pytest.fixture(scope="module", params=[21, 22])
def commands(request: pytest.FixtureRequest) -> list[c.Command]:
    return recorded_commands(request.param)


def test_the_same_commands_give_byte_identical_events_and_hashes(
    commands: list[c.Command],
) -> None:
    first, log1 = run(commands)
    second, log2 = run(commands)
    assert log1 == log2 and len(log1) > 1000
    assert first.state_hash() == second.state_hash()


def test_a_command_log_stored_as_json_replays_the_same(commands: list[c.Command]) -> None:
    stored = msgspec.json.encode(commands)
    decoded = msgspec.json.decode(stored, type=list[c.AnyCommand])
    original, log1 = run(commands)
    again, log2 = run(list(decoded))
    assert log1 == log2 and original.state_hash() == again.state_hash()


def test_a_snapshot_restored_and_fed_the_rest_gives_the_same_state(
    commands: list[c.Command],
) -> None:
    full, log = run(commands)
    for cut in (1, len(commands) // 3, len(commands) // 2, len(commands) - 1):
        head, head_log = run(commands[:cut])
        restored = Engine.restore(head.snapshot_bytes())
        assert restored.state_hash() == head.state_hash()
        tail_engine, tail_log = run(commands[cut:], restored)
        assert head_log + tail_log == log
        assert tail_engine.state_hash() == full.state_hash()


def test_the_event_log_alone_rebuilds_the_state(commands: list[c.Command]) -> None:
    full = Engine([])
    events = [ev for command in commands for ev in full.handle(command)]
    rebuilt = replay_events(Engine([]), events)
    assert rebuilt.state_hash() == full.state_hash()
