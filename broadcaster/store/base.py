"""The event store interface: a sequence-keyed outbox and delivery ledger.

For each event the store keeps the sealed record (wire bytes), the adapters it
was routed to, and per adapter a delivery state; consumers' receipts are kept
beside them. ``append`` is the durability point of ``publish()``.

The store also persists the runtime configuration document (flag changes made
through the admin API, so they survive a restart) together with an append-only
audit trail of those changes (:class:`AuditEntry`); a change and its audit
entry are written in one transaction.

Backends: :class:`~broadcaster.store.memory.MemoryStore` (tests, ``memory://``),
SQLite (``sqlite:///path``) and PostgreSQL (``postgresql://...``).

Over ~500 lines because it is the contract: every method of
:class:`Store` is documented here once for the three backends, with the
small value types they exchange.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from ..events import Category, EventDraft, EventRecord
from ..exceptions import RolloutConflict

__all__ = [
    "ACTIVE_ROLLOUT_STATES",
    "audit_entry",
    "config_json_of",
    "DELIVERED_STATES",
    "SETTLED_STATES",
    "PRUNED_THROUGH",
    "UNDELIVERED_STATES",
    "AuditEntry",
    "ConfigChange",
    "ConsumerInfo",
    "ConsumerReceipt",
    "DeliveryState",
    "EventFacts",
    "InstanceInfo",
    "LeaseState",
    "PlainPage",
    "Report",
    "ReportOutcome",
    "RolloutRow",
    "RolloutWrite",
    "ScanRow",
    "Store",
    "StoreHealth",
    "StoreStats",
    "StoredEvent",
    "consumer_infos",
    "judge_reports",
    "merge_consumer",
    "report_infos",
    "plain_counts",
    "rollout_actor",
    "rollout_json_of",
    "stale_rollout",
]


#: The watermark :meth:`Store.prune` raises to the highest id it deleted.
PRUNED_THROUGH = "pruned_through"


class DeliveryState(StrEnum):
    """Where one event stands with one adapter."""

    QUEUED = "queued"  # routed and stored, not yet acknowledged
    ACKED = "acked"  # the adapter acknowledged it
    FAILED = "failed"  # the last attempt failed (error kept); will be retried
    PENDING = "pending"  # held back by an open breaker or the restore ramp; backfilled later
    REPAIRED = "repaired"  # re-sent by reconciliation repair and acknowledged
    REFUSED = "refused"  # the adapter can never take it (too large for its quota); not retried


#: States in which an event still has to reach the adapter.
UNDELIVERED_STATES: frozenset[DeliveryState] = frozenset(
    {DeliveryState.QUEUED, DeliveryState.FAILED, DeliveryState.PENDING}
)
#: States in which the adapter has acknowledged the event.
DELIVERED_STATES: frozenset[DeliveryState] = frozenset(
    {DeliveryState.ACKED, DeliveryState.REPAIRED}
)
#: States after which the event is never sent to the adapter again: delivered,
#: or refused for good (reconciliation reports a refused event missing there).
SETTLED_STATES: frozenset[DeliveryState] = DELIVERED_STATES | {DeliveryState.REFUSED}


@dataclass(frozen=True, slots=True)
class ConsumerReceipt:
    """A consumer saw event ``sequence_id`` on ``adapter``'s path."""

    sequence_id: int
    adapter: str
    event_type: str
    received_at_ms: int
    checksum: str
    checksum_ok: bool
    consumer: str = "default"
    #: JSON array of the received payload's sorted top-level keys, if known.
    payload_keys: str | None = None
    #: Written: which delivery of the event to this consumer this is (1 for
    #: the first). Read back: how many deliveries the consumer reported.
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of one adapter's path, from the receipts it reported."""

    consumer: str
    adapter: str
    #: It was watching the path from this sequence id on: the lowest it
    #: reported, or the next id when it registered (whichever is lower).
    from_sequence_id: int
    #: The highest sequence id it reported (0: none yet).
    through_sequence_id: int
    first_seen_ms: int
    last_seen_ms: int
    #: Receipts it reported, a batch posted twice counted twice.
    receipts: int


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a receipt is checked against (see :meth:`Store.event_facts`)."""

    event_type: str
    checksum: str
    routed_to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with its trace: routing, per-adapter state, receipts."""

    record: EventRecord
    routed_to: tuple[str, ...]
    created_at_ms: int
    states: dict[str, DeliveryState]
    errors: dict[str, str] = field(default_factory=dict)
    receipts: tuple[ConsumerReceipt, ...] = ()


@dataclass(frozen=True, slots=True)
class ScanRow:
    """What reconciliation needs of one event (see :meth:`Store.scan`)."""

    sequence_id: int
    category: str
    event_type: str
    created_at_ms: int
    checksum: str
    payload_keys: str
    routed_to: tuple[str, ...]
    states: dict[str, DeliveryState]
    receipts: tuple[ConsumerReceipt, ...] = ()


