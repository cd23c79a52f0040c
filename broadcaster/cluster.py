"""A service instance among others on one store (docs/deploying.md): its heartbeat,
the lease that makes exactly one instance the Realtime writer, and runtime
flags changed on any instance followed on this one.

Every instance serves the WebSocket path to its own subscribers from the
store. Realtime is written by one instance at a time: the holder of the
``realtime`` lease, a row in the store claimed for ``INSTANCE_LEASE_S``
seconds by the store's clock and renewed three times per period. The
others keep their Realtime connection ready and try to claim it as often;
once the holder stops renewing (it died, or lost the store), its last
claim runs out and another instance wins the lease, takes the Realtime
lane and re-sends what was not acknowledged: within two periods. A holder
that cannot renew gives the lane up before its claim can run out, so two
instances never write at once (as long as the store's clock and this
process's agree on how long a second is).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict

import structlog

from .core import Broadcaster
from .exceptions import StoreError

__all__ = ["REALTIME_LEASE", "ClusterStatus", "Membership"]

log = structlog.get_logger("broadcaster.cluster")

#: The lease of the instance that writes to Realtime.
REALTIME_LEASE: Final = "realtime"
#: Runtime flags changed on another instance apply here within a second:
#: re-read this often from a store that does not notify changes...
FLAGS_EVERY_S: Final = 0.5
#: ...and at least this often from one that does (PostgreSQL: ``LISTEN``),
#: the safety net should a notification ever go unheard.
FLAGS_SAFETY_S: Final = 10.0


class ClusterStatus(TypedDict):
    """This instance's view of the cluster (``/health``'s ``cluster``)."""

    instance_id: str
    #: The instance that writes to Realtime, as last seen (None: unknown).
    lease_holder: str | None
    #: Whether this instance writes to Realtime now.
    holding_lease: bool
    lease_s: float


class Membership:
    """This instance's part in the cluster, for as long as it is started.

    ``lease``: whether the Realtime writer is chosen by lease (a broadcaster
    built with ``deferred=("realtime",)``); False where one instance is all
    there can be (a SQLite store). ``info`` says what the instance tells the
    others in its heartbeat (URLs, subscribers, cursor)."""

    def __init__(
        self,
        broadcaster: Broadcaster,
        *,
        instance_id: str,
        lease_s: float,
        lease: bool,
        info: Callable[[], Mapping[str, Any]],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._b = broadcaster
        self.instance_id = instance_id
        self.lease_s = lease_s
        self._lease = lease
        self._info = info
        self._monotonic = monotonic
        #: Whether this instance writes to Realtime now.
        self.holding = not lease
        #: The lease holder as last seen (this instance, without a lease).
        self.holder: str | None = instance_id if not lease else None
        # When the last granted claim was sent (monotonic): it runs out no
        # earlier than lease_s after that.
        self._claimed_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def expire_after_s(self) -> float:
        """How old a heartbeat may be before its instance counts as gone."""
        return 2 * self.lease_s

    async def start(self) -> None:
        """Beat and claim once now (so the instance is known, and writes to
        Realtime if it can, before it says it is ready), then keep doing it."""
        await self._tick()
        self._tasks = [
            asyncio.get_running_loop().create_task(self._beat(), name="cluster-heartbeat"),
            asyncio.get_running_loop().create_task(self._follow_flags(), name="cluster-flags"),
        ]

    async def close(self) -> None:
        """Stop; give the lease up at once if this instance holds it, so the
        next holder need not wait for it to run out."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._lease and self.holding:
            await self._b.release_lane(REALTIME_LEASE)
            self.holding = False
            try:
                await self._b.store.release_lease(REALTIME_LEASE, self.instance_id)
            except StoreError as exc:
                log.warning("lease not released; it runs out by itself", error=str(exc))

    def status(self) -> ClusterStatus:
        """For ``/health``: this instance, and who writes to Realtime."""
        return ClusterStatus(
            instance_id=self.instance_id,
            lease_holder=self.holder,
            holding_lease=self.holding,
            lease_s=self.lease_s,
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self._tick()

    async def _tick(self) -> None:
        try:
            await self._b.store.heartbeat(
                self.instance_id, self._info(), expire_after_s=self.expire_after_s
            )
        except StoreError as exc:
            log.warning("heartbeat failed", error=str(exc))
        if self._lease:
            await self._claim()

    async def _claim(self) -> None:
        sent = self._monotonic()
        try:
            # A claim slower than a renewal period is as good as a failed one.
            async with asyncio.timeout(self.lease_s / 3):
                state = await self._b.store.claim_lease(
                    REALTIME_LEASE, self.instance_id, self.lease_s
                )
        except (StoreError, TimeoutError) as exc:
            log.warning("lease claim failed", error=str(exc))
            # The last granted claim runs out lease_s after it was sent: give
            # the lane up one renewal before that, while it is surely ours.
            last = self._claimed_at
            if self.holding and (last is None or sent - last >= self.lease_s * 2 / 3):
                await self._lose("the store did not renew the lease")
            return
        self.holder = state.holder
        if state.granted:
            self._claimed_at = sent
            if not self.holding:
                self.holding = True
                resent = await self._b.take_lane(REALTIME_LEASE)
                log.info("realtime lease taken: this instance writes to Realtime", resent=resent)
        elif self.holding:
            await self._lose(f"{state.holder} holds the lease")

    async def _lose(self, why: str) -> None:
        self.holding = False
        await self._b.release_lane(REALTIME_LEASE)
        log.warning("realtime lease lost: another instance writes to Realtime", reason=why)

    async def _follow_flags(self) -> None:
        store = self._b.store
        every_s = FLAGS_SAFETY_S if store.notifies_config_changes else FLAGS_EVERY_S
        while True:
            try:
                await store.wait_for_config_change(every_s)
            except StoreError as exc:  # closed under us: poll until cancelled
                log.warning("runtime flag changes not heard", error=str(exc))
                await asyncio.sleep(FLAGS_EVERY_S)
            try:
                await self._b.flags.load(quiet=True)
            except Exception as exc:  # a bad document or a store outage: keep what is in force
                log.warning("runtime flags not re-read", error=str(exc))
