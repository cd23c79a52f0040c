"""Resume on the WebSocket fan-out (docs/deploying.md): replay the stored events
after a subscriber's ``since``, then switch it to live with no gap and no
duplicate at the seam (see :class:`~broadcaster.adapters.websocket.WebSocketAdapter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from ..events import EventRecord
from ..exceptions import StoreError
from .websocket_protocol import (
    AHEAD_CLOSE_CODE,
    PRUNED_CLOSE_CODE,
    SLOW_CLOSE_CODE,
    ReplaySource,
    _Subscriber,
    text_frames,
)

__all__ = ["ResumeMixin"]

log = structlog.get_logger("broadcaster.adapters.websocket", adapter="websocket")


class ResumeMixin:
    """The replay half of :class:`~broadcaster.adapters.websocket.WebSocketAdapter`."""

    if TYPE_CHECKING:
        # Provided by the adapter (_write and _drop_slow by the fan-out mixin).
        name: str
        _replay: ReplaySource | None
        _replay_page: int
        _max_buffer: int
        _live: dict[ServerConnection, _Subscriber]

        def _forget(self, connection: ServerConnection) -> None: ...

        def _drop_slow(
            self, connection: ServerConnection, sub: _Subscriber, backlog: int
        ) -> None: ...

        def _write(
            self,
            connection: ServerConnection,
            sub: _Subscriber,
            data: bytes,
            n: int,
            *,
            bounded: bool = True,
        ) -> None: ...

    def _hold(
        self, connection: ServerConnection, sub: _Subscriber, batch: Sequence[EventRecord]
    ) -> None:
        """Keep ``batch``'s matching records for a replaying connection; past
        ``max_buffer_bytes`` held, it is too slow, as with an unsent backlog."""
        held = sub.held
        assert held is not None
        wanted = sub.categories
        for record in batch:
            if wanted is None or record.category in wanted:
                held.append(record)
                sub.held_bytes += len(record.wire)
        if sub.held_bytes > self._max_buffer:
            backlog = sub.held_bytes
            sub.held, sub.held_bytes = None, 0
            self._drop_slow(connection, sub, backlog)

    async def _resume(self, connection: ServerConnection, sub: _Subscriber, since: int) -> None:
        """Replay the stored events after ``since`` to ``connection``, then
        switch it to live (see the class doc). Ends quietly when the
        connection goes or is dropped meanwhile."""
        source = self._replay
        assert source is not None  # the handshake gate refuses since without one
        try:
            pruned = await source.pruned_through()
            last = await source.last_sequence_id()
            if since > last:
                await self._refuse(
                    connection,
                    sub,
                    AHEAD_CLOSE_CODE,
                    f"since {since} is beyond this store: its newest sequence id is {last}",
                )
                return
            # Gaps above the pruned mark are ids that never committed (a
            # rolled-back append, one in flight): nothing to refuse for.
            if pruned > since:
                first = await source.first_sequence_id()
                oldest = f"the oldest stored is {first}" if first else "no event is stored"
                await self._refuse(
                    connection,
                    sub,
                    PRUNED_CLOSE_CODE,
                    f"events after {since} were pruned; {oldest}",
                )
                return
            cursor, replayed = since, 0
            while True:
                page = await source.read_events(
                    after=cursor,
                    limit=self._replay_page,
                    categories=sub.categories,
                    adapter=self.name,
                )
                if sub.held is None or connection not in self._live:
                    return  # dropped as too slow, or gone
                if len(page) < self._replay_page:
                    # Caught up: this page, the held live events and the
                    # switch to live happen in one step, with no send between.
                    self._go_live(connection, sub, page, cursor, replayed)
                    return
                cursor = page[-1].sequence_id
                replayed += len(page)
                self._write(connection, sub, *text_frames([r.wire for r in page]), bounded=False)
                await self._paced(connection)
        except StoreError as exc:
            log.error("replay failed: store", remote=sub.remote, since=since, error=str(exc))
            await self._refuse(connection, sub, SLOW_CLOSE_CODE, "store unavailable; resume later")
        except ConnectionClosed:
            pass
        except Exception as exc:
            # Not a store or connection failure: a bug. Say so, and let the
            # client retry rather than wait on a replay that will never end.
            log.exception("replay failed", remote=sub.remote, since=since, error=repr(exc))
            await self._refuse(connection, sub, CloseCode.INTERNAL_ERROR, "replay failed")

    def _go_live(
        self,
        connection: ServerConnection,
        sub: _Subscriber,
        page: list[EventRecord],
        cursor: int,
        replayed: int,
    ) -> None:
        held = sub.held or []
        since = sub.since
        assert since is not None
        sub.held, sub.held_bytes = None, 0
        # Nothing replayed (seam 0): nothing a live batch could repeat.
        sub.seam = page[-1].sequence_id if page else (cursor if cursor > since else 0)
        records = page
        late = [r for r in held if not sub.replayed(r.sequence_id)]
        if late:
            # Held live events in sequence order, each once (a repair may have
            # sent one twice meanwhile).
            merged = sorted([*page, *late], key=lambda r: r.sequence_id)
            records = [
                r
                for i, r in enumerate(merged)
                if i == 0 or merged[i - 1].sequence_id != r.sequence_id
            ]
        if records:
            self._write(connection, sub, *text_frames([r.wire for r in records]))
        log.info(
            "subscriber resumed",
            remote=sub.remote,
            since=since,
            replayed=replayed + len(page),
            held=len(held),
            seam=sub.seam,
        )

    async def _paced(self, connection: ServerConnection) -> None:
        """Wait while a replay's unsent backlog is over a quarter of the
        limit: a ping's pong comes back once the client has read what was
        written before it, so replay runs at the client's pace and holds
        at most about one page beyond the limit."""
        while connection.transport.get_write_buffer_size() > self._max_buffer // 4:
            await (await connection.ping())

    async def _refuse(
        self, connection: ServerConnection, sub: _Subscriber, code: int, reason: str
    ) -> None:
        self._forget(connection)
        sub.held, sub.held_bytes = None, 0
        log.warning("resume refused", remote=sub.remote, since=sub.since, code=code, reason=reason)
        await connection.close(code, reason)
