"""The store interface in one import: the contract (:class:`Store`, in
:mod:`~broadcaster.store.contract`), the records it exchanges
(:mod:`~broadcaster.store.records`) and the helpers the backends share
(:mod:`~broadcaster.store.shared`).

Producers append to the store, lanes deliver from it, consumers' receipts
land in it and the reconciler reads it back: every layer above the store
imports what it needs from here, whichever backend runs.
"""

from __future__ import annotations

from .contract import Store
from .records import (
    ACTIVE_ROLLOUT_STATES,
    DELIVERED_STATES,
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
    Report,
    ReportOutcome,
    RolloutRow,
    RolloutWrite,
    ScanRow,
    StoredEvent,
    StoreHealth,
    StoreStats,
)
from .shared import (
    audit_entry,
    config_json_of,
    consumer_infos,
    judge_reports,
    merge_consumer,
    plain_counts,
    report_infos,
    rollout_actor,
    rollout_json_of,
    stale_rollout,
)

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
