"""The REST client as a bot uses it, against a real exchange: delegation, batches and what
they refused, the market maker's reads, and every way a call can fail (the exchange refuses,
nothing answers, something else answers, the client is closed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from openperps.client import (
    ApiError,
    Client,
    ClientClosed,
    NetworkError,
    NewOrder,
    Refusal,
    SyncClient,
)
from openperps.core import commands as c
from openperps.runtime.app import Exchange, Settings
from openperps.runtime.sequencer import wall_clock_ms
from openperps.signing import PrivateKey
from tests.client.test_sdk import APT, Server, serving


async def funded(server: Server, amount: str = "10000") -> Client:
    client = Client(server.http, PrivateKey.generate())
    await client.mint_test_tokens(amount)
    await client.deposit(amount)
    return client


def bid(price: str, size: str = "1") -> NewOrder:
    return NewOrder(APT, long=True, size=size, price=price, leverage=5)


async def test_a_delegate_trades_for_the_wallet_but_cannot_withdraw(server: Server) -> None:
    wallet = await funded(server)
    bot_key = PrivateKey.generate()
    bot = Client(server.http, bot_key, wallet=wallet.wallet)
    async with wallet, bot:
        assert bot.is_delegate and not wallet.is_delegate
        assert bot.wallet == wallet.wallet and bot.profile == wallet.profile
        with pytest.raises(ApiError) as before:  # not yet its delegate
            await bot.place_limit_order(APT, long=True, size="1", price="6.9", leverage=5)
        assert (before.value.status, before.value.code) == (401, 2104)

        enabled = await wallet.enable_delegation(
            bot_key.public_key_hex, valid_for=timedelta(hours=1)
        )
        assert enabled.transaction_version > 0
        placed = await bot.place_limit_order(APT, long=True, size="1", price="6.9", leverage=5)
        (order,) = placed.orders
        assert order.address == wallet.profile  # the wallet's account, not the bot's
        # the bot's reads are the wallet's
        assert [o.order_id for o in await bot.open_orders()] == [order.order_id]
        assert [o.order_id for o in await wallet.open_orders()] == [order.order_id]
        assert (await bot.balance()) == (await wallet.balance())
        cancelled = await bot.cancel_orders(APT, [order.order_id])
        assert cancelled.refused == [] and cancelled.orders[0].status == "Cancelled"
        assert await wallet.open_orders() == []

        for forbidden in (
            bot.withdraw("1"),
            bot.enable_delegation(bot_key.public_key_hex, valid_for=timedelta(hours=1)),
            bot.disable_delegation(),
        ):
            with pytest.raises(ApiError) as refused:
                await forbidden
            assert (refused.value.status, refused.value.code) == (403, 2106)
        assert (await wallet.balance())["freeBalance"] == Decimal("10000")

        await wallet.disable_delegation()
        with pytest.raises(ApiError) as revoked:
            await bot.place_limit_order(APT, long=True, size="1", price="6.9", leverage=5)
        assert (revoked.value.status, revoked.value.code) == (401, 2104)
        with pytest.raises(ValueError, match="exactly one"):
            await wallet.enable_delegation(bot_key.public_key_hex)


async def test_batches_return_what_they_refused_item_by_item(server: Server) -> None:
    maker = await funded(server)
    async with maker:
        placed = await maker.place_orders(
            [
                bid("6.9"),
                bid("6.9001"),  # off the tick grid: refused at the edge, the others still run
                NewOrder(int(APT), long=False, size="1", price="7.1", leverage=5),
            ]
        )
        assert [(r.list, r.index) for r in placed.refused] == [("orders", 1)]
        assert placed.refused[0].code == 2001 and placed.refused[0].order_id is None
        low, ask = (o.order_id for o in placed.orders)
        assert placed["refused"][0]["index"] == 1  # the answer is still the server's JSON

        # cancels first, then new orders, in one command; an unknown id is refused alone
        replaced = await maker.replace_orders(int(APT), cancel=[low, 123], place=[bid("6.95")])
        assert replaced.refused == [
            Refusal(2007, "order not found", list="cancelOrderIds", index=1, order_id="123")
        ]
        assert [o.status for o in replaced.orders] == ["Cancelled", "Open"]
        high = replaced.orders[1].order_id
        assert {o.order_id for o in await maker.open_orders(int(APT))} == {ask, high}

        pulled = await maker.replace_orders(APT, cancel=[ask, high])  # cancels alone
        assert pulled.refused == [] and await maker.open_orders() == []
        again = await maker.cancel_orders(APT, [high])  # partly refused: no exception
        assert again.orders == [] and [r.code for r in again.refused] == [2007]
        status = await maker.order_status(int(APT), int(high))
        assert status.status == "Cancelled" and status.price == "6.95"
        with pytest.raises(ApiError) as unknown:
            await maker.order_status(APT, 123)
        assert (unknown.value.status, unknown.value.code) == (404, 2007)

        with pytest.raises(ValueError, match="cancel, orders to place"):
            await maker.replace_orders(APT)
        with pytest.raises(TypeError):
            NewOrder(APT, long=True, size=1.5, price="7", leverage=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="leverage"):
            NewOrder(APT, long=True, size="1", price="7", leverage=5.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="long"):
            NewOrder(APT, long="yes", size="1", price="7", leverage=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="restriction"):
            NewOrder(APT, long=True, size="1", price="7", leverage=5, restriction=True)
        with pytest.raises(TypeError, match="long"):
            await maker.add_margin(APT, long=1, amount="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit orders"):
            NewOrder(APT, long=True, size="1", leverage=5, restriction=3)


async def test_last_price_history_pages_and_collapse(server: Server) -> None:
    maker = await funded(server)
    trader = await funded(server, "1000")
    async with maker, trader:
        assert await trader.last_price(APT) is None
        await maker.place_orders(
            [bid("6.9", "2"), NewOrder(APT, long=False, size="2", price="7", leverage=5)]
        )
        await trader.place_market_order(APT, long=True, size="1", leverage=5)  # buys at 7
        assert await trader.last_price(int(APT)) == Decimal("7")
        await trader.place_market_order(APT, long=False, size="1", leverage=5)  # a short too
        assert await trader.last_price(APT) == Decimal("6.9")
        assert sorted(p.trade_side for p in await trader.positions(int(APT))) == [False, True]

        collapsed = await trader.collapse_position(int(APT))
        assert collapsed.refused == [] and collapsed.fills == []  # no trade, no fee
        assert await trader.positions() == []

        history = await trader.order_history()
        assert len(history) == 2
        assert await trader.order_history(1, offset=1) == history[1:]
        fills = await trader.fills(market_id=int(APT))
        assert await trader.fills(1, offset=1) == fills[1:2]
        assert await trader.transfers(1, offset=1) == (await trader.transfers())[1:2]
        assert await trader.all_trades(APT, 1, offset=1) == (await trader.all_trades(APT))[1:2]


async def test_funding_payments_read_both_ways(tmp_path: Path) -> None:
    hours = 0  # the exchange's clock runs ahead of the wall clock by this many hours

    def clock() -> int:
        return wall_clock_ms() + hours * 3_600_000

    settings = Settings(db=str(tmp_path / "e.sqlite3"), ws_port=0, funding_check_seconds=0)
    async with serving(Exchange(settings, clock=clock)) as server:
        maker = await funded(server)
        trader = await funded(server)
        async with maker, trader:
            sequencer = server.exchange.sequencer
            await sequencer.execute(c.SetOraclePrice(timestamp=0, market_id=int(APT), price=7000))
            await maker.place_limit_order(APT, long=False, size="10", price="7", leverage=5)
            await trader.place_market_order(APT, long=True, size="10", leverage=5)
            for _ in range(2):
                hours += 2
                await sequencer.execute(c.SetOraclePrice(timestamp=0, market_id=1338, price=7000))
                await sequencer.execute(c.SettleFunding(timestamp=0, market_id=1338))
            newest = await trader.funding_history()
            assert (
                len(newest) == 2 and newest[0].transaction_version > newest[1].transaction_version
            )
            assert await trader.funding_history(order="asc") == newest[::-1]
            assert await trader.funding_history(1, offset=1) == newest[1:]
            paid = newest[0]
            assert paid.market_id == APT and paid.trade_side and paid.size == "10"
            assert Decimal(paid.funding_rate) > 0 and Decimal(paid.amount) < 0  # longs pay


@contextlib.asynccontextmanager
async def http_server(reply: bytes | None) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that answers every request with ``reply`` (or never answers, for None); the
    list counts the requests it has read."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen.append(1)
        if reply is None:
            await reader.read()  # until the client gives up
        else:
            writer.write(reply)
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}", seen


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


async def test_no_answer_is_a_network_error_that_says_whether_it_was_sent() -> None:
    with closed_port() as port:
        async with Client(f"http://127.0.0.1:{port}", PrivateKey.generate()) as down:
            with pytest.raises(NetworkError) as refused:
                await down.deposit("1")
    assert not refused.value.may_have_run and refused.value.url.endswith("/deposit")
    assert isinstance(refused.value, OSError)  # what code catching socket errors expects
    assert isinstance(refused.value.cause, httpx.ConnectError)
    assert "is the exchange running" in str(refused.value)

    async with Client(f"127.0.0.1:{port}") as schemeless:
        with pytest.raises(NetworkError, match="http://host:port"):
            await schemeless.markets()

    async with (
        http_server(None) as (url, _),
        Client(url, PrivateKey.generate(), timeout=0.2) as slow,
    ):
        with pytest.raises(NetworkError) as silent:
            await slow.place_market_order(APT, long=True, size="1", leverage=5)
    assert silent.value.may_have_run and isinstance(silent.value.cause, httpx.ReadTimeout)
    assert "may have acted on it" in str(silent.value)


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nNot Found", "'Not Found'"),
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", "no body"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n"
            b'{"price": 7}',
            "'{\"price\": 7}'",
        ),
    ],
)
async def test_an_answer_that_is_not_the_exchanges_says_to_check_the_url(
    reply: bytes, shown: str
) -> None:
    async with http_server(reply) as (url, _), Client(url) as client:
        with pytest.raises(ApiError) as other:
            await client.markets()
    assert other.value.code is None
    message = str(other.value)
    assert "not an OpenPerps answer" in message and "REST address" in message
    assert shown in message and f"{url}/getPerpetualAssetsInfo/allMarkets" in message


async def test_a_rate_limited_call_says_how_long_to_wait() -> None:
    body = b'{"success": false, "message": "too many requests", "code": 2036, "data": null}'
    head = f"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: {len(body)}"
    async with http_server(head.encode() + b"\r\n\r\n" + body) as (url, _), Client(url) as client:
        with pytest.raises(ApiError) as limited:
            await client.markets()
    assert (limited.value.status, limited.value.code, limited.value.retry_after) == (429, 2036, 2)


async def test_a_closed_client_says_so() -> None:
    client = Client("http://127.0.0.1:1")
    await client.close()
    with pytest.raises(ClientClosed):
        await client.markets()
    await client.close()  # twice is fine


async def test_the_sync_client_is_typed_a_context_manager_and_closes_cleanly(
    server: Server,
) -> None:
    key = PrivateKey.generate()

    def session() -> SyncClient:
        with SyncClient(server.http, key) as sync:
            assert sync.mint_test_tokens(100).wallet_balance == Decimal("100")
            sync.deposit(Decimal("60"))
            placed = sync.place_orders([bid("6.9"), bid("6.9001")])
            assert [r.index for r in placed.refused] == [1]
            (order,) = sync.open_orders(int(APT))
            assert sync.order_status(APT, order.order_id).status == "Open"
            assert sync.balance()["reservedForOrders"] > 0
            assert sync.read_version is not None and sync.wallet == key.address
        return sync

    closed = await asyncio.to_thread(session)
    assert closed.closed
    with pytest.raises(ClientClosed):  # not a hang
        closed.markets()
    closed.close()  # twice is fine


@pytest.mark.parametrize("signed", [False, True])
async def test_closing_a_sync_client_ends_a_call_in_flight_saying_it_may_have_run(
    signed: bool,
) -> None:
    """As the async client's would: the request was sent, so an order may have been placed."""
    async with http_server(None) as (url, seen):
        sync = SyncClient(url, PrivateKey.generate())
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                if signed:
                    sync.deposit("1")
                else:
                    sync.markets()
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        while not seen:  # the request has reached the server and waits for an answer
            await asyncio.sleep(0.01)
        await asyncio.to_thread(sync.close)
        await asyncio.to_thread(caller.join)
    assert [type(exc) for exc in outcome] == [NetworkError]
    assert isinstance(outcome[0], NetworkError) and outcome[0].may_have_run
    with pytest.raises(ClientClosed):
        sync.markets()


