"""Integers inside, decimal strings at the edges: parsing, formatting, rounding."""

from __future__ import annotations

from fractions import Fraction

import pytest

from openperps.core.errors import ErrorCode, InvalidInput, OpenPerpsError
from openperps.core.numbers import (
    ceil_div,
    floor_div,
    format_fixed,
    format_fraction,
    format_scaled,
    is_positive_int,
    is_valid_int,
    parse_decimal,
)


def test_rounding_direction_is_in_the_name() -> None:
    assert ceil_div(7, 2) == 4 and floor_div(7, 2) == 3
    assert ceil_div(-7, 2) == -3 and floor_div(-7, 2) == -4
    assert ceil_div(6, 3) == floor_div(6, 3) == 2


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("5.75789140", 8, 575789140),
        ("7", 3, 7000),
        ("0.001", 3, 1),
        (" 12.50 ", 2, 1250),
        ("1e2", 0, 100),
        ("-3.5", 1, -35),
        (42, 2, 4200),
        ("5.7500", 2, 575),
        (".5", 1, 5),
        ("+2.", 0, 2),
        ("0e999999999", 3, 0),
        ("12E-1", 1, 12),
    ],
)
def test_parse_decimal(text: str | int, decimals: int, expected: int) -> None:
    assert parse_decimal(text, decimals) == expected


@pytest.mark.parametrize(
    "text",
    [
        *("", "abc", "NaN", "inf", "-Infinity", "1.0001", 1.5, True, None, "9" * 70, "1e30"),
        # past Decimal's own exponent range, or more digits than its context keeps
        *("1e999999", "1e1000000000", "1e-999999", "1" * 40 + ".0000001"),
        # digits Decimal() reads but a decimal string does not have
        *("1_0", "\u0661\u0662", "\uff11", "1 0", "0x10", "1e", "."),
    ],
)
def test_parse_decimal_refuses_what_it_cannot_take_exactly(text: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_decimal(text, 3, what="price")
    assert caught.value.code == ErrorCode.INVALID_NUMBER
    assert isinstance(caught.value, OpenPerpsError) and "2001" in str(caught.value)


def test_formatting() -> None:
    assert format_scaled(5_000_000, 6) == "5"
    assert format_scaled(5_750_000, 6) == "5.75"
    assert format_scaled(-1, 6) == "-0.000001"
    assert format_scaled(12, 0) == "12"
    assert format_fixed(5_750_000, 6) == "5.750000"
    assert format_fixed(-5, 2) == "-0.05"
    assert format_fixed(7, 0) == "7"
    assert format_fraction(Fraction(6, 1)) == "6"
    assert format_fraction(Fraction(1343, 230)) == "5.839130434782608695652173913"
    assert format_fraction(Fraction(-1, 3), 5) == "-0.33333"
    assert format_fraction(Fraction(1, 10**40)) == "0"


def test_integer_checks() -> None:
    assert is_valid_int(2**63 - 1) and not is_valid_int(2**63)
    assert not is_valid_int(True) and not is_valid_int(1.0)
    assert is_positive_int(1) and not is_positive_int(0) and not is_positive_int(-1)
