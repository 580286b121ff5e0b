"""Bad input at the engine boundary is refused with a code and changes nothing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.errors import ErrorCode
from openperps.core.markets import default_markets
from openperps.core.snapshot import EngineSnapshot
from tests.core.harness import ALICE, APT, BOB, Exchange, rejected


def business_state(engine: Engine) -> EngineSnapshot:
    """The snapshot without the counters a rejection itself advances."""
    return msgspec.structs.replace(engine.snapshot(), version=0, last_timestamp=0)


@pytest.fixture
def x() -> Exchange:
    x = Exchange()
    x.deposit(ALICE, "1000")
    x.deposit(BOB, "1000")
    x.limit(BOB, "open short", "5", "7.000")
    x.limit(ALICE, "open long", "1", "6.000")
    return x


def limit(x: Exchange, **overrides: Any) -> c.PlaceLimitOrder:
    fields: dict[str, Any] = dict(
        timestamp=x.tick(),
        profile=ALICE,
        market_id=APT,
        trade_side=True,
        direction=False,
        size=x.sz("1"),
        price=x.px("6.5"),
        leverage=10,
    )
    fields.update(overrides)
    return c.PlaceLimitOrder(**fields)


NAN = float("nan")
CASES = [
    ("zero size", {"size": 0}, ErrorCode.INVALID_SIZE),
    ("negative size", {"size": -100}, ErrorCode.INVALID_SIZE),
    ("size off the lot grid", {"size": 1}, ErrorCode.SIZE_BELOW_MINIMUM),
    ("size below minimum", {"size": 5}, ErrorCode.SIZE_BELOW_MINIMUM),
    ("size above maximum", {"size": 10**12}, ErrorCode.SIZE_ABOVE_MAXIMUM),
    ("float size", {"size": 100.0}, ErrorCode.INVALID_NUMBER),
    ("NaN size", {"size": NAN}, ErrorCode.INVALID_NUMBER),
    ("bool size", {"size": True}, ErrorCode.INVALID_NUMBER),
    ("size past 64 bits", {"size": 2**64}, ErrorCode.INVALID_NUMBER),
    ("string size", {"size": "100"}, ErrorCode.INVALID_NUMBER),
    ("zero price", {"price": 0}, ErrorCode.INVALID_PRICE),
    ("negative price", {"price": -7000}, ErrorCode.INVALID_PRICE),
    ("float price", {"price": 6.5}, ErrorCode.INVALID_NUMBER),
    ("NaN price", {"price": NAN}, ErrorCode.INVALID_NUMBER),
    ("price past 64 bits", {"price": 2**70}, ErrorCode.INVALID_NUMBER),
    ("unknown market", {"market_id": 999}, ErrorCode.MARKET_NOT_FOUND),
    ("market id as string", {"market_id": "1338"}, ErrorCode.MARKET_NOT_FOUND),
    ("leverage 0", {"leverage": 0}, ErrorCode.INVALID_LEVERAGE),
    ("leverage above max", {"leverage": 21}, ErrorCode.INVALID_LEVERAGE),
    ("float leverage", {"leverage": 10.0}, ErrorCode.INVALID_NUMBER),
    ("leverage past 64 bits", {"leverage": 2**64}, ErrorCode.INVALID_NUMBER),
    ("restriction 4", {"restriction": 4}, ErrorCode.INVALID_RESTRICTION),
    ("float restriction", {"restriction": 1.0}, ErrorCode.INVALID_RESTRICTION),
    ("side not a bool", {"trade_side": 1}, ErrorCode.INVALID_FLAG),
    ("direction not a bool", {"direction": None}, ErrorCode.INVALID_FLAG),
    ("malformed profile", {"profile": "0x1234"}, ErrorCode.INVALID_ADDRESS),
    ("upper-case profile", {"profile": "0x" + "A1" * 32}, ErrorCode.INVALID_ADDRESS),
    ("profile not a string", {"profile": 42}, ErrorCode.INVALID_ADDRESS),
    ("take-profit off grid", {"take_profit": 6.9}, ErrorCode.INVALID_NUMBER),
    ("timestamp float", {"timestamp": 1.5}, ErrorCode.INVALID_NUMBER),
    ("timestamp negative", {"timestamp": -1}, ErrorCode.INVALID_NUMBER),
    ("timestamp going back", {"timestamp": 5}, ErrorCode.TIMESTAMP_REGRESSED),
]


@pytest.mark.parametrize(("what", "overrides", "code"), CASES, ids=[case[0] for case in CASES])
def test_bad_order_input_is_refused_and_changes_nothing(
    x: Exchange, what: str, overrides: dict[str, Any], code: ErrorCode
) -> None:
    before = business_state(x.engine)
    version = x.engine.version
    events = x.engine.handle(limit(x, **overrides))
    assert rejected(events) == code, what
    assert events[0].version == version + 1
    assert business_state(x.engine) == before


def test_unknown_orders_and_commands_are_refused(x: Exchange) -> None:
    before = business_state(x.engine)
    cancel = c.CancelOrder(timestamp=x.tick(), profile=ALICE, market_id=APT, order_id=77)
    assert rejected(x.engine.handle(cancel)) == ErrorCode.ORDER_NOT_FOUND
    cancel = c.CancelOrder(timestamp=x.tick(), profile=ALICE, market_id=APT, order_id="1")  # type: ignore[arg-type]
    assert rejected(x.engine.handle(cancel)) == ErrorCode.ORDER_NOT_FOUND
    assert rejected(x.engine.handle(c.Command(timestamp=x.tick()))) == ErrorCode.UNKNOWN_COMMAND
    assert rejected(x.engine.handle("not a command")) == ErrorCode.UNKNOWN_COMMAND  # type: ignore[arg-type]
    oracle = c.SetOraclePrice(timestamp=x.tick(), market_id=APT, price=float("inf"))  # type: ignore[arg-type]
    assert rejected(x.engine.handle(oracle)) == ErrorCode.INVALID_NUMBER
    oracle = c.SetOraclePrice(timestamp=x.tick(), market_id=APT, price=0)
    assert rejected(x.engine.handle(oracle)) == ErrorCode.INVALID_PRICE
    pause = c.PauseMarket(timestamp=x.tick(), market_id=APT, paused=1)  # type: ignore[arg-type]
    assert rejected(x.engine.handle(pause)) == ErrorCode.INVALID_FLAG
    assert business_state(x.engine) == before


def test_listing_markets_validates_the_configuration() -> None:
    engine = Engine(default_markets())
    apt = engine.markets[APT].config
    dup = engine.handle(c.ListMarket(timestamp=1, market=apt))
    assert rejected(dup) == ErrorCode.MARKET_EXISTS
    bad = msgspec.structs.replace(apt, market_id=77, tick=0)
    assert rejected(engine.handle(c.ListMarket(timestamp=1, market=bad))) == 2022
    new = msgspec.structs.replace(apt, market_id=77, symbol="NEW-USD")
    listed = engine.handle(c.ListMarket(timestamp=1, market=new))
    assert isinstance(listed[0], e.CommandExecuted) and isinstance(listed[1], e.MarketListed)
    assert 77 in engine.markets
    junk = c.ListMarket(timestamp=1, market="APT")  # type: ignore[arg-type]
    assert rejected(engine.handle(junk)) == 2022
    floaty = msgspec.structs.replace(apt, market_id=78, tick=1.0)
    assert rejected(engine.handle(c.ListMarket(timestamp=1, market=floaty))) == 2022
