"""An in-memory store: fast, not durable. For tests and for benchmarks that
measure the broadcaster without a store (``STORE_URL=memory://``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..events import Category, EventDraft, EventRecord, seal
from ..exceptions import RolloutConflict
from .base import (
    ACTIVE_ROLLOUT_STATES,
    PRUNED_THROUGH,
    SETTLED_STATES,
    UNDELIVERED_STATES,
    AuditEntry,
    ConfigChange,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    InstanceInfo,
    LeaseState,
    PlainPage,
    RolloutRow,
    RolloutWrite,
    ScanRow,
    Store,
    StoredEvent,
    StoreStats,
    audit_entry,
    config_json_of,
    consumer_infos,
    merge_consumer,
    plain_counts,
    rollout_actor,
    rollout_json_of,
    stale_rollout,
)

__all__ = ["MemoryStore"]


def _expired(instance: InstanceInfo, now_ms: int, expire_after_s: float) -> bool:
    return instance.heartbeat_at_ms < now_ms - int(expire_after_s * 1000)


class MemoryStore(Store):
    """The :class:`Store` contract in process memory. ``clock``: wall time in
    seconds, for ``created_at_ms`` and audit ``at_ms``.

    Runtime config and audit values are kept as JSON text, so what comes back is
    a fresh copy decoded from JSON, exactly as from the SQL backends."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0
        self._events: dict[int, tuple[EventRecord, tuple[str, ...], int]] = {}
        self._states: dict[int, dict[str, DeliveryState]] = {}
        self._errors: dict[int, dict[str, str]] = {}
        self._receipts: dict[int, list[ConsumerReceipt]] = {}
        self._consumers: dict[tuple[str, str], ConsumerInfo] = {}
        self._watermarks: dict[str, int] = {}
        self._config_json: str | None = None
        # (id, at_ms, actor, path, before_json, after_json), ids 1, 2, ...
        self._audit: list[tuple[int, int, str, str, str, str]] = []
        self._instances: dict[str, InstanceInfo] = {}
        # name -> (holder, expires_at_ms)
        self._leases: dict[str, tuple[str, int]] = {}
        # id -> (category, state, version, doc_json, created_at_ms, updated_at_ms)
        self._rollouts: dict[int, tuple[str, str, int, str, int, int]] = {}

    async def open(self) -> None:
        return None

    async def heartbeat(
        self, instance_id: str, info: Mapping[str, Any], *, expire_after_s: float
    ) -> None:
        now_ms = int(self._clock() * 1000)
        known = self._instances.get(instance_id)
        started = known.started_at_ms if known is not None else now_ms
        self._instances[instance_id] = InstanceInfo(
            instance_id, started, now_ms, json.loads(json.dumps(dict(info)))
        )
        self._instances = {
            k: v for k, v in self._instances.items() if not _expired(v, now_ms, expire_after_s)
        }

    async def instances(self, *, expire_after_s: float) -> list[InstanceInfo]:
        now_ms = int(self._clock() * 1000)
        return [
            self._instances[k]
            for k in sorted(self._instances)
            if not _expired(self._instances[k], now_ms, expire_after_s)
        ]

    async def claim_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        now_ms = int(self._clock() * 1000)
        current = self._leases.get(name)
        if current is None or current[0] == holder or current[1] < now_ms:
            expires = now_ms + int(ttl_s * 1000)
            self._leases[name] = (holder, expires)
            return LeaseState(name, holder, expires, True)
        return LeaseState(name, current[0], current[1], False)

    async def release_lease(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def close(self) -> None:
        return None

    async def append(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord]:
        return self._append(items)

    def _append(self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]) -> list[EventRecord]:
        # Not append_now: test doubles that override append() to inject faults
        # would be bypassed by it.
        now_ms = int(self._clock() * 1000)
        # Seal everything first: a failure leaves nothing stored (all or nothing).
        records = [seal(draft, self._last + i) for i, (draft, _) in enumerate(items, start=1)]
        for record, (_, routed) in zip(records, items, strict=True):
            self._events[record.sequence_id] = (record, routed, now_ms)
            self._states[record.sequence_id] = {name: DeliveryState.QUEUED for name in routed}
        self._last += len(records)
        return records

    async def mark(
        self,
        adapter: str,
        sequence_ids: Sequence[int],
        state: DeliveryState,
        error: str | None = None,
    ) -> None:
        for seq in sequence_ids:
            states = self._states.get(seq)
            if states is None or adapter not in states:
                continue
            states[adapter] = state
            if error is not None:
                self._errors.setdefault(seq, {})[adapter] = error

    async def undelivered(
        self, adapter: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        out = []
        for seq in sorted(s for s in self._states if s > after):
            if self._states[seq].get(adapter) in UNDELIVERED_STATES:
                out.append(self._events[seq][0])
                if len(out) >= limit:
                    break
        return out

    async def get(self, sequence_id: int) -> StoredEvent | None:
        entry = self._events.get(sequence_id)
        if entry is None:
            return None
        record, routed, created = entry
        return StoredEvent(
            record=record,
            routed_to=routed,
            created_at_ms=created,
            states=dict(self._states[sequence_id]),
            errors=dict(self._errors.get(sequence_id, {})),
            receipts=tuple(self._receipts.get(sequence_id, ())),
        )

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        for receipt in receipts:
            kept = self._receipts.setdefault(receipt.sequence_id, [])
            for i, old in enumerate(kept):
                if old.adapter == receipt.adapter and old.consumer == receipt.consumer:
                    if receipt.deliveries > old.deliveries:
                        kept[i] = replace(old, deliveries=receipt.deliveries)
                    break
            else:
                kept.append(replace(receipt, deliveries=max(receipt.deliveries, 1)))
        for info in consumer_infos(receipts):
            key = (info.consumer, info.adapter)
            known = self._consumers.get(key)
            self._consumers[key] = info if known is None else merge_consumer(known, info)

    async def register_consumer(self, consumer: str, adapter: str, at_ms: int) -> ConsumerInfo:
        info = ConsumerInfo(consumer, adapter, self._last + 1, 0, at_ms, at_ms, 0)
        known = self._consumers.get((consumer, adapter))
        self._consumers[(consumer, adapter)] = row = (
            info if known is None else merge_consumer(known, info)
        )
        return row

    async def consumers(self) -> list[ConsumerInfo]:
        return [self._consumers[key] for key in sorted(self._consumers, key=lambda k: (k[1], k[0]))]

    async def event_facts(self, sequence_ids: Sequence[int]) -> dict[int, EventFacts]:
        facts = {}
        for seq in sequence_ids:
            entry = self._events.get(seq)
            if entry is not None:
                record, routed, _ = entry
                facts[seq] = EventFacts(record.event_type, record.checksum, routed)
        return facts

    async def last_sequence_id(self) -> int:
        return self._last

    async def read_events(
        self,
        *,
        after: int,
        limit: int,
        categories: Collection[Category] | None = None,
        adapter: str | None = None,
    ) -> list[EventRecord]:
        """See :meth:`Store.read_events`. Events sit in the dict in sequence
        order (appended in order, only ever deleted), so no sort is needed."""
        wanted = None if categories is None else frozenset(categories)
        out: list[EventRecord] = []
        if limit <= 0:
            return out
        for seq, (record, routed, _) in self._events.items():
            if seq <= after:
                continue
            if wanted is not None and record.category not in wanted:
                continue
            if adapter is not None and adapter not in routed:
                continue
            out.append(record)
            if len(out) >= limit:
                break
        return out

    async def read_routed(
        self, *, after: int, limit: int, through: int | None = None
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        out: list[tuple[EventRecord, tuple[str, ...]]] = []
        for seq, (record, routed, _) in self._events.items():
            if len(out) >= limit or (through is not None and seq > through):
                break
            if seq > after:
                out.append((record, routed))
        return out

    async def committed_through(self) -> int:
        return self._last

    async def first_sequence_id(self) -> int:
        return next(iter(self._events), 0)

    async def scan(self, *, after: int = 0, limit: int = 1000) -> list[ScanRow]:
        rows = []
        for seq in sorted(s for s in self._events if s > after)[:limit]:
            record, routed, created = self._events[seq]
            rows.append(
                ScanRow(
                    sequence_id=seq,
                    category=record.category.value,
                    event_type=record.event_type,
                    created_at_ms=created,
                    checksum=record.checksum,
                    payload_keys=record.payload_keys,
                    routed_to=routed,
                    states=dict(self._states[seq]),
                    receipts=tuple(self._receipts.get(seq, ())),
                )
            )
        return rows

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        rows = await self.scan(after=after, limit=limit)
        if not rows:
            return PlainPage(0, {})
        matched = plain_counts(rows, judged_before_ms=judged_before_ms, window_ms=window_ms)
        return PlainPage(rows[-1].sequence_id, matched)

    async def stats(self) -> StoreStats:
        states: dict[str, dict[str, int]] = {}
        oldest: dict[str, int | None] = {}
        for seq in sorted(self._states):
            for adapter, state in self._states[seq].items():
                per = states.setdefault(adapter, {})
                per[state.value] = per.get(state.value, 0) + 1
                oldest.setdefault(adapter, None)
                if state in UNDELIVERED_STATES and oldest[adapter] is None:
                    oldest[adapter] = self._events[seq][2]
        return StoreStats(
            last_sequence_id=self._last,
            events=len(self._events),
            receipts=sum(len(r) for r in self._receipts.values()),
            states=states,
            oldest_undelivered_ms=oldest,
        )

    async def prune(self, *, through: int, older_than_ms: int) -> int:
        doomed = [
            seq
            for seq, (_, _, created) in self._events.items()
            if seq <= through
            and created < older_than_ms
            and all(state in SETTLED_STATES for state in self._states[seq].values())
        ]
        for seq in doomed:
            del self._events[seq], self._states[seq]
            self._errors.pop(seq, None)
            self._receipts.pop(seq, None)
        if doomed:
            mark = self._watermarks.get(PRUNED_THROUGH, 0)
            self._watermarks[PRUNED_THROUGH] = max(mark, doomed[-1])
        return len(doomed)

    async def get_watermark(self, name: str) -> int:
        return self._watermarks.get(name, 0)

    async def set_watermark(self, name: str, value: int) -> None:
        self._watermarks[name] = value

    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        """Replace the config document and append an audit entry; see
        :meth:`Store.save_runtime_config`. Serialises first: nothing changes on error."""
        doc, before_json, after_json = config_json_of(config, before, after)
        row = (
            len(self._audit) + 1,
            int(self._clock() * 1000),
            actor,
            path,
            before_json,
            after_json,
        )
        self._config_json = doc
        self._audit.append(row)
        return audit_entry(*row)

    async def runtime_config(self) -> dict[str, Any] | None:
        """A fresh copy of the last saved config document, or ``None``."""
        if self._config_json is None:
            return None
        doc: dict[str, Any] = json.loads(self._config_json)
        return doc

    async def audit_log(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with id > ``after``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        start = max(after, 0)  # ids are 1..n at positions 0..n-1
        return [audit_entry(*row) for row in self._audit[start : start + limit]]

    # -- progressive rollouts --------------------------------------------------

    async def create_rollout(
        self, category: str, doc: Mapping[str, Any], *, change: ConfigChange | None = None
    ) -> RolloutWrite:
        """See :meth:`Store.create_rollout`."""
        doc_json, texts = rollout_json_of(doc, change)
        for rollout_id, (cat, state, *_) in self._rollouts.items():
            if cat == category and state in ACTIVE_ROLLOUT_STATES:
                raise RolloutConflict(
                    f"{category} has rollout {rollout_id} {state}", rollout_id=rollout_id
                )
        rollout_id = max(self._rollouts, default=0) + 1
        now_ms = int(self._clock() * 1000)
        self._rollouts[rollout_id] = (category, "running", 1, doc_json, now_ms, now_ms)
        return RolloutWrite(self._rollout_row(rollout_id), self._audit_change(rollout_id, texts))

    async def save_rollout(
        self,
        rollout_id: int,
        doc: Mapping[str, Any],
        *,
        state: str,
        version: int,
        change: ConfigChange | None = None,
    ) -> RolloutWrite:
        """See :meth:`Store.save_rollout`."""
        doc_json, texts = rollout_json_of(doc, change)
        found = self._rollouts.get(rollout_id)
        if found is None or found[2] != version:
            raise stale_rollout(rollout_id, gone=found is None)
        category, _, _, _, created_ms, _ = found
        now_ms = int(self._clock() * 1000)
        self._rollouts[rollout_id] = (category, state, version + 1, doc_json, created_ms, now_ms)
        return RolloutWrite(self._rollout_row(rollout_id), self._audit_change(rollout_id, texts))

    async def rollout(self, rollout_id: int) -> RolloutRow | None:
        """See :meth:`Store.rollout`."""
        return self._rollout_row(rollout_id) if rollout_id in self._rollouts else None

    async def rollouts(self, *, active_only: bool = False) -> list[RolloutRow]:
        """See :meth:`Store.rollouts`."""
        return [
            self._rollout_row(rollout_id)
            for rollout_id, (_, state, *_) in sorted(self._rollouts.items())
            if not active_only or state in ACTIVE_ROLLOUT_STATES
        ]

    def _rollout_row(self, rollout_id: int) -> RolloutRow:
        category, state, version, doc_json, created_ms, updated_ms = self._rollouts[rollout_id]
        return RolloutRow(
            rollout_id, category, state, version, json.loads(doc_json), created_ms, updated_ms
        )

    def _audit_change(
        self, rollout_id: int, texts: tuple[str, str, str, str] | None
    ) -> AuditEntry | None:
        if texts is None:
            return None
        config, path, before_json, after_json = texts
        row = (
            len(self._audit) + 1,
            int(self._clock() * 1000),
            rollout_actor(rollout_id),
            path,
            before_json,
            after_json,
        )
        self._config_json = config
        self._audit.append(row)
        return audit_entry(*row)
