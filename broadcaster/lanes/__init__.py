"""Delivery lanes: one per adapter, each an ordered, pipelined queue.

Between the hand-off of committed records and the adapters: delivery
(:mod:`~broadcaster.lanes.lane`) sends batches in sequence order and
retries failures; with a circuit breaker, failover
(:mod:`~broadcaster.lanes.failover`) parks records ``PENDING`` while the
adapter is down, probes it and backfills what it missed; pacing
(:mod:`~broadcaster.lanes.pacing`) holds the backfill to its rate.
"""

from .lane import Lane
from .pacing import TokenBucket

__all__ = ["Lane", "TokenBucket"]
