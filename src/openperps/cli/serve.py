"""``openperps serve``: the whole exchange in one process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import signal
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import msgspec
import typer
import uvloop
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from openperps.api.limits import RestLimits
from openperps.bus import DEFAULT_STREAM, DEFAULT_SUBJECT
from openperps.core import is_compiled
from openperps.core.errors import OpenPerpsError
from openperps.core.markets import default_markets, parse_markets
from openperps.feed.server import ServerLimits
from openperps.feed.session import FeedLimits
from openperps.indexer.models import LIVE_RETENTION
from openperps.runtime.app import Exchange, ReplayClock, Settings
from openperps.runtime.oracle import RandomWalkOracle, Tick, read_csv_prices
from openperps.runtime.sim import SimulatedMarket
from openperps.runtime.startup import settle_heap
from openperps.store import StoreError

err = Console(stderr=True, soft_wrap=True)


# the stream the engine publishes to and gateways follow (serve and gateway share them)
NatsStream = Annotated[
    str, typer.Option(envvar="OPENPERPS_NATS_STREAM", help="JetStream stream of the bus")
]
NatsSubject = Annotated[
    str, typer.Option(envvar="OPENPERPS_NATS_SUBJECT", help="subject of that stream")
]
NetworkOption = Annotated[
    str, typer.Option(envvar="OPENPERPS_NETWORK", help="testnet or mainnet market ids")
]
MarketsOption = Annotated[
    Path | None, typer.Option(envvar="OPENPERPS_MARKETS", help="TOML file of markets")
]

RestRequestsOption = Annotated[
    float,
    typer.Option(
        envvar="OPENPERPS_REST_REQUESTS_PER_SECOND",
        help="REST requests per second per client address (burst twice that; 0: no limit); "
        "behind a load balancer every client has its address",
    ),
]


def rest_limits_of(actions_per_second: float, requests_per_second: float) -> RestLimits:
    """The REST limits from the command line's two rates, bursts of twice each; a bad rate is
    a one-line error."""
    try:
        return RestLimits(
            actions_per_second=float(actions_per_second),
            action_burst=max(1, round(2 * actions_per_second)),
            requests_per_second=float(requests_per_second),
            request_burst=max(1, round(2 * requests_per_second)),
        )
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error[/red]: {escape(message)}")  # a message may hold [brackets]
    raise typer.Exit(1)


def configure_logging(level: str) -> None:
    """Log at ``level``; below DEBUG, libraries that log every request or connection at INFO
    (the simulated traders' HTTP client, picows for each feed connection) keep to warnings,
    so that an exchange with thousands of feed clients keeps a readable log."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if logging.root.level > logging.DEBUG:
        for chatty in ("httpx", "httpcore", "picows"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


def serve(
    db: Annotated[
        str | None,
        typer.Option(
            envvar="OPENPERPS_DB",
            help="event log: sqlite:///path or postgresql:// \\[default: ./data/events.sqlite3]",
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="OPENPERPS_HOST", help="address to bind")] = (
        "127.0.0.1"
    ),
    ws_port: Annotated[int, typer.Option(envvar="OPENPERPS_WS_PORT", help="feed port")] = 8765,
    api_port: Annotated[int, typer.Option(envvar="OPENPERPS_API_PORT", help="REST port")] = 8080,
    admin_token: Annotated[
        str | None,
        typer.Option(envvar="OPENPERPS_ADMIN_TOKEN", help="bearer token of the /admin/ endpoints"),
    ] = None,
    network: NetworkOption = "testnet",
    markets: MarketsOption = None,
    sim: Annotated[
        bool, typer.Option(envvar="OPENPERPS_SIM", help="run simulated traders")
    ] = False,
    sim_rate: Annotated[
        float, typer.Option(envvar="OPENPERPS_SIM_RATE", help="simulated orders per second")
    ] = 20.0,
    seed: Annotated[int, typer.Option(envvar="OPENPERPS_SEED", help="simulation seed")] = 7,
    oracle_interval: Annotated[
        float, typer.Option(envvar="OPENPERPS_ORACLE_INTERVAL", help="seconds between prices")
    ] = 1.0,
    log_level: Annotated[str, typer.Option(envvar="OPENPERPS_LOG_LEVEL")] = "INFO",
    oracle_csv: Annotated[
        Path | None,
        typer.Option(
            envvar="OPENPERPS_ORACLE_CSV",
            help="replay index prices from a CSV (timestamp_ms,market,price)",
        ),
    ] = None,
    funding_interval: Annotated[
        int | None,
        typer.Option(
            envvar="OPENPERPS_FUNDING_INTERVAL",
            help="seconds between funding settlements for newly listed markets "
            "\\[default: the markets file's, 3600]",
        ),
    ] = None,
    replay_speed: Annotated[
        float, typer.Option(envvar="OPENPERPS_REPLAY_SPEED", help="1: recorded pace, 0: flat out")
    ] = 1.0,
    bus: Annotated[
        str | None,
        typer.Option(
            envvar="OPENPERPS_BUS",
            help="nats://host:port: also publish every durable batch for feed gateways",
        ),
    ] = None,
    nats_stream: NatsStream = DEFAULT_STREAM,
    nats_subject: NatsSubject = DEFAULT_SUBJECT,
    rest_actions_per_second: Annotated[
        float,
        typer.Option(
            envvar="OPENPERPS_REST_ACTIONS_PER_SECOND",
            help="signed REST actions per second per account (burst twice that; 0: no limit)",
        ),
    ] = RestLimits.actions_per_second,
    rest_requests_per_second: RestRequestsOption = RestLimits.requests_per_second,
    config: Annotated[
        Path | None,
        typer.Option(envvar="OPENPERPS_CONFIG", help="TOML file setting any of these options"),
    ] = None,
    *,
    ctx: typer.Context,
) -> None:
    """Run the exchange: event log, engine, read models, WebSocket feed, oracle, keepers.

    Precedence: a flag, then its OPENPERPS_* environment variable, then --config, then the
    default.
    """
    feed_limits, server_limits, live_retention = FeedLimits(), ServerLimits(), LIVE_RETENTION
    if config is not None:
        chosen = config_defaults(ctx, config)
        db = chosen.get("db", db)
        host = chosen.get("host", host)
        ws_port = chosen.get("ws_port", ws_port)
        api_port = chosen.get("api_port", api_port)
        admin_token = chosen.get("admin_token", admin_token)
        network = chosen.get("network", network)
        markets = Path(chosen["markets"]) if "markets" in chosen else markets
        sim = chosen.get("sim", sim)
        sim_rate = chosen.get("sim_rate", sim_rate)
        seed = chosen.get("seed", seed)
        oracle_interval = chosen.get("oracle_interval", oracle_interval)
        log_level = chosen.get("log_level", log_level)
        oracle_csv = Path(chosen["oracle_csv"]) if "oracle_csv" in chosen else oracle_csv
        replay_speed = chosen.get("replay_speed", replay_speed)
        funding_interval = chosen.get("funding_interval", funding_interval)
        bus = chosen.get("bus", bus)
        nats_stream = chosen.get("nats_stream", nats_stream)
        nats_subject = chosen.get("nats_subject", nats_subject)
        if "feed" in chosen:
            feed_limits, server_limits, live_retention = chosen["feed"]
        rest_actions_per_second = chosen.get("rest_actions_per_second", rest_actions_per_second)
        rest_requests_per_second = chosen.get("rest_requests_per_second", rest_requests_per_second)
    rest_limits = rest_limits_of(rest_actions_per_second, rest_requests_per_second)
    configure_logging(log_level)
    if network not in ("testnet", "mainnet"):
        _fail("--network is testnet or mainnet")
    if bus is not None and not bus.startswith(("nats://", "tls://")):
        _fail("--bus is a NATS URL: nats://host:port")
    if replay_speed < 0:
        _fail("--replay-speed is 0 (as fast as possible) or a positive pace (1: as recorded)")
    net: Literal["mainnet", "testnet"] = "mainnet" if network == "mainnet" else "testnet"
    try:
        configured = (
            parse_markets(markets.read_text("utf-8"), net) if markets else default_markets(net)
        )
    except OSError as exc:
        _fail(f"cannot read {markets}: {exc.strerror}")
        return
    except OpenPerpsError as exc:
        _fail(f"{int(exc.code)} {exc.detail}")
        return
    if db is None:
        data = Path("data")
        try:
            data.mkdir(parents=True, exist_ok=True)
            probe = data / ".writable"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            _fail(f"data directory {data.resolve()} is not writable: {exc.strerror}")
        db = str(data / "events.sqlite3")
    if funding_interval is not None:
        if funding_interval <= 0:
            _fail("--funding-interval must be a positive number of seconds")
        configured = [
            msgspec.structs.replace(
                m,
                funding_interval_ms=funding_interval * 1000,
                interest_per_interval=m.interest_per_interval
                * funding_interval
                * 1000
                // m.funding_interval_ms,
            )
            for m in configured
        ]
    ticks: list[Tick] | None = None
    if oracle_csv is not None:
        try:
            ticks = list(read_csv_prices(oracle_csv, configured))
        except OSError as exc:
            _fail(f"cannot read {oracle_csv}: {exc.strerror}")
        except OpenPerpsError as exc:
            _fail(f"{int(exc.code)} {exc.detail}")
        if not ticks:
            _fail(f"{oracle_csv}: no prices")
    settings = Settings(
        db=db,
        markets=configured,
        host=host,
        ws_port=ws_port,
        funding_check_seconds=0 if ticks else 1.0,
        bus=bus,
        bus_stream=nats_stream,
        bus_subject=nats_subject,
        feed_limits=feed_limits,
        server_limits=server_limits,
        live_retention=live_retention,
    )
    try:
        uvloop.run(
            _serve(
                settings,
                sim=sim,
                sim_rate=sim_rate,
                seed=seed,
                oracle_interval=oracle_interval,
                api_port=api_port,
                network=net,
                admin_token=admin_token,
                ticks=ticks,
                replay_speed=replay_speed,
                rest_limits=rest_limits,
            )
        )
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            _fail(f"port in use on {host} ({ws_port} or {api_port}): choose --ws-port/--api-port")
        _fail(f"{exc.strerror or exc}")
    except (StoreError, OpenPerpsError) as exc:
        _fail(str(exc))


CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "db": (str,),
    "host": (str,),
    "ws_port": (int,),
    "api_port": (int,),
    "admin_token": (str,),
    "network": (str,),
    "markets": (str,),
    "sim": (bool,),
    "sim_rate": (int, float),
    "seed": (int,),
    "oracle_interval": (int, float),
    "log_level": (str,),
    "oracle_csv": (str,),
    "replay_speed": (int, float),
    "funding_interval": (int,),
    "bus": (str,),
    "nats_stream": (str,),
    "nats_subject": (str,),
    "rest_actions_per_second": (int, float),
    "rest_requests_per_second": (int, float),
}


# the [gateway] table of --config: the options of `openperps gateway`
GATEWAY_TYPES: dict[str, tuple[type, ...]] = {
    "db": (str,),
    "nats": (str,),
    "nats_stream": (str,),
    "nats_subject": (str,),
    "host": (str,),
    "ws_port": (int,),
    "http_port": (int,),
    "rest_requests_per_second": (int, float),
    "log_level": (str,),
}


def _check_types(
    path: Path, values: dict[str, Any], types: dict[str, tuple[type, ...]], where: str
) -> None:
    for key, value in values.items():
        kinds = types.get(key)
        if kinds is None and key == "market":
            _fail(f"{path} is a markets file ([[market]] tables): give it as --markets")
        if kinds is None:
            _fail(f"{path}: unknown {where}option {key!r} (known: {', '.join(types)})")
        assert kinds is not None
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            _fail(f"{path}: {key} must be {' or '.join(k.__name__ for k in kinds)}")


# the [feed] table of --config: the feed's limits, with their defaults
FEED_LIMITS: dict[str, Any] = {
    **{f.name: f.default for f in dataclasses.fields(FeedLimits)},
    **{f.name: f.default for f in dataclasses.fields(ServerLimits)},
    "live_retention": LIVE_RETENTION,
}


def feed_settings(table: object, where: str) -> tuple[FeedLimits, ServerLimits, int]:
    """The feed's limits from a ``[feed]`` table: request size, subscriptions, request rate,
    connections per address, outbox bounds, heartbeats, resume retention. The limit classes
    refuse what they cannot take; unknown keys are refused here."""
    if not isinstance(table, dict):
        _fail(f"{where}: [feed] must be a table")
    items: dict[str, Any] = table
    for key in items:
        if key not in FEED_LIMITS:
            _fail(f"{where}: unknown feed limit {key!r} (known: {', '.join(FEED_LIMITS)})")
    retention = items.get("live_retention", LIVE_RETENTION)
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
        _fail(f"{where}: feed limit live_retention must be a positive integer")
    try:
        feed = FeedLimits(**{k: v for k, v in items.items() if k in _FEED_FIELDS})
        server = ServerLimits(**{k: v for k, v in items.items() if k in _SERVER_FIELDS})
    except ValueError as exc:
        _fail(f"{where}: {exc}")
    return feed, server, retention


_FEED_FIELDS = frozenset(f.name for f in dataclasses.fields(FeedLimits))
_SERVER_FIELDS = frozenset(f.name for f in dataclasses.fields(ServerLimits))


def config_defaults(ctx: typer.Context, path: Path) -> dict[str, Any]:
    """What the TOML file at ``path`` sets for the options this command line left at their
    defaults: a flag and its environment variable both win over the file."""
    return left_to_file(ctx, read_config(path))


def left_to_file(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Of a file's ``values``, those for options neither a flag nor its variable set."""
    return {
        k: v
        for k, v in values.items()
        if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") == "DEFAULT"
    }


def read_config(path: Path) -> dict[str, Any]:
    """The options a TOML file sets (same names as the flags, with underscores), its
    ``[feed]`` table as the value of ``feed`` and its ``[gateway]`` table (the options of
    ``openperps gateway``) as the value of ``gateway``."""
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        _fail(f"{path}: malformed TOML: {exc}")
    feed = document.pop("feed", None)
    gateway = document.pop("gateway", None)
    values = document.get("serve", document)
    _check_types(path, values, CONFIG_TYPES, "")
    chosen = dict(values)
    if feed is not None:
        chosen["feed"] = feed_settings(feed, str(path))
    if gateway is not None:
        if not isinstance(gateway, dict):
            _fail(f"{path}: gateway must be a table ([gateway])")
        _check_types(path, gateway, GATEWAY_TYPES, "[gateway] ")
        chosen["gateway"] = gateway
    return chosen


async def _serve(
    settings: Settings,
    *,
    sim: bool,
    sim_rate: float,
    seed: int,
    oracle_interval: float,
    api_port: int,
    network: Literal["mainnet", "testnet"],
    admin_token: str | None,
    ticks: list[Tick] | None,
    replay_speed: float,
    rest_limits: RestLimits,
) -> None:
    from openperps.api.app import create_app
    from openperps.api.serving import bind, start

    # bind the REST socket first: a port in use is reported before anything starts
    rest_socket = bind(settings.host, api_port)
    clock = ReplayClock(ticks[0].timestamp or 0) if ticks else None
    exchange = Exchange(settings, clock=clock) if clock is not None else Exchange(settings)
    try:
        # replaying a long log after the newest snapshot shows its progress
        with Progress(
            TextColumn("replaying the event log"),
            BarColumn(),
            TaskProgressColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            task = progress.add_task("replay", total=None)
            await exchange.start(
                progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    except BaseException:
        rest_socket.close()
        raise
    settle_heap()
    app = create_app(
        exchange,
        faucet=network == "testnet",
        network=network,
        admin_token=admin_token,
        limits=rest_limits,
    )
    api = await start(app, rest_socket, "openperps-api")
    api_port = api.port
    engine = exchange.sequencer.engine
    oracle = RandomWalkOracle([m.config for m in engine.markets.values()], seed=seed)
    for market_id, market in engine.markets.items():  # continue from the logged prices
        if market.index_price is not None:
            oracle.prices[market_id] = market.index_price
    if ticks is not None and clock is not None:
        exchange.spawn(lambda: exchange.run_replay(ticks, clock, replay_speed), "replay")
    else:
        exchange.spawn(lambda: exchange.run_walk(oracle, oracle_interval), "oracle")
    if sim:
        market_sim = SimulatedMarket(
            exchange.sequencer,
            rest_url=f"http://{settings.host}:{api_port}",
            seed=seed,
            rate=sim_rate,
        )
        exchange.spawn(market_sim.run, "sim")
    err.print(
        f"[green]OpenPerps[/green] REST on http://{settings.host}:{api_port}/ "
        f"(docs at /schema), feed on ws://{settings.host}:{exchange.feed.port}/ws/ "
        f"({len(engine.markets)} markets, version {engine.version}, "
        f"{'compiled' if is_compiled() else 'pure-Python'} engine"
        f"{', simulated traders on' if sim else ''}"
        f"{f', publishing to {settings.bus}' if settings.bus else ''}); Ctrl-C stops"
    )
    try:
        await until_signalled()
    finally:
        await exchange.stop_work()  # the traders stop before the API they trade through
        await api.stop()
        await exchange.stop()
        err.print("stopped; the log is flushed")
    if sys.stderr.isatty():
        err.print()


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM (Ctrl-C, a service manager's stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
