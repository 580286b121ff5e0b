"""Serving a REST app (the exchange's or a gateway's) with uvicorn on the running loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

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


class HeadAsGet:
    """HEAD answered as the GET of the same path, without its body (RFC 9110): load
    balancers and uptime checks often probe ``/health`` that way, and the framework's GET
    routes would answer it 405 on their own. A path without a GET is still 405."""

    def __init__(self, app: Litestar) -> None:
        self.app: Any = app

    async def __call__(
        self, scope: Any, receive: Any, send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def bodiless(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, bodiless)


class Serving:
    """An app being served: its port, and how to stop it."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], port: int) -> None:
        self.server = server
        self.task = task
        self.port = port

    async def stop(self) -> None:
        """Stop taking requests, let those in flight finish, and close the socket."""
        self.server.should_exit = True
        with contextlib.suppress(Exception):  # it failed already: nothing left to stop
            await self.task


async def start(app: Litestar, sock: socket.socket, name: str) -> Serving:
    """``app`` served on ``sock`` by uvicorn in a task of the running loop, listening when
    this returns (``OSError`` if the server stopped before it could)."""
    config = uvicorn.Config(HeadAsGet(app), log_config=None, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    port = int(sock.getsockname()[1])
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise OSError(f"the HTTP server on port {port} stopped at start")
        await asyncio.sleep(0.01)
    return Serving(server, task, port)
