"""The REST API against a running exchange: reads, signed actions, and every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from openperps import __version__
from openperps.api.app import create_app
from openperps.core import is_compiled
from openperps.runtime.app import Exchange, Settings
from openperps.signing import PrivateKey, profile_address, sign_request

APT = "1338"


class Trader:
    def __init__(self, client: httpx.AsyncClient, key: PrivateKey | None = None) -> None:
        self.client = client
        self.key = key or PrivateKey.generate()
        self.wallet = self.key.address
        self.profile = profile_address(self.wallet)

    async def post(
        self,
        path: str,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> httpx.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        signed = sign_request(self.key, "POST", path, data, time.time_ns() // 1_000_000)
        signed.update(headers or {})
        return await self.client.post(path, content=data, headers=signed)

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params={"userAddress": self.wallet, **params})
        assert response.status_code == 200, response.text
        envelope = response.json()
        assert envelope["success"] is True
        return envelope["data"]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    app = create_app(exchange)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # ASGI typing differs
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as client:
        yield client
    await exchange.stop()


def refused(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code and body["data"] is None
    assert body["message"]


async def test_health_is_503_until_the_exchange_has_started(tmp_path: Path) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    transport = httpx.ASGITransport(app=create_app(exchange))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as client:
        starting = await client.get("/health")
        assert starting.status_code == 503
        assert starting.json() == {
            "success": False,
            "message": "not ready",
            "code": 2031,
            "data": {"version": 0},
        }
        await exchange.start()
        try:
            started = await client.get("/health")
            assert started.status_code == 200
            assert started.json()["data"] == {"version": exchange.sequencer.engine.version}
            assert "openperps_transaction_version " in (await client.get("/metrics")).text
        finally:
            await exchange.stop()


async def test_health_markets_and_openapi(api: httpx.AsyncClient) -> None:
    health = await api.get("/health")
    assert health.status_code == 200 and health.json()["success"]
    markets = (await api.get("/getPerpetualAssetsInfo/allMarkets")).json()["data"]
    assert [m["marketId"] for m in markets] == ["1338", "1339", "1340", "2387"]
    info = (await api.get("/getMarketInfo", params={"marketId": APT})).json()["data"]
    assert info["symbol"] == "APT-USD" and info["takerFee"] == "0.0005"
    schema = (await api.get("/schema/openapi.json")).json()
    assert "/placeLimitOrder" in schema["paths"] and "/getPositions" in schema["paths"]
    for path in ("/getWalletAccountBalance", "/settlePnl", "/admin/creditWallet"):
        assert path in schema["paths"]
    assert "/admin/listMarket" in schema["paths"]
    assert (await api.get("/openapi.json")).json() == schema
    metrics = (await api.get("/metrics")).text
    assert "openperps_feed_connections" in metrics
    for name in (
        "openperps_feed_subscriptions 0",
        "openperps_feed_paused_connections 0",
        "openperps_feed_outbox_frames 0",
        "openperps_feed_outbox_bytes 0",
        "openperps_feed_outbox_largest_bytes 0",
        "openperps_feed_coalesced_total 0",
    ):
        assert f"\n{name}\n" in metrics, name
    build = "compiled" if is_compiled() else "pure"
    assert f'openperps_build_info{{version="{__version__}",engine="{build}"}} 1' in metrics


async def test_a_trading_session_through_the_api(api: httpx.AsyncClient) -> None:
    alice, bob = Trader(api), Trader(api)
    for trader in (alice, bob):
        minted = await trader.post("/mintTestTokens", {"amount": "1000"})
        assert minted.status_code == 200, minted.text
        assert minted.json()["data"]["walletBalance"] == "1000"
        assert await trader.get("/getWalletAccountBalance") == "1000"
        assert await trader.get("/getNetProfileBalance") == "0"  # the faucet fills the wallet
        deposited = await trader.post("/deposit", {"amount": "1000"})
        assert deposited.status_code == 200, deposited.text
        moved = deposited.json()["data"]
        assert (moved["freeBalance"], moved["walletBalance"]) == ("1000", "0")
        assert await trader.get("/getWalletAccountBalance") == "0"
    balance = await alice.get("/getProfileBalanceSnapshot")
    assert balance["freeBalance"] == "1000" and balance["profileAddress"] == alice.profile
    placed = await bob.post(
        "/placeLimitOrder",
        {
            "marketId": APT,
            "tradeSide": False,
            "direction": False,
            "size": "10",
            "price": "7.000",
            "leverage": 10,
        },
    )
    assert placed.status_code == 200, placed.text
    (order,) = placed.json()["data"]["orders"]
    assert order["status"] == "Open" and order["address"] == bob.profile
    taken = await alice.post(
        "/placeMarketOrder",
        {
            "marketId": 1338,
            "tradeSide": True,
            "direction": False,
            "size": 4,
            "leverage": 10,
            "takeProfit": "8",
        },
    )
    outcome = taken.json()["data"]
    # Alice's side of the fill only: Bob's fee and PnL are not hers to see
    (fill,) = outcome["fills"]
    (taker_order,) = outcome["orders"]
    assert fill["orderId"] == taker_order["order_id"] and taker_order["address"] == alice.profile
    assert fill["fee"] == "0.014" and outcome["transactionVersion"] > 0
    (opened,) = outcome["positions"]  # hers only: Bob's short is not in her answer
    assert opened["size"] == "4" and opened["address"] == alice.profile and opened["tp"] == "8"
    (position,) = await alice.get("/getPositions")
    assert position["size"] == "4" and position["tp"] == "8" and position["liq_price"] == "6.462"
    # a read says which version it reflects: here, at least the order's own
    read = await api.get("/getPositions", params={"userAddress": alice.wallet})
    assert int(read.headers["X-Transaction-Version"]) >= outcome["transactionVersion"]
    assert "X-Transaction-Version" not in taken.headers  # an action's answer carries it inside
    history = await alice.get("/getOrderHistory")
    assert history[0]["status"] == "Filled"
    fills = await alice.get("/getFills", marketId=APT)
    assert fills[0]["pnl"] == "-0.014"
    (open_order,) = await bob.get("/getOpenOrders")
    assert open_order["remaining_size"] == "6"
    status = (
        await api.get(
            "/fetchOrderStatusById", params={"marketId": APT, "orderId": order["order_id"]}
        )
    ).json()
    assert status["data"]["status"] == "Partially Filled"
    price = (await api.get("/getMarketPrice", params={"marketId": APT})).json()["data"]
    assert price["bestAskPrice"] == "7"
    trades = (await api.get("/getAllTrades", params={"marketId": APT})).json()["data"]
    assert trades[0]["address"] == alice.profile
    cancel = await bob.post(
        "/cancelMultipleOrders", {"marketId": APT, "cancelOrderIds": [order["order_id"]]}
    )
    assert cancel.json()["data"]["orders"][0]["status"] == "Cancelled"
    # the read's version was the ledger's then: not a later one (the cancel came after it)
    assert int(read.headers["X-Transaction-Version"]) < cancel.json()["data"]["transactionVersion"]
    again = await api.get("/getPositions", params={"userAddress": alice.wallet})
    assert (
        int(again.headers["X-Transaction-Version"]) >= cancel.json()["data"]["transactionVersion"]
    )
    out = await bob.post("/withdraw", {"amount": 10.5})
    assert out.status_code == 200, out.text
    assert out.json()["data"]["walletBalance"] == "10.5"
    (transfer, *_) = await bob.get("/getDepositAndWithdrawHistory")
    assert transfer["amount"] == "10.5" and transfer["is_deposit"] is False
    assert await bob.get("/getWalletAccountBalance") == "10.5"  # back in the wallet


async def test_signature_failures_are_401_with_codes(api: httpx.AsyncClient) -> None:
    alice = Trader(api)
    await alice.post("/mintTestTokens", {"amount": "1"})
    bare = await api.post("/deposit", content=b'{"amount": "1"}')
    refused(bare, 401, 2101)
    body = json.dumps({"amount": "1"}).encode()
    headers = sign_request(alice.key, "POST", "/deposit", body, time.time_ns() // 1_000_000)
    tampered = await api.post("/deposit", content=b'{"amount": "9"}', headers=headers)
    refused(tampered, 401, 2103)
    ok = await api.post("/deposit", content=body, headers=headers)
    assert ok.status_code == 200
    replay = await api.post("/deposit", content=body, headers=headers)
    refused(replay, 401, 2105)
    old = sign_request(alice.key, "POST", "/deposit", body, time.time_ns() // 1_000_000 - 60_000)
    refused(await api.post("/deposit", content=body, headers=old), 401, 2102)
    other = Trader(api)
    wrong_key = sign_request(
        other.key, "POST", "/deposit", body, time.time_ns() // 1_000_000, wallet=alice.wallet
    )
    refused(await api.post("/deposit", content=body, headers=wrong_key), 401, 2104)


async def test_bad_input_and_rule_refusals(api: httpx.AsyncClient) -> None:
    alice = Trader(api)
    await alice.post("/mintTestTokens", {"amount": "150"})
    refused(await alice.post("/deposit", {"amount": "150.000001"}), 409, 2027)
    negative = await alice.post("/deposit", {"amount": "-5"})
    refused(negative, 400, 2018)
    assert negative.json()["message"] == "amount must be more than 0"  # in USDT, not units
    for path, amount in (("/deposit", "0"), ("/withdraw", "-0.5"), ("/withdraw", "0")):
        zero_or_less = await alice.post(path, {"amount": amount})
        refused(zero_or_less, 400, 2018)
        assert zero_or_less.json()["message"] == "amount must be more than 0", path
    refused(await alice.post("/deposit", {"amount": "1.0000001"}), 400, 2001)
    refused(await alice.post("/deposit", {"amount": True}), 400, 2001)
    assert (await alice.post("/deposit", {"amount": "100"})).status_code == 200
    assert await alice.get("/getWalletAccountBalance") == "50"
    refused(await alice.post("/deposit", {"amount": "50.5"}), 409, 2027)
    assert await alice.get("/getWalletAccountBalance") == "50"  # the refusal moved nothing
    assert await alice.get("/getNetProfileBalance") == "100"
    order = {
        "marketId": APT,
        "tradeSide": True,
        "direction": False,
        "size": "1",
        "price": "7",
        "leverage": 10,
    }
    refused(await alice.post("/placeLimitOrder", {**order, "marketId": "99"}), 404, 1003)
    refused(await alice.post("/placeLimitOrder", {**order, "size": "0.001"}), 400, 2001)
    refused(await alice.post("/placeLimitOrder", {**order, "size": 0.1234}), 400, 2001)
    refused(await alice.post("/placeLimitOrder", {**order, "price": "abc"}), 400, 2001)
    refused(await alice.post("/placeLimitOrder", {**order, "leverage": 50}), 400, 1006)
    for leverage in (10**30, "5", 5.0, 0, -1):
        odd_leverage = await alice.post("/placeLimitOrder", {**order, "leverage": leverage})
        refused(odd_leverage, 400, 1006)
        assert "from 1 to 20" in odd_leverage.json()["message"]
    for flag in ("yes", 1, None):
        refused(await alice.post("/placeLimitOrder", {**order, "tradeSide": flag}), 400, 2023)
    refused(await alice.post("/placeLimitOrder", None, raw=b"[1, 2"), 400, 2030)
    # signed bodies that are not JSON in other ways: not UTF-8, nested past any decoder
    for raw in (b'{"amount": "\xff"}', b"[" * 100_000):
        refused(await alice.post("/deposit", None, raw=raw), 400, 2030)
    # numbers past Decimal's own range, or written with digits a decimal string has not
    for size in ("1e999999", "1e-999999", "1_0", "\u0661", "\uff11"):
        refused(await alice.post("/placeLimitOrder", {**order, "size": size}), 400, 2001)
    refused(await alice.post("/deposit", {"amount": "1e1000000000"}), 400, 2001)
    # a market order with a price or a restriction would not be what its sender thinks
    market_order = {k: v for k, v in order.items() if k != "price"}
    for extra in ({"price": "7"}, {"restriction": 3}):
        limited = await alice.post("/placeMarketOrder", {**market_order, **extra})
        refused(limited, 400, 2030)
        assert "a market order takes no" in limited.json()["message"]
    refused(await alice.post("/placeLimitOrder", [1]), 400, 2030)
    refused(await alice.post("/placeLimitOrder", {**order, "direction": True}), 409, 1011)
    refused(await alice.post("/withdraw", {"amount": "1000"}), 409, 1010)
    assert (await alice.post("/placeLimitOrder", order)).status_code == 200
    refused(await alice.post("/withdraw", {"amount": "100"}), 409, 1009)
    refused(await alice.post("/mintTestTokens", {"amount": "1000000"}), 400, 2018)
    refused(await alice.post("/mintTestTokens", {"amount": "-1"}), 400, 2018)
    refused(await alice.post("/mintTestTokens", {"amount": "0.0000001"}), 400, 2001)
    assert await alice.get("/getWalletAccountBalance") == "50"
    wallet = await api.get("/getWalletAccountBalance", params={"userAddress": "0xnothex"})
    refused(wallet, 400, 2017)
    missing_wallet = await api.get("/getWalletAccountBalance")
    assert missing_wallet.status_code == 400 and missing_wallet.json()["success"] is False
    stranger = Trader(api)
    assert await stranger.get("/getWalletAccountBalance") == "0"  # never credited
    for path in ("/getPositions", "/getOpenOrders", "/getOrderHistory", "/getFills"):
        empty = await api.get(path, params={"userAddress": alice.wallet, "marketId": ""})
        refused(empty, 400, 2030)  # a filter given empty is not "every market"
    bad_address = await api.get("/getPositions", params={"userAddress": "0xnothex"})
    refused(bad_address, 400, 2017)
    missing = await api.get("/getPositions")
    assert missing.status_code == 400 and missing.json()["success"] is False
    unknown = await api.get("/fetchOrderStatusById", params={"marketId": APT, "orderId": "5"})
    refused(unknown, 404, 2007)
    # digits of other scripts and superscripts pass str.isdigit but are not ids
    for market_id, order_id in (("\u00b2", "5"), (APT, "\u0661\u0663"), (APT, "9" * 40)):
        odd = {"marketId": market_id, "orderId": order_id}
        refused(await api.get("/fetchOrderStatusById", params=odd), 400, 2030)
    refused(await alice.post("/placeLimitOrder", {**order, "marketId": "\u00b2"}), 400, 2030)
    refused(await alice.post("/placeLimitOrder", {**order, "marketId": True}), 400, 2030)
    for ids in (["\u00b9"], ["1", 2], "1", ["9" * 5000]):
        cancel = {"marketId": APT, "cancelOrderIds": ids}
        refused(await alice.post("/cancelMultipleOrders", cancel), 400, 2030)
    refused(
        await api.get("/getOrderHistory", params={"userAddress": alice.wallet, "limit": 5000}),
        400,
        2030,
    )


async def test_trade_histories_page_and_filter_by_seconds(api: httpx.AsyncClient) -> None:
    maker, taker = Trader(api), Trader(api)
    for trader in (maker, taker):
        await trader.post("/mintTestTokens", {"amount": "1000"})
        await trader.post("/deposit", {"amount": "1000"})
    for price in ("7", "7.1"):
        ask = {"marketId": APT, "tradeSide": False, "direction": False, "size": "1"}
        await maker.post("/placeLimitOrder", {**ask, "price": price, "leverage": 5})
        buy = {"marketId": APT, "tradeSide": True, "direction": False, "size": "1"}
        assert (await taker.post("/placeMarketOrder", {**buy, "leverage": 5})).status_code == 200

    async def trades(**params: Any) -> list[str]:
        answer = await api.get("/getAllTrades", params={"marketId": APT, **params})
        return [trade["price"] for trade in answer.json()["data"]]

    assert await trades() == ["7.1", "7"]  # newest first
    assert await trades(limit=1) == ["7.1"]
    assert await trades(limit=1, offset=1) == ["7"]
    assert await trades(offset=2) == []
    refused(await api.get("/getAllTrades", params={"marketId": APT, "offset": -1}), 400, 2030)

    (_newest, oldest) = await taker.get("/getFills")
    second = oldest["timestamp"]
    assert isinstance(second, int) and abs(second - time.time()) < 60  # seconds, not ms
    assert len(await taker.get("/getFills", fromTimestamp=second)) == 2
    assert await taker.get("/getFills", toTimestamp=second - 1) == []
    assert await taker.get("/getFills", fromTimestamp=second + 120) == []
    # milliseconds where seconds are read would silently match nothing: refused instead
    for name in ("fromTimestamp", "toTimestamp"):
        params: dict[str, str | int] = {"userAddress": taker.wallet, name: second * 1000}
        in_ms = await api.get("/getFills", params=params)
        refused(in_ms, 400, 2030)
        assert "Unix seconds" in in_ms.json()["message"]


async def test_a_batch_refuses_items_one_by_one_and_names_each(api: httpx.AsyncClient) -> None:
    maker = Trader(api)
    await maker.post("/mintTestTokens", {"amount": "1000"})
    await maker.post("/deposit", {"amount": "1000"})
    bid = {"marketId": APT, "tradeSide": True, "direction": False, "price": "6", "leverage": 5}
    items = [
        {**bid, "size": "1"},
        {**bid, "size": "0.001"},  # off the size grid: refused at the edge (2001)
        {**bid, "size": "1", "leverage": 7},  # refused by the engine: not item 0's (1005)
        {**bid, "size": "1", "marketId": "99"},  # no such market (1003)
        "not an order",
        {**bid, "size": "2"},
    ]
    placed = (await maker.post("/placeMultipleOrders", {"orders": items})).json()["data"]
    assert [order["size"] for order in placed["orders"]] == ["1", "2"]
    refusals = [(r["list"], r["index"], r["code"]) for r in placed["refused"]]
    assert refusals == [
        ("orders", 1, 2001),
        ("orders", 2, 1005),
        ("orders", 3, 1003),
        ("orders", 4, 2030),
    ]
    ids = [order["order_id"] for order in placed["orders"]]
    unknown = str((999 << 64) | int(APT))
    cancelled = await maker.post(
        "/cancelMultipleOrders", {"marketId": APT, "cancelOrderIds": [unknown, ids[0], "5"]}
    )
    data = cancelled.json()["data"]
    assert [order["order_id"] for order in data["orders"]] == [ids[0]]
    assert [(r["index"], r["orderId"], r["code"]) for r in data["refused"]] == [
        (0, unknown, 2007),
        (2, "5", 2007),
    ]
    # a replace names its cancels and its orders apart; an order for another market is refused
    replaced = await maker.post(
        "/cancelAndPlaceMultipleOrders",
        {
            "marketId": APT,
            "cancelOrderIds": ["5", ids[1]],
            "orders": [{**bid, "size": "1", "marketId": "1339"}, {**bid, "size": "3"}],
        },
    )
    data = replaced.json()["data"]
    assert [(r["list"], r["index"], r["code"]) for r in data["refused"]] == [
        ("cancelOrderIds", 0, 2007),
        ("orders", 0, 2030),
    ]
    assert "market 1339" in data["refused"][1]["message"]
    assert [(o["status"], o["size"]) for o in data["orders"]] == [("Cancelled", "2"), ("Open", "3")]
    # with no item left for the engine, the request itself is refused, naming the first
    nothing = await maker.post("/placeMultipleOrders", {"orders": [items[1], items[3]]})
    refused(nothing, 400, 2001)
    assert "orders[0]" in nothing.json()["message"]


async def test_cancel_and_place_replaces_quotes_or_only_pulls_them(
    api: httpx.AsyncClient,
) -> None:
    maker = Trader(api)
    await maker.post("/mintTestTokens", {"amount": "1000"})
    await maker.post("/deposit", {"amount": "1000"})

    def bid(price: str) -> dict[str, Any]:
        return {
            "marketId": APT,
            "tradeSide": True,
            "direction": False,
            "size": "1",
            "price": price,
            "leverage": 5,
        }

    placed = (await maker.post("/placeMultipleOrders", {"orders": [bid("6.9"), bid("6.8")]})).json()
    ids = [order["order_id"] for order in placed["data"]["orders"]]
    replaced = await maker.post(
        "/cancelAndPlaceMultipleOrders",
        {"marketId": APT, "cancelOrderIds": [ids[0]], "orders": [bid("6.95")]},
    )
    statuses = [order["status"] for order in replaced.json()["data"]["orders"]]
    assert replaced.status_code == 200 and statuses == ["Cancelled", "Open"]
    resting = {order["price"] for order in await maker.get("/getOpenOrders")}
    assert resting == {"6.8", "6.95"}
    # cancels alone pull quotes in the same call, with "orders" empty or left out
    (left,) = [o["order_id"] for o in replaced.json()["data"]["orders"] if o["status"] == "Open"]
    pulls: list[tuple[list[str], dict[str, Any]]] = [([ids[1]], {"orders": []}), ([left], {})]
    for cancel, orders in pulls:
        pulled = await maker.post(
            "/cancelAndPlaceMultipleOrders", {"marketId": APT, "cancelOrderIds": cancel, **orders}
        )
        assert [o["status"] for o in pulled.json()["data"]["orders"]] == ["Cancelled"]
    assert await maker.get("/getOpenOrders") == []
    # nothing at all to do is a bad request, whichever way it is empty
    empties: list[dict[str, Any]] = [{}, {"cancelOrderIds": [], "orders": []}, {"orders": None}]
    for empty in empties:
        nothing = await maker.post("/cancelAndPlaceMultipleOrders", {"marketId": APT, **empty})
        refused(nothing, 400, 2030)
        assert "nothing to do" in nothing.json()["message"]


async def test_an_unknown_endpoint_is_named_with_the_one_likely_meant(
    api: httpx.AsyncClient,
) -> None:
    typo = await api.get("/getOpenOrder", params={"userAddress": "0x1"})
    refused(typo, 404, 2035)
    assert typo.json()["message"] == (
        "no endpoint GET /getOpenOrder; did you mean /getOpenOrders? "
        "(every endpoint is listed at /schema)"
    )
    assert "did you mean /getOpenOrders?" in (await api.get("/getopenorders")).json()["message"]
    nothing_like = await api.get("/v1/ticker")
    refused(nothing_like, 404, 2035)
    assert "did you mean" not in nothing_like.json()["message"]
    wrong_method = await api.post("/getOpenOrders", content=b"{}")
    refused(wrong_method, 405, 2035)
    assert wrong_method.json()["message"].startswith("POST /getOpenOrders:")


async def test_a_fault_of_the_server_is_a_500_and_logged_not_blamed_on_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    try:
        transport = httpx.ASGITransport(app=create_app(exchange))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as api:

            def broken(*args: object) -> None:
                raise RuntimeError("a bug in the read models")

            monkeypatch.setattr(exchange.models, "open_orders_of", broken)
            answer = await api.get("/getOpenOrders", params={"userAddress": "0x1"})
            refused(answer, 500, 2034)
            assert "bug" not in answer.json()["message"]  # the details stay in the log
            assert "GET /getOpenOrders failed" in caplog.text
            assert "a bug in the read models" in caplog.text
    finally:
        await exchange.stop()


async def test_position_actions_batches_delegation_and_admin(tmp_path: Path) -> None:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    app = create_app(exchange, admin_token="s3cret")
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as api:
        alice, bob = Trader(api), Trader(api)
        for trader in (alice, bob):
            await trader.post("/mintTestTokens", {"amount": "1000"})
            await trader.post("/deposit", {"amount": "1000"})
        batch = await bob.post(
            "/placeMultipleOrders",
            {
                "orders": [
                    {
                        "marketId": APT,
                        "tradeSide": False,
                        "direction": False,
                        "size": "5",
                        "price": "7",
                        "leverage": 10,
                    },
                    {
                        "marketId": APT,
                        "tradeSide": True,
                        "direction": False,
                        "size": "5",
                        "price": "6.5",
                        "leverage": 10,
                    },
                ]
            },
        )
        assert len(batch.json()["data"]["orders"]) == 2
        await alice.post(
            "/placeMarketOrder",
            {"marketId": APT, "tradeSide": True, "direction": False, "size": "3", "leverage": 10},
        )
        sl = await alice.post(
            "/updateStopLoss", {"marketId": APT, "tradeSide": True, "newStopLossPrice": "6.8"}
        )
        assert sl.status_code == 200, sl.text
        margin = await alice.post("/addMargin", {"marketId": APT, "tradeSide": True, "amount": "1"})
        assert margin.status_code == 200
        (position,) = await alice.get("/getPositions")
        assert position["sl"] == "6.8" and position["margin"] == "3.1"
        # an action answers with the positions it changed, as the reads show them
        assert margin.json()["data"]["positions"] == [position]
        assert sl.json()["data"]["positions"][0]["sl"] == "6.8"
        # a misspelt or missing price key is refused, and the stop-loss stays
        for typo in ({"stopLossPrice": "6.7"}, {}):
            missing = await alice.post(
                "/updateStopLoss", {"marketId": APT, "tradeSide": True, **typo}
            )
            refused(missing, 400, 2030)
            assert "newStopLossPrice is required" in missing.json()["message"]
        (position,) = await alice.get("/getPositions")
        assert position["sl"] == "6.8"
        # null, "" and 0 in any spelling remove a trigger
        for cleared in (None, "", 0, "0.000"):
            tp = {"marketId": APT, "tradeSide": True, "newTakeProfitPrice": "9"}
            assert (await alice.post("/updateTakeProfit", tp)).status_code == 200
            assert (await alice.get("/getPositions"))[0]["tp"] == "9"
            removed = await alice.post("/updateTakeProfit", {**tp, "newTakeProfitPrice": cleared})
            assert removed.status_code == 200, (cleared, removed.text)
            assert (await alice.get("/getPositions"))[0]["tp"] is None, cleared
        refused(await alice.post("/collapsePosition", {"marketId": APT}), 409, 2010)
        # delegation: a delegate trades for Alice but cannot withdraw
        delegate = PrivateKey.generate()
        enabled = await alice.post(
            "/enableDelegation",
            {
                "delegatePublicKey": delegate.public_key_hex,
                "expiresAt": time.time_ns() // 1_000_000 + 60_000,
            },
        )
        assert enabled.status_code == 200, enabled.text
        later = time.time_ns() // 1_000_000 + 60_000
        for key, expires, code in (
            ("0x12", later, 2019),
            (None, later, 2019),
            (delegate.public_key_hex, 10**30, 2030),
        ):
            bad = {"delegatePublicKey": key, "expiresAt": expires}
            refused(await alice.post("/enableDelegation", bad), 400, code)
        as_delegate = Trader(api, delegate)
        body = json.dumps(
            {
                "marketId": APT,
                "tradeSide": True,
                "direction": False,
                "size": "1",
                "price": "6",
                "leverage": 10,
            }
        ).encode()
        headers = sign_request(
            delegate,
            "POST",
            "/placeLimitOrder",
            body,
            time.time_ns() // 1_000_000,
            wallet=alice.wallet,
        )
        placed = await api.post("/placeLimitOrder", content=body, headers=headers)
        assert placed.status_code == 200, placed.text
        assert placed.json()["data"]["orders"][0]["address"] == alice.profile
        body = b'{"amount": "1"}'
        headers = sign_request(
            delegate, "POST", "/withdraw", body, time.time_ns() // 1_000_000, wallet=alice.wallet
        )
        refused(await api.post("/withdraw", content=body, headers=headers), 403, 2106)
        headers = sign_request(
            delegate,
            "POST",
            "/withdrawSpecifiMarket",
            body,
            time.time_ns() // 1_000_000,
            wallet=alice.wallet,
        )
        refused(await api.post("/withdrawSpecifiMarket", content=body, headers=headers), 403, 2106)
        # nor hand the account on, or end the delegation it holds
        for path, sent in (
            ("/enableDelegation", {"delegatePublicKey": delegate.public_key_hex, "expiresAt": 1}),
            ("/disableDelegation", {}),
        ):
            body = json.dumps(sent).encode()
            now = time.time_ns() // 1_000_000
            headers = sign_request(delegate, "POST", path, body, now, wallet=alice.wallet)
            refused(await api.post(path, content=body, headers=headers), 403, 2106)
        # a deposit moves the owner's wallet into the owner's account: a delegate may
        await alice.post("/mintTestTokens", {"amount": "10"})
        body = b'{"amount": "10"}'
        now = time.time_ns() // 1_000_000
        headers = sign_request(delegate, "POST", "/deposit", body, now, wallet=alice.wallet)
        deposited = await api.post("/deposit", content=body, headers=headers)
        assert deposited.status_code == 200, deposited.text
        assert await alice.get("/getWalletAccountBalance") == "0"
        del as_delegate
        # operator endpoints need the bearer token
        refused(
            await api.post("/admin/pauseMarket", json={"marketId": APT, "paused": True}), 401, 2033
        )
        admin = {"authorization": "Bearer s3cret"}
        paused = await api.post(
            "/admin/pauseMarket", json={"marketId": APT, "paused": True}, headers=admin
        )
        assert paused.status_code == 200
        refused(
            await alice.post(
                "/placeMarketOrder",
                {
                    "marketId": APT,
                    "tradeSide": True,
                    "direction": False,
                    "size": "1",
                    "leverage": 10,
                },
            ),
            409,
            1002,
        )
        price = await api.post(
            "/admin/oraclePrice", json={"marketId": APT, "price": "6.9"}, headers=admin
        )
        assert price.status_code == 200
        for raw in (b'{"marketId": "\xff"}', b"[" * 100_000, b"[]"):
            not_json = await api.post("/admin/oraclePrice", content=raw, headers=admin)
            refused(not_json, 400, 2030)
        funding = await alice.get("/getFundingHistory")
        assert funding == []
    await exchange.stop()


@contextlib.asynccontextmanager
async def operated(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Exchange, Any]]:
    """An exchange whose operator endpoints take the token ``s3cret``."""
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    app = create_app(exchange, admin_token="s3cret", **options)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as api:
        yield exchange, api
    await exchange.stop()


ADMIN = {"authorization": "Bearer s3cret"}


async def test_settle_pnl_moves_nothing_and_answers_the_balances(api: httpx.AsyncClient) -> None:
    maker, trader = Trader(api), Trader(api)
    for who in (maker, trader):
        await who.post("/mintTestTokens", {"amount": "1000"})
        await who.post("/deposit", {"amount": "1000"})
    bare = await api.post("/settlePnl", content=b"{}")
    refused(bare, 401, 2101)
    book = {"marketId": APT, "direction": False, "size": "10", "leverage": 10}
    await maker.post("/placeLimitOrder", {**book, "tradeSide": False, "price": "7"})
    await trader.post("/placeMarketOrder", {**book, "tradeSide": True})
    await maker.post("/placeLimitOrder", {**book, "tradeSide": True, "price": "7.5"})
    closed = await trader.post("/placeMarketOrder", {**book, "tradeSide": True, "direction": True})
    version = closed.json()["data"]["transactionVersion"]
    before = await trader.get("/getProfileBalanceSnapshot")
    assert Decimal(before["freeBalance"]) > 1000  # the profit arrived with the closing fill
    answer = await trader.post("/settlePnl", {})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert {k: data[k] for k in before} == before
    assert data["netBalance"] == before["freeBalance"] and data["settledPnl"] == "0"
    assert data["transactionVersion"] == version and "marketId" not in data
    with_market = (await trader.post("/settlePnl", {"marketId": APT})).json()["data"]
    assert with_market["marketId"] == APT and with_market["transactionVersion"] == version
    assert await trader.get("/getProfileBalanceSnapshot") == before  # nothing moved
    refused(await trader.post("/settlePnl", {"marketId": "99"}), 404, 1003)
    refused(await trader.post("/settlePnl", {"marketId": "x"}), 400, 2030)
    refused(await trader.post("/settlePnl", {"marketId": True}), 400, 2030)
    refused(await trader.post("/settlePnl", [APT]), 400, 2030)
    nobody = (await Trader(api).post("/settlePnl", {})).json()["data"]
    assert nobody["freeBalance"] == nobody["totalBalance"] == "0"


async def test_mainnet_has_no_faucet_but_the_operator_credits_wallets(tmp_path: Path) -> None:
    async with operated(tmp_path, faucet=False, network="mainnet") as (exchange, api):
        alice = Trader(api)
        refused(await alice.post("/mintTestTokens", {"amount": "10"}), 404, 2032)
        assert await alice.get("/getWalletAccountBalance") == "0"
        credit = {"userAddress": alice.wallet, "amount": "250.5"}
        refused(await api.post("/admin/creditWallet", json=credit), 401, 2033)
        wrong = {"authorization": "Bearer guess"}
        refused(await api.post("/admin/creditWallet", json=credit, headers=wrong), 401, 2033)
        credited = await api.post("/admin/creditWallet", json=credit, headers=ADMIN)
        assert credited.status_code == 200, credited.text
        assert credited.json()["data"]["walletBalance"] == "250.5"
        assert await alice.get("/getWalletAccountBalance") == "250.5"
        assert (await alice.post("/deposit", {"amount": "200"})).status_code == 200
        assert await alice.get("/getWalletAccountBalance") == "50.5"
        assert await alice.get("/getNetProfileBalance") == "200"
        assert exchange.sequencer.engine.wallet(alice.profile) == 50_500_000
        for bad, status, code in (
            ({"userAddress": "0xzz", "amount": "1"}, 400, 2017),
            ({"userAddress": 5, "amount": "1"}, 400, 2030),
            ({"amount": "1"}, 400, 2030),
            ({"userAddress": alice.wallet, "amount": "0"}, 400, 2018),
            ({"userAddress": alice.wallet, "amount": "-3"}, 400, 2018),
            ({"userAddress": alice.wallet, "amount": "0.0000001"}, 400, 2001),
            ({"userAddress": alice.wallet}, 400, 2001),
        ):
            refused(await api.post("/admin/creditWallet", json=bad, headers=ADMIN), status, code)
        not_json = await api.post("/admin/creditWallet", content=b"{", headers=ADMIN)
        refused(not_json, 400, 2030)
        refused(await api.post("/admin/creditWallet", json=[1], headers=ADMIN), 400, 2030)
        assert await alice.get("/getWalletAccountBalance") == "50.5"


NEW_MARKET = {
    "symbol": "DOGE-USD",
    "market_id": 4242,
    "price_decimals": 5,
    "size_decimals": 0,
    "tick": "0.00001",
    "lot": "1",
    "min_size": "10",
    "max_size": "1000000",
    "max_position_value": "1000000",
    "max_leverage": 10,
    "maintenance_margin_bps": 500,
    "maker_fee_bps": 0,
    "taker_fee_bps": 5,
    "funding_interval_s": 3600,
    "funding_cap_bps": 75,
    "interest_bps_per_8h": 1,
}


async def test_the_operator_lists_a_market_that_trades_and_streams(tmp_path: Path) -> None:
    async with operated(tmp_path) as (exchange, api):
        feed_url = f"ws://127.0.0.1:{exchange.feed.port}/ws/"
        async with websockets.connect(feed_url) as early:  # open before the listing
            refused(await api.post("/admin/listMarket", json=NEW_MARKET), 401, 2033)
            await early.send(json.dumps({"topic": "orderbook", "market_id": "4242", "id": 1}))
            frame = json.loads(await asyncio.wait_for(early.recv(), 5))
            assert frame["error"]["code"] == "unknown_market"
            listed = await api.post("/admin/listMarket", json=NEW_MARKET, headers=ADMIN)
            assert listed.status_code == 200, listed.text
            info = listed.json()["data"]["market"]
            assert info["marketId"] == "4242" and info["tickSize"] == "0.00001"
            assert "4242" in [m["marketId"] for m in (await api.get(ALL_MARKETS)).json()["data"]]
            got = (await api.get("/getMarketInfo", params={"marketId": "4242"})).json()["data"]
            assert got == info
            await early.send(json.dumps({"topic": "orderbook", "market_id": "4242", "id": 2}))
            ack = json.loads(await asyncio.wait_for(early.recv(), 5))
            assert ack["id"] == 2 and "error" not in ack, ack
            snapshot = json.loads(await asyncio.wait_for(early.recv(), 5))
            assert snapshot["message"] == "orderbook" and snapshot["data"] == [], snapshot
        # it trades like the others
        alice, bob = Trader(api), Trader(api)
        for who in (alice, bob):
            await who.post("/mintTestTokens", {"amount": "1000"})
            await who.post("/deposit", {"amount": "1000"})
        order = {"marketId": "4242", "direction": False, "size": "100", "leverage": 5}
        rest = await bob.post("/placeLimitOrder", {**order, "tradeSide": False, "price": "0.1"})
        assert rest.status_code == 200, rest.text
        took = await alice.post("/placeMarketOrder", {**order, "tradeSide": True})
        assert took.json()["data"]["fills"][0]["price"] == "0.1"
        # duplicates and bad configurations are refused with codes, nothing listed
        again = await api.post("/admin/listMarket", json=NEW_MARKET, headers=ADMIN)
        refused(again, 409, 2016)
        for bad in (
            {**NEW_MARKET, "market_id": 4243, "tick": "0"},
            {**NEW_MARKET, "market_id": 4243, "max_leverage": "10"},
            {**NEW_MARKET, "market_id": 4243, "maintenance_margin_bps": 2000},
            {**NEW_MARKET, "market_id": 4243, "price_decimals": 5, "size_decimals": 2},
            {k: v for k, v in NEW_MARKET.items() if k != "lot"} | {"market_id": 4243},
            {**NEW_MARKET, "market_id": 0},
            {**NEW_MARKET, "market_id": 4243, "tick": "0.000001"},
        ):
            refused(await api.post("/admin/listMarket", json=bad, headers=ADMIN), 400, 2022)
        refused(await api.post("/admin/listMarket", json=[], headers=ADMIN), 400, 2030)
        assert len((await api.get(ALL_MARKETS)).json()["data"]) == 5
        as_number = {**NEW_MARKET, "market_id": 4244, "symbol": "NUM-USD"}
        raw = json.dumps(as_number).replace('"0.00001"', "0.00001").encode()
        number = await api.post("/admin/listMarket", content=raw, headers=ADMIN)
        assert number.status_code == 200, number.text  # an exact JSON number works too
    # a restart keeps the market: it is on the log
    again_exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await again_exchange.start()
    assert 4242 in again_exchange.sequencer.engine.markets
    assert 4242 in again_exchange.models.markets
    await again_exchange.stop()


ALL_MARKETS = "/getPerpetualAssetsInfo/allMarkets"
