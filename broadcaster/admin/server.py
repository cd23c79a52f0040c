"""Serve the admin application with uvicorn inside the caller's event loop.

uvicorn normally owns the process (signals, logging); here it is one part of
the service, so signals stay with ``broadcaster serve`` and uvicorn's own
logging is off: requests that matter are logged through structlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Self

import structlog
import uvicorn
from fastapi import FastAPI

__all__ = ["AdminServer"]

log = structlog.get_logger("broadcaster.admin")


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The service handles SIGTERM/SIGINT itself and stops us in order
        # (admin first, then a flushing broadcaster close).
        yield


class AdminServer:
    """``async with AdminServer(app, host, port) as server: server.url``.
    ``port=0`` picks a free port; :attr:`port` tells which."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8080) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            # No websockets in the admin API: uvicorn's websockets protocol
            # would import the deprecated legacy websockets API.
            ws="none",
            http="h11",
            log_config=None,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen, then serve in a background task. Raises :class:`OSError`
        (naming the address) if the port cannot be bound."""
        # Bound here rather than by uvicorn, whose start-up failure is a
        # SystemExit that would tear down the caller's event loop.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets
        # that say so, and accepted sockets inherit it. Without it, uvicorn's
        # separate header and body writes meet Nagle + delayed ACK: +40 ms.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"admin API cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="admin-server"
        )
        while not self._server.started:  # noqa: ASYNC110 (uvicorn exposes a flag only)
            await asyncio.sleep(0.005)
        log.info("admin API listening", url=self.url)

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        log.info("admin API stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
