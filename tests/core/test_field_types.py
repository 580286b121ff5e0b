"""Every field of every command, given a value of the wrong type, is refused with a code and
changes nothing, whichever build of the engine runs (compiled or pure Python)."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core import is_compiled
from openperps.core.errors import ErrorCode
from tests.core.harness import ALICE, APT, BOB, Exchange
from tests.core.test_validation import business_state

# a well-formed example of every command; each test below breaks one field of one of them
T = 10**12  # far enough ahead of the harness's clock


def order(**overrides: Any) -> c.PlaceLimitOrder:
    fields: dict[str, Any] = {
        "timestamp": T,
        "profile": ALICE,
        "market_id": APT,
        "trade_side": True,
        "direction": False,
        "size": 100,
        "price": 6_500,
        "leverage": 10,
    }
    return c.PlaceLimitOrder(**(fields | overrides))


def examples() -> list[c.Command]:
    market = msgspec.structs.replace(Exchange().market(APT), market_id=99, symbol="NEW-USD")
    taker = c.PlaceMarketOrder(
        timestamp=T,
        profile=ALICE,
        market_id=APT,
        trade_side=True,
        direction=False,
        size=100,
        leverage=10,
    )
    return [
        c.Mint(timestamp=T, profile=ALICE, amount=10**6),
        c.Deposit(timestamp=T, profile=ALICE, amount=10**6),
        c.Withdraw(timestamp=T, profile=ALICE, amount=10**6),
        order(take_profit=7_500, stop_loss=5_500, restriction=c.Restriction.POST_ONLY),
        taker,
        c.CancelOrder(timestamp=T, profile=ALICE, market_id=APT, order_id=1),
        c.PlaceMultipleOrders(timestamp=T, profile=ALICE, orders=[order(), taker]),
        c.CancelMultipleOrders(timestamp=T, profile=ALICE, market_id=APT, order_ids=[1, 2]),
        c.CancelAndPlaceMultipleOrders(
            timestamp=T, profile=ALICE, market_id=APT, cancel_order_ids=[1], orders=[order()]
        ),
        c.UpdateTakeProfit(timestamp=T, profile=ALICE, market_id=APT, trade_side=True, price=1),
        c.UpdateStopLoss(timestamp=T, profile=ALICE, market_id=APT, trade_side=True, price=1),
        c.AddMargin(timestamp=T, profile=ALICE, market_id=APT, trade_side=True, amount=1),
        c.CollapsePosition(timestamp=T, profile=ALICE, market_id=APT),
        c.EnableDelegation(
            timestamp=T, profile=ALICE, delegate_public_key="0x" + "ab" * 32, expires_at=T + 1
        ),
        c.DisableDelegation(timestamp=T, profile=ALICE),
        c.SetOraclePrice(timestamp=T, market_id=APT, price=7_000),
        c.SettleFunding(timestamp=T, market_id=APT),
        c.Liquidate(timestamp=T, profile=ALICE, market_id=APT, trade_side=True, liquidator=BOB),
        c.ListMarket(timestamp=T, market=market),
        c.PauseMarket(timestamp=T, market_id=APT, paused=True),
    ]


def wrong_values(kind: int) -> list[Any]:
    """Values of the wrong type for a field of this kind (commands.FIELD_KINDS)."""
    numbers: list[Any] = [1.0, True, "1", None, [1]]
    return {
        c.INT: numbers,
        c.OPT_INT: [1.0, False, "1", [1]],
        c.BOOL: [1, 0, "true", None, 1.0],
        # a lone surrogate is a str the log cannot hold (not UTF-8 encodable)
        c.STR: [1, None, b"0x01", True, "\ud800"],
        c.OPT_STR: [1, b"0x01", True, "0x\udc00"],
        c.RESTRICTION: [1.0, True, "1", None],
        c.INT_LIST: [1, (1,), [1.0], [True], ["1"], None],
        c.STRUCT: ["APT", 1, None, {"market_id": 99}],
        c.STRUCT_LIST: [None, (), [1], [{"size": 1}]],
    }[kind]


def cases() -> list[tuple[str, str, c.Command]]:
    """(what is broken, the path the refusal names, the command)."""
    found: list[tuple[str, str, c.Command]] = []
    for example in examples():
        for name, kind, _ in c.FIELD_KINDS[type(example)]:
            for value in wrong_values(kind):
                broken = msgspec.structs.replace(example, **{name: value})
                # a list of structs with a wrong item names the item
                path = f"{name}[0]" if kind == c.STRUCT_LIST and value else name
                found.append((f"{type(example).__name__}.{name}={value!r}", path, broken))
    # one level down: a field of an order inside a batch, a field of a listed market's config
    batch = examples()[6]
    assert isinstance(batch, c.PlaceMultipleOrders)
    for name, kind, _ in c.FIELD_KINDS[c.PlaceLimitOrder]:
        for value in wrong_values(kind):
            bad = msgspec.structs.replace(batch.orders[0], **{name: value})
            found.append(
                (
                    f"batch order {name}={value!r}",
                    f"orders[0].{name}",
                    msgspec.structs.replace(batch, orders=[bad]),
                )
            )
    listing = examples()[18]
    assert isinstance(listing, c.ListMarket)
    for name, kind, _ in c.FIELD_KINDS[type(listing.market)]:
        config = msgspec.structs.replace(listing.market, **{name: wrong_values(kind)[0]})
        found.append(
            (
                f"market config {name}",
                f"market.{name}",
                msgspec.structs.replace(listing, market=config),
            )
        )
    return found


CASES = cases()


def funded() -> Exchange:
    x = Exchange()
    x.deposit(ALICE, "1000")
    x.deposit(BOB, "1000")
    x.limit(BOB, "open short", "5", "7.000")
    x.limit(ALICE, "open long", "1", "6.000")
    return x


def test_every_field_kind_is_covered() -> None:
    kinds = {kind for table in c.FIELD_KINDS.values() for _, kind, _ in table}
    assert kinds == set(range(9))
    assert set(c.FIELD_KINDS) >= set(typing.get_args(c.AnyCommand))
    assert {type(example) for example in examples()} == set(typing.get_args(c.AnyCommand))
    assert len(CASES) > 300


def test_the_well_formed_examples_pass_the_type_check() -> None:
    x = funded()
    for example in examples():
        events = x.engine.handle(example)
        refused = [ev for ev in events if isinstance(ev, e.Rejected)]
        # they may break a rule (nothing to cancel, ...), never the type check
        assert not any("wrong type" in ev.detail for ev in refused), (example, refused)


@pytest.mark.parametrize(("what", "path", "command"), CASES, ids=[what for what, _, _ in CASES])
def test_a_wrongly_typed_field_is_refused_and_changes_nothing(
    what: str, path: str, command: c.Command
) -> None:
    x = funded()
    before = business_state(x.engine)
    version = x.engine.version
    events = x.engine.handle(command)
    assert len(events) == 1 and isinstance(events[0], e.Rejected), what
    assert events[0].version == version + 1
    assert events[0].code in {int(code) for code in ErrorCode}, what
    assert events[0].detail == f"{path} has the wrong type", what
    assert business_state(x.engine) == before, what


# -- the compiled and the pure engine agree, event for event ----------------------------------

DIFFERENTIAL = """
import sys
from openperps.core import is_compiled
from openperps.core.events import encode_event
from tests.core.test_field_types import CASES, funded, examples

assert is_compiled() is (sys.argv[1] == "compiled"), "wrong build loaded"
x = funded()
for command in [*examples(), *(command for _, _, command in CASES)]:
    for event in x.engine.handle(command):
        sys.stdout.write(encode_event(event).decode() + "\\n")
sys.stdout.write(x.engine.state_hash() + "\\n")
"""


def run_build(build: str) -> list[str]:
    env = dict(os.environ, OPENPERPS_PURE="1" if build == "pure" else "0")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", DIFFERENTIAL, build],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


@pytest.mark.skipif(not is_compiled(), reason="the engine is installed pure (no compiler)")
def test_compiled_and_pure_engines_write_the_same_log() -> None:
    compiled, pure = run_build("compiled"), run_build("pure")
    assert len(compiled) > len(CASES)
    assert compiled == pure


def test_ci_runs_the_compiled_engine() -> None:
    """CI installs with a C compiler, so the fast build must be what it tests."""
    if os.environ.get("CI") != "true":
        pytest.skip("checked in CI only")
    assert is_compiled()
