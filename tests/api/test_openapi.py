"""The OpenAPI document stays true: every action documents its body, its signature headers
and its answers, and real requests the exchange accepts (and its answers) fit them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from openperps.api.app import create_app
from openperps.api.schema import BODIES, READ_RECORDS
from openperps.runtime.app import Exchange, Settings
from openperps.signing import PrivateKey, sign_request
from tests.api.test_rest import NEW_MARKET

APT = "1338"
ADMIN = {"authorization": "Bearer s3cret"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    exchange = Exchange(Settings(db=str(tmp_path / "events.sqlite3"), ws_port=0))
    await exchange.start()
    app = create_app(exchange, admin_token="s3cret")
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://openperps") as client:
        yield client
    await exchange.stop()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


async def test_every_action_documents_its_body_headers_and_answers(
    api: httpx.AsyncClient,
) -> None:
    document = (await api.get("/openapi.json")).json()
    assert document == (await api.get("/schema/openapi.json")).json()
    components = document["components"]["schemas"]
    posts = {path: item["post"] for path, item in document["paths"].items() if "post" in item}
    assert set(posts) == set(BODIES)  # every action, and no body for a path that is gone
    for path, operation in posts.items():
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].rsplit("/", 1)[1] in components, path
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        wanted = (
            {"authorization"}
            if path.startswith("/admin/")
            else {"x-wallet-address", "x-public-key", "x-timestamp", "x-signature"}
        )
        assert headers >= wanted, path
        for status in ("200", "400", "401", "409", "429", "500"):
            answer = operation["responses"][status]["content"]["application/json"]["schema"]
            assert {"success", "message", "data"} <= set(answer["properties"]), (path, status)
    for path, record in READ_RECORDS.items():
        answer = document["paths"][path]["get"]["responses"]["200"]["content"]
        data = answer["application/json"]["schema"]["properties"]["data"]
        assert data["items"]["$ref"].endswith("/" + record.__name__), path
    missing = {ref for ref in refs(document) if ref.rsplit("/", 1)[1] not in components}
    assert missing == set()


class Signed:
    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api
        self.key = PrivateKey.generate()
        self.sent: dict[str, list[dict[str, Any]]] = {}

    async def post(self, path: str, body: dict[str, Any], **headers: str) -> Any:
        data = json.dumps(body).encode()
        signed = sign_request(self.key, "POST", path, data, time.time_ns() // 1_000_000)
        answer = await self.api.post(path, content=data, headers={**signed, **headers})
        assert answer.status_code == 200, (path, answer.text)
        self.sent.setdefault(path, []).append(body)
        return answer.json()["data"]


async def test_accepted_requests_and_the_answers_fit_the_document(api: httpx.AsyncClient) -> None:
    """One accepted request of every action, each body decoded as its documented type with no
    field the document leaves out; the record reads decode as their documented records."""
    alice, bob = Signed(api), Signed(api)
    for trader in (alice, bob):
        await trader.post("/mintTestTokens", {"amount": "1000"})
        await trader.post("/deposit", {"amount": "900"})
    limit = {"marketId": APT, "tradeSide": False, "direction": False, "leverage": 5}
    ask = await bob.post("/placeLimitOrder", {**limit, "size": "5", "price": "7", "restriction": 3})
    await alice.post(
        "/placeMarketOrder",
        {
            "marketId": 1338,
            "tradeSide": True,
            "direction": False,
            "size": 2,
            "leverage": 5,
            "takeProfit": "9",
            "stopLoss": None,
        },
    )
    batch = await bob.post(
        "/placeMultipleOrders", {"orders": [{**limit, "size": "1", "price": "7.5"}]}
    )
    await bob.post(
        "/cancelMultipleOrders",
        {"marketId": APT, "cancelOrderIds": [batch["orders"][0]["order_id"]]},
    )
    await bob.post(
        "/cancelAndPlaceMultipleOrders",
        {
            "marketId": APT,
            "cancelOrderIds": [ask["orders"][0]["order_id"]],
            "orders": [{**limit, "size": "1", "price": "7.2", "takeProfit": "6"}],
        },
    )
    await alice.post(
        "/updateTakeProfit", {"marketId": APT, "tradeSide": True, "newTakeProfitPrice": "9.5"}
    )
    await alice.post(
        "/updateStopLoss", {"marketId": APT, "tradeSide": True, "newStopLossPrice": None}
    )
    await alice.post("/addMargin", {"marketId": APT, "tradeSide": True, "amount": "1.5"})
    await alice.post("/settlePnl", {"marketId": APT})
    await alice.post("/settlePnl", {})
    await alice.post("/withdraw", {"amount": "1"})
    await alice.post("/withdrawSpecifiMarket", {"amount": "1"})
    await alice.post(
        "/placeLimitOrder",
        {**limit, "tradeSide": True, "direction": True, "size": "2", "price": "7.2"},
    )
    # a long and a short of one account, collapsed into one
    carol, dave = Signed(api), Signed(api)
    for trader in (carol, dave):
        await trader.post("/mintTestTokens", {})
        await trader.post("/deposit", {"amount": "500"})
    short = {"marketId": APT, "tradeSide": False, "direction": False, "leverage": 2}
    await dave.post("/placeLimitOrder", {**short, "tradeSide": True, "size": "1", "price": "7"})
    await carol.post("/placeMarketOrder", {**short, "size": "1"})
    await dave.post("/placeLimitOrder", {**short, "size": "1", "price": "7"})
    await carol.post("/placeMarketOrder", {**short, "tradeSide": True, "size": "1"})
    collapsed = await carol.post("/collapsePosition", {"marketId": APT})
    assert collapsed["positions"] == []  # both closed: an answer lists what is still open
    delegate = PrivateKey.generate()
    await alice.post(
        "/enableDelegation",
        {
            "delegatePublicKey": delegate.public_key_hex,
            "expiresAt": time.time_ns() // 10**6 + 60_000,
        },
    )
    await alice.post("/disableDelegation", {})
    operator = Signed(api)
    await operator.post("/admin/oraclePrice", {"marketId": APT, "price": "7.1"}, **ADMIN)
    await operator.post("/admin/pauseMarket", {"marketId": APT, "paused": False}, **ADMIN)
    await operator.post(
        "/admin/creditWallet", {"userAddress": alice.key.address, "amount": "5"}, **ADMIN
    )
    await operator.post(
        "/admin/listMarket",
        NEW_MARKET,
        **ADMIN,
    )
    sent: dict[str, list[dict[str, Any]]] = {}
    for trader in (alice, bob, carol, dave, operator):
        for path, bodies in trader.sent.items():
            sent.setdefault(path, []).extend(bodies)
    assert set(sent) == set(BODIES), set(BODIES) - set(sent)
    for path, bodies in sent.items():
        kind = BODIES[path]
        for body in bodies:
            msgspec.convert(body, kind)  # raises if the document would refuse it
            assert set(body) <= set(kind.__struct_encode_fields__), (path, body)
    for path, record in READ_RECORDS.items():
        params = {"userAddress": alice.key.address, "marketId": APT}
        answer = (await api.get(path, params=params)).json()
        rows = msgspec.convert(answer["data"], list[record])  # type: ignore[valid-type]
        assert rows or path in ("/getOpenOrders",), path  # each read has something to show
