"""The PostgreSQL store itself: :class:`PostgresStore` assembled from its
parts (writes, reads, consumers' reports, instances, configuration and
rollouts, each a module of this package, all running their transactions
through one :class:`~broadcaster.store.postgres.connection.ConnectedStore`),
with its lifecycle: open (connect, migrate), probe, close.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ...exceptions import StoreError
from ..records import StoreHealth
from .instances import InstanceRegistry
from .reads import EventReads
from .reports import ConsumerReports
from .rollouts import ConfigAndRollouts
from .schema import SCHEMA_VERSION, migrate
from .writes import EventWrites

__all__ = ["PostgresStore"]


class PostgresStore(EventWrites, EventReads, ConsumerReports, InstanceRegistry, ConfigAndRollouts):
    """Event store in PostgreSQL, safe for several broadcaster processes.

    ``url``: a libpq URL (``postgresql://user:pw@host:5432/db``; ``postgres://``
    works too). ``connect_timeout``: seconds to wait for a connection (used if
    the URL sets none). ``op_timeout``: an operation taking longer is abandoned,
    its connection dropped, and :class:`StoreUnavailable` raised (a call that
    timed out may or may not have committed). ``clock``: wall time in seconds.
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent.

        Raises :class:`StoreUnavailable` if the server cannot be reached, and
        :class:`StoreError` if the database's schema is newer than this code.
        """
        if self._opened:
            return
        self._opened = True
        try:
            found = await self._run("open", migrate)
        except BaseException:
            self._opened = False
            await self._discard()
            raise
        self._log.info("store opened", schema_version=SCHEMA_VERSION, migrated_from=found)

    async def probe(self) -> StoreHealth:
        """A write transaction that changes nothing (reconnecting if need be);
        :meth:`health` after it."""
        if not self._opened:
            return self.health()

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")

        try:
            await self._run("probe", body)
        except StoreError:
            pass
        return self.health()

    async def close(self) -> None:
        """Flush queued marks and close the connection. Idempotent."""
        if not self._opened:
            return
        try:
            await self._marks.wait_idle()
        finally:
            self._opened = False
            await self._appends.close()
            await self._config_changes.close()
            async with self._lock:
                await self._discard()
            self._log.info("store closed")
