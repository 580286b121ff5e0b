"""Rows in engine units -> wire records in human units (ws-protocol.md, "Record shapes").

All arithmetic stays exact: sizes, prices and money are formatted from integers at their
scale; derived prices (entry, liquidation) are exact fractions rounded once, here. A
liquidation price is rounded to the tick against the trader (up for a long, down for a
short), so the shown price is never later than the real one.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from openperps.core.margin import liquidation_price
from openperps.core.markets import MarketConfig
from openperps.core.numbers import QUOTE_DECIMALS, RATE_DECIMALS, format_fraction, format_scaled
from openperps.indexer.models import FillRow, MarketRow, OrderRow, PositionRow, TransferRow
from openperps.wire.shapes import (
    DepositWithdrawRecord,
    FundingRateRecord,
    LiveTradeRecord,
    OpenOrderRecord,
    OrderbookLevel,
    OrderHistoryRecord,
    PositionRecord,
    RecentTradeRecord,
    TradeHistoryRecord,
)

AVERAGE_DECIMALS = 8  # places of a market order's average fill price


def seconds(ms: int) -> int:
    return ms // 1000


def usd(amount: int) -> str:
    return format_scaled(amount, QUOTE_DECIMALS)


class Renderer:
    """Knows every market's scales; turns rows into records."""

    def __init__(self, markets: dict[int, MarketRow]) -> None:
        self.markets = markets

    def _config(self, market_id: int) -> MarketConfig:
        return self.markets[market_id].config

    def price(self, market_id: int, price: int | None) -> str:
        if price is None:
            return "0"
        return format_scaled(price, self._config(market_id).price_decimals)

    def size(self, market_id: int, size: int) -> str:
        return format_scaled(size, self._config(market_id).size_decimals)

    def value(self, market_id: int, size: int, price: int | None) -> str:
        if price is None:
            return "0"
        config = self._config(market_id)
        return usd(size * price * config.notional_multiplier)

    def order_price(self, row: OrderRow) -> tuple[str, str]:
        """An order's ``price`` and ``order_value``. A limit order's price is its limit. A
        market order's is its average fill price, to ``AVERAGE_DECIMALS`` places (truncated,
        as Kana shows it), and its value the size at that price, so value = size x price
        holds exactly; before any fill both are "0"."""
        m = row.market_id
        filled = row.size - row.remaining
        if not row.is_market or filled == 0:
            return self.price(m, row.price), self.value(m, row.size, row.price)
        config = self._config(m)
        units = row.filled_value * 10**AVERAGE_DECIMALS // (filled * 10**config.price_decimals)
        return (
            format_scaled(units, AVERAGE_DECIMALS),
            format_scaled(row.size * units, config.size_decimals + AVERAGE_DECIMALS),
        )

    def order(self, row: OrderRow) -> OrderHistoryRecord:
        m = row.market_id
        price, value = self.order_price(row)
        return OrderHistoryRecord(
            address=row.address,
            order_id=str(row.order_id),
            market_id=str(m),
            order_type=row.order_type,
            is_market_order=row.is_market,
            size=self.size(m, row.size),
            price=price,
            order_value=value,
            leverage=row.leverage,
            status=row.status,
            timestamp=seconds(row.timestamp),
            last_updated=seconds(row.last_updated),
            trade_id=str(row.trade_id),
            transaction_version=row.version,
        )

    def open_order(self, row: OrderRow) -> OpenOrderRecord:
        m = row.market_id
        return OpenOrderRecord(
            address=row.address,
            order_id=str(row.order_id),
            market_id=str(m),
            order_type=row.order_type,
            price=self.price(m, row.price),
            total_size=self.size(m, row.size),
            remaining_size=self.size(m, row.remaining),
            order_value=self.value(m, row.size, row.price),
            leverage=row.leverage,
            timestamp=seconds(row.timestamp),
            last_updated=seconds(row.last_updated),
            trade_id=str(row.trade_id),
            transaction_version=row.version,
        )

    def transfer(self, row: TransferRow) -> DepositWithdrawRecord:
        return DepositWithdrawRecord(
            address=row.address,
            amount=usd(row.amount),
            is_deposit=row.is_deposit,
            timestamp=seconds(row.timestamp),
            last_updated=seconds(row.timestamp),
            transaction_version=row.version,
        )

    def fill(self, row: FillRow) -> TradeHistoryRecord:
        m = row.market_id
        return TradeHistoryRecord(
            address=row.address,
            trade_id=str(row.trade_id),
            market_id=str(m),
            order_type=row.order_type,
            size=self.size(m, row.size),
            price=self.price(m, row.price),
            order_value=self.value(m, row.size, row.price),
            leverage=row.leverage,
            fee=usd(row.fee),
            pnl=usd(row.pnl),
            timestamp=seconds(row.timestamp),
            last_updated=seconds(row.timestamp),
            transaction_version=row.version,
        )

    def live_fill(self, row: FillRow) -> LiveTradeRecord:
        base = self.fill(row)
        return LiveTradeRecord(
            address=base.address,
            trade_id=base.trade_id,
            market_id=base.market_id,
            order_type=base.order_type,
            size=base.size,
            price=base.price,
            order_value=base.order_value,
            leverage=base.leverage,
            fee=base.fee,
            pnl=base.pnl,
            timestamp=base.timestamp,
            last_updated=base.last_updated,
            transaction_version=base.transaction_version,
            order_id=str(row.order_id),
        )

    def recent_trade(self, row: FillRow) -> RecentTradeRecord:
        m = row.market_id
        return RecentTradeRecord(
            address=row.address,
            market_id=str(m),
            trade_id=str(row.trade_id),
            order_type=row.order_type,
            price=self.price(m, row.price),
            size=self.size(m, row.size),
            order_value=self.value(m, row.size, row.price),
            leverage=row.leverage,
            fee=usd(row.fee),
            pnl=usd(row.pnl),
            timestamp=seconds(row.timestamp),
            last_updated=seconds(row.timestamp),
            transaction_version=row.version,
        )

    def position(self, row: PositionRow) -> PositionRecord:
        m = row.market_id
        config = self._config(m)
        mul = config.notional_multiplier
        scale = 10**config.price_decimals
        entry = Fraction(row.entry_value, row.size * mul * scale)
        liq = liquidation_price(
            row.trade_side,
            row.size,
            row.entry_value,
            row.margin,
            mul,
            config.maintenance_margin_bps,
        )
        tick = config.tick
        ticks = liq / tick
        rounded = (
            -((-ticks.numerator) // ticks.denominator)
            if row.trade_side
            else (ticks.numerator // ticks.denominator)
        )
        return PositionRecord(
            address=row.address,
            market_id=str(m),
            trade_id=str(row.trade_id),
            size=self.size(m, row.size),
            entry_price=format_fraction(entry),
            value=usd(row.entry_value),
            leverage=row.leverage,
            margin=usd(row.margin),
            liq_price=self.price(m, rounded * tick),
            available_order_size=self.size(m, row.available_size),
            trade_side=row.trade_side,
            sl=self.price(m, row.stop_loss) if row.stop_loss is not None else None,
            tp=self.price(m, row.take_profit) if row.take_profit is not None else None,
            timestamp=seconds(row.timestamp),
            transaction_version=row.version,
        )

    def level(
        self, market_id: int, is_ask: bool, price: int, size: int, version: int, timestamp: int
    ) -> OrderbookLevel:
        return OrderbookLevel(
            market_id=str(market_id),
            price=Decimal(self.price(market_id, price)),
            size=self.size(market_id, size),
            is_ask=is_ask,
            last_updated=seconds(timestamp),
            transaction_version=version,
        )

    def funding_rate(self, market: MarketRow) -> FundingRateRecord:
        return FundingRateRecord(
            funding_rate=format_scaled(market.funding_rate, RATE_DECIMALS),
            funding_timestamp=seconds(market.funding_timestamp),
            last_updated=seconds(market.funding_updated),
            market_id=str(market.config.market_id),
            transaction_timestamp=seconds(market.funding_updated),
            transaction_version=market.funding_version,
        )
