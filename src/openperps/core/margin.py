"""Margin arithmetic of one isolated position (exchange-rules.md, "Positions and margin").

All money is in quote units; prices and sizes in the market's units; ``mul`` is the market's
notional multiplier (quote units per price unit x size unit). What a trader owes rounds up
(``ceil_div``); derived display prices are exact fractions, rounded only when shown.
"""

from __future__ import annotations

from fractions import Fraction

from openperps.core.numbers import BPS_ONE, ceil_div


def initial_margin(notional: int, leverage: int) -> int:
    return ceil_div(notional, leverage)


def fee(notional: int, fee_bps: int) -> int:
    return ceil_div(notional * fee_bps, BPS_ONE)


def maintenance_margin(notional: int, rate_bps: int) -> int:
    return ceil_div(notional * rate_bps, BPS_ONE)


def unrealised_pnl(is_long: bool, size: int, entry_value: int, mark: int, mul: int) -> int:
    value = size * mark * mul
    return value - entry_value if is_long else entry_value - value


def is_liquidatable(
    is_long: bool, size: int, entry_value: int, margin: int, mark: int, mul: int, mm_bps: int
) -> bool:
    """margin + unrealised PnL at mark < maintenance margin at mark."""
    if size == 0:
        return False
    equity = margin + unrealised_pnl(is_long, size, entry_value, mark, mul)
    return equity < maintenance_margin(size * mark * mul, mm_bps)


def entry_price(size: int, entry_value: int, mul: int) -> Fraction:
    """Size-weighted average entry price, in price units."""
    return Fraction(entry_value, size * mul)


def liquidation_price(
    is_long: bool, size: int, entry_value: int, margin: int, mul: int, mm_bps: int
) -> Fraction:
    """The mark price at which equity meets maintenance margin, in price units.

    long:  (S*E - M) / (S*(1 - m))     short: (S*E + M) / (S*(1 + m))
    with S*E the entry value, M the margin and m the maintenance rate. Never below zero.
    """
    m = Fraction(mm_bps, BPS_ONE)
    denominator = size * mul * ((1 - m) if is_long else (1 + m))
    numerator = entry_value - margin if is_long else entry_value + margin
    return max(Fraction(numerator) / denominator, Fraction(0))


def bankruptcy_price(is_long: bool, size: int, entry_value: int, margin: int, mul: int) -> Fraction:
    """The price at which the position's margin is exactly used up."""
    numerator = entry_value - margin if is_long else entry_value + margin
    return max(Fraction(numerator, size * mul), Fraction(0))
