"""Progressive rollouts (docs/rollouts.md): one category's share of the new
path turned up a step at a time while health gates pass, rolled back on its
own when one fails, and at the end, optionally, cut over."""

from .plan import Gates, Plan, StageHealth
from .policy import ACTIVE_STATES, Rollout, RolloutState

__all__ = ["ACTIVE_STATES", "Gates", "Plan", "Rollout", "RolloutState", "StageHealth"]
