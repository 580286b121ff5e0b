"""Trading commands: a thin layer over ``openperps.client``.

    openperps keygen                       writes a key file (0600)
    openperps account                      wallet, profile, wallet and trading balances
    openperps faucet AMOUNT                testnet: mint test USDT into your wallet
    openperps deposit|withdraw AMOUNT      wallet -> trading account, and back
    openperps order limit MARKET long|short SIZE PRICE [--leverage N] [--reduce] [--tp P] [--sl P]
    openperps order market MARKET long|short SIZE [--leverage N] [--reduce]
    openperps order cancel MARKET ORDER_ID...
    openperps orders [MARKET]              your resting orders and their ids
    openperps fills [--limit N]            your latest fills
    openperps positions | openperps tp|sl MARKET long|short PRICE
    openperps subscribe TOPIC [--address A | --mine] [--market M] [--json]
    openperps book MARKET                  a live depth ladder

A MARKET is an id (1338) or a symbol (APT-USD), looked up on the exchange.

Errors print the server's code and a one-line explanation and exit 1; so does a batch (a
cancel of several ids, say) that the exchange refused any part of, after printing the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Column, Table

from openperps.client import ApiError, Client, Feed, FeedError
from openperps.core.errors import ErrorCode
from openperps.indexer.topics import GLOBAL_TOPICS, MARKET_TOPICS, USER_TOPICS
from openperps.signing import PrivateKey, SigningError, SigningErrorCode, load_key, save_key
from openperps.wire.shapes import OpenOrderRecord

console = Console()
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

KEY_FILE_EXISTS = SigningErrorCode.KEY_FILE_EXISTS
DEFAULT_KEY = Path.home() / ".config" / "openperps" / "key.json"
KeyOption = Annotated[Path, typer.Option("--key", envvar="OPENPERPS_KEY", help="key file")]
UrlOption = Annotated[str, typer.Option("--url", envvar="OPENPERPS_URL", help="REST base URL")]
WsOption = Annotated[str, typer.Option("--ws-url", envvar="OPENPERPS_WS_URL", help="feed URL")]
MarketArg = Annotated[str, typer.Argument(help="market id (1338) or symbol (APT-USD)")]
SideArg = Annotated[str, typer.Argument(help="long or short")]
SizeArg = Annotated[str, typer.Argument(help="in the market's base asset, e.g. 1.5")]
PriceArg = Annotated[str, typer.Argument(help="in USDT, e.g. 7.25")]

order_app = typer.Typer(help="Place and cancel orders.", no_args_is_help=True)


def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except ApiError as exc:
        code = f" {exc.code}" if exc.code is not None else ""
        err.print(f"[red]error{code}[/red]: {escape(_cli_words(exc.message))}")
        raise typer.Exit(1) from None
    except SigningError as exc:
        err.print(f"[red]error {int(exc.code)}[/red]: {escape(exc.detail)}")
        raise typer.Exit(1) from None
    except OSError as exc:
        # the server is down, the URL is wrong, TLS failed, or it did not answer in time
        # (the SDK's NetworkError and FeedConnectError are OSErrors)
        why = str(exc) or type(exc).__name__
        err.print(f"[red]error[/red]: cannot reach the exchange: {escape(why)}")
        raise typer.Exit(1) from None
    except FeedError as exc:  # the feed closed or failed under the command
        err.print(f"[red]error[/red]: the feed failed: {escape(str(exc.__cause__ or exc))}")
        raise typer.Exit(1) from None


# the exchange's field names (REST and feed), as the command line spells them
CLI_WORDS = {
    "newTakeProfitPrice": "PRICE",
    "newStopLossPrice": "PRICE",
    "takeProfit": "--tp",
    "stopLoss": "--sl",
    "needs a market_id": "needs --market",
    "needs an address": "needs --address",
}


def _cli_words(message: str) -> str:
    """An exchange's message (a REST answer, a feed error) in the command line's words."""
    for said, meant in CLI_WORDS.items():
        message = message.replace(said, meant)
    return message


def _client(key_path: Path, url: str) -> Client:
    try:
        key = load_key(key_path)
    except SigningError as exc:
        # the missing-file message already says how to make one; for a file that is there,
        # a new key would be a new wallet: the fix is the file, not keygen
        err.print(f"[red]error {int(exc.code)}[/red]: {escape(exc.detail)}")
        raise typer.Exit(1) from None
    return Client(url, key)


def _call(key_path: Path, url: str, request: Callable[[Client], Awaitable[T]]) -> T:
    """One command's requests, made with the key at ``key_path``; a failure prints its code
    and exits 1."""
    client = _client(key_path, url)

    async def work() -> T:
        async with client:
            return await request(client)

    return _run(work)


async def _resolve(url: str, market: str | None) -> str | None:
    """A market given to a feed command, by id or symbol (a symbol is looked up over REST)."""
    if market is None:
        return None
    async with Client(url) as client:  # no request unless ``market`` is a symbol
        return await _market_id(client, market)


async def _market_id(client: Client, market: str) -> str:
    """A market id as given, or the id of the market with that symbol (any case)."""
    if market.isascii() and market.isdigit():
        return market
    listed = await client.markets()
    for info in listed:
        if str(info.get("symbol", "")).lower() == market.lower():
            return str(info["marketId"])
    known = ", ".join(f"{m['symbol']} ({m['marketId']})" for m in listed)
    raise ApiError(400, int(ErrorCode.MARKET_NOT_FOUND), f"no market {market!r}; listed: {known}")


def _side(text: str) -> bool:
    if text not in ("long", "short"):
        err.print("[red]error[/red]: side is long or short")
        raise typer.Exit(2)
    return text == "long"


def _show(result: Any) -> None:
    if isinstance(result, dict) and "orders" in result:
        for order in result["orders"]:
            console.print(
                f"order {order['order_id']} {order['status']}: {order['size']} @ {order['price']}"
            )
        for fill in result["fills"]:
            console.print(f"fill {fill['size']} @ {fill['price']} fee {fill['fee']}")
        refused = result.get("refused", [])
        for item in refused:
            err.print(f"[red]refused {item['code']}[/red]: {escape(item['message'])}")
        console.print(f"transaction_version {result['transactionVersion']}")
        if refused:  # a batch answers 200 with what it refused: still a failure to report
            raise typer.Exit(1)
    elif isinstance(result, dict) and "walletBalance" in result:  # faucet, deposit, withdraw
        for name in ("walletBalance", "freeBalance"):
            if name in result:
                console.print(f"{name}: {result[name]}")
        console.print(f"transaction_version {result['transactionVersion']}")
    else:
        console.print(result)


def keygen(
    key: KeyOption = DEFAULT_KEY,
    force: Annotated[bool, typer.Option(help="overwrite an existing key file")] = False,
) -> None:
    """Create a new Ed25519 key (your wallet) and write it with 0600 permissions."""
    new = PrivateKey.generate()
    try:
        save_key(key, new, overwrite=force)
    except SigningError as exc:
        hint = " (--force replaces it, and its wallet)" if exc.code == KEY_FILE_EXISTS else ""
        err.print(f"[red]error {int(exc.code)}[/red]: {escape(exc.detail)}{hint}")
        raise typer.Exit(1) from None
    client = Client("http://unused", new)
    console.print(f"key file: {key}\nwallet:   {new.address}\nprofile:  {client.profile}")


def account(key: KeyOption = DEFAULT_KEY, url: UrlOption = "http://127.0.0.1:8080") -> None:
    """Wallet, profile address, the wallet's USDT and the trading account's balances."""

    async def request(client: Client) -> tuple[str, str, Decimal, dict[str, Decimal]]:
        return client.wallet, client.profile, await client.wallet_balance(), await client.balance()

    address, profile, wallet, balances = _call(key, url, request)
    console.print(f"wallet:  {address}\nprofile: {profile}")
    console.print(f"walletBalance: {wallet}")
    for name, value in balances.items():
        console.print(f"{name}: {value}")


def _money_command(method: str) -> Callable[..., None]:
    def command(
        amount: Annotated[str, typer.Argument(help="USDT, e.g. 100 or 12.5")],
        key: KeyOption = DEFAULT_KEY,
        url: UrlOption = "http://127.0.0.1:8080",
    ) -> None:
        _show(_call(key, url, lambda client: getattr(client, method)(amount)))

    command.__doc__ = {
        "mint_test_tokens": "Testnet faucet: mint test USDT into your wallet (then deposit).",
        "deposit": "Deposit USDT from your wallet into your trading account.",
        "withdraw": "Withdraw free USDT from your trading account to your wallet.",
    }[method]
    return command


faucet = _money_command("mint_test_tokens")
deposit = _money_command("deposit")
withdraw = _money_command("withdraw")


@order_app.command("limit")
def order_limit(
    market: MarketArg,
    side: SideArg,
    size: SizeArg,
    price: PriceArg,
    leverage: Annotated[int, typer.Option()] = 5,
    reduce: Annotated[
        bool, typer.Option(help="close or reduce your SIDE position (long --reduce sells)")
    ] = False,
    restriction: Annotated[int, typer.Option(help="0 none, 1 FOK, 2 IOC, 3 post-only")] = 0,
    tp: Annotated[str | None, typer.Option(help="take-profit price")] = None,
    sl: Annotated[str | None, typer.Option(help="stop-loss price")] = None,
    key: KeyOption = DEFAULT_KEY,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Place a limit order."""
    long = _side(side)

    async def request(client: Client) -> Any:
        return await client.place_limit_order(
            await _market_id(client, market),
            long=long,
            size=size,
            price=price,
            leverage=leverage,
            reduce=reduce,
            restriction=restriction,
            take_profit=tp,
            stop_loss=sl,
        )

    _show(_call(key, url, request))