async def test_identical_actions_sent_at_once_are_each_signed_afresh(server: Server) -> None:
    """Four identical orders in one gather: four orders, none refused as a replay (the
    same request signed twice in one millisecond would be)."""
    async with Client(server.http, PrivateKey.generate()) as trader:
        await trader.mint_test_tokens("1000")
        await trader.deposit("1000")
        placed = await asyncio.gather(
            *(
                trader.place_limit_order(APT, long=True, size="1", price="5", leverage=2)
                for _ in range(4)
            )
        )
        assert len({result.orders[0].order_id for result in placed}) == 4
        assert len(await trader.open_orders()) == 4


def test_the_sync_client_has_every_client_method_and_attribute() -> None:
    client = Client("http://127.0.0.1:1", PrivateKey.generate())
    public = {n for n in [*dir(client), *vars(client)] if not n.startswith("_")}
    assert public - set(dir(SyncClient)) == set()


def test_every_sdk_error_pickles_with_its_attributes() -> None:
    """A process pool hands a worker's exception back pickled: the SDK's must survive it."""
    import pickle

    from openperps.client.feed import FeedClosedError, FeedConnectError, FeedFailedError

    request = httpx.Request("POST", "http://127.0.0.1:1/placeLimitOrder")
    transport = httpx.ReadTimeout("timed out", request=request)
    errors: list[Exception] = [
        ApiError(429, 2036, "slow down", retry_after=2),
        ApiError(502, None, "not the exchange"),
        NetworkError("no answer", url="http://x/y", cause=transport, may_have_run=True),
        ClientClosed("closed"),
        FeedConnectError("cannot connect"),
        FeedClosedError("closed"),
        FeedFailedError("stopped"),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        kept = {k: v for k, v in vars(error).items() if k != "cause"}
        assert {k: v for k, v in vars(back).items() if k != "cause"} == kept
    network = pickle.loads(pickle.dumps(errors[2]))
    assert isinstance(network, NetworkError) and network.may_have_run
    assert isinstance(network.cause, httpx.ReadTimeout) and str(network.cause) == "timed out"
    # a cause that cannot be pickled travels as its description
    odd = OSError("socket gone")
    odd.hook = lambda: None  # type: ignore[attr-defined]
    unpicklable = NetworkError("dropped", url="http://x/y", cause=odd, may_have_run=False)
    back = pickle.loads(pickle.dumps(unpicklable))
    assert isinstance(back, NetworkError) and str(back.cause) == "OSError: socket gone"


def test_one_keys_burst_of_signatures_does_not_move_anothers_stamps() -> None:
    """Stamps move past the clock only for a key's own identical-millisecond burst."""
    import time

    from openperps.client.rest import _Stamps

    stamps = _Stamps()
    burst = [stamps.next("busy") for _ in range(2000)]
    assert burst == sorted(set(burst)), "each later than the last"
    quiet = stamps.next("quiet")
    assert quiet <= time.time_ns() // 1_000_000 < burst[-1]