@dataclass(frozen=True, slots=True)
class PlainPage:
    """What :meth:`Store.plain_page` found in one page of events."""

    #: Highest sequence id in the page; 0 when no event follows ``after``.
    last: int
    #: ``(category, adapter) -> routed pairs`` when every (event, routed adapter)
    #: pair of the page is plainly matched; ``None`` when at least one is not,
    #: and the page must be judged pair by pair (:meth:`Store.scan`).
    matched: dict[tuple[str, str], int] | None


def plain_counts(
    rows: Sequence[ScanRow], *, judged_before_ms: int, window_ms: int
) -> dict[tuple[str, str], int] | None:
    """The answer of :meth:`Store.plain_page` for ``rows`` (one page, already
    read): per ``(category, adapter)`` the number of routed pairs, if every
    pair is plainly matched, else None. Backends that can decide this in SQL
    do so without reading the rows; this is the reference they must agree with."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.created_at_ms > judged_before_ms or len(set(row.routed_to)) != len(row.routed_to):
            return None
        if any(r.adapter not in row.routed_to for r in row.receipts):
            return None
        for adapter in row.routed_to:
            if row.states.get(adapter) is DeliveryState.REPAIRED:
                return None
            seen = [r for r in row.receipts if r.adapter == adapter]
            if not seen or len({r.consumer for r in seen}) != len(seen):
                return None
            for r in seen:
                if not (
                    r.deliveries == 1
                    and r.event_type == row.event_type
                    and r.checksum_ok
                    and r.checksum == row.checksum
                    and (r.payload_keys is None or r.payload_keys == row.payload_keys)
                    and r.received_at_ms - row.created_at_ms <= window_ms
                ):
                    return None
            key = (row.category, adapter)
            counts[key] = counts.get(key, 0) + 1
    return counts


#: A receipt a consumer reported (``POST /receipts``), not yet checked
#: against the store: (sequence_id, adapter, checksum, consumer,
#: received_at_ms, deliveries, verified). A tuple, not a class: batches of
#: thousands are built and read once each.
Report = tuple[int, str, str, str, int, int, bool]


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What :meth:`Store.record_reports` made of a batch of reports."""

    #: Reports of stored events, all stored (mismatches included).
    accepted: int
    #: Accepted reports whose checksum differs from the stored event's, or
    #: that their consumer did not verify.
    mismatches: int
    #: Sequence ids the store does not have, ascending (their reports are
    #: not stored).
    unknown: list[int]


def judge_reports(
    reports: Sequence[Report], facts: Mapping[int, tuple[str, str]]
) -> tuple[list[ConsumerReceipt], ReportOutcome]:
    """The receipts to store for ``reports`` and the outcome, given
    ``facts``: sequence id -> (event type, checksum) of the stored events."""
    receipts: list[ConsumerReceipt] = []
    unknown: set[int] = set()
    mismatches = 0
    for seq, adapter, checksum, consumer, received_ms, times, verified in reports:
        fact = facts.get(seq)
        if fact is None:
            unknown.add(seq)
            continue
        ok = verified and checksum == fact[1]
        mismatches += not ok
        receipts.append(
            ConsumerReceipt(seq, adapter, fact[0], received_ms, checksum, ok, consumer, None, times)
        )
    return receipts, ReportOutcome(len(receipts), mismatches, sorted(unknown))


def consumer_infos(receipts: Sequence[ConsumerReceipt]) -> list[ConsumerInfo]:
    """What one batch of receipts says of each (consumer, adapter): the rows a
    store merges into its consumer registry (min/max, and a sum of receipts)."""
    return _infos((r.consumer, r.adapter, r.sequence_id, r.received_at_ms) for r in receipts)


def report_infos(reports: Iterable[Report]) -> list[ConsumerInfo]:
    """:func:`consumer_infos` of the receipts stored for ``reports`` (pass
    only those of stored events)."""
    return _infos((r[3], r[1], r[0], r[4]) for r in reports)


def _infos(keyed: Iterable[tuple[str, str, int, int]]) -> list[ConsumerInfo]:
    """Registry rows from (consumer, adapter, sequence id, received at ms).
    Accumulates plain lists and builds one frozen row per key: a batch is
    usually thousands of receipts from one or two consumers."""
    acc: dict[tuple[str, str], list[int]] = {}
    for consumer, adapter, seq, at in keyed:
        row = acc.get((consumer, adapter))
        if row is None:
            acc[consumer, adapter] = [seq, seq, at, at, 1]
            continue
        if seq < row[0]:
            row[0] = seq
        elif seq > row[1]:
            row[1] = seq
        if at < row[2]:
            row[2] = at
        elif at > row[3]:
            row[3] = at
        row[4] += 1
    return [ConsumerInfo(consumer, adapter, *row) for (consumer, adapter), row in acc.items()]


