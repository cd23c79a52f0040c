"""The store contract: :class:`Store`, the sequence-keyed outbox and
delivery ledger every backend implements.

For each event the store keeps the sealed record (wire bytes), the adapters it
was routed to, and per adapter a delivery state; consumers' receipts are kept
beside them. ``append`` is the durability point of ``publish()``: producers
append, the service's lanes read what is undelivered and mark what the
adapters took, consumers' receipts are recorded, and the reconciler scans.

The store also persists the runtime configuration document (flag changes made
through the admin API, so they survive a restart) together with an append-only
audit trail of those changes (:class:`~broadcaster.store.records.AuditEntry`);
a change and its audit entry are written in one transaction.

Backends: :class:`~broadcaster.store.memory.MemoryStore` (tests, ``memory://``),
SQLite (``sqlite:///path``) and PostgreSQL (``postgresql://...``).

Every method is documented here once, for the three backends.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from ..events import Category, EventDraft, EventRecord
from .records import (
    PRUNED_THROUGH,
    AuditEntry,
    ConfigChange,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    InstanceInfo,
    LeaseState,
    PlainPage,
    Report,
    ReportOutcome,
    RolloutRow,
    RolloutWrite,
    ScanRow,
    StoredEvent,
    StoreHealth,
    StoreStats,
)
from .shared import judge_reports

__all__ = ["Store"]


#: The health a store reports until its first failed write.
_UP: StoreHealth = StoreHealth(True)


class Store(ABC):
    """Async store. Implementations never block the event loop on anything
    that can wait (locks, fsync, the network); SQLite commits its small writes
    on the loop thread, page-cache writes that do not wait (see its module doc).

    Errors that mean "cannot durably accept" (disk full, database down) are
    raised as :class:`~broadcaster.exceptions.StoreUnavailable`.

    :meth:`health` is the store's own account of whether it can take writes:
    a failed write sets it down, a successful ``append`` or :meth:`probe` up
    again, unless the failure was permanent. Backends report through
    :meth:`_write_failed` and :meth:`_write_succeeded`.
    """

    # Class-level defaults, shadowed per instance by the first report: the
    # backends keep their own constructors.
    _health: StoreHealth = _UP
    _health_final: bool = False

    def health(self) -> StoreHealth:
        """Whether the store accepts writes (no I/O): down since a write
        failed, up again after a successful ``append`` or :meth:`probe`; a
        permanent failure keeps it down until the process restarts."""
        return self._health

    async def probe(self) -> StoreHealth:
        """Check the store without waiting for traffic and return :meth:`health`
        after it: how a store that went down for a transient reason (a
        database that was unreachable) is seen up again. What is checked is
        the backend's (PostgreSQL commits a write that changes nothing;
        SQLite compares its file). Never raises a store error. The default
        (a store that cannot fail) only returns :meth:`health`."""
        return self.health()

    def _write_failed(self, detail: str, *, permanent: bool = False) -> None:
        """A write failed: the store is down; ``permanent`` until a restart."""
        if permanent:
            self._health_final = True
        self._health = StoreHealth(False, detail)

    def _write_succeeded(self) -> None:
        """An ``append`` or probe committed: up again, unless down for good."""
        if not self._health.up and not self._health_final:
            self._health = _UP

    @abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what is buffered and release the connection. Idempotent."""

    @abstractmethod
    async def append(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord]:
        """Give each draft the next sequence id, seal it, store it with its
        routing (every routed adapter starts ``QUEUED``) and commit. All or
        nothing; returns the records in sequence order once durable."""

    def append_now(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord] | None:
        """:meth:`append` without waiting, if this store can right now: a
        commit that needs no lock, fsync or network round trip (SQLite's small
        writes on the loop thread). Returns None when it cannot — nothing was
        written, call :meth:`append`. Raises as :meth:`append` does.

        The broadcaster calls it from ``publish()`` when no other write is in
        progress, so the caller gets its receipt without a hop through the
        event loop. The default cannot."""
        return None

    @abstractmethod
    async def mark(
        self,
        adapter: str,
        sequence_ids: Sequence[int],
        state: DeliveryState,
        error: str | None = None,
    ) -> None:
        """Record a delivery state for ``adapter`` on each of ``sequence_ids``."""

    @abstractmethod
    async def undelivered(
        self, adapter: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Events routed to ``adapter`` and not yet acknowledged by it, with
        sequence id > ``after``, in sequence order, at most ``limit``."""

    @abstractmethod
    async def get(self, sequence_id: int) -> StoredEvent | None:
        """One event with its trace, or ``None``."""

    @abstractmethod
    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        """Store consumer receipts, idempotently per (consumer, sequence id,
        adapter): the first receipt of a key is kept as written, and a later
        one only raises the key's ``deliveries`` to its own (so a batch sent
        twice changes nothing, and a second delivery to the same consumer is
        counted as a duplicate). Keeps :meth:`consumers` up to date."""

    # -- several service instances ---------------------------------------------

    @abstractmethod
    async def heartbeat(
        self, instance_id: str, info: Mapping[str, Any], *, expire_after_s: float
    ) -> None:
        """Say that ``instance_id`` is alive, with what it says of itself,
        and forget instances whose last heartbeat is older than
        ``expire_after_s`` by the store's clock."""

    @abstractmethod
    async def instances(self, *, expire_after_s: float) -> list[InstanceInfo]:
        """The instances whose last heartbeat is at most ``expire_after_s``
        old, by id."""

    @abstractmethod
    async def claim_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        """Take or renew lease ``name`` for ``holder`` for ``ttl_s`` seconds
        from now (the store's clock, so that the instances' clocks do not
        matter): granted if nobody holds it, its claim ran out, or ``holder``
        holds it already. At most one holder at a time, whatever the
        number of callers."""

    @abstractmethod
    async def release_lease(self, name: str, holder: str) -> None:
        """Give lease ``name`` up if ``holder`` holds it (a clean shutdown:
        the next instance need not wait for it to run out)."""

    async def record_reports(self, reports: Sequence[Report]) -> ReportOutcome:
        """Check receipts consumers reported against the stored events and
        store those of stored events as :meth:`record_receipts` does: a
        report whose checksum differs from the stored event's, or that its
        consumer did not verify, is stored as a mismatch; reports of ids the
        store does not have are not stored, their ids come back. Stores
        override this to read and write in one transaction."""
        wanted = list({r[0] for r in reports})
        facts = {
            seq: (fact.event_type, fact.checksum)
            for seq, fact in (await self.event_facts(wanted)).items()
        }
        receipts, outcome = judge_reports(reports, facts)
        await self.record_receipts(receipts)
        return outcome

    @abstractmethod
    async def register_consumer(self, consumer: str, adapter: str, at_ms: int) -> ConsumerInfo:
        """Say that ``consumer`` watches ``adapter``'s path from now on: every
        event stored after this (from the next sequence id) is one it should
        receive, so reconciliation judges those ``missing``, not
        ``unobserved``, if nobody reports them. Idempotent; returns the row."""

    @abstractmethod
    async def consumers(self) -> list[ConsumerInfo]:
        """Every consumer that reported a receipt, per adapter, ordered by
        adapter then consumer."""

    @abstractmethod
    async def event_facts(self, sequence_ids: Sequence[int]) -> dict[int, EventFacts]:
        """The stored events among ``sequence_ids`` (others are left out)."""

    @abstractmethod
    async def last_sequence_id(self) -> int:
        """The highest sequence id ever handed out (0 for a new store). Ids of
        a failed append are not reused, so this may exceed the highest stored id."""

    @abstractmethod
    async def read_events(
        self,
        *,
        after: int,
        limit: int,
        categories: Collection[Category] | None = None,
        adapter: str | None = None,
    ) -> list[EventRecord]:
        """Stored events with sequence id > ``after``, in sequence order, at most
        ``limit``: only those of ``categories`` (None: every category) and only
        those whose routing includes ``adapter`` (None: any routing). What
        resume (``?since=N``) and ``GET /events`` replay. A range read of the
        events key, whatever the delivery states; an empty ``categories``
        matches nothing."""

    @abstractmethod
    async def read_routed(
        self, *, after: int, limit: int, through: int | None = None
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        """Stored events with sequence id > ``after`` (and <= ``through``), in
        sequence order, at most ``limit``, each with its routing: what a
        service that follows the store hands to its lanes. A page is a prefix
        of what will ever be stored after ``after``: an id missing inside it,
        or (given ``through``, and fewer than ``limit`` rows) missing up to
        ``through``, never appears later. ``through`` must be below an id
        already committed (the follower passes the one before its own next
        event); a store whose appends commit out of id order may wait for
        appends in flight below it to end."""

    @abstractmethod
    async def committed_through(self) -> int:
        """The highest stored sequence id (0: none): every lower id is stored,
        pruned, or will never be. Unlike :meth:`last_sequence_id`, never an
        id still in flight in another process."""

    async def wait_for_appends(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """Return soon after another process may have appended events, or
        after ``timeout`` seconds, whichever comes first; a spurious return
        is allowed (callers read to see). The default, for a store no other
        process can write, waits ``timeout``."""
        await asyncio.sleep(timeout)

    #: Whether :meth:`wait_for_config_change` hears changes made by other
    #: processes as they commit (else a caller polls).
    notifies_config_changes: bool = False

    async def wait_for_config_change(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """Return soon after the runtime configuration may have changed, or
        after ``timeout`` seconds; a spurious return is allowed (callers
        read to see). The default waits ``timeout``."""
        await asyncio.sleep(timeout)

    @abstractmethod
    async def first_sequence_id(self) -> int:
        """The lowest sequence id still stored (0 when no event is)."""

    async def pruned_through(self) -> int:
        """The highest sequence id ever pruned (0: none). Above it, every
        event that was committed is still stored: gaps there are ids that
        never committed (a rolled-back or failed append), not lost history.
        What resume (``?since=N``) is refused by."""
        return await self.get_watermark(PRUNED_THROUGH)

    @abstractmethod
    async def scan(self, *, after: int = 0, limit: int = 1000) -> list[ScanRow]:
        """Events with sequence id > ``after``, in order, at most ``limit``, with
        their per-adapter states and receipts (reconciliation's input)."""

    @abstractmethod
    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        """Decide, without handing rows to Python where the backend can, whether
        every (event, routed adapter) pair among the first ``limit`` events
        after ``after`` is *plainly matched*: the event was stored at or before
        ``judged_before_ms``; the pair is not ``REPAIRED``; it has at least one
        receipt, each from another consumer and a first delivery only, and each
        has the event's type, a valid checksum equal to the event's, the
        event's payload keys (or none reported), and came within ``window_ms``
        of the event; and no receipt of the page names an adapter its event
        was not routed to. Such a pair is ``matched`` under
        every criterion of :func:`~broadcaster.reconcile.matching.judge`, so
        reconciliation can count the page instead of judging it pair by pair
        — the common case once both paths agree. Must agree with
        :func:`plain_counts` on the page's rows."""

    @abstractmethod
    async def stats(self) -> StoreStats:
        """Counts per adapter and state, the oldest undelivered event per adapter."""

    @abstractmethod
    async def prune(self, *, through: int, older_than_ms: int) -> int:
        """Delete events with sequence id <= ``through`` and created before
        ``older_than_ms`` that every routed adapter acknowledged (acked or
        repaired), with their delivery rows and receipts. Returns how many
        events were deleted. Never touches an undelivered event."""

    @abstractmethod
    async def get_watermark(self, name: str) -> int:
        """A persisted counter (e.g. ``reconciled_through``); 0 if never set."""

    @abstractmethod
    async def set_watermark(self, name: str, value: int) -> None:
        """Persist a counter; see :meth:`get_watermark`."""

    @abstractmethod
    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        """Replace the persisted runtime configuration document with ``config``
        (a JSON-able mapping) and append one audit entry, atomically. Returns the entry.

        ``config``, ``before`` and ``after`` are serialised as JSON (strict: no
        NaN or infinity) before anything is written; a value that cannot be
        raises ``TypeError`` or ``ValueError`` and nothing is stored. Values come
        back as JSON decodes them (tuples as lists, keys as strings). A store
        failure raises :class:`~broadcaster.exceptions.StoreError` (or
        :class:`~broadcaster.exceptions.StoreUnavailable`), again with neither
        the document nor the entry written.
        """

    @abstractmethod
    async def runtime_config(self) -> dict[str, Any] | None:
        """The last saved runtime configuration document, or None if never saved."""

    @abstractmethod
    async def audit_log(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with id > ``after``, oldest first, at most ``limit``."""

    # -- progressive rollouts ------------------------------------------------

    @abstractmethod
    async def create_rollout(
        self, category: str, doc: Mapping[str, Any], *, change: ConfigChange | None = None
    ) -> RolloutWrite:
        """Store a new rollout of ``category`` (state ``running``, version 1)
        with the configuration ``change`` it starts with, audited as
        :func:`rollout_actor` of its new id, all in one transaction. Raises
        :class:`~broadcaster.exceptions.RolloutConflict` (naming the other
        rollout) when the category has one in :data:`ACTIVE_ROLLOUT_STATES`,
        and writes nothing."""

    @abstractmethod
    async def save_rollout(
        self,
        rollout_id: int,
        doc: Mapping[str, Any],
        *,
        state: str,
        version: int,
        change: ConfigChange | None = None,
    ) -> RolloutWrite:
        """Replace rollout ``rollout_id``'s document and state, if it is still
        at ``version`` (the one the caller read), with the configuration
        ``change`` that goes with it, in one transaction. Raises
        :class:`~broadcaster.exceptions.RolloutConflict` when the rollout is
        at another version (someone else saved it since) or does not exist,
        and writes nothing."""

    @abstractmethod
    async def rollout(self, rollout_id: int) -> RolloutRow | None:
        """One rollout, or None."""

    @abstractmethod
    async def rollouts(self, *, active_only: bool = False) -> list[RolloutRow]:
        """Every rollout (only those in :data:`ACTIVE_ROLLOUT_STATES` with
        ``active_only``), by id."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
