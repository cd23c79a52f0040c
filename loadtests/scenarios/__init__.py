"""The scenarios of ``python -m loadtests``, in the order ``all`` runs them.

Each module has ``NAME``, ``HELP``, ``DEFAULTS`` and ``SMOKE`` (values for
options left unset, normal and ``--smoke``), ``PLOTS`` (whether ``--plot``
applies), ``add_arguments(parser)`` and ``async run(args) -> dict``: the
figures, printed as one JSON line.
"""

from __future__ import annotations

from types import ModuleType

from . import (  # noqa
    admin_api,
    admin_body,
    checksum_cost,
    dual_vs_single,
    event_cost,
    failover,
    per_event,
    probe_cost,
    producers,
    publish_overhead,
    raw_limit,
    realtime_quota,
    receipts,
    reconcile,
    store,
    sustained,
    wakeup,
)

__all__ = ["SCENARIOS"]

SCENARIOS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        sustained,
        dual_vs_single,
        publish_overhead,
        checksum_cost,
        event_cost,
        reconcile,
        store,
        failover,
        raw_limit,
        per_event,
        wakeup,
        admin_api,
        admin_body,
        receipts,
        probe_cost,
        producers,
        realtime_quota,
    )
}
