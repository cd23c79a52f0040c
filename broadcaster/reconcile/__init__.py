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

__all__ = [
    "CRITERIA",
    "Criterion",
    "Expected",
    "Judgement",
    "MatchPolicy",
    "Observation",
    "Outcome",
    "Report",
    "judge",
]
