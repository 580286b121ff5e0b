"""Serving a REST app (the exchange's or a gateway's) with uvicorn on the running loop."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from litestar import Litestar


def bind(host: str, port: int) -> socket.socket:
    """A listening socket bound now, so that a port in use is reported before anything else
    starts (``OSError``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def start(
    app: Litestar, sock: socket.socket, name: str
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """``app`` served on ``sock`` in a task of the running loop; set ``should_exit`` on the
    server and await the task to stop it."""
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    return server, asyncio.create_task(server.serve(sockets=[sock]), name=name)
