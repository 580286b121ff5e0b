"""Markets come from configuration, never from code."""

from __future__ import annotations

import pytest

from openperps.core.engine import Engine
from openperps.core.errors import ErrorCode, InvalidInput
from openperps.core.markets import default_markets, parse_markets

TABLE = """
[[market]]
symbol = "DOGE-USD"
market_id = 99
price_decimals = 5
size_decimals = 0
tick = "0.00001"
lot = "1"
min_size = "10"
max_size = "1000000"
max_position_value = "100000"
max_leverage = 10
maintenance_margin_bps = 500
maker_fee_bps = 0
taker_fee_bps = 5
funding_interval_s = 28800
funding_cap_bps = 75
interest_bps_per_8h = 1
"""


def test_the_four_kana_markets_with_both_networks_ids() -> None:
    testnet = {m.symbol: m.market_id for m in default_markets("testnet")}
    mainnet = {m.symbol: m.market_id for m in default_markets("mainnet")}
    assert testnet == {"APT-USD": 1338, "BTC-USD": 1339, "ETH-USD": 1340, "SOL-USD": 2387}
    assert mainnet == {"APT-USD": 14, "BTC-USD": 15, "ETH-USD": 16, "SOL-USD": 31}
    for market in default_markets():
        assert market.max_leverage == 20 and market.maintenance_margin_bps == 250
        assert market.maker_fee_bps == 0 and market.taker_fee_bps == 5


def test_a_market_is_added_by_configuration() -> None:
    (doge,) = parse_markets(TABLE)
    assert doge.market_id == 99 and doge.tick == 1 and doge.min_size == 10
    assert doge.notional_multiplier == 10
    # 0.01 % per 8 h over an 8 h interval
    assert doge.interest_per_interval == 10**8
    assert 99 in Engine([doge]).markets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("max_leverage = 10", "max_leverage = 0"), "max_leverage"),
        (("maintenance_margin_bps = 500", "maintenance_margin_bps = 5000"), "maintenance"),
        (('tick = "0.00001"', 'tick = "0.000001"'), "decimal places"),
        (("price_decimals = 5", "price_decimals = 7"), "price_decimals"),
        (('min_size = "10"', 'min_size = "0"'), "min_size"),
        (("taker_fee_bps = 5", "taker_fee_bps = -1"), "maker_fee_bps"),
        (("max_leverage = 10", 'max_leverage = "10"'), "must be an integer"),
        (('symbol = "DOGE-USD"', "symbol = 5"), "must be a string"),
        (("market_id = 99\n", ""), "missing"),
        (("funding_interval_s = 28800", "funding_interval_s = 0"), "funding interval"),
        (("funding_cap_bps = 75", "funding_cap_bps = 20000"), "funding cap"),
        (('max_position_value = "100000"', 'max_position_value = "0"'), "max_position_value"),
        (('lot = "1"', 'lot = "0"'), "tick and lot"),
    ],
)
def test_bad_configuration_is_refused_with_a_reason(change: tuple[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_markets(TABLE.replace(*change))
    assert caught.value.code == ErrorCode.INVALID_MARKET_CONFIG
    assert message in caught.value.detail


def test_malformed_documents_are_refused() -> None:
    for text in ("[[market]\n", "title = 1", TABLE + TABLE):
        with pytest.raises(InvalidInput) as caught:
            parse_markets(text)
        assert caught.value.code == ErrorCode.INVALID_MARKET_CONFIG
    (doge,) = parse_markets(TABLE)
    with pytest.raises(InvalidInput):
        Engine([doge, doge])
