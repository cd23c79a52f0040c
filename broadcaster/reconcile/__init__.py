"""Reconciliation: match what each adapter was sent against what consumers
received, report the differences, repair what is missing."""

from .matching import (
    CRITERIA,
    Criterion,
    Expected,
    Judgement,
    MatchPolicy,
    Observation,
    Outcome,
    Report,
    judge,
)
from .reconciler import RECONCILED_THROUGH, Reconciler

__all__ = [
    "CRITERIA",
    "RECONCILED_THROUGH",
    "Reconciler",
    "Criterion",
    "Expected",
    "Judgement",
    "MatchPolicy",
    "Observation",
    "Outcome",
    "Report",
    "judge",
]
