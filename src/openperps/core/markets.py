"""Markets: the per-market figures the rules depend on, loaded from configuration.

Nothing market-specific lives in code (exchange-rules.md, "Markets"): a market is a
``MarketConfig`` built from a ``[[market]]`` table of a TOML document, and the engine is
given a list of them. The packaged ``markets.toml`` holds the four Kana markets with their
mainnet and testnet ids; ``network`` picks which id a deployment uses.

All figures are integers in the units of ``core.numbers``: prices in 10**-price_decimals,
sizes in 10**-size_decimals, money in USDT micro-units.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any, Literal

import msgspec

from openperps.core.errors import ErrorCode, InvalidInput
from openperps.core.numbers import BPS_ONE, QUOTE_DECIMALS, RATE_ONE, parse_decimal

Network = Literal["mainnet", "testnet"]
MS_PER_8H = 8 * 3600 * 1000


class MarketConfig(msgspec.Struct, frozen=True, kw_only=True):
    market_id: int
    symbol: str
    price_decimals: int
    size_decimals: int
    tick: int
    lot: int
    min_size: int
    max_size: int
    max_position_value: int
    max_leverage: int
    maintenance_margin_bps: int
    maker_fee_bps: int
    taker_fee_bps: int
    funding_interval_ms: int
    funding_cap: int
    interest_per_interval: int

    @property
    def notional_multiplier(self) -> int:
        """Quote units per (price unit x size unit): notional = price * size * this."""
        return int(10 ** (QUOTE_DECIMALS - self.price_decimals - self.size_decimals))

    def validate(self) -> None:
        """Raise ``InvalidInput`` unless every figure is in range."""
        problems: list[str] = []
        if not 0 < self.market_id < 2**64:
            problems.append("market id must be a positive 64-bit integer")
        if self.price_decimals < 0 or self.size_decimals < 0:
            problems.append("decimals must not be negative")
        if self.price_decimals + self.size_decimals > QUOTE_DECIMALS:
            problems.append(f"price_decimals + size_decimals must be at most {QUOTE_DECIMALS}")
        if self.tick <= 0 or self.lot <= 0:
            problems.append("tick and lot must be positive")
        if not 0 < self.min_size <= self.max_size:
            problems.append("need 0 < min_size <= max_size")
        elif self.lot > 0 and (self.min_size % self.lot or self.max_size % self.lot):
            problems.append("min_size and max_size must be multiples of the lot")
        if self.max_position_value <= 0:
            problems.append("max_position_value must be positive")
        if not 1 <= self.max_leverage <= 1000:
            problems.append("max_leverage must be within 1..1000")
        elif not 0 < self.maintenance_margin_bps < BPS_ONE // self.max_leverage:
            problems.append("maintenance margin must be positive and below 1 / max_leverage")
        if not 0 <= self.maker_fee_bps <= self.taker_fee_bps < BPS_ONE:
            problems.append("need 0 <= maker_fee_bps <= taker_fee_bps < 10000")
        if self.funding_interval_ms <= 0:
            problems.append("funding interval must be positive")
        if not 0 <= self.funding_cap <= RATE_ONE:
            problems.append("funding cap must be within 0..100 %")
        if problems:
            raise InvalidInput(
                ErrorCode.INVALID_MARKET_CONFIG, f"market {self.symbol}: " + "; ".join(problems)
            )


def _require(table: dict[str, Any], key: str, kind: type, symbol: str) -> Any:
    if key not in table:
        raise InvalidInput(ErrorCode.INVALID_MARKET_CONFIG, f"market {symbol}: missing {key!r}")
    value = table[key]
    if kind is int and (type(value) is not int):
        raise InvalidInput(
            ErrorCode.INVALID_MARKET_CONFIG, f"market {symbol}: {key!r} must be an integer"
        )
    if kind is str and not isinstance(value, str):
        raise InvalidInput(
            ErrorCode.INVALID_MARKET_CONFIG, f"market {symbol}: {key!r} must be a string"
        )
    return value


def market_from_table(table: dict[str, Any], network: Network) -> MarketConfig:
    """Build one market from a ``[[market]]`` table (decimal strings in human units)."""
    symbol = str(table.get("symbol", "?"))
    _require(table, "symbol", str, symbol)
    pd = _require(table, "price_decimals", int, symbol)
    sd = _require(table, "size_decimals", int, symbol)
    id_key = f"{network}_id" if f"{network}_id" in table else "market_id"
    interval_s = _require(table, "funding_interval_s", int, symbol)
    interest_bps = _require(table, "interest_bps_per_8h", int, symbol)
    interval_ms = interval_s * 1000

    def dec(key: str, decimals: int) -> int:
        raw = _require(table, key, str, symbol)
        try:
            return parse_decimal(raw, decimals, what=key)
        except InvalidInput as exc:
            raise InvalidInput(
                ErrorCode.INVALID_MARKET_CONFIG, f"market {symbol}: {exc.detail}"
            ) from None

    market = MarketConfig(
        market_id=_require(table, id_key, int, symbol),
        symbol=symbol,
        price_decimals=pd,
        size_decimals=sd,
        tick=dec("tick", pd),
        lot=dec("lot", sd),
        min_size=dec("min_size", sd),
        max_size=dec("max_size", sd),
        max_position_value=dec("max_position_value", QUOTE_DECIMALS),
        max_leverage=_require(table, "max_leverage", int, symbol),
        maintenance_margin_bps=_require(table, "maintenance_margin_bps", int, symbol),
        maker_fee_bps=_require(table, "maker_fee_bps", int, symbol),
        taker_fee_bps=_require(table, "taker_fee_bps", int, symbol),
        funding_interval_ms=interval_ms,
        funding_cap=_require(table, "funding_cap_bps", int, symbol) * (RATE_ONE // BPS_ONE),
        interest_per_interval=interest_bps * (RATE_ONE // BPS_ONE) * interval_ms // MS_PER_8H,
    )
    market.validate()
    return market


def parse_markets(text: str, network: Network = "testnet") -> list[MarketConfig]:
    """Parse a TOML document of ``[[market]]`` tables; ids must be unique."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(ErrorCode.INVALID_MARKET_CONFIG, f"malformed TOML: {exc}") from None
    tables = document.get("market")
    if not isinstance(tables, list) or not tables:
        raise InvalidInput(ErrorCode.INVALID_MARKET_CONFIG, "no [[market]] tables")
    markets = [market_from_table(t, network) for t in tables]
    ids = [m.market_id for m in markets]
    if len(set(ids)) != len(ids):
        raise InvalidInput(ErrorCode.INVALID_MARKET_CONFIG, "duplicate market ids")
    return markets


def default_markets(network: Network = "testnet") -> list[MarketConfig]:
    """The four packaged markets (APT, BTC, ETH, SOL) with the network's ids."""
    text = resources.files("openperps").joinpath("markets.toml").read_text("utf-8")
    return parse_markets(text, network)