@order_app.command("market")
def order_market(
    market: MarketArg,
    side: SideArg,
    size: SizeArg,
    leverage: Annotated[int, typer.Option()] = 5,
    reduce: Annotated[
        bool, typer.Option(help="close or reduce your SIDE position (long --reduce sells)")
    ] = False,
    key: KeyOption = DEFAULT_KEY,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Place a market order."""
    long = _side(side)

    async def request(client: Client) -> Any:
        return await client.place_market_order(
            await _market_id(client, market), long=long, size=size, leverage=leverage, reduce=reduce
        )

    _show(_call(key, url, request))


@order_app.command("cancel")
def order_cancel(
    market: MarketArg,
    order_ids: Annotated[list[str], typer.Argument(help="one or more order ids")],
    key: KeyOption = DEFAULT_KEY,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Cancel resting orders."""

    async def request(client: Client) -> Any:
        return await client.cancel_orders(await _market_id(client, market), order_ids)

    _show(_call(key, url, request))


def positions(key: KeyOption = DEFAULT_KEY, url: UrlOption = "http://127.0.0.1:8080") -> None:
    """Your open positions."""
    held = _call(key, url, lambda client: client.positions())
    if not held:
        console.print("no open positions")
        return
    table = Table("market", "side", "size", "entry", "margin", "liq. price", "TP", "SL", "lev.")
    for p in held:
        table.add_row(
            p.market_id,
            "long" if p.trade_side else "short",
            p.size,
            p.entry_price,
            p.margin,
            p.liq_price,
            p.tp or "-",
            p.sl or "-",
            f"{p.leverage}x",
        )
    console.print(table)


# order_type codes: odd for the long side, even for the short side (docs/exchange-rules.md)
ORDER_TYPES = ("open", "increase", "decrease", "close", "TP/SL close", "liquidation")


def _order_type(code: int) -> str:
    if not 1 <= code <= 2 * len(ORDER_TYPES):
        return str(code)
    return f"{ORDER_TYPES[(code - 1) // 2]} {'long' if code % 2 else 'short'}"


def orders(
    market: Annotated[str | None, typer.Argument(help="only this market (id or symbol)")] = None,
    key: KeyOption = DEFAULT_KEY,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Your resting orders, with the ids `order cancel` takes."""

    async def request(client: Client) -> list[OpenOrderRecord]:
        return await client.open_orders(
            None if market is None else await _market_id(client, market)
        )

    resting = _call(key, url, request)
    if not resting:
        console.print("no open orders")
        return
    # the id is what `order cancel` needs: never cut, whatever the terminal's width
    width = max(len(o.order_id) for o in resting)
    table = Table(
        Column("order id", min_width=width, no_wrap=True),
        "market",
        "type",
        "price",
        "size",
        "left",
        "lev.",
    )
    for o in resting:
        table.add_row(
            o.order_id,
            o.market_id,
            _order_type(o.order_type),
            o.price,
            o.total_size,
            o.remaining_size,
            f"{o.leverage}x",
        )
    console.print(table)


def fills(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many, newest first")] = 20,
    key: KeyOption = DEFAULT_KEY,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Your latest fills: your side of each trade, with its fee and realised PnL."""
    done = _call(key, url, lambda client: client.fills(limit))
    if not done:
        console.print("no fills")
        return
    table = Table("market", "type", "size", "price", "fee", "pnl", Column("time UTC", no_wrap=True))
    for f in done:
        moment = datetime.fromtimestamp(f.timestamp, UTC).strftime("%m-%d %H:%M:%S")
        table.add_row(
            f.market_id,
            _order_type(f.order_type),
            f.size,
            f.price,
            f.fee,
            f.pnl,
            moment,
        )
    console.print(table)


def _trigger_command(method: str) -> Callable[..., None]:
    def command(
        market: MarketArg,
        side: Annotated[str, typer.Argument(help="the position's side: long or short")],
        price: Annotated[str, typer.Argument(help="trigger price, or 'none' to remove")],
        key: KeyOption = DEFAULT_KEY,
        url: UrlOption = "http://127.0.0.1:8080",
    ) -> None:
        long = _side(side)

        async def request(client: Client) -> Any:
            return await getattr(client, method)(
                await _market_id(client, market),
                long=long,
                price=None if price == "none" else price,
            )

        result = _call(key, url, request)
        what = "take-profit" if method == "update_take_profit" else "stop-loss"
        console.print(f"{side} {what}: {'removed' if price == 'none' else price}")
        _show(result)

    command.__doc__ = "Set or remove a position's " + (
        "take-profit." if method == "update_take_profit" else "stop-loss."
    )
    return command


tp = _trigger_command("update_take_profit")
sl = _trigger_command("update_stop_loss")


def subscribe(
    topic: Annotated[
        str,
        typer.Argument(
            help=f"user topics (need --address or --mine): {', '.join(USER_TOPICS)}; "
            f"market topics (need --market): {', '.join(MARKET_TOPICS)}; "
            f"and {', '.join(GLOBAL_TOPICS)}"
        ),
    ],
    address: Annotated[str | None, typer.Option(help="profile address (user topics)")] = None,
    mine: Annotated[
        bool, typer.Option("--mine", help="your own account: the profile of the key file's wallet")
    ] = False,
    market: Annotated[str | None, typer.Option(help="market id or symbol (market topics)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
    count: Annotated[int, typer.Option(help="stop after N pushes (0: never)")] = 0,
    key: KeyOption = DEFAULT_KEY,
    ws_url: WsOption = "ws://127.0.0.1:8765/ws/",
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Print a topic's pushes as they come. User topics are keyed by the trading account's
    profile address (`openperps account` prints it), not the wallet's."""
    if mine:
        if address is not None:
            err.print("[red]error[/red]: give --address or --mine, not both")
            raise typer.Exit(2)
        address = _client(key, url).profile

    async def work() -> None:
        market_id = await _resolve(url, market)
        async with Feed(ws_url) as feed:
            await feed.subscribe(topic, address=address, market_id=market_id)
            seen = 0
            async for push in feed:
                if push.topic == "error":
                    error = push.raw.get("error", {})
                    detail = _cli_words(str(error.get("detail")))
                    err.print(f"[red]error {error.get('code')}[/red]: {escape(detail)}")
                    raise typer.Exit(1)
                if as_json:
                    print(json.dumps(push.raw), flush=True)
                else:
                    records = push.data if isinstance(push.data, list) else [push.data]
                    console.print(
                        f"[bold]{push.topic}[/bold] v{push.version}: {len(records)} record(s)"
                    )
                    for record in records[:10]:
                        console.print("  " + ", ".join(f"{k}={v}" for k, v in record.items()))
                seen += 1
                if count and seen >= count:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        _run(work)


def book(
    market: MarketArg,
    depth: Annotated[int, typer.Option(help="levels per side")] = 10,
    count: Annotated[int, typer.Option(help="stop after N updates (0: never)")] = 0,
    ws_url: WsOption = "ws://127.0.0.1:8765/ws/",
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """A live depth ladder of one market."""

    def ladder(levels: list[dict[str, Any]]) -> Table:
        asks = sorted((lv for lv in levels if lv["is_ask"]), key=lambda lv: lv["price"])[:depth]
        bids = sorted((lv for lv in levels if not lv["is_ask"]), key=lambda lv: -lv["price"])
        table = Table("bid size", "price", "ask size", title=f"market {market}")
        for lv in reversed(asks):
            table.add_row("", f"[red]{lv['price']}[/red]", lv["size"])
        for lv in bids[:depth]:
            table.add_row(lv["size"], f"[green]{lv['price']}[/green]", "")
        return table

    async def work() -> None:
        market_id = await _resolve(url, market)
        async with Feed(ws_url) as feed:
            await feed.subscribe("orderbook", market_id=market_id, limit=depth)
            seen = 0
            refusal: dict[str, Any] | None = None
            # transient: a refusal is printed on a clean line, not after an empty ladder
            with Live(ladder([]), console=console, refresh_per_second=8, transient=True) as live:
                async for push in feed:
                    if push.topic == "error":
                        refusal = push.raw.get("error", {})
                        break
                    if push.topic == "orderbook":
                        live.update(ladder(push.data))
                        seen += 1
                        if count and seen >= count:
                            break
                last = live.renderable
            if refusal is not None:
                detail = _cli_words(str(refusal.get("detail")))
                err.print(f"[red]error {refusal.get('code')}[/red]: {escape(detail)}")
                raise typer.Exit(1)
            console.print(last)  # the last ladder stays on screen

    with contextlib.suppress(KeyboardInterrupt):
        _run(work)
