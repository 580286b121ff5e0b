"""Oracle sources: a seeded walk that stays sane, and CSV replays that refuse bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from openperps.core.errors import ErrorCode, InvalidInput
from openperps.core.markets import default_markets
from openperps.runtime.oracle import RandomWalkOracle, read_csv_prices


def test_the_walk_is_seeded_on_the_tick_grid_and_stays_near_its_start() -> None:
    markets = default_markets()
    a, b = RandomWalkOracle(markets, seed=3), RandomWalkOracle(markets, seed=3)
    for _ in range(5000):
        ticks = a.step()
        assert ticks == b.step()
    by_id = {m.market_id: m for m in markets}
    for tick in ticks:
        market = by_id[tick.market_id]
        assert tick.price % market.tick == 0
        start = a.start[tick.market_id]
        assert start // 2 < tick.price < start * 2


def test_csv_prices_by_id_or_symbol(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("timestamp_ms,market,price\n1000,APT-USD,5.125\n1500,1339,91000.5\n")
    ticks = list(read_csv_prices(path, default_markets()))
    assert [(t.timestamp, t.market_id, t.price) for t in ticks] == [
        (1000, 1338, 5125),
        (1500, 1339, 910005),
    ]


def test_a_header_comments_and_a_byte_order_mark_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_bytes(b"\xef\xbb\xbf# from the desk\nts,symbol,px\n1000,APT-USD,5.125\n")
    assert [t.timestamp for t in read_csv_prices(path, default_markets())] == [1000]
    path.write_bytes(b"\xef\xbb\xbf1000,APT-USD,5.125\n2000,APT-USD,5.2\n")  # as Excel saves
    assert [t.timestamp for t in read_csv_prices(path, default_markets())] == [1000, 2000]


@pytest.mark.parametrize("first", ["17000x,APT-USD,5.2", "-5,APT-USD,5.2", "1e3,APT-USD,5"])
def test_a_bad_first_line_is_an_error_not_a_header(tmp_path: Path, first: str) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(f"{first}\n2000,APT-USD,5\n")
    with pytest.raises(InvalidInput) as caught:
        list(read_csv_prices(path, default_markets()))
    assert "prices.csv:1:" in caught.value.detail


@pytest.mark.parametrize(
    ("rows", "code"),
    [
        ("1000,DOGE-USD,1\n", ErrorCode.MARKET_NOT_FOUND),
        ("1000,APT-USD,abc\n", ErrorCode.INVALID_NUMBER),
        ("1000,APT-USD,5.1234\n", ErrorCode.INVALID_NUMBER),
        ("1000,APT-USD,0\n", ErrorCode.INVALID_PRICE),
        ("2000,APT-USD,5\n1000,APT-USD,5\n", ErrorCode.TIMESTAMP_REGRESSED),
        ("1000,APT-USD\n", ErrorCode.INVALID_NUMBER),
        ("10x0,APT-USD,5\n", ErrorCode.INVALID_NUMBER),
    ],
)
def test_bad_csv_rows_are_refused_with_the_line(tmp_path: Path, rows: str, code: ErrorCode) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("0,APT-USD,5\n" + rows)
    with pytest.raises(InvalidInput) as caught:
        list(read_csv_prices(path, default_markets()))
    assert caught.value.code == code and "prices.csv:" in caught.value.detail
