"""Every topic's records have the contract's fields, in order, with its JSON types, and
values that agree with each other."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from openperps.core import commands as c
from openperps.indexer import ReadModels
from openperps.indexer.topics import ALL_TOPICS, TopicData
from openperps.wire.shapes import ENCODER
from tests.core.harness import ALICE, APT, BOB, CAROL, Exchange

# field: JSON type, from the contract (ws-protocol.md)
S, INT, B = str, int, bool
SHAPES: dict[str, list[tuple[str, Any]]] = {
    "order_history": [
        ("address", S),
        ("order_id", S),
        ("market_id", S),
        ("order_type", INT),
        ("is_market_order", B),
        ("size", S),
        ("price", S),
        ("order_value", S),
        ("leverage", INT),
        ("status", S),
        ("timestamp", INT),
        ("last_updated", INT),
        ("trade_id", S),
        ("transaction_version", INT),
    ],
    "deposit_withdraw_history": [
        ("address", S),
        ("amount", S),
        ("is_deposit", B),
        ("timestamp", INT),
        ("last_updated", INT),
        ("transaction_version", INT),
    ],
    "trade_history": [
        ("address", S),
        ("trade_id", S),
        ("market_id", S),
        ("order_type", INT),
        ("size", S),
        ("price", S),
        ("order_value", S),
        ("leverage", INT),
        ("fee", S),
        ("pnl", S),
        ("timestamp", INT),
        ("last_updated", INT),
        ("transaction_version", INT),
    ],
    "positions": [
        ("address", S),
        ("market_id", S),
        ("trade_id", S),
        ("size", S),
        ("entry_price", S),
        ("value", S),
        ("leverage", INT),
        ("margin", S),
        ("liq_price", S),
        ("available_order_size", S),
        ("trade_side", B),
        ("sl", (S, type(None))),
        ("tp", (S, type(None))),
        ("timestamp", INT),
        ("transaction_version", INT),
    ],
    "open_orders": [
        ("address", S),
        ("order_id", S),
        ("market_id", S),
        ("order_type", INT),
        ("price", S),
        ("total_size", S),
        ("remaining_size", S),
        ("order_value", S),
        ("leverage", INT),
        ("timestamp", INT),
        ("last_updated", INT),
        ("trade_id", S),
        ("transaction_version", INT),
    ],
    "orderbook": [
        ("market_id", S),
        ("price", (int, float)),
        ("size", S),
        ("is_ask", B),
        ("last_updated", INT),
        ("transaction_version", INT),
    ],
    "recent_trades": [
        ("address", S),
        ("market_id", S),
        ("trade_id", S),
        ("order_type", INT),
        ("price", S),
        ("size", S),
        ("order_value", S),
        ("leverage", INT),
        ("fee", S),
        ("pnl", S),
        ("timestamp", INT),
        ("last_updated", INT),
        ("transaction_version", INT),
    ],
    "live_funding_rate": [
        ("funding_rate", S),
        ("funding_timestamp", INT),
        ("last_updated", INT),
        ("market_id", S),
        ("transaction_timestamp", INT),
        ("transaction_version", INT),
    ],
}
SHAPES["live_order_history"] = SHAPES["order_history"]
SHAPES["live_trade_history"] = [*SHAPES["trade_history"], ("order_id", S)]


@pytest.fixture(scope="module")
def data() -> TopicData:
    x = Exchange()
    for who in (ALICE, BOB, CAROL):
        x.deposit(who, "1000")
    x.limit(BOB, "open short", "10", "7.000")
    x.market_order(ALICE, "open long", "4", tp="8.000")
    x.limit(CAROL, "open long", "2", "6.900")
    x.oracle("7.000")
    x.do(c.Withdraw(timestamp=x.tick(), profile=CAROL, amount=x.usd("1.5")))
    models = ReadModels(m.config for m in x.engine.markets.values())
    models.apply_all(x.log)
    return TopicData(models)


def keys(topic: str) -> str | int | None:
    if topic in ("orderbook", "recent_trades"):
        return APT
    if topic == "live_funding_rate":
        return None
    return {"deposit_withdraw_history": CAROL, "open_orders": CAROL}.get(topic, ALICE)


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_records_have_the_contracts_fields_and_json_types(data: TopicData, topic: str) -> None:
    records = data.snapshot(topic, keys(topic))
    assert records, f"{topic}: nothing to check"
    for record in records:
        decoded = msgspec.json.decode(ENCODER.encode(record))
        assert list(decoded) == [name for name, _ in SHAPES[topic]]
        for name, kind in SHAPES[topic]:
            assert isinstance(decoded[name], kind), (topic, name, decoded[name])
            if kind is INT:
                assert not isinstance(decoded[name], bool)


def test_values_agree_with_each_other(data: TopicData) -> None:
    (fill,) = [r for r in data.snapshot("trade_history", ALICE)]
    assert isinstance(fill, type(fill))
    record = msgspec.to_builtins(fill)
    assert Decimal(record["order_value"]) == Decimal(record["size"]) * Decimal(record["price"])
    assert record["fee"] == "0.014" and record["pnl"] == "-0.014"  # 28 x 0.05 %
    (position,) = [msgspec.to_builtins(p) for p in data.snapshot("positions", ALICE)]
    assert position["entry_price"] == "7" and position["value"] == "28"
    assert position["liq_price"] == "6.462"  # 7 x 0.9 / 0.975, rounded up for a long
    assert position["tp"] == "8" and position["sl"] is None
    (bob,) = [msgspec.to_builtins(p) for p in data.snapshot("positions", BOB)]
    assert bob["liq_price"] == "7.512" and bob["trade_side"] is False
    book = [msgspec.json.decode(ENCODER.encode(lv)) for lv in data.snapshot("orderbook", APT)]
    assert [(lv["price"], lv["size"], lv["is_ask"]) for lv in book] == [
        (6.9, "2", False),
        (7.0, "6", True),
    ]
    (transfer, *_) = [
        msgspec.to_builtins(t) for t in data.snapshot("deposit_withdraw_history", CAROL)
    ]
    assert transfer["amount"] == "1.5" and transfer["is_deposit"] is False


def test_a_market_orders_price_is_its_average_fill_to_eight_places() -> None:
    x = Exchange()
    for who in (ALICE, BOB):
        x.deposit(who, "1000")
    x.limit(BOB, "open short", "0.7", "7.001")
    x.limit(BOB, "open short", "0.5", "7.004")
    x.market_order(ALICE, "open long", "0.9")  # 0.7 at 7.001, 0.2 at 7.004
    models = ReadModels(m.config for m in x.engine.markets.values())
    models.apply_all(x.log)
    (order,) = [msgspec.to_builtins(r) for r in TopicData(models).snapshot("order_history", ALICE)]
    # (0.7 x 7.001 + 0.2 x 7.004) / 0.9 = 7.0016666..., truncated; not 7.001, the tick below
    assert order["price"] == "7.00166666" and order["is_market_order"] is True
    assert Decimal(order["order_value"]) == Decimal("0.9") * Decimal("7.00166666")
    fills = [msgspec.to_builtins(f) for f in TopicData(models).snapshot("trade_history", ALICE)]
    notional = sum((Decimal(f["size"]) * Decimal(f["price"]) for f in fills), Decimal(0))
    assert notional - Decimal(order["order_value"]) < Decimal("0.00000001")  # never above
    assert Decimal(order["order_value"]) <= notional


def test_open_orders_lists_every_resting_order_however_many() -> None:
    """A market maker with more orders resting than a history's default length sees them
    all: open_orders is the book's view of an address, not a history."""
    x = Exchange()
    x.deposit(CAROL, "100000")
    for i in range(150):
        x.limit(CAROL, "open long", "0.1", f"{5 + i / 1000:.3f}")
    models = ReadModels(m.config for m in x.engine.markets.values())
    models.apply_all(x.log)
    listed = TopicData(models).snapshot("open_orders", CAROL)
    assert len(listed) == 150 == len(x.engine.markets[APT].book.orders)