def merge_consumer(old: ConsumerInfo, new: ConsumerInfo) -> ConsumerInfo:
    """A registry row updated with a batch's :func:`consumer_infos` row."""
    return ConsumerInfo(
        old.consumer,
        old.adapter,
        min(old.from_sequence_id, new.from_sequence_id),
        max(old.through_sequence_id, new.through_sequence_id),
        min(old.first_seen_ms, new.first_seen_ms),
        max(old.last_seen_ms, new.last_seen_ms),
        old.receipts + new.receipts,
    )


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for ``/stats``, metrics and retention."""

    last_sequence_id: int
    events: int
    receipts: int
    #: adapter -> state -> number of events in that state
    states: dict[str, dict[str, int]]
    #: adapter -> created_at_ms of its oldest undelivered event (None: none)
    oldest_undelivered_ms: dict[str, int | None]


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One service instance as its last heartbeat described it."""

    instance_id: str
    #: When it first beat, and last (epoch ms, the store's clock).
    started_at_ms: int
    heartbeat_at_ms: int
    #: What it says of itself (its URLs, subscribers, cursor): JSON values.
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A named lease after a claim (see :meth:`Store.claim_lease`)."""

    name: str
    #: The instance holding it now (None: nobody, or expired).
    holder: str | None
    #: When the holder's claim runs out (epoch ms, the store's clock).
    expires_at_ms: int
    #: True if the claim made it (or kept it) the caller's.
    granted: bool


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether the store accepts writes, as its last write or probe found.

    ``up`` False: publishing is impossible until the store recovers (or, for a
    permanent failure such as a replaced SQLite file, until a restart);
    ``detail`` says why, in the store's words."""

    up: bool
    detail: str | None = None


_UP: StoreHealth = StoreHealth(True)


def _dumps(value: Any) -> str:
    """Canonical JSON text of a runtime-config value (shared by the backends).

    Strict: NaN and infinity are refused (``ValueError``), as are values JSON
    cannot represent (``TypeError``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_json_of(config: Mapping[str, Any], before: Any, after: Any) -> tuple[str, str, str]:
    """The JSON texts of one :meth:`Store.save_runtime_config` call, built before
    anything is written so a bad value fails the call with nothing stored."""
    if not isinstance(config, Mapping):
        raise TypeError(f"runtime config must be a mapping, not {type(config).__name__}")
    return _dumps(dict(config)), _dumps(before), _dumps(after)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One configuration change."""

    #: Assigned by the store: strictly increasing, never reused.
    id: int
    #: Wall-clock ms when recorded (the store's clock).
    at_ms: int
    #: Token name of whoever made the change.
    actor: str
    #: What was called, e.g. ``"PATCH /config/categories/CRITICAL"``.
    path: str
    #: JSON-able value (dict / None) before the change, as read back from JSON.
    before: Any
    #: JSON-able value after the change, as read back from JSON.
    after: Any


def audit_entry(
    entry_id: int, at_ms: int, actor: str, path: str, before_json: str, after_json: str
) -> AuditEntry:
    """An audit entry from its stored row (JSON texts as written by
    :func:`config_json_of`), shared by the backends."""
    return AuditEntry(
        id=int(entry_id),
        at_ms=int(at_ms),
        actor=actor,
        path=path,
        before=json.loads(before_json),
        after=json.loads(after_json),
    )


#: Rollout states in which a category may have only one rollout (the store
#: refuses a second); the rollout policy names its states the same.
ACTIVE_ROLLOUT_STATES: frozenset[str] = frozenset({"running", "paused"})


def stale_rollout(rollout_id: int, *, gone: bool) -> RolloutConflict:
    """The error of a rollout save that found the rollout gone, or at
    another version than the caller read (shared by the backends)."""
    if gone:
        return RolloutConflict(f"no rollout {rollout_id}", rollout_id=rollout_id)
    return RolloutConflict(
        f"rollout {rollout_id} changed since it was read; read it again", rollout_id=rollout_id
    )


def rollout_actor(rollout_id: int) -> str:
    """Who the audit says made a change a rollout wrote."""
    return f"rollout:{rollout_id}"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A runtime configuration change written with a rollout's own write (in
    one transaction): the whole new document, what was called or decided,
    and the values before and after, as for :meth:`Store.save_runtime_config`.
    The audit names the rollout (:func:`rollout_actor`)."""

    config: Mapping[str, Any]
    path: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """One stored rollout: its id (assigned by the store, never reused), its
    category and state, its ``version`` (1 when created, one more with every
    save), its JSON document and when it was created and last saved."""

    id: int
    category: str
    state: str
    version: int
    doc: dict[str, Any]
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class RolloutWrite:
    """What a rollout write stored: the row, and the audit entry of the
    configuration change written with it (None when there was none)."""

    row: RolloutRow
    audit: AuditEntry | None


def rollout_json_of(
    doc: Mapping[str, Any], change: ConfigChange | None
) -> tuple[str, tuple[str, str, str, str] | None]:
    """The JSON texts of a rollout write: the document's, and the change's
    ``(config, path, before, after)`` (None without one), built before
    anything is written, so a value JSON cannot hold fails the call with
    nothing stored."""
    if change is None:
        return _dumps(dict(doc)), None
    config, before, after = config_json_of(change.config, change.before, change.after)
    return _dumps(dict(doc)), (config, change.path, before, after)


class Store(ABC):
    """Async store. Implementations never block the event loop on anything
    that can wait (locks, fsync, the network); SQLite commits its small writes
    on the loop thread, a sub-millisecond page-cache write (see its module doc).

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
        ``through``, never appears later."""

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
