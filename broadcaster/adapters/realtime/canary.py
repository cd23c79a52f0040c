"""The Realtime adapter's canary channel: pings that come back to the adapter,
so that it learns when the project is over its message rate.

Supabase never refuses the sender of a broadcast for rate; it shuts the
channels that *receive* messages while the project's mean rate is over its
quota (:mod:`broadcaster.realtime_plan` says more). The adapter's own
channels receive nothing, so it joins one more, ``<prefix>:canary``, with
``self: true``, and pings it every ``interval_s`` while it pushes (and while
its gate is closed): each ping comes back to it and is counted as a message
received, so the server shuts that channel exactly when it shuts the
subscribers'. The shutdown reaches the adapter as a refusal for rate through
the link; :class:`~broadcaster.realtime_plan.RateCanary` decides when pushes
may go again. A ping and its echo cost the quota two messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypedDict

import structlog
from realtime import AsyncRealtimeChannel

from ...realtime_plan import RateCanary
from .client_glue import PushHandle, push_broadcast
from .link import CANARY_EVENT, RealtimeLink

__all__ = ["Canary", "CanaryHealth"]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")


class CanaryHealth(TypedDict):
    """The canary in the Realtime adapter's ``health().extra``."""

    #: Its channel, ``<prefix>:canary``.
    topic: str
    #: Whether its gate lets pushes go now.
    open: bool
    #: Times its channel was shut for rate.
    refusals: int
    #: Times the gate opened again (on the canary's echoes, or timed out),
    #: and of those, timed out.
    reopened: int
    timed_out: int
    #: Pings sent, and pings that came back.
    pings: int
    echoes: int


class Canary:
    """Pings ``topic`` every ``interval_s`` when :attr:`gate` says one is due.

    :meth:`start` takes the adapter's link (read anew at each ping: it is
    replaced on reconnect) and its count of pushes (a ping is due after
    pushes). The link calls :meth:`on_echo` for each ping that comes back and
    :meth:`on_joined` after each (re)join.
    """

    def __init__(self, topic: str, interval_s: float, ack_timeout_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.topic = topic
        self.interval_s = interval_s
        self._ack_timeout = ack_timeout_s
        self.gate = RateCanary()
        #: Pings sent and pings that came back.
        self.pings = 0
        self.echoes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, link: Callable[[], RealtimeLink | None], pushes: Callable[[], int]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(link, pushes), name=f"realtime-{self.topic}"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def on_joined(self) -> None:
        self.gate.joined()

    def on_echo(self) -> None:
        self.echoes += 1
        if self.gate.echoed():
            log.info("realtime canary back: the project is under its message rate again")

    def health(self) -> CanaryHealth:
        gate = self.gate
        try:
            is_open = gate.is_open(asyncio.get_running_loop().time())
        except RuntimeError:  # no loop: no time has passed on one either
            is_open = gate.closed_at is None
        return CanaryHealth(
            topic=self.topic,
            open=is_open,
            refusals=gate.refusals,
            reopened=gate.reopened,
            timed_out=gate.timed_out,
            pings=self.pings,
            echoes=self.echoes,
        )

    async def _run(
        self, link: Callable[[], RealtimeLink | None], pushes: Callable[[], int]
    ) -> None:
        seen = pushes()
        while True:
            await asyncio.sleep(self.interval_s)
            current = link()
            channel = current.channel(self.topic) if current is not None else None
            pushed, seen = pushes() != seen, pushes()
            if channel is None or not self.gate.due(pushed):
                continue
            try:
                await self._ping(channel)
            except Exception as exc:
                # The link notices a broken connection; a ping is only a probe.
                log.debug("canary ping not sent", error=repr(exc))

    async def _ping(self, channel: AsyncRealtimeChannel) -> None:
        self.pings += 1
        payload = {"type": "broadcast", "event": CANARY_EVENT, "payload": {"n": self.pings}}
        handle: list[PushHandle] = []
        settled = False

        def done(*_: object) -> None:
            # Whatever the answer: the echo, not the reply, is what counts.
            nonlocal settled
            settled = True
            if handle:
                handle[0].destroy()

        push = await push_broadcast(
            channel,
            payload,
            self._ack_timeout,
            on_ok=done,
            on_error=done,
            on_timeout=done,
        )
        if settled:
            push.destroy()
        else:
            handle.append(push)
