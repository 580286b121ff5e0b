"""The record shapes against the contract: the original page's examples decode into our
Structs and encode back with the same keys, in the same order, with the same JSON types."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openperps.wire.shapes import (
    ENCODER,
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

RECORDS: dict[str, type[msgspec.Struct]] = {
    "order_history": OrderHistoryRecord,
    "deposit_withdraw_history": DepositWithdrawRecord,
    "trade_history": TradeHistoryRecord,
    "positions": PositionRecord,
    "open_orders": OpenOrderRecord,
    "orderbook": OrderbookLevel,
    "recent_trades": RecentTradeRecord,
    "live_funding_rate": FundingRateRecord,
    "live_order_history": OrderHistoryRecord,
    "live_trade_history": LiveTradeRecord,
}

# one record of each list topic, as the original page shows it (keys in the contract's order)
LIST_EXAMPLES: dict[str, str] = {
    "order_history": """{
        "address": "0x51f531abefc697845eabae4ba20c7cc26b1f849561bb016c4d90707c4ede1912",
        "order_id": "11905620858892513160724480", "market_id": "14", "order_type": 9,
        "is_market_order": true, "size": "10", "price": "5.75789140",
        "order_value": "57.57891400", "leverage": 20, "status": "Filled",
        "timestamp": 1747075649, "last_updated": 1747075650,
        "trade_id": "737648402019497550020622", "transaction_version": 2713317408}""",
    "deposit_withdraw_history": """{
        "address": "0x51f531abefc697845eabae4ba20c7cc26b1f849561bb016c4d90707c4ede1912",
        "amount": "10", "is_deposit": true, "timestamp": 1745995346,
        "last_updated": 1746027625, "transaction_version": 2665483307}""",
    "trade_history": """{
        "address": "0x51f531abefc697845eabae4ba20c7cc26b1f849561bb016c4d90707c4ede1912",
        "trade_id": "737648402019497550020622", "market_id": "14", "order_type": 9,
        "size": "10", "price": "5.75789140", "order_value": "57.57891400", "leverage": 20,
        "fee": "0.0287894570000000005993009656", "pnl": "-1.0143854570000000005993009656",
        "timestamp": 1747075649, "last_updated": 1747075650,
        "transaction_version": 2713317408}""",
    "positions": """{
        "address": "0xf05bbcfcb4b1cd144600ee179210d478ed141adb57dd6eb411ff85854f78d7aa",
        "market_id": "1338", "trade_id": "208485101521065352365370", "size": "6.90",
        "entry_price": "5.8370434782608695652173913043", "value": "40.27560", "leverage": 2,
        "margin": "20.08478", "liq_price": "3.001", "available_order_size": "6.90",
        "trade_side": true, "sl": null, "tp": null, "timestamp": 1747075629,
        "transaction_version": 6719222371}""",
    "open_orders": """{
        "address": "0x725c8b51b2c1b3d17336c48d75c56c19253f70e1de00e26c8138a29722d82da",
        "order_id": "55066334967796803229980238", "market_id": "1338", "order_type": 1,
        "price": "5.71", "total_size": "1", "remaining_size": "1", "order_value": "5.71",
        "leverage": 2, "timestamp": 1747078972, "last_updated": 1747078973,
        "trade_id": "210735604298057917662522", "transaction_version": 6719284743}""",
    "orderbook": """{"market_id": "1338", "price": 5.768, "size": "487.649", "is_ask": true,
        "last_updated": 1747079061, "transaction_version": 6719285834}""",
    "recent_trades": """{
        "address": "0x2cdbf0dabbb0d769d2b01acd1b8b69a2712345044ff93e7d2d5fcb0cf7936842",
        "market_id": "1338", "trade_id": "95996856159584506611002", "order_type": 9,
        "price": "5.658", "size": "67", "order_value": "379.086", "leverage": 5,
        "fee": "0.1895430000000000039456563184", "pnl": "7.2094569999999999960543436821",
        "timestamp": 1747075851, "last_updated": 1747075852,
        "transaction_version": 6719250247}""",
    "live_funding_rate": """{"funding_rate": "-0.0002642469135802469135802469",
        "funding_timestamp": 0, "last_updated": 1749453746, "market_id": "14",
        "transaction_timestamp": 1749453741, "transaction_version": 2848764162}""",
}

# the live topics' examples on the page list their keys alphabetically (and wrap "data" in
# malformed JSON); we emit the contract's order: order_history's, trade_history's + order_id
LIVE_EXAMPLES: dict[str, str] = {
    "live_order_history": """{
        "address": "0x725c8b51b2c1b3d17336c48d75c56c19253f70e1de00e26c8138a29722d82da",
        "is_market_order": true, "last_updated": 1749454518, "leverage": 2,
        "market_id": "1338", "order_id": "81291775866809905605246976", "order_type": 7,
        "order_value": "4.652", "price": "4.652", "size": "1", "status": "Open",
        "timestamp": 1749454517, "trade_id": "334291896103764494386490",
        "transaction_version": 6780532763}""",
    "live_trade_history": """{
        "address": "0x725c8b51b2c1b3d17336c48d75c56c19253f70e1de00e26c8138a29722d82da",
        "fee": "0.0023305000000000000485132769", "last_updated": 1749454657, "leverage": 2,
        "market_id": "1338", "order_id": "81295631236321310901534720", "order_type": 1,
        "order_value": "4.661", "pnl": "-0.0023305000000000000485132769", "price": "4.661",
        "size": "1", "timestamp": 1749454656, "trade_id": "334347236335985623041338",
        "transaction_version": 6780534260}""",
}


def typed_pairs(text: str | bytes) -> list[tuple[str, str, Any]]:
    """An object's (key, JSON type, value) in order: True and 1 are different things here."""
    pairs = json.loads(text, object_pairs_hook=list, parse_float=Decimal)
    return [(key, type(value).__name__, value) for key, value in pairs]


