"""``/reconciliation``: the reconciler's last report, and a run on demand.

The end of the flow: the reconciler matches each routed event with the
consumers' receipts per adapter; an operator reads the report here, runs
one now, and with ``repair=true`` re-sends what an adapter is missing
through its lane.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import FastAPI, Query

from ..core import Broadcaster
from .common import Actor

__all__ = ["add_reconciliation_routes"]

log = structlog.get_logger("broadcaster.admin")


def add_reconciliation_routes(app: FastAPI, b: Broadcaster) -> None:
    """Add ``GET /reconciliation`` and ``POST /reconciliation/run`` to ``app``."""

    @app.get("/reconciliation")
    async def get_reconciliation(actor: Actor) -> dict[str, Any]:
        """The last reconciliation report (null before the first run)."""
        report = b.reconciler.last_report
        return {
            "report": report.as_dict() if report is not None else None,
            "unrepaired_loss": report.unrepaired_loss if report is not None else None,
        }

    @app.post("/reconciliation/run")
    async def run_reconciliation(
        actor: Actor, repair: Annotated[bool, Query()] = False
    ) -> dict[str, Any]:
        """Reconcile now; with ``repair=true`` also re-send what is missing."""
        report = await b.reconcile()
        queued = await b.repair(report) if repair else {}
        if repair:
            log.info("repair requested", actor=actor, queued=queued)
        return {
            "report": report.as_dict(),
            "unrepaired_loss": report.unrepaired_loss,
            "repair": queued,
        }
