"""``openperps gateway``: one more feed server for an exchange that publishes to NATS."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from openperps.api.limits import RestLimits
from openperps.bus import DEFAULT_NATS_URL, DEFAULT_STREAM, DEFAULT_SUBJECT
from openperps.cli.serve import (
    NatsStream,
    NatsSubject,
    RestRequestsOption,
    _fail,
    configure_logging,
    err,
    left_to_file,
    read_config,
    rest_limits_of,
    until_signalled,
)
from openperps.runtime.gateway import Gateway, GatewaySettings
from openperps.runtime.startup import settle_heap
from openperps.store import StoreError


def gateway(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            envvar="OPENPERPS_DB",
            help="the exchange's event log: postgresql://...?schema=... (required)",
        ),
    ] = None,
    nats: Annotated[
        str, typer.Option(envvar="OPENPERPS_NATS", help="the NATS server the exchange publishes to")
    ] = DEFAULT_NATS_URL,
    nats_stream: NatsStream = DEFAULT_STREAM,
    nats_subject: NatsSubject = DEFAULT_SUBJECT,
    host: Annotated[str, typer.Option(envvar="OPENPERPS_HOST", help="address to bind")] = (
        "127.0.0.1"
    ),
    ws_port: Annotated[int, typer.Option(envvar="OPENPERPS_WS_PORT", help="feed port")] = 8765,
    http_port: Annotated[
        int | None,
        typer.Option(
            envvar="OPENPERPS_HTTP_PORT",
            help="serve the REST reads, /health and /metrics on this port",
        ),
    ] = None,
    rest_requests_per_second: RestRequestsOption = RestLimits.requests_per_second,
    log_level: Annotated[str, typer.Option(envvar="OPENPERPS_LOG_LEVEL")] = "INFO",
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="OPENPERPS_CONFIG",
            help="the exchange's TOML file: its \\[gateway] table sets these options, its "
            "\\[feed] table this gateway's feed limits",
        ),
    ] = None,
) -> None:
    """Serve the feed of an exchange running elsewhere, from its log and its NATS stream.

    The exchange runs `serve --bus nats://...`. The gateway builds its read models from the
    exchange's event log, then follows the live batches on NATS. It never writes: actions go to
    the exchange. With --http-port it also serves the REST reads, /health and /metrics."""
    options = read_config(config) if config is not None else {}
    table = left_to_file(ctx, options.get("gateway", {}))  # a flag or variable wins
    db = table.get("db", db)
    nats = table.get("nats", nats)
    nats_stream = table.get("nats_stream", nats_stream)
    nats_subject = table.get("nats_subject", nats_subject)
    host = table.get("host", host)
    ws_port = table.get("ws_port", ws_port)
    http_port = table.get("http_port", http_port)
    rest_requests_per_second = table.get("rest_requests_per_second", rest_requests_per_second)
    log_level = table.get("log_level", log_level)
    configure_logging(log_level)
    if db is None:
        _fail("--db is required: the exchange's PostgreSQL log (or db in [gateway] of --config)")
    if not nats.startswith(("nats://", "tls://")):
        _fail("--nats is a NATS URL: nats://host:port")
    settings = GatewaySettings(
        db=db,
        nats=nats,
        stream=nats_stream,
        subject=nats_subject,
        host=host,
        ws_port=ws_port,
        http_port=http_port,
        rest_limits=rest_limits_of(0.0, rest_requests_per_second),  # it takes no actions
    )
    if "feed" in options:
        # the same limits and resume window as the engine's own feed
        settings.feed_limits, settings.server_limits, settings.live_retention = options["feed"]
    try:
        uvloop.run(_run(settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            if http_port is None:
                _fail(f"port {ws_port} in use on {host}: choose --ws-port")
            _fail(f"port {ws_port} or {http_port} in use on {host}: choose --ws-port/--http-port")
        _fail(f"{exc.strerror or exc}")
    except StoreError as exc:
        _fail(str(exc))
    except Exception as exc:  # NATS that does not answer, most likely
        _fail(f"{type(exc).__name__}: {exc}")


async def _run(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    settle_heap()
    assert gateway.feed is not None
    http = f"; REST reads and /metrics on http://{settings.host}:{gateway.http_port}/"
    err.print(
        f"[green]OpenPerps gateway[/green] feed on ws://{settings.host}:{gateway.feed.port}/ws/ "
        f"(version {gateway.models.version}, following {settings.stream} on {settings.nats}"
        f"{http if gateway.http else ''}); Ctrl-C stops"
    )
    try:
        await until_signalled()
    finally:
        await gateway.stop()
        err.print("gateway stopped")
