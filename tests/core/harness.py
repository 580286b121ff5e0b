"""A small driver for engine tests: human units in, events out, invariants checked always.

Prices, sizes and amounts are written as decimal strings in human units (``"7.000"``,
``"10"``, ``"1000"``) and converted with the market's scales, so a test reads like the rules
file. Every command's events are checked for gap-free versions, and the rules file's
invariants are checked after every command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import Engine
from openperps.core.invariants import version_gaps, violations
from openperps.core.markets import MarketConfig, default_markets
from openperps.core.numbers import QUOTE_DECIMALS, parse_decimal

APT = 1338  # price 0.001, size 0.01
BTC = 1339
ALICE = "0x" + "a1" * 32
BOB = "0x" + "b2" * 32
CAROL = "0x" + "c3" * 32
KEEPER = "0x" + "d4" * 32

E = TypeVar("E", bound=e.Event)


class Exchange:
    def __init__(self, markets: list[MarketConfig] | None = None) -> None:
        self.engine = Engine(markets if markets is not None else default_markets())
        self.now = 1_000_000
        self.log: list[e.Event] = []

    # -- units -------------------------------------------------------------------------------
    def market(self, market_id: int = APT) -> MarketConfig:
        return self.engine.markets[market_id].config

    def px(self, text: str, market_id: int = APT) -> int:
        return parse_decimal(text, self.market(market_id).price_decimals)

    def sz(self, text: str, market_id: int = APT) -> int:
        return parse_decimal(text, self.market(market_id).size_decimals)

    @staticmethod
    def usd(text: str) -> int:
        return parse_decimal(text, QUOTE_DECIMALS)

    # -- driving -----------------------------------------------------------------------------
    def do(self, command: c.Command, *, check: bool = True) -> list[e.Event]:
        start = self.engine.version
        events = self.engine.handle(command)
        assert version_gaps(events, start) == []
        if check:
            assert violations(self.engine) == []
        self.log.extend(events)
        return events

    def tick(self, ms: int = 1) -> int:
        self.now += ms
        return self.now

    def mint(self, who: str, amount: str) -> list[e.Event]:
        """Credit the wallet of ``who``'s owner, as the faucet does."""
        return self.do(c.Mint(timestamp=self.tick(), profile=who, amount=self.usd(amount)))

    def deposit(self, who: str, amount: str, *, mint: bool = True) -> list[e.Event]:
        """Deposit into ``who``'s trading account; the Deposit's events. Mints the amount into
        the wallet first unless ``mint`` is False."""
        if mint:
            self.mint(who, amount)
        return self.do(c.Deposit(timestamp=self.tick(), profile=who, amount=self.usd(amount)))

    def withdraw(self, who: str, amount: str) -> list[e.Event]:
        return self.do(c.Withdraw(timestamp=self.tick(), profile=who, amount=self.usd(amount)))

    def limit(
        self,
        who: str,
        side: str,
        size: str,
        price: str,
        leverage: int = 10,
        *,
        market_id: int = APT,
        restriction: int = 0,
        tp: str | None = None,
        sl: str | None = None,
    ) -> list[e.Event]:
        trade_side, direction = SIDES[side]
        return self.do(
            c.PlaceLimitOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=market_id,
                trade_side=trade_side,
                direction=direction,
                size=self.sz(size, market_id),
                price=self.px(price, market_id),
                leverage=leverage,
                restriction=restriction,
                take_profit=self.px(tp, market_id) if tp else None,
                stop_loss=self.px(sl, market_id) if sl else None,
            )
        )

    def market_order(
        self,
        who: str,
        side: str,
        size: str,
        leverage: int = 10,
        *,
        market_id: int = APT,
        tp: str | None = None,
        sl: str | None = None,
    ) -> list[e.Event]:
        trade_side, direction = SIDES[side]
        return self.do(
            c.PlaceMarketOrder(
                timestamp=self.tick(),
                profile=who,
                market_id=market_id,
                trade_side=trade_side,
                direction=direction,
                size=self.sz(size, market_id),
                leverage=leverage,
                take_profit=self.px(tp, market_id) if tp else None,
                stop_loss=self.px(sl, market_id) if sl else None,
            )
        )

    def oracle(self, price: str, market_id: int = APT, *, advance: int = 1) -> list[e.Event]:
        return self.do(
            c.SetOraclePrice(
                timestamp=self.tick(advance), market_id=market_id, price=self.px(price, market_id)
            )
        )

    # -- reading -----------------------------------------------------------------------------
    def free(self, who: str) -> int:
        account = self.engine.accounts.get(who)
        return account.free if account else 0

    def wallet(self, who: str) -> int:
        return self.engine.wallet(who)

    def reserved(self, who: str) -> int:
        account = self.engine.accounts.get(who)
        return account.reserved if account else 0

    def position(self, who: str, long: bool = True, market_id: int = APT) -> Any:
        return self.engine.position(who, market_id, long)

    def order_ids(self, events: Sequence[e.Event]) -> list[int]:
        return [ev.order_id for ev in events if isinstance(ev, e.OrderAccepted)]


# side names: "open long" and so on, mapped to (trade_side, direction)
SIDES = {
    "open long": (True, False),
    "close long": (True, True),
    "open short": (False, False),
    "close short": (False, True),
}


def only(events: Sequence[e.Event], kind: type[E]) -> E:
    """The single event of a kind; fails when there is none or several."""
    found = [ev for ev in events if isinstance(ev, kind)]
    assert len(found) == 1, f"expected one {kind.__name__}, got {found}"
    return found[0]


def of(events: Sequence[e.Event], kind: type[E]) -> list[E]:
    return [ev for ev in events if isinstance(ev, kind)]


def rejected(events: Sequence[e.Event]) -> int:
    """The code of a command's single Rejected event."""
    assert len(events) == 1, f"a rejection is one event, got {events}"
    event = events[0]
    assert isinstance(event, e.Rejected), event
    return event.code
