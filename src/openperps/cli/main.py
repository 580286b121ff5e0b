"""The ``openperps`` command: a thin layer over the library.

Errors print their code and a one-line explanation and exit non-zero; no tracebacks for
anything a user can get wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from openperps import __version__
from openperps.cli import trade
from openperps.cli.gateway import gateway
from openperps.cli.reindex import reindex
from openperps.cli.serve import MarketsOption, NetworkOption, config_defaults, serve
from openperps.core.errors import OpenPerpsError
from openperps.core.markets import MarketConfig, default_markets, parse_markets
from openperps.core.numbers import format_scaled

app = typer.Typer(no_args_is_help=True, add_completion=False, help="OpenPerps exchange and feed")
console = Console()


def fail(error: OpenPerpsError) -> None:
    Console(stderr=True).print(f"[red]error {int(error.code)}[/red]: {escape(error.detail)}")
    raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the OpenPerps version."""
    console.print(__version__)


def _print_version(asked: bool) -> None:
    if asked:
        console.print(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """OpenPerps exchange and feed"""


@app.command()
def markets(
    ctx: typer.Context,
    markets: MarketsOption = None,
    network: NetworkOption = "testnet",
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="OPENPERPS_CONFIG",
            help="serve's TOML settings file: its markets and network, unless given here",
        ),
    ] = None,
) -> None:
    """List the markets `openperps serve` would trade with the same options, and their figures."""
    if config is not None:
        chosen = config_defaults(ctx, config)
        network = chosen.get("network", network)
        markets = Path(chosen["markets"]) if "markets" in chosen else markets
    if network not in ("mainnet", "testnet"):
        Console(stderr=True).print("[red]error[/red]: --network is mainnet or testnet")
        raise typer.Exit(2)
    net: Literal["mainnet", "testnet"] = "mainnet" if network == "mainnet" else "testnet"
    try:
        listed: list[MarketConfig] = (
            parse_markets(markets.read_text("utf-8"), net) if markets else default_markets(net)
        )
    except OSError as exc:
        Console(stderr=True).print(
            f"[red]error[/red]: cannot read {escape(str(markets))}: {exc.strerror}"
        )
        raise typer.Exit(1) from None
    except OpenPerpsError as exc:
        fail(exc)
        return
    table = Table(title=f"markets ({net})")
    for column in ("id", "symbol", "tick", "lot", "min size", "max lev", "maint.", "taker fee"):
        table.add_column(column)
    for m in listed:
        table.add_row(
            str(m.market_id),
            m.symbol,
            format_scaled(m.tick, m.price_decimals),
            format_scaled(m.lot, m.size_decimals),
            format_scaled(m.min_size, m.size_decimals),
            f"{m.max_leverage}x",
            format_scaled(m.maintenance_margin_bps, 2) + " %",
            format_scaled(m.taker_fee_bps, 2) + " %",
        )
    console.print(table)


app.command()(serve)
app.command()(gateway)
app.command()(reindex)
app.command()(trade.keygen)
app.command()(trade.account)
# "-1" is an amount the exchange refuses with its reason, not an unknown option
AMOUNTS = {"ignore_unknown_options": True}
app.command("faucet", context_settings=AMOUNTS)(trade.faucet)
app.command("deposit", context_settings=AMOUNTS)(trade.deposit)
app.command("withdraw", context_settings=AMOUNTS)(trade.withdraw)
app.add_typer(trade.order_app, name="order")
app.command()(trade.orders)
app.command()(trade.fills)
app.command()(trade.positions)
app.command("tp")(trade.tp)
app.command("sl")(trade.sl)
app.command()(trade.subscribe)
app.command()(trade.book)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
