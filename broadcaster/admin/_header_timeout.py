"""A deadline for reading a request's headers, on uvicorn's h11 protocol.

uvicorn times out idle keep-alive connections, but not a request whose headers
never finish: a client that sends half a request line (or nothing) holds its
connection, and a slot of ``limit_concurrency``, for as long as it likes. Here
each connection gets ``header_timeout`` seconds from when it opens, or from the
first byte of a later keep-alive request, to complete its headers; then it is
closed. The deadline is not extended by each byte, so dribbling bytes does not
keep a connection open.

This is the one place that relies on uvicorn internals, listed in
:data:`UVICORN_INTERNALS` (a test checks each one exists, so an uvicorn release
that drops one fails that test, not production):

- ``uvicorn.protocols.http.h11_impl.H11Protocol``, subclassed and passed as
  ``uvicorn.Config(http=...)``;
- its ``conn`` attribute, the ``h11.Connection`` whose ``their_state`` says
  whether the client's request headers have been parsed (``IDLE`` until then);
- that ``data_received`` parses what it was given before returning.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["UVICORN_INTERNALS", "HeaderTimeoutProtocol", "header_timeout_protocol"]

#: The non-public uvicorn names this module uses: (module, class, attribute).
UVICORN_INTERNALS: Final = (
    ("uvicorn.protocols.http.h11_impl", "H11Protocol", "conn"),
    ("uvicorn.protocols.http.h11_impl", "H11Protocol", "data_received"),
    ("uvicorn.protocols.http.h11_impl", "H11Protocol", "connection_made"),
    ("uvicorn.protocols.http.h11_impl", "H11Protocol", "connection_lost"),
)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are
    not complete within :attr:`header_timeout` seconds. Build a subclass with
    the timeout set through :func:`header_timeout_protocol`."""

    header_timeout: ClassVar[float] = 10.0

    _header_deadline: asyncio.TimerHandle | None = None
    _header_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_transport = transport
        # Counted from the open: a connection that sends nothing is held too.
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            # Part of a request (the first, or the next on a keep-alive
            # connection): the deadline runs from its first byte.
            self._arm_header_deadline()
        else:
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            loop = asyncio.get_running_loop()
            self._header_deadline = loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        transport = self._header_transport
        if transport is not None and not transport.is_closing():
            transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    """A :class:`HeaderTimeoutProtocol` subclass whose ``header_timeout`` is
    ``seconds``, for ``uvicorn.Config(http=...)`` (uvicorn builds the protocol
    itself, so the timeout travels on the class)."""
    if not seconds > 0:
        raise ValueError("header_timeout must be positive")

    class Bound(HeaderTimeoutProtocol):
        header_timeout = float(seconds)

    return Bound
