"""The PostgreSQL store's connections: the base every part of
:class:`~broadcaster.store.postgres.PostgresStore` runs its transactions
through, and the ``LISTEN`` connections a service following the store waits on.

One connection, used by one call at a time (an asyncio lock): each call is a
unit of work run with :meth:`ConnectedStore._run`, which translates
psycopg's errors into the store's and keeps the store's health. Appends
``NOTIFY`` :data:`~broadcaster.store.postgres.sql.APPEND_CHANNEL` at commit;
:meth:`ConnectedStore.wait_for_appends` listens on a connection of its own;
runtime configuration changes notify
:data:`~broadcaster.store.postgres.sql.CONFIG_CHANNEL`, heard by
:meth:`ConnectedStore.wait_for_config_change` on another.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from ...exceptions import StoreError, StoreUnavailable
from .._batching import GroupCommit, MarkRequest
from ..contract import Store
from .listen import ChannelListener
from .sql import APPEND_CHANNEL, CONFIG_CHANNEL

__all__ = ["ConnectedStore"]

_T = TypeVar("_T")


# Loggers stay lazy proxies (no .bind()): a bound logger captures the output
# stream of the moment it is built, which may be closed later.
_LOGGER_NAME: Final = "broadcaster.store.postgres"


#: Calls that write: their failure sets the store down (see ``_run``).
_WRITES: Final = frozenset(
    {
        "append",
        "mark",
        "record_receipts",
        "register_consumer",
        "prune",
        "set_watermark",
        "save_runtime_config",
        "create_rollout",
        "save_rollout",
        "probe",
    }
)
#: Writes whose success sets it up again: what publishing needs (an ack can
#: succeed where an append cannot, e.g. on a full disk).
_UP_ACTIONS: Final = frozenset({"append", "probe"})


class ConnectedStore(Store):
    """What every part of the PostgreSQL store shares: the URL, the
    connection and its lock, the timeouts, the clock, the logger, the queue
    of marks waiting for their transaction, and :meth:`_run`, which runs one
    unit of work on the connection. Abstract:
    :class:`~broadcaster.store.postgres.PostgresStore` is the store (and
    documents the constructor's arguments).
    """

    notifies_config_changes = True

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        op_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"invalid PostgreSQL URL: {exc}") from None
        self._url = url
        self._connect_kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = max(1, round(connect_timeout))
        self._op_timeout = op_timeout
        self._clock = clock
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._opened = False
        self._marks = GroupCommit(self._flush_marks)
        # Every id up to this one is stored, pruned or never will be; and a
        # mark whose holders have not all ended yet (reads.py).
        self._settled_mark = 0
        self._pending_settle: tuple[int, list[str]] | None = None
        # The cursor a follower's read last stopped at (a missing id after it).
        self._stopped_after: int | None = None
        # Never log the URL: it may hold a password.
        self._log = structlog.get_logger(
            _LOGGER_NAME, store="postgres", host=params.get("host"), dbname=params.get("dbname")
        )
        # Connections of their own, LISTENing for appends and for runtime
        # configuration changes.
        self._appends = ChannelListener(self._listen_connection, APPEND_CHANNEL, self._log)
        self._config_changes = ChannelListener(self._listen_connection, CONFIG_CHANNEL, self._log)

    @abstractmethod
    async def _flush_marks(self, requests: list[MarkRequest]) -> None:
        """Write one group of coalesced :meth:`mark` requests in one
        transaction (:class:`~broadcaster.store.postgres.writes.EventWrites`)."""

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        await self._discard()
        # autocommit: every unit of work is an explicit conn.transaction(), so no
        # transaction is left open (holding locks) between calls.
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **self._connect_kwargs
        )
        self._log.info("store connected")
        return self._conn

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def _run(
        self, action: str, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]
    ) -> _T:
        """Run ``body`` with the connection, one call at a time, translating
        errors, and keep :meth:`health` (see the package doc)."""
        if not self._opened:
            raise StoreError("postgres store is not open")
        try:
            result = await self._run_once(action, body)
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable) or action in _WRITES:
                self._write_failed(str(exc))
            raise
        if action in _UP_ACTIONS:
            self._write_succeeded()
        return result

    async def _run_once(
        self, action: str, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]
    ) -> _T:
        async with self._lock:
            try:
                async with asyncio.timeout(self._op_timeout):
                    conn = await self._connect()
                    return await body(conn)
            except psycopg.OperationalError as exc:
                # Connection refused, server gone, admin shutdown, disk full: the
                # connection cannot be trusted; the next call reconnects.
                await self._discard()
                self._log.warning("store unavailable", action=action, error=str(exc))
                raise StoreUnavailable(f"postgres: {action}: {exc}".strip()) from exc
            except TimeoutError as exc:
                # Cancelled mid-protocol: the connection is in an unknown state.
                await self._discard()
                raise StoreUnavailable(
                    f"postgres: {action}: no answer within {self._op_timeout}s"
                ) from exc
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    await self._discard()
                    raise StoreUnavailable(f"postgres: {action}: {exc}") from exc
                raise StoreError(f"postgres: {action}: {exc}") from exc

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **self._connect_kwargs
        )

    async def wait_for_appends(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """See :meth:`Store.wait_for_appends`: every append notifies at its
        commit (:class:`~broadcaster.store.postgres.listen.ChannelListener`)."""
        if not self._opened:
            raise StoreError("postgres store is not open")
        await self._appends.wait(timeout)

    async def wait_for_config_change(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """See :meth:`Store.wait_for_config_change`: every runtime
        configuration change notifies at its commit."""
        if not self._opened:
            raise StoreError("postgres store is not open")
        await self._config_changes.wait(timeout)
