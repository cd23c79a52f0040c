"""The store's records: the values that cross the store's boundary.

A producer's append comes back as sealed records; lanes mark per-adapter
:class:`DeliveryState`; consumers' receipts come in as :class:`ConsumerReceipt`
(or unchecked :data:`Report` tuples); the reconciler reads :class:`ScanRow`
pages; the admin API and metrics read stats, instances, the audit trail and
rollouts. Every backend returns these same frozen values, so the layers above
never see a backend's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..events import EventRecord

__all__ = [
    "ACTIVE_ROLLOUT_STATES",
    "DELIVERED_STATES",
    "PRUNED_THROUGH",
    "SETTLED_STATES",
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
    "StoreHealth",
    "StoreStats",
    "StoredEvent",
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


#: Rollout states in which a category may have only one rollout (the store
#: refuses a second); the rollout policy names its states the same.
ACTIVE_ROLLOUT_STATES: frozenset[str] = frozenset({"running", "paused"})


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