def field_names(record: type[msgspec.Struct]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(record)]


@pytest.mark.parametrize("topic", sorted(LIST_EXAMPLES))
def test_a_page_example_decodes_and_encodes_back_unchanged(topic: str) -> None:
    example = LIST_EXAMPLES[topic]
    push = f'{{"message": "{topic}", "data": [{example}]}}'
    (record,) = msgspec.json.decode(push.encode(), type=dict[str, Any])["data"]
    decoded = msgspec.convert(record, RECORDS[topic])
    assert typed_pairs(ENCODER.encode(decoded)) == typed_pairs(example)
    # straight from bytes too (the path the SDK takes)
    direct = msgspec.json.decode(example.encode(), type=RECORDS[topic])
    assert direct == decoded


@pytest.mark.parametrize("topic", sorted(LIVE_EXAMPLES))
def test_a_live_example_decodes_and_encodes_in_the_contract_order(topic: str) -> None:
    example = LIVE_EXAMPLES[topic]
    record = msgspec.json.decode(example.encode(), type=RECORDS[topic])
    encoded = typed_pairs(ENCODER.encode(record))
    assert sorted(encoded) == sorted(typed_pairs(example))
    base = "order_history" if topic == "live_order_history" else "trade_history"
    expected = [key for key, _, _ in typed_pairs(LIST_EXAMPLES[base])]
    if topic == "live_trade_history":
        expected.append("order_id")
    assert [key for key, _, _ in encoded] == expected


def test_every_record_ends_with_transaction_version_as_the_contract_lists() -> None:
    for topic, record in RECORDS.items():
        assert field_names(record)[-1] == (
            "order_id" if topic == "live_trade_history" else "transaction_version"
        )
    assert field_names(LiveTradeRecord) == [*field_names(TradeHistoryRecord), "order_id"]


@pytest.mark.parametrize("topic", sorted(LIST_EXAMPLES))
def test_unknown_missing_and_mistyped_fields_are_refused(topic: str) -> None:
    record = RECORDS[topic]
    value = json.loads(LIST_EXAMPLES[topic])
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(json.dumps({**value, "extra": 1}), type=record)
    with pytest.raises(msgspec.ValidationError, match="missing required field"):
        msgspec.json.decode(
            json.dumps({k: v for k, v in value.items() if k != "transaction_version"}), type=record
        )
    # a string sent as a float or an integer, an integer sent as a string
    text = next(k for k, v in value.items() if isinstance(v, str))
    for key, wrong in ((text, 14.0), (text, 14), ("transaction_version", "1")):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(json.dumps({**value, key: wrong}), type=record)
    # a bool sent as an integer
    for key in [k for k, v in value.items() if isinstance(v, bool)]:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(json.dumps({**value, key: 1}), type=record)


def test_records_are_frozen() -> None:
    record = msgspec.json.decode(LIST_EXAMPLES["order_history"].encode(), type=OrderHistoryRecord)
    with pytest.raises(AttributeError):
        record.size = "11"  # type: ignore[misc]


def level(price: Any) -> OrderbookLevel:
    return OrderbookLevel("1338", price, "1", True, 1_747_079_061, 6_719_285_834)


def test_an_orderbook_price_is_a_json_number_with_exactly_its_digits() -> None:
    digits = "5.757891400000000000000001"  # more than a float can hold
    encoded = ENCODER.encode(level(Decimal(digits)))
    assert f'"price":{digits},' in encoded.decode()
    back = msgspec.json.decode(encoded, type=OrderbookLevel)
    assert back.price == Decimal(digits) and isinstance(back.price, Decimal)


@pytest.mark.parametrize("bad", [5.768, 5, "5.768", Decimal("NaN"), Decimal("Infinity")])
def test_an_orderbook_price_is_never_a_float_or_not_finite(bad: Any) -> None:
    with pytest.raises(ValueError, match="finite Decimal"):
        level(bad)


def test_a_non_finite_price_is_refused_on_decode() -> None:
    value = json.loads(LIST_EXAMPLES["orderbook"])
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps({**value, "price": "NaN"}), type=OrderbookLevel)


_digits = st.integers(min_value=-(10**30), max_value=10**30).map(str)
_versions = st.integers(min_value=0, max_value=2**63 - 1)
_overrides: dict[type[msgspec.Struct], dict[str, Any]] = {
    OrderbookLevel: {"price": st.decimals(allow_nan=False, allow_infinity=False, places=8)},
}


@settings(max_examples=50, deadline=None)
@given(data=st.data(), topic=st.sampled_from(sorted(RECORDS)))
def test_any_record_survives_a_round_trip(data: st.DataObject, topic: str) -> None:
    record_type = RECORDS[topic]
    kwargs: dict[str, Any] = {}
    for f in msgspec.structs.fields(record_type):
        special = _overrides.get(record_type, {}).get(f.name)
        if special is not None:
            kwargs[f.name] = data.draw(special)
        elif f.type is int:
            kwargs[f.name] = data.draw(_versions)
        elif f.type is bool:
            kwargs[f.name] = data.draw(st.booleans())
        elif f.type == (str | None):
            kwargs[f.name] = data.draw(st.none() | _digits)
        else:
            kwargs[f.name] = data.draw(_digits | st.text(max_size=30))
    record = record_type(**kwargs)
    encoded = ENCODER.encode(record)
    assert msgspec.json.decode(encoded, type=record_type) == record
    assert [k for k, _, _ in typed_pairs(encoded)] == field_names(record_type)
