"""Serve the admin application with uvicorn inside the caller's event loop.

uvicorn normally owns the process (signals, logging); here it is one part of
the service, so signals stay with ``broadcaster serve`` and uvicorn's own
logging is off: requests that matter are logged through structlog.

Bounds against clients that hold connections (docs/security.md): a request's headers
must be complete within ``header_timeout`` seconds of the connection opening
(or of a keep-alive request's first byte), headers are capped at
:data:`MAX_HEADER_BYTES`, and beyond ``max_connections`` open connections a
request is answered 503. With ``tls_cert`` / ``tls_key`` it serves https.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import structlog
import uvicorn
from fastapi import FastAPI

from ..tls import server_ssl_context
from ._header_timeout import header_timeout_protocol

__all__ = ["HEADER_TIMEOUT_S", "MAX_CONNECTIONS", "MAX_HEADER_BYTES", "AdminServer"]

#: Seconds a client has to send a request's headers before its connection is
#: closed: generous for any real client, short enough that held connections
#: free up quickly.
HEADER_TIMEOUT_S: Final = 10.0

#: Open connections beyond which a request is answered 503 (uvicorn's
#: ``limit_concurrency``).
MAX_CONNECTIONS: Final = 1000

#: Bytes of request line and headers h11 buffers before answering 400 (its
#: own default, set here so an uvicorn or h11 release cannot widen it).
MAX_HEADER_BYTES: Final = 16 * 1024

log = structlog.get_logger("broadcaster.admin")


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The service handles SIGTERM/SIGINT itself and stops us in order
        # (admin first, then a flushing broadcaster close).
        yield


class AdminServer:
    """``async with AdminServer(app, host, port) as server: server.url``.
    ``port=0`` picks a free port; :attr:`port` tells which.

    ``tls_cert`` and ``tls_key`` (PEM files, both or neither) serve https; a
    file that cannot be loaded raises :class:`~broadcaster.exceptions.ConfigError`
    naming ``ADMIN_TLS_CERT`` here, before anything listens.
    ``header_timeout`` and ``max_connections`` bound what clients can hold
    (see the module docstring).
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        header_timeout: float = HEADER_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if tls_cert is not None and tls_key is not None:
            # Loaded once here so a bad file is a ConfigError now; uvicorn
            # loads its own context from the same files.
            server_ssl_context(tls_cert, tls_key, variable="ADMIN")
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            # No websockets in the admin API: uvicorn's websockets protocol
            # would import the deprecated legacy websockets API.
            ws="none",
            http=header_timeout_protocol(header_timeout),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            limit_concurrency=max_connections,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            log_config=None,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self.tls = tls_cert is not None
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Listen, then serve in a background task. Raises :class:`OSError`
        (naming the address) if the port cannot be bound."""
        # Bound here rather than by uvicorn, whose start-up failure is a
        # SystemExit that would tear down the caller's event loop.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets
        # that say so, and accepted sockets inherit it. Without it, uvicorn's
        # separate header and body writes meet Nagle and delayed ACK, which
        # holds a small answer back for the peer's delayed-ACK timer.
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
        task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="admin-server"
        )
        self._task = task
        while not self._server.started:  # noqa: ASYNC110 (uvicorn exposes a flag only)
            if task.done():
                # uvicorn stopped before serving: say why rather than wait for ever.
                self._task = None
                self._socket = None
                sock.close()
                task.result()
                raise OSError(f"admin API on {self.host}:{self.port} stopped before serving")
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
