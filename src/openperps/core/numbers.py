"""Integers inside, decimal strings at the edges, floats nowhere.

Every amount the engine touches is an integer in the smallest unit of its kind:

- quote amounts (balances, margins, fees, PnL, notionals) in units of 10**-QUOTE_DECIMALS
  (USDT has 6 decimals, so 1 unit is 0.000001 USDT);
- prices in units of 10**-price_decimals of the market (an order price is also a multiple of
  the market's tick);
- sizes in units of 10**-size_decimals of the market (an order size is also a multiple of the
  market's lot);
- rates (funding) in units of 10**-RATE_DECIMALS.

Rounding is policy and lives here, with the direction in the name: what a trader owes is
rounded with ``ceil_div`` and what a trader receives with ``floor_div`` (exchange-rules.md,
"Money and units"). Decimal strings are parsed and produced only by ``parse_decimal`` and
``format_scaled``; both refuse floats.
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException
from fractions import Fraction
from typing import Final

from openperps.core.errors import ErrorCode, InvalidInput

QUOTE_DECIMALS: Final = 6
QUOTE_ONE: Final = 10**QUOTE_DECIMALS
RATE_DECIMALS: Final = 12
RATE_ONE: Final = 10**RATE_DECIMALS
BPS_ONE: Final = 10_000
# Every integer accepted from outside the engine fits a signed 64-bit word: the same bound the
# chain's u64 fields imply, and small enough that products of two stay exact and fast.
MAX_INPUT: Final = 2**63 - 1

# ASCII digits only: Decimal() also reads other scripts' digits and underscores ("1_0" is 10)
_DECIMAL: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounded towards +infinity: for amounts a trader owes."""
    return -((-numerator) // denominator)


def floor_div(numerator: int, denominator: int) -> int:
    """Integer division rounded towards -infinity: for amounts a trader receives."""
    return numerator // denominator


def is_valid_int(value: object) -> bool:
    """True for a real ``int`` (not ``bool``, not ``float``) within the signed 64-bit range."""
    return type(value) is int and -MAX_INPUT <= value <= MAX_INPUT


def is_positive_int(value: object) -> bool:
    return type(value) is int and 0 < value <= MAX_INPUT


MAX_ID: Final = 2**128 - 1  # order and trade ids are unsigned 128-bit integers


def parse_id(text: object, maximum: int = MAX_INPUT) -> int | None:
    """An identifier written as ASCII decimal digits (market ids, order ids, timestamps in a
    file): its value, or None when it is not one. ``str.isdigit`` alone is not enough: it
    accepts superscripts and other scripts' digits that ``int`` then refuses or reads
    differently. Surrounding spaces are allowed; the value must not pass ``maximum`` (64
    signed bits unless told; ``MAX_ID`` for order ids)."""
    if not isinstance(text, str):
        return None
    digits = text.strip()
    if not digits or len(digits) > 39 or not digits.isascii() or not digits.isdigit():
        return None
    value = int(digits)
    return value if value <= maximum else None


def parse_market_id(value: object) -> int | None:
    """A market id as the feed and the REST API take it: an int (not a bool) or its decimal
    string; None when it is neither."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return parse_id(str(value))


def parse_decimal(text: object, decimals: int, *, what: str = "value") -> int:
    """Parse a decimal string (or an int) into an integer scaled by ``10**decimals``.

    Refuses floats, NaN, infinities, exponents that lose precision, and any digit beyond the
    scale: nothing is ever rounded silently.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidInput(ErrorCode.INVALID_NUMBER, f"{what} must be a decimal string")
    if isinstance(text, int):
        scaled = text * int(10**decimals)
    else:
        stripped = text.strip()
        if len(stripped) > 64 or _DECIMAL.fullmatch(stripped) is None:
            raise InvalidInput(ErrorCode.INVALID_NUMBER, f"{what} is not a decimal number")
        number = Decimal(stripped)
        if not number:
            number = Decimal(0)  # a zero with any exponent ("0e999999") is plain zero
        elif number.adjusted() > 40:  # far past MAX_INPUT at any scale (and past Decimal's own)
            raise InvalidInput(ErrorCode.INVALID_NUMBER, f"{what} is out of range")
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int)
        try:
            if exponent < -decimals and number != number.quantize(Decimal(1).scaleb(-decimals)):
                raise InvalidInput(
                    ErrorCode.INVALID_NUMBER, f"{what} has more than {decimals} decimal places"
                )
            scaled = int(number.scaleb(decimals))  # exact: the digits were checked above
        except DecimalException:  # more digits than Decimal's context holds
            raise InvalidInput(ErrorCode.INVALID_NUMBER, f"{what} is out of range") from None
    if not -MAX_INPUT <= scaled <= MAX_INPUT:
        raise InvalidInput(ErrorCode.INVALID_NUMBER, f"{what} is out of range")
    return scaled


def format_scaled(value: int, decimals: int) -> str:
    """Format an integer scaled by ``10**decimals`` as a plain decimal string.

    Trailing zeros of the fraction are dropped (``5000000, 6 -> "5"``); never an exponent.
    """
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**decimals)
    if decimals == 0 or frac == 0:
        return f"{sign}{whole}"
    digits = str(frac).rjust(decimals, "0").rstrip("0")
    return f"{sign}{whole}.{digits}"


def format_fixed(value: int, decimals: int) -> str:
    """Like ``format_scaled`` but keeps every decimal place (``"5.750000"``)."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**decimals)
    if decimals == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0')}"


def format_fraction(value: Fraction, significant: int = 28) -> str:
    """Format an exact fraction as a decimal string with up to ``significant`` digits.

    Used for derived prices (a size-weighted entry price) that are not on any grid; the
    digits are truncated towards zero, as a 28-digit decimal context would print them.
    """
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    value = abs(value)
    whole = value.numerator // value.denominator
    remainder = value - whole
    used = len(str(whole)) if whole else 0
    places = max(significant - used, 1)
    frac = (remainder.numerator * 10**places) // remainder.denominator
    digits = str(frac).rjust(places, "0").rstrip("0")
    if not digits:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{digits}"
