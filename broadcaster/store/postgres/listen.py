"""A connection of its own ``LISTEN``\\ ing on one notification channel: how
a service hears, within a round trip, that another process appended events
or changed the runtime configuration, instead of polling the store.

Each :meth:`ChannelListener.wait` returns on the first notification, on its
timeout, or at once when the listening connection was (re)opened or broke:
notifications sent while nobody listened are lost, so a caller reads the
store after every return and misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

__all__ = ["ChannelListener"]


class ChannelListener:
    """``LISTEN channel`` on a connection made by ``connect`` when first
    needed (and again after it broke); ``log`` names the store."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        channel: str,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._connect = connect
        self.channel = channel
        self._log = log
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """Return on a notification, after ``timeout`` seconds, or at once
        when the connection was just opened. A broken or refused connection
        is dropped (the next call reconnects) after a pause of at most a
        second, so a caller looping on this does not spin."""
        try:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = await self._connect()
                await conn.execute(f"LISTEN {self.channel}")
                return  # notifications before LISTEN were not heard: read once now
            async for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            await self.close()
            self._log.warning("store listen failed", channel=self.channel, error=str(exc))
            await asyncio.sleep(min(timeout, 1.0))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