def test_the_contract_example_decodes_into_our_record() -> None:
    from openperps.wire.shapes import OrderHistoryRecord

    example = b"""{"address": "0x51f531abefc697845eabae4ba20c7cc26b1f849561bb016c4d90707c4ede1912",
      "order_id": "11905620858892513160724480", "market_id": "14", "order_type": 9,
      "is_market_order": true, "size": "10", "price": "5.75789140",
      "order_value": "57.57891400", "leverage": 20, "status": "Filled",
      "timestamp": 1747075649, "last_updated": 1747075650,
      "trade_id": "737648402019497550020622", "transaction_version": 2713317408}"""
    record = msgspec.json.decode(example, type=OrderHistoryRecord)
    assert record.order_type == 9 and record.status == "Filled"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            example.replace(b'"size"', b'"extra": 1, "size"'), type=OrderHistoryRecord
        )


@pytest.mark.parametrize("cache_size", [10_000, 7])
def test_rendered_records_kept_between_reads_are_never_stale(
    cache_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived TopicData keeps rendered trades and book levels; after every batch of a
    trading session it serves exactly what a fresh one renders (a small cache, cleared often,
    included)."""
    from openperps.indexer import topics
    from tests.feed.test_resume import BATCHES
    from tests.indexer.test_models import APT as MARKET

    monkeypatch.setattr(topics, "RECORD_CACHE", cache_size)
    models = ReadModels()
    kept = TopicData(models)
    for batch in BATCHES:
        models.apply_all(batch)
        for topic, depth in (("orderbook", 3), ("orderbook", 100), ("recent_trades", 100)):
            fresh = TopicData(models).snapshot(topic, MARKET, depth)
            assert ENCODER.encode(kept.snapshot(topic, MARKET, depth)) == ENCODER.encode(fresh)
    assert kept.snapshot("orderbook", MARKET), "the session left a book to compare"


def test_a_live_topics_first_record_is_the_latest_change_not_the_latest_order() -> None:
    """Order A placed, order B placed, A cancelled: the latest change is A's cancel."""
    x = Exchange()
    x.deposit(CAROL, "1000")
    first = x.order_ids(x.limit(CAROL, "open long", "1", "6.500"))[0]
    second = x.limit(CAROL, "open long", "1", "6.400")
    cancel = x.do(c.CancelOrder(timestamp=x.tick(), profile=CAROL, market_id=APT, order_id=first))
    models = ReadModels(m.config for m in x.engine.markets.values())
    models.apply_all(x.log)
    (latest,) = TopicData(models).snapshot("live_order_history", CAROL)
    record = msgspec.to_builtins(latest)
    assert (record["order_id"], record["status"]) == (str(first), "Cancelled")
    assert second[-1].version < record["transaction_version"] <= cancel[-1].version
