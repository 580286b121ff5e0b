"""Replay by re-execution rebuilds the same state and checks the log against it."""

from __future__ import annotations

import msgspec
import pytest

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.events import encode_event
from openperps.core.markets import default_markets
from openperps.core.replay import ReplayDiverged, Replayer, replay_events
from tests.core.harness import ALICE, APT, BOB, CAROL, KEEPER, Exchange


def session() -> Exchange:
    x = Exchange()
    for who in (ALICE, BOB, CAROL, KEEPER):
        x.deposit(who, "1000")
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "10", sl="6.500")
    x.limit(ALICE, "open long", "1", "0")  # refused
    x.limit(CAROL, "open long", "10", "6.400")
    x.oracle("6.400")  # fires the stop-loss
    x.do(c.CancelMultipleOrders(timestamp=x.tick(), profile=BOB, market_id=APT, order_ids=[9]))
    return x


def test_replay_from_zero_gives_the_same_state() -> None:
    x = session()
    rebuilt = replay_events(Engine(default_markets()), x.log)
    assert rebuilt.state_hash() == x.engine.state_hash()
    assert rebuilt.version == x.engine.version


def test_replay_from_a_snapshot_skips_what_it_holds() -> None:
    x = session()
    middle = Engine.restore(x.engine.snapshot_bytes())
    x.oracle("6.300")
    x.deposit(ALICE, "5")
    rebuilt = replay_events(middle, x.log)  # fed from the start: the old part is skipped
    assert rebuilt.state_hash() == x.engine.state_hash()


def test_a_gap_a_foreign_event_and_a_torn_command_are_refused() -> None:
    x = session()
    log = x.log
    with pytest.raises(ReplayDiverged, match="gap"):
        replay_events(Engine(default_markets()), log[2:])
    with pytest.raises(ReplayDiverged, match="without the command"):
        replay_events(Engine(default_markets()), [*log[:2], e.Deposited(3, 0, ALICE, 1, 1)])
    torn = next(i for i, ev in enumerate(log) if isinstance(ev, e.TradeExecuted))
    with pytest.raises(ReplayDiverged, match="mid-command"):
        replay_events(Engine(default_markets()), log[:torn])


def test_effects_that_differ_from_re_execution_are_caught() -> None:
    x = session()
    log = list(x.log)
    i = next(i for i, ev in enumerate(log) if isinstance(ev, e.TradeExecuted))
    trade = log[i]
    assert isinstance(trade, e.TradeExecuted)
    log[i] = msgspec.structs.replace(trade, price=trade.price + 1)
    with pytest.raises(ReplayDiverged, match="differs"):
        replay_events(Engine(default_markets()), log)
    log[i] = e.MarketPaused(trade.version, trade.timestamp, APT, True)
    with pytest.raises(ReplayDiverged, match="MarketPaused"):
        replay_events(Engine(default_markets()), log)


def test_a_command_the_engine_now_refuses_is_caught() -> None:
    x = session()
    replayer = Replayer(Engine(default_markets()))
    bogus = e.CommandExecuted(1, 0, c.Withdraw(timestamp=0, profile=ALICE, amount=5))
    with pytest.raises(ReplayDiverged, match="refused") as raised:
        replayer.apply(1, "CommandExecuted", encode_event(bogus))
    assert x.engine.version > 0
    # the operator learns which command, the refusal's code, and what to do
    message = str(raised.value)
    assert "journaled Withdraw" in message and "1010" in message and "--db" in message


def test_a_deposit_journaled_before_wallets_existed_names_the_rule() -> None:
    """Logs written before deposits came from wallets hold deposits with no mint before them."""
    replayer = Replayer(Engine(default_markets()))
    old = e.CommandExecuted(1, 0, c.Deposit(timestamp=0, profile=ALICE, amount=5))
    with pytest.raises(ReplayDiverged, match=r"journaled Deposit .*2027"):
        replayer.apply(1, "CommandExecuted", encode_event(old))
