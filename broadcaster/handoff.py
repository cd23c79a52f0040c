"""Committed records on their way to the lanes.

Between the store and the lanes: once a commit is durable, its records
queue here, and a callback the event loop runs next hands them to the lanes
of the adapters they are routed to (one ordered lane per adapter), in
sequence order. A service following its store hands over only what
continues its :class:`~broadcaster.tail.Tail`'s cursor; the tail reads the
rest from the store.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .events import Category, EventDraft, EventRecord
from .lanes import Lane
from .stats import DeliveryStats
from .store import Store
from .tail import Tail

__all__ = ["Handoff"]

Routed = tuple[EventRecord, tuple[str, ...]]


class Handoff:
    """The queue between commits and lanes.

    ``lanes`` is the broadcaster's own mapping of running lanes (it changes
    as deferred lanes are taken and released); ``follow``: the store this
    broadcaster follows, through a :attr:`tail` that hands over what other
    processes appended (``wait_space``: its backpressure bound).
    """

    def __init__(
        self,
        lanes: Mapping[str, Lane],
        stats: DeliveryStats,
        *,
        follow: Store | None = None,
        wait_space: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._lanes = lanes
        self._stats = stats
        # Committed records not yet handed to their lanes, in sequence order,
        # with their routing.
        self._queued: list[Routed] = []
        self._handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Following the store: delivers what other processes appended too,
        #: in sequence order (see tail.py).
        self.tail: Tail | None = None
        if follow is not None:
            assert wait_space is not None, "a tail needs the backpressure bound"
            self.tail = Tail(
                follow,
                hand=self.deliver,
                own_first=self.first,
                release_own=self.hand_off,
                wait_space=wait_space,
            )

    def start(self) -> None:
        """Records are committed from now on, on this event loop."""
        self._loop = asyncio.get_running_loop()

    @property
    def queued(self) -> int:
        """Committed records not handed to their lanes yet."""
        return len(self._queued)

    def first(self) -> int | None:
        """The sequence id of the first record waiting (None: none waits)."""
        return self._queued[0][0].sequence_id if self._queued else None

    def dispatch(
        self, records: list[EventRecord], items: list[tuple[EventDraft, tuple[str, ...]]]
    ) -> None:
        """Queue committed ``records`` for their lanes; the loop's next callback
        (:meth:`hand_off`) hands them over.

        Why not here: this runs in the producer's step (``publish()`` waits for
        it), and handing a record to a lane costs a little per routed
        adapter, so each more path made every call slower. Queued,
        the call costs the same whatever the routing, and records committed in
        one loop turn reach each lane as one batch. Sequence order holds:
        records are queued in commit order and handed over in that order.
        """
        if len(records) == 1:
            self._queued.append((records[0], items[0][1]))
        else:
            self._queued.extend(zip(records, [routed for _, routed in items], strict=True))
        if self._handle is None:
            loop = self._loop
            assert loop is not None, "records are only committed while running"
            self._handle = loop.call_soon(self.hand_off)

    def hand_off(self) -> None:
        """Hand every queued record to its lanes, now. The loop calls it after a
        commit; whoever must see each committed record in its lanes (flush,
        a lane reading its undelivered rows) calls it first."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        queued = self._queued
        if not queued:
            return
        tail = self.tail
        if tail is not None:
            # Following the store: only what continues its cursor goes now;
            # the tail reads the store for a hole first (see tail.py).
            drop, take = tail.split(len(queued), lambda i: queued[i][0].sequence_id)
            if drop + take < len(queued):
                self._queued = queued[drop + take :]
                queued = queued[drop : drop + take]
            else:
                self._queued = []
                queued = queued[drop:] if drop else queued
            if not queued:
                return
            tail.handed = queued[-1][0].sequence_id
        else:
            self._queued = []
        self.deliver(queued)

    def deliver(self, queued: Sequence[Routed]) -> None:
        """Give committed records (in sequence order) to their lanes."""
        if len(queued) == 1:
            # One record (publish() at a modest rate): no per-lane lists, no Counter.
            record, routed = queued[0]
            self._stats.count_routed(record.category, routed, 1)
            for name in routed:
                lane = self._lanes.get(name)
                if lane is not None:
                    lane.enqueue_live(record)
            return
        per_lane: dict[str, list[EventRecord]] = {name: [] for name in self._lanes}
        routings: Counter[tuple[Category, tuple[str, ...]]] = Counter()
        for record, routed in queued:
            routings[record.category, routed] += 1
            for name in routed:
                lane_records = per_lane.get(name)
                if lane_records is not None:
                    lane_records.append(record)
        for (category, routed), n in routings.items():
            self._stats.count_routed(category, routed, n)
        for name, lane_records in per_lane.items():
            self._lanes[name].enqueue(lane_records)

    def discard(self) -> None:
        """Shutting down: drop what is queued (it stays undelivered in the
        store and is re-sent on the next start)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._queued.clear()
