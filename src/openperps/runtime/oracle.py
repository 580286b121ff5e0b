"""Oracle sources: where index prices come from.

- ``RandomWalkOracle``: a seeded random walk per market from realistic starting prices, in
  integer price units (the default, and the demo's).
- ``CsvOracle``: a replay of timestamped prices from a CSV file
  (``timestamp_ms,market,price`` with the market as id or symbol and the price a decimal
  string), for researchers replaying a market and for reproducible runs.
- Prices pushed by an operator go through the admin API straight to the sequencer.

Each source yields ``(timestamp_ms | None, market_id, price)``; the runtime turns them into
``SetOraclePrice`` commands, so prices are in the log like everything else.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from openperps.core.errors import ErrorCode, InvalidInput
from openperps.core.markets import MarketConfig
from openperps.core.numbers import BPS_ONE, parse_decimal, parse_id

# where each market's walk starts, in human units
START_PRICES = {"APT-USD": "5.20", "BTC-USD": "91000", "ETH-USD": "3050", "SOL-USD": "142"}


@dataclass(frozen=True)
class Tick:
    timestamp: int | None  # None: stamp with the sequencer's clock
    market_id: int
    price: int


class RandomWalkOracle:
    """Each step moves every market by a whole number of basis points, pulled back gently
    towards its start so a long demo stays near realistic prices, with an occasional jump."""

    def __init__(
        self,
        markets: list[MarketConfig],
        *,
        seed: int = 1,
        step_bps: int = 8,
        jump_bps: int = 400,
        jump_every: int = 240,
    ) -> None:
        """``jump_every``: on average one step in that many also jumps by up to ``jump_bps``
        (a news move: what makes leveraged positions go under now and then)."""
        self.rng = random.Random(seed)
        self.step_bps = step_bps
        self.jump_bps = jump_bps
        self.jump_every = jump_every
        self.markets = list(markets)
        self.start: dict[int, int] = {}
        self.prices: dict[int, int] = {}
        for market in self.markets:
            text = START_PRICES.get(market.symbol, "100")
            price = parse_decimal(text, market.price_decimals)
            price -= price % market.tick
            self.start[market.market_id] = self.prices[market.market_id] = max(price, market.tick)

    def step(self) -> list[Tick]:
        ticks = []
        for market in self.markets:
            mid = market.market_id
            price = self.prices[mid]
            move = self.rng.randint(-self.step_bps, self.step_bps)
            if self.jump_every and self.rng.randrange(self.jump_every) == 0:
                move += self.rng.choice((-1, 1)) * self.rng.randint(
                    self.jump_bps // 2, self.jump_bps
                )
            # mean reversion: a quarter of a step towards the start per 10 % away from it
            away_bps = (price - self.start[mid]) * BPS_ONE // self.start[mid]
            move -= away_bps // 400
            price = price * (BPS_ONE + move) // BPS_ONE
            price -= price % market.tick
            price = max(price, market.tick)
            self.prices[mid] = price
            ticks.append(Tick(None, mid, price))
        return ticks


def _is_header(row: list[str]) -> bool:
    """A header names its columns: three cells, neither the first nor the last a number (a
    mistyped timestamp on the first line is an error, not a header)."""
    if len(row) != 3:
        return False
    first, _market, last = (cell.strip() for cell in row)
    return parse_id(first) is None and not _numeric(first) and not _numeric(last)


def _numeric(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def read_csv_prices(path: Path, markets: list[MarketConfig]) -> Iterator[Tick]:
    """Ticks from a CSV of ``timestamp_ms,market,price``; ``#`` comments and a header row
    (before the first tick) are allowed, and a UTF-8 byte-order mark is ignored."""
    by_key: dict[str, MarketConfig] = {}
    for config in markets:
        by_key[str(config.market_id)] = config
        by_key[config.symbol.lower()] = config
    last = -1
    first = True
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if first:
                first = False
                if _is_header(row):
                    continue
            if len(row) != 3:
                raise InvalidInput(
                    ErrorCode.INVALID_NUMBER, f"{path}:{line_no}: expected timestamp,market,price"
                )
            stamp_text, key, price_text = (cell.strip() for cell in row)
            market = by_key.get(key.lower())
            if market is None:
                raise InvalidInput(ErrorCode.MARKET_NOT_FOUND, f"{path}:{line_no}: market {key}")
            parsed = parse_id(stamp_text)
            if parsed is None:
                raise InvalidInput(ErrorCode.INVALID_NUMBER, f"{path}:{line_no}: bad timestamp")
            stamp = parsed
            if stamp < last:
                raise InvalidInput(
                    ErrorCode.TIMESTAMP_REGRESSED, f"{path}:{line_no}: timestamps go back"
                )
            last = stamp
            try:
                price = parse_decimal(price_text, market.price_decimals, what="price")
            except InvalidInput as exc:
                raise InvalidInput(exc.code, f"{path}:{line_no}: {exc.detail}") from None
            if price <= 0:
                raise InvalidInput(ErrorCode.INVALID_PRICE, f"{path}:{line_no}: price not positive")
            yield Tick(stamp, market.market_id, price)
