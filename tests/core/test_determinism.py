"""One command log, one event log: byte for byte, hash for hash, with or without a snapshot.

The command log is recorded from a seeded ``random.Random`` session on a fresh exchange: it
lists the markets itself, then mints into wallets and deposits (some above the wallet), orders
of every kind (opening and reducing, all restrictions, market orders, TP/SL, batches),
cancels, oracle moves with the liquidations they cause, funding settled when due, delegation,
pauses and withdrawals. The recorder consults its
own engine only to choose sensible commands (which orders to cancel, who is liquidatable).

Replaying that log must give, every time: the same encoded events (``encode_event``), the
same ``state_hash()``; from a snapshot taken anywhere, the same remaining events and the same
final hash; from the log stored as JSON, the same events; in another process with another
string-hash seed, the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.errors import ErrorCode
from openperps.core.events import decode_event, encode_event
from openperps.core.invariants import version_gaps, violations
from openperps.core.markets import default_markets
from openperps.core.replay import replay_events

APT, BTC = 1338, 1339
STEP = {APT: 1, BTC: 100}
TRADERS = [f"0x{0xE000 + i:064x}" for i in range(6)]
MAKER = f"0x{0xE100:064x}"
KEEPER = f"0x{0xE200:064x}"
DELEGATE = "0x" + "5d" * 32
T0 = 1_700_000_000_000

_commands = msgspec.json.Encoder()
_command_log = msgspec.json.Decoder(list[c.AnyCommand])


def record(seed: int, steps: int = 1500) -> list[c.AnyCommand]:
    """The commands of a seeded random session, in the order the sequencer stamped them."""
    rng = random.Random(seed)
    engine = Engine([], timestamp=T0)
    log: list[c.AnyCommand] = []
    now = T0
    mids = {APT: 7_000, BTC: 900_000}

    def run(command: c.AnyCommand) -> list[e.Event]:
        log.append(command)
        return engine.handle(command)

    def order(
        who: str, market: int, *, market_order: bool = False, reduce: bool = False
    ) -> c.PlaceLimitOrder | c.PlaceMarketOrder:
        config = engine.markets[market].config
        long = rng.random() < 0.5
        pos = engine.position(who, market, long)
        if reduce and pos is None:
            reduce = False
        size = config.min_size * rng.choice([1, 2, 3, 5, 10, 20, 50, 200])
        leverage = rng.choice([2, 5, 10, 20])
        slot = engine.markets[market].slots.get((who, long))
        if slot is not None and (slot.size or slot.pending_open):
            leverage = slot.leverage
        tp = sl = None
        if reduce:
            assert pos is not None
            free = pos.size - pos.pending_reduce
            size = max(min(size, free), config.min_size) if rng.random() < 0.7 else pos.size
        elif rng.random() < 0.2:
            away = rng.randint(5, 40) * STEP[market]
            tp = mids[market] + away if long else mids[market] - away
            sl = mids[market] - away if long else mids[market] + away
        if market_order:
            return c.PlaceMarketOrder(
                timestamp=now,
                profile=who,
                market_id=market,
                trade_side=long,
                direction=reduce,
                size=size,
                leverage=leverage,
                take_profit=tp,
                stop_loss=sl,
            )
        return c.PlaceLimitOrder(
            timestamp=now,
            profile=who,
            market_id=market,
            trade_side=long,
            direction=reduce,
            size=size,
            price=mids[market] + rng.randint(-25, 25) * STEP[market],
            leverage=leverage,
            restriction=rng.choice([0, 0, 0, 0, 1, 2, 3]),
            take_profit=tp,
            stop_loss=sl,
        )

    def liquidate(market: int) -> None:
        for _ in range(10):
            due = engine.liquidatable(market)
            if not due:
                return
            for profile, side in due:
                run(
                    c.Liquidate(
                        timestamp=now,
                        profile=profile,
                        market_id=market,
                        trade_side=side,
                        liquidator=KEEPER,
                    )
                )

    for config in default_markets():
        run(c.ListMarket(timestamp=now, market=config))

    def deposit(who: str, amount: int) -> None:
        run(c.Mint(timestamp=now, profile=who, amount=amount))
        run(c.Deposit(timestamp=now, profile=who, amount=amount))

    for who in TRADERS:
        deposit(who, rng.randint(200, 8_000) * 10**6)
    deposit(MAKER, 10**13)
    for market, price in mids.items():
        run(c.SetOraclePrice(timestamp=now, market_id=market, price=price))
    for _ in range(steps):
        now += rng.randint(1, 5_000)
        market = rng.choice([APT, BTC])
        who = rng.choice(TRADERS)
        roll = rng.random()
        if roll < 0.35:
            run(order(who, market, reduce=rng.random() < 0.3))
        elif roll < 0.47:
            run(order(who, market, market_order=True, reduce=rng.random() < 0.4))
        elif roll < 0.55:  # the maker quotes a few levels around the mid
            levels: list[c.PlaceLimitOrder | c.PlaceMarketOrder] = [
                c.PlaceLimitOrder(
                    timestamp=now,
                    profile=MAKER,
                    market_id=market,
                    trade_side=long,
                    direction=False,
                    size=engine.markets[market].config.min_size * 30 * level,
                    price=mids[market] + (-2 if long else 2) * level * STEP[market],
                    leverage=5,
                )
                for level in (1, 2, 3)
                for long in (True, False)
            ]
            run(c.PlaceMultipleOrders(timestamp=now, profile=MAKER, orders=levels))
        elif roll < 0.68:
            mine = sorted(
                o.order_id for o in engine.markets[market].book.orders.values() if o.profile == who
            )
            maker = sorted(
                o.order_id
                for o in engine.markets[market].book.orders.values()
                if o.profile == MAKER
            )
            if mine and rng.random() < 0.6:
                run(
                    c.CancelOrder(
                        timestamp=now, profile=who, market_id=market, order_id=rng.choice(mine)
                    )
                )
            elif maker:
                run(
                    c.CancelMultipleOrders(
                        timestamp=now, profile=MAKER, market_id=market, order_ids=maker[:20]
                    )
                )
        elif roll < 0.71:
            mine = sorted(
                o.order_id for o in engine.markets[market].book.orders.values() if o.profile == who
            )
            run(
                c.CancelAndPlaceMultipleOrders(
                    timestamp=now,
                    profile=who,
                    market_id=market,
                    cancel_order_ids=mine[:3],
                    orders=[order(who, market) for _ in range(rng.randint(1, 4))],
                )
            )
        elif roll < 0.83:
            # a shock now and then: the maker pulls out and the index jumps
            jump = 6 if rng.random() < 0.1 else 1
            mids[market] += rng.randint(-60, 60) * jump * STEP[market]
            run(c.SetOraclePrice(timestamp=now, market_id=market, price=mids[market]))
            liquidate(market)
        elif roll < 0.86:
            state = engine.markets[market]
            now = max(now, state.interval_start + state.config.funding_interval_ms)
            run(c.SettleFunding(timestamp=now, market_id=market))
            liquidate(market)
        elif roll < 0.89:
            if rng.random() < 0.2:  # more than the wallet holds: refused
                wallet = engine.wallet(who)
                run(c.Deposit(timestamp=now, profile=who, amount=wallet + 1))
            else:
                deposit(who, rng.randint(1, 3_000) * 10**6)
        elif roll < 0.91:
            run(c.Withdraw(timestamp=now, profile=who, amount=rng.randint(1, 1_000) * 10**6))
        elif roll < 0.94:
            long = rng.random() < 0.5
            pos = engine.position(who, market, long)
            mark = engine.markets[market].mark_price() or mids[market]
            away = rng.randint(3, 50) * STEP[market]
            if rng.random() < 0.5:
                run(
                    c.UpdateTakeProfit(
                        timestamp=now,
                        profile=who,
                        market_id=market,
                        trade_side=long,
                        price=mark + away if long else mark - away,
                    )
                )
            elif pos is not None:
                run(
                    c.AddMargin(
                        timestamp=now,
                        profile=who,
                        market_id=market,
                        trade_side=long,
                        amount=rng.randint(1, 50) * 10**6,
                    )
                )
            else:
                run(
                    c.UpdateStopLoss(
                        timestamp=now,
                        profile=who,
                        market_id=market,
                        trade_side=long,
                        price=mark - away if long else mark + away,
                    )
                )
        elif roll < 0.96:
            run(c.CollapsePosition(timestamp=now, profile=who, market_id=market))
        elif roll < 0.98:
            run(
                c.EnableDelegation(
                    timestamp=now,
                    profile=who,
                    delegate_public_key=DELEGATE,
                    expires_at=now + rng.randint(1, 60_000),
                )
            )
            now += rng.randint(0, 30_000)
            run(msgspec.structs.replace(order(who, market), timestamp=now, delegate=DELEGATE))
        else:
            run(c.PauseMarket(timestamp=now, market_id=market, paused=True))
            run(order(who, market))  # refused: paused
            run(c.PauseMarket(timestamp=now, market_id=market, paused=False))
    return log


def replay(
    commands: list[c.AnyCommand], engine: Engine | None = None
) -> tuple[Engine, list[bytes]]:
    """Feed commands to an engine (a fresh, empty one by default); the encoded events."""
    engine = engine if engine is not None else Engine([], timestamp=T0)
    return engine, [encode_event(ev) for command in commands for ev in engine.handle(command)]


@pytest.fixture(scope="module", params=[3, 11])
def commands(request: pytest.FixtureRequest) -> list[c.AnyCommand]:
    return record(request.param)


def test_the_session_is_realistic(commands: list[c.AnyCommand]) -> None:
    """The log exercises what determinism could break on, and it is a valid history."""
    engine = Engine([], timestamp=T0)
    events = []
    for command in commands:
        start = engine.version
        produced = engine.handle(command)
        assert version_gaps(produced, start) == []
        events += produced
    assert violations(engine) == []
    kinds = Counter(type(ev).__name__ for ev in events)
    assert kinds["CommandExecuted"] > 2 * kinds["Rejected"], kinds
    for kind, least in (
        ("TradeExecuted", 300),
        ("OrderCancelled", 200),
        ("PositionLiquidated", 3),
        ("FundingSettled", 10),
        ("TpSlTriggered", 1),
        ("PositionsCollapsed", 1),
        ("MarginAdded", 1),
        ("DelegationEnabled", 1),
        ("MarketPaused", 2),
        ("Withdrawn", 1),
        ("Minted", 10),
    ):
        assert kinds[kind] >= least, (kind, kinds)
    assert any(isinstance(ev, e.FundingSettled) and ev.payments for ev in events)
    assert any(isinstance(ev, e.PositionLiquidated) and ev.taken_over_size for ev in events)
    short_wallet = int(ErrorCode.INSUFFICIENT_WALLET_BALANCE)
    assert any(isinstance(ev, e.Rejected) and ev.code == short_wallet for ev in events)


def test_the_same_commands_give_byte_identical_events_and_hashes(
    commands: list[c.AnyCommand],
) -> None:
    first, log1 = replay(commands)
    second, log2 = replay(commands)
    assert log1 == log2 and len(log1) > 5_000
    assert first.state_hash() == second.state_hash()
    assert first.snapshot_bytes() == second.snapshot_bytes()


def test_a_command_log_stored_as_json_replays_the_same(commands: list[c.AnyCommand]) -> None:
    stored = _commands.encode(commands)
    decoded = _command_log.decode(stored)
    assert decoded == commands
    assert _commands.encode(decoded) == stored  # and encodes back to the same bytes
    lines = [_commands.encode(command) for command in commands]  # one command a line
    one_by_one = [msgspec.json.decode(line, type=c.AnyCommand) for line in lines]
    original, log1 = replay(commands)
    again, log2 = replay(decoded)
    third, log3 = replay(one_by_one)
    assert log1 == log2 == log3
    assert original.state_hash() == again.state_hash() == third.state_hash()


def test_a_snapshot_restored_and_fed_the_rest_gives_the_same_events_and_hash(
    commands: list[c.AnyCommand],
) -> None:
    """Cut anywhere: the restored engine produces exactly the events the log goes on with."""
    full, log = replay(commands)
    engine = Engine([], timestamp=T0)
    done = emitted = 0
    for cut in (1, 7, len(commands) // 3, len(commands) // 2, len(commands) - 1):
        _, head = replay(commands[done:cut], engine)
        assert head == log[emitted : emitted + len(head)]
        done, emitted = cut, emitted + len(head)
        snapshot = engine.snapshot_bytes()
        restored = Engine.restore(snapshot)
        assert restored.version == engine.version
        assert restored.snapshot_bytes() == snapshot
        rest_engine, rest = replay(commands[cut:], restored)
        assert rest == log[emitted:]
        assert rest_engine.state_hash() == full.state_hash()


def test_the_event_log_alone_rebuilds_the_state(commands: list[c.AnyCommand]) -> None:
    full = Engine([], timestamp=T0)
    events = [ev for command in commands for ev in full.handle(command)]
    decoded: list[e.Event] = [decode_event(encode_event(ev)) for ev in events]
    assert decoded == events
    rebuilt = replay_events(Engine([], timestamp=T0), decoded)
    assert rebuilt.state_hash() == full.state_hash()


def test_another_process_with_another_hash_seed_gives_the_same_bytes(
    commands: list[c.AnyCommand], tmp_path: Path
) -> None:
    """Nothing may depend on str hashing (set order) or on the process: replay the stored
    log in a child process with a different PYTHONHASHSEED and compare digests."""
    path = tmp_path / "commands.json"
    path.write_bytes(_commands.encode(commands))
    engine, log = replay(commands)
    digest = hashlib.sha256(b"\n".join(log)).hexdigest()
    script = (
        "import hashlib, sys, msgspec\n"
        "from openperps.core import commands as c\n"
        "from openperps.core.engine import Engine\n"
        "from openperps.core.events import encode_event\n"
        "cmds = msgspec.json.decode(open(sys.argv[1], 'rb').read(), type=list[c.AnyCommand])\n"
        f"engine = Engine([], timestamp={T0})\n"
        "log = [encode_event(ev) for cmd in cmds for ev in engine.handle(cmd)]\n"
        "print(hashlib.sha256(b'\\n'.join(log)).hexdigest(), engine.state_hash())\n"
    )
    for seed in ("1", "4242"):
        out = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.split() == [digest, engine.state_hash()]
