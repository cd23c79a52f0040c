"""The WebSocket fan-out's send path: one batch to every live, matching subscriber.

:meth:`FanoutMixin.send` is what the adapter's delivery lane calls. It frames
a batch once per category filter and writes the same bytes to each
connection's transport without waiting on any of them; a connection whose
unsent backlog grows past the limit is closed as too slow (1013), and one
still replaying a resume has the batch held for it (:mod:`.websocket_resume`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
from websockets.asyncio.server import Server, ServerConnection
from websockets.protocol import State

from ..events import Category, EventRecord
from ..exceptions import AdapterUnavailable
from .websocket_protocol import (
    SLOW_CLOSE_CODE,
    SLOW_CLOSE_REASON,
    _describe,
    _Subscriber,
    text_frames,
)

__all__ = ["FanoutMixin"]

log = structlog.get_logger("broadcaster.adapters.websocket", adapter="websocket")


class FanoutMixin:
    """The send half of :class:`~broadcaster.adapters.websocket.WebSocketAdapter`."""

    if TYPE_CHECKING:
        # Provided by the adapter (and, for _hold, by the resume mixin).
        name: str
        _server: Server | None
        _live: dict[ServerConnection, _Subscriber]
        _max_buffer: int
        _close_timeout: float
        _frames_sent: int
        _dropped_slow: int

        def _forget(self, connection: ServerConnection) -> None: ...

        def _hold(
            self, connection: ServerConnection, sub: _Subscriber, batch: Sequence[EventRecord]
        ) -> None: ...

    async def send(self, batch: Sequence[EventRecord]) -> None:
        """Write ``batch`` to every open subscriber whose filter matches; return.

        Never suspends: the frames are written synchronously, so batches reach
        each connection in the order ``send`` was called (the ordering
        contract of :class:`Adapter` holds without a lock). Raises
        :class:`AdapterUnavailable` when the server is not running. Having no
        subscribers is not an error.
        """
        if self._server is None:
            raise AdapterUnavailable(self.name, "server not started")
        if not batch or not self._live:
            return
        every: tuple[bytes, int] | None = None
        by_filter: dict[frozenset[Category], tuple[bytes, int]] = {}
        lowest: int | None = None
        # Copy: a write failure or a slow drop removes entries as we go.
        for connection, sub in list(self._live.items()):
            wanted = sub.categories
            if sub.held is not None:
                self._hold(connection, sub, batch)
                continue
            if sub.seam:
                if lowest is None:
                    lowest = min(record.sequence_id for record in batch)
                if lowest <= sub.seam:
                    # A resumed connection and a batch reaching back into
                    # what its replay sent (a backfill, a repair): its own frames.
                    own = text_frames(
                        [
                            r.wire
                            for r in batch
                            if (wanted is None or r.category in wanted)
                            and not sub.replayed(r.sequence_id)
                        ]
                    )
                    if own[1]:
                        self._write(connection, sub, *own)
                    continue
            if wanted is None:
                if every is None:
                    every = text_frames([record.wire for record in batch])
                framed = every
            else:
                selected = by_filter.get(wanted)
                if selected is None:
                    selected = text_frames([r.wire for r in batch if r.category in wanted])
                    by_filter[wanted] = selected
                framed = selected
            if framed[1]:
                self._write(connection, sub, *framed)

    def _write(
        self,
        connection: ServerConnection,
        sub: _Subscriber,
        data: bytes,
        n: int,
        *,
        bounded: bool = True,
    ) -> None:
        transport = connection.transport
        protocol = connection.protocol
        if protocol.state is not State.OPEN or transport.is_closing():
            # Closing: the handler will notice; stop feeding it now.
            self._forget(connection)
            return
        try:
            # The frames of a batch are framed once per filter (text_frames) and
            # the same bytes go to every connection that wants them, as ONE
            # transport write: no per-frame protocol call, no per-frame write
            # (each write to an idle socket is a send() syscall), no drain()
            # (waiting for one subscriber's socket would stall every other).
            # Anything the protocol still holds (a pong) goes first; in state
            # OPEN that is never the EOF marker (b"", only after a close frame).
            pending = protocol.data_to_send()
            if pending:
                transport.write(b"".join(pending))
            transport.write(data)
        except Exception as exc:  # OSError from the transport
            self._forget(connection)
            log.warning("subscriber write failed", remote=sub.remote, error=repr(exc))
            transport.abort()
            return
        sub.frames_sent += n
        self._frames_sent += n
        backlog = transport.get_write_buffer_size()
        # A replay page (bounded=False) paces itself instead (_paced).
        if bounded and backlog > self._max_buffer:
            self._drop_slow(connection, sub, backlog)

    def _drop_slow(self, connection: ServerConnection, sub: _Subscriber, backlog: int) -> None:
        self._forget(connection)
        self._dropped_slow += 1
        log.warning(
            "subscriber too slow; closing",
            remote=sub.remote,
            categories=_describe(sub.categories),
            backlog_bytes=backlog,
            max_buffer_bytes=self._max_buffer,
            frames_sent=sub.frames_sent,
        )
        # The close frame queues behind the backlog: a slow-but-alive reader
        # still learns why (1013) and can reconnect.
        connection.protocol.send_close(SLOW_CLOSE_CODE, SLOW_CLOSE_REASON)
        connection.send_data()
        # A stalled peer will never read that far: abort after a grace period
        # so its backlog is freed instead of held until keepalive gives up.
        sub.abort_handle = asyncio.get_running_loop().call_later(
            self._close_timeout, connection.transport.abort
        )
