"""The demo's outage: SIGKILL the Realtime server, restart it, and narrate
the breaker's phases (open, half-open, closed, the ramp, the backfill)."""

from __future__ import annotations

import asyncio
import time

from ..breaker_policy import Transition
from ..consumer import ReceiptCollector
from ..consumer.realtime import RealtimeSubscriber
from ..core import Broadcaster
from ..settings import Settings
from ..spawn import RealtimeServerProcess
from .stream import Publisher
from .timeline import RECOVERY_S, RECOVERY_TIMEOUT_S, STALL_S, DemoBase, until

__all__ = ["OutagePhase"]


class OutagePhase(DemoBase):
    """Kills and restarts the Realtime server; watches the breaker."""

    async def _fail_and_recover(
        self,
        b: Broadcaster,
        child: RealtimeServerProcess,
        settings: Settings,
        collectors: dict[str, ReceiptCollector],
        rt_subs: list[RealtimeSubscriber],
        publisher: Publisher,
    ) -> None:
        breaker = b.breakers["realtime"]
        lane = b.lane("realtime")
        self.note(f"{self.t()} killing the Realtime server (SIGKILL, pid {child.pid})")
        self.kill_at = time.monotonic()
        await child.kill()
        # Its consumer lost its connection too. It reconnects a moment after
        # the broadcaster does: what is sent in between (the half-open probes,
        # the start of the backfill) never reaches it.
        self.rt_offline = True
        await rt_subs[-1].close()
        self.note(
            "       the realtime consumer is disconnected too; it reconnects a moment after the"
            " broadcaster (broadcast keeps no history)"
        )
        if not await until(lambda: breaker.state != "closed", RECOVERY_TIMEOUT_S):
            self.note("       the realtime breaker did not open")
        await asyncio.sleep(max(0.0, self.kill_at + self._outage_s() - time.monotonic()))
        pending = b.breaker_states()["realtime"]["pending"]
        self.note(
            f"{self.t()} restarting the Realtime server on port {child.port}"
            f" ({pending} events pending for realtime so far)"
        )
        await child.start()
        back = time.monotonic()
        self.note(
            f"{self.t()} Realtime server back (pid {child.pid}) after a"
            f" {back - self.kill_at:.1f} s outage"
        )
        if not await until(lambda: breaker.state == "closed", RECOVERY_TIMEOUT_S):
            self.note(f"{self.t()} the realtime breaker did not close")
        await self._rejoin(child, settings, collectors["realtime"], rt_subs)
        self.rejoined_after = publisher.last_sequence_id
        self.rt_offline = False
        self.note(f"{self.t()} the realtime consumer is back")

        progress = (-1, -1, 0.0)  # (pending, backfilled, since)

        def recovered() -> bool:
            # Closed at full share with nothing pending: the backfill is done.
            # Or nothing moved for a while with events still pending: report
            # that rather than wait for the timeout.
            nonlocal progress
            shares = self.summary.ramp_shares  # seen (and printed) by _watch_breaker
            if breaker.state != "closed" or not shares or shares[-1] != 100:
                progress = (-1, -1, 0.0)
                return False
            now = (lane.pending, b.stats.backfilled["realtime"])
            if now != progress[:2]:
                progress = (*now, time.monotonic())
            return lane.pending == 0 or time.monotonic() - progress[2] > STALL_S

        if not await until(recovered, RECOVERY_TIMEOUT_S):
            self.note(f"{self.t()} realtime did not recover within {RECOVERY_TIMEOUT_S:g} s")
        elif lane.pending:
            self.note(
                f"{self.t()} backfill stopped with {lane.pending} events still pending for"
                f" realtime ({b.stats.backfilled['realtime']} delivered)"
            )
        else:
            self.note(
                f"{self.t()} backfill done: {b.stats.backfilled['realtime']} pending events"
                f" delivered to realtime, {time.monotonic() - back:.1f} s after the server"
                " came back"
            )
        self.summary.backfilled = b.stats.backfilled["realtime"]

    async def _rejoin(
        self,
        child: RealtimeServerProcess,
        settings: Settings,
        collector: ReceiptCollector,
        rt_subs: list[RealtimeSubscriber],
    ) -> None:
        for attempt in range(3):
            sub = self._rt_subscriber(child, settings, collector)
            rt_subs.append(sub)
            try:
                await sub.start()
                return
            except Exception:
                if attempt == 2:
                    raise
                await sub.close()
                await asyncio.sleep(0.5)

    async def _watch_breaker(self, b: Broadcaster) -> None:
        """Print the realtime breaker's transitions and ramp steps as they happen."""
        breaker = b.breakers["realtime"]
        seen = breaker.policy.epoch
        share, state = breaker.share, breaker.state
        while True:
            await asyncio.sleep(0.01)
            epoch = breaker.policy.epoch
            if epoch != seen:
                for transition in breaker.policy.history[-(epoch - seen) :]:
                    self._transition(transition)
                seen = epoch
            now_share, now_state = breaker.share, breaker.state
            if now_state == "closed" and (now_share != share or state != "closed"):
                self.summary.ramp_shares.append(now_share)
                self.note(
                    f"{self.t()} ramp: realtime gets {now_share} % of live traffic"
                    + (": dual-write fully restored" if now_share == 100 else "")
                )
            share, state = now_share, now_state

    def _transition(self, transition: Transition) -> None:
        self.summary.transitions.append(transition.key)
        texts = {
            "closed->open": "realtime breaker OPEN ({reason}): failover, events go to"
            " websocket only and wait as PENDING for realtime",
            "open->half_open": "realtime breaker HALF-OPEN: probing",
            "half_open->open": "realtime breaker OPEN again ({reason});"
            f" next probe in {RECOVERY_S:g} s",
            "half_open->closed": "realtime breaker CLOSED ({reason}): restoring dual-write"
            " gradually and backfilling",
        }
        text = texts.get(transition.key, transition.key + " ({reason})")
        reason = transition.reason
        if len(reason) > 70:
            reason = reason[:67] + "..."
        self.note(f"{self.t()} {text.format(reason=reason)}")
