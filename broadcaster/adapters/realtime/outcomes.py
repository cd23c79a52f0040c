"""What becomes of the Realtime adapter's pushes once sent: acknowledged,
refused by a quota (split and sent again, refused for good, or throttled),
rejected, or failed with the connection — and of the ``send()`` calls
waiting on them. :class:`PushOutcomes` is the adapter's base for this."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from ...events import Category
from ...exceptions import AdapterError, AdapterRejected, AdapterUnavailable
from ...realtime_plan import PAYLOAD_TOO_LARGE, RATE_LIMIT, refusal_reason
from .batching import ChannelQueue, Inflight, Pacer
from .canary import Canary
from .link import RealtimeLink

__all__ = ["PushOutcomes", "with_cause"]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")


class PushOutcomes:
    """The outcomes of pushes, for :class:`~.adapter.RealtimeAdapter`, which
    sets these attributes up."""

    name: str
    #: Refusals by reason: events refused as too large, refusals for rate.
    refusals: Counter[str]
    events_acked: int
    _pacer: Pacer
    _canary: Canary | None
    _link: RealtimeLink | None
    _batch_bytes: int
    _inflight: set[Inflight]
    _channels: dict[Category, ChannelQueue]

    def _on_error_reply(self, inflight: Inflight, reply: dict[str, Any]) -> None:
        reason = refusal_reason(reply)
        topic = inflight.channel.topic
        if reason == PAYLOAD_TOO_LARGE:
            self._refused_as_too_large(inflight, f"{topic}: server replied {reply}")
        elif reason == RATE_LIMIT:
            detail = f"{topic}: server replied {reply}"
            self._throttle(detail)
            self._fail_queued(self._throttled_error)
            self._settle(inflight, self._throttled_error)
        else:
            self._settle(
                inflight,
                lambda: AdapterRejected(self.name, f"{topic}: server replied error {reply}"),
            )

    def _refused_as_too_large(self, inflight: Inflight, detail: str) -> None:
        """The server's payload limit is below this push: one event alone is
        refused for good; more are put back to go in smaller pushes."""
        if not self._finish(inflight):
            return
        self.refusals[PAYLOAD_TOO_LARGE] += 1
        items = inflight.items
        if len(items) == 1:
            record, waiter = items[0]
            log.warning("event refused by the server: too large", sequence_id=record.sequence_id)
            waiter.refuse(record.sequence_id, PAYLOAD_TOO_LARGE, detail)
            return
        # From now on no push carries more than half of what was refused;
        # A push always takes one event, so each retry makes progress.
        self._batch_bytes = max(1, min(self._batch_bytes, inflight.size // 2))
        log.warning(
            "push refused as too large; splitting",
            events=len(items),
            bytes=inflight.size,
            batch_bytes=self._batch_bytes,
        )
        inflight.channel.put_back(items, inflight.size)

    def _throttle(self, detail: str) -> None:
        """A refusal for rate: pause, and lower the rate cap below what was refused."""
        self.refusals[RATE_LIMIT] += 1
        cap = self._pacer.refused(asyncio.get_running_loop().time(), detail)
        log.warning(
            "realtime refused for rate; slowing down",
            detail=detail,
            max_messages_per_s=round(cap, 1),
            pause_s=self._pacer.pause_s,
        )

    def _throttled_error(self) -> AdapterError:
        return self._pacer.error(asyncio.get_running_loop().time())

    def _finish(self, inflight: Inflight) -> bool:
        """Take ``inflight`` out of flight; False if something already did."""
        if inflight.done:
            return False
        inflight.done = True
        self._inflight.discard(inflight)
        channel = inflight.channel
        channel.inflight -= 1
        channel.go.set()
        if inflight.push is not None:
            inflight.push.destroy()
        return True

    def _settle(self, inflight: Inflight, error: Callable[[], AdapterError] | None) -> None:
        if not self._finish(inflight):
            return
        if error is None:
            self.events_acked += len(inflight.items)
            for waiter, count in inflight.waiters.items():
                waiter.ack(count)
        else:
            for waiter in inflight.waiters:
                waiter.fail(error())

    def _on_lost(self, reason: str, refusal: str | None) -> None:
        if refusal == RATE_LIMIT and self._link is not None:
            now = asyncio.get_running_loop().time()
            if self._canary is None or self._canary.gate.refused(now):
                self._throttle(reason)
            else:
                # The same excess, still judged over: no new news about the
                # rate to slow down for; only the pause starts again.
                self.refusals[RATE_LIMIT] += 1
                self._pacer.hold(now, reason)
            self._link.delay_next_attempt(self._pacer.pause_s)
            self._fail_everything(self._throttled_error)
        else:
            lost = f"connection lost: {reason}"
            self._fail_everything(lambda: AdapterUnavailable(self.name, lost))

    def _fail_queued(self, error: Callable[[], AdapterError]) -> None:
        for channel in self._channels.values():
            channel.fail_all(error)

    def _fail_everything(self, error: Callable[[], AdapterError]) -> None:
        for inflight in list(self._inflight):
            self._settle(inflight, error)
        self._fail_queued(error)


def with_cause(exc: AdapterError, cause: BaseException) -> AdapterError:
    exc.__cause__ = cause
    return exc
