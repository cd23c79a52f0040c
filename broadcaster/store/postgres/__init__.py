"""The shared event store: PostgreSQL (``STORE_URL=postgresql://...``).

For several broadcaster processes sharing one store. What a caller must know:

* **Sequence ids** come from the PostgreSQL sequence ``event_sequence_id``:
  strictly increasing, never reused, unique across processes. Appends run
  side by side and may commit out of id order; each holds a
  transaction-scoped advisory lock in shared mode from before its
  ``nextval`` to its end. Reads that must not skip an id that commits late
  (``read_routed``, ``read_events``, ``scan``, ``plain_page``,
  ``committed_through``) stop before a missing id that may still commit, or
  wait for the holders of that lock to end (``reads.py``,
  ``committed_through``). A failed append leaves a gap (sequence values are
  not rolled back); gaps are harmless.
* **Durability** is PostgreSQL's: ``append`` returns after ``COMMIT``.
* **Connection.** One connection, used by one call at a time (an asyncio
  lock); concurrent ``mark`` calls are coalesced into one transaction. If the
  server is unreachable or the connection breaks, the call raises
  :class:`~broadcaster.exceptions.StoreUnavailable` and the next call
  reconnects. Other database errors raise :class:`~broadcaster.exceptions.StoreError`.
* **Health.** :meth:`~broadcaster.store.base.Store.health` goes down when a
  write fails or any call finds the database unreachable, and up again on
  the next successful ``append`` or :meth:`PostgresStore.probe` (a write
  transaction that changes nothing): a server that died and came back is
  seen up without waiting for traffic.
* **Runtime config.** ``save_runtime_config`` replaces the ``runtime_config``
  row and inserts the ``audit`` row in one transaction, under an advisory
  lock held until ``COMMIT``: saves from several processes are serialised, so
  audit ids become visible in increasing order and paging with
  ``audit_log(after=...)`` never skips an entry.
* **Schema.** Created and migrated by :meth:`PostgresStore.open` (version in
  ``meta``; migrations serialised across processes by an advisory lock). Table
  names are unqualified: give the broadcaster its own database, or its own
  schema via ``?options=-csearch_path%3Dbroadcaster``.

The parts: :mod:`~broadcaster.store.postgres.schema` (tables, migrations),
:mod:`~broadcaster.store.postgres.sql` (the statements),
:mod:`~broadcaster.store.postgres.connection` (the connection, errors,
health, ``LISTEN``), :mod:`~broadcaster.store.postgres.writes` (append,
mark, prune), :mod:`~broadcaster.store.postgres.reads` (lanes, resume,
reconciliation, stats), :mod:`~broadcaster.store.postgres.reports`
(receipts, consumers), :mod:`~broadcaster.store.postgres.instances`
(heartbeats, leases), :mod:`~broadcaster.store.postgres.rollouts` (runtime
configuration, audit, rollouts), assembled in
:mod:`~broadcaster.store.postgres.store`.
"""

from __future__ import annotations

from .schema import MIGRATIONS, SCHEMA_VERSION, postgres_store_exists
from .sql import APPEND_CHANNEL
from .store import PostgresStore
from .writes import PRUNE_CHUNK

__all__ = [
    "APPEND_CHANNEL",
    "MIGRATIONS",
    "PRUNE_CHUNK",
    "SCHEMA_VERSION",
    "PostgresStore",
    "postgres_store_exists",
]
