"""A phase of an end-to-end scenario: producers publish, the subscriber counts.

:meth:`PhasesMixin.phase` runs producers against a
:class:`~loadtests._stack.Stack`'s broadcaster for a while — paced by a shared
:class:`~loadtests._common.TokenBucket` or as fast as they can — waits until
the subscriber holds every event of the phase, and returns a
:class:`PhaseResult`; :meth:`PhasesMixin.complete` adds what the subscriber
reported once the stack has closed (latency per path, lost, duplicates).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._common import Bins, TokenBucket, progress, summarise
from ._second_paths import padding

if TYPE_CHECKING:
    from broadcaster.core import Broadcaster

    from ._common import ProcessCpu

__all__ = ["ADAPTERS", "PhaseResult", "PhasesMixin"]

ADAPTERS = ("websocket", "realtime")


@dataclass
class PhaseResult:
    """What one phase measured. ``figures`` is JSON-ready; the rest feeds plots."""

    name: str
    figures: dict[str, Any]
    started_t: float
    #: Producer side, wall-time bins of publish-call latency (ms) per event published.
    published: Bins
    #: Subscriber side, per adapter: [[t, count, p50_ms, p99_ms], ...], t wall-clock.
    received: dict[str, list[list[float]]] = field(default_factory=dict)
    #: Producer side, the latency of every publish call, seconds (to pool phases).
    call_latencies: list[float] = field(default_factory=list)
    #: With ``alternate_s``: per call, whether single-write was in force when it began.
    call_single: list[bool] = field(default_factory=list)
    #: With ``call_cpu``: the thread CPU time of every publish call, seconds.
    call_cpu: list[float] = field(default_factory=list)


class PhasesMixin:
    """The measuring half of :class:`~loadtests._stack.Stack`."""

    if TYPE_CHECKING:
        # Provided by the stack.
        _bin_s: float
        report: dict[str, Any]

        @property
        def broadcaster(self) -> Broadcaster: ...

        def cpu_meter(self) -> ProcessCpu: ...

        def single_write(self, single: bool) -> None: ...

        async def wait_received(
            self, phase: str, count: int, adapters: Sequence[str], timeout_s: float = 60.0
        ) -> dict[str, Any]: ...

    async def phase(
        self,
        name: str,
        *,
        seconds: float,
        rate: float | None,
        producers: int = 4,
        max_batch: int = 100,
        single_calls: bool = False,
        category: str = "SYSTEM",
        payload_bytes: int = 200,
        adapters: Sequence[str] = ADAPTERS,
        drain_timeout_s: float = 60.0,
        alternate_s: float | None = None,
        call_cpu: bool = False,
    ) -> PhaseResult:
        """Publish for ``seconds`` at ``rate`` events/s (None: as fast as
        possible) from ``producers`` tasks, in ``publish_many`` calls of up to
        ``max_batch`` events (``single_calls``: one ``publish()`` per event),
        then wait until ``adapters`` delivered every event to the subscriber.

        ``alternate_s``: switch between dual- and single-write every so many
        seconds, starting with dual, and note per call which was in force when
        it began (``call_single``; routing is decided before ``publish()``'s
        first await, so the note is exact); runs past ``seconds`` until both
        modes carried calls, and ends in dual-write. ``call_cpu``
        (with ``single_calls``): also the loop thread's CPU time during each
        call (``call_cpu``), to tell a call's own work from its waiting.

        Figures: events, achieved (publish) and delivered (end-to-end) rates,
        publish-call latency, per-adapter latency/lost/duplicates, CPU seconds
        per process and the broadcaster's CPU µs per event.
        """
        b = self.broadcaster
        pad = padding(payload_bytes)
        # Burst: what the producers may publish at once to catch up after a
        # stall (a slow commit), never more than the batches they would send.
        bucket = TokenBucket(rate, burst=producers * max_batch if rate else 1.0)
        published = Bins(self._bin_s)
        call_latencies: list[float] = []
        call_single: list[bool] = []
        call_cpus: list[float] = []
        thread_time = time.thread_time if call_cpu else None
        single_now = [False]
        counts = [0] * producers
        calls = [0] * producers
        cpu = self.cpu_meter()
        started_t = time.time()
        started = time.monotonic()
        deadline = started + seconds
        cpu.start()

        def done() -> bool:
            # An alternating phase goes on until both modes carried calls: on
            # a loaded machine one stall can outlast a short phase's switch.
            return alternate_s is None or len(set(call_single)) == 2

        async def produce(p: int) -> None:
            nonlocal deadline
            i = 0
            clock, perf = time.time, time.perf_counter
            while True:
                n = await bucket.take(1 if single_calls else max_batch, deadline)
                if not n:
                    if done():
                        break
                    deadline = max(deadline, time.monotonic() + (alternate_s or 0.0))
                    continue
                t = clock()
                single = single_now[0]
                if single_calls:
                    payload = {"t": t, "phase": name, "p": p, "i": i, "pad": pad}
                    c0 = thread_time() if thread_time is not None else 0.0
                    t0 = perf()
                    await b.publish(category, "bench.tick", payload)
                    dt = perf() - t0
                    if thread_time is not None:
                        call_cpus.append(thread_time() - c0)
                else:
                    events = [
                        {
                            "category": category,
                            "event_type": "bench.tick",
                            "payload": {"t": t, "phase": name, "p": p, "i": i + k, "pad": pad},
                        }
                        for k in range(n)
                    ]
                    t0 = perf()
                    await b.publish_many(events)
                    dt = perf() - t0
                i += n
                calls[p] += 1
                call_latencies.append(dt)
                call_single.append(single)
                published.add_many(clock(), [dt * 1000] * n)
            counts[p] = i

        async def alternate(period: float) -> None:
            try:
                while True:
                    await asyncio.sleep(period)
                    single_now[0] = not single_now[0]
                    self.single_write(single_now[0])
            finally:
                self.single_write(False)

        switcher = None
        if alternate_s is not None:
            self.single_write(False)
            switcher = asyncio.create_task(alternate(alternate_s))
        try:
            await asyncio.gather(*(produce(p) for p in range(producers)))
        finally:
            if switcher is not None:
                switcher.cancel()
                await asyncio.gather(switcher, return_exceptions=True)
        published_s = time.monotonic() - started
        events = sum(counts)
        await b.flush(timeout=drain_timeout_s)
        answer = await self.wait_received(name, events, adapters, drain_timeout_s)
        used = cpu.stop()
        progress(
            f"phase {name}: {events} events in {published_s:.2f}s "
            f"({events / published_s:.0f}/s), delivered {answer['counts']}"
        )
        return PhaseResult(
            name,
            {
                "events": events,
                "seconds": round(published_s, 3),
                "achieved_events_per_s": round(events / published_s),
                "publish_calls": sum(calls),
                "mean_batch": round(events / max(1, sum(calls)), 1),
                "publish_call_ms": {
                    k: v for k, v in summarise(call_latencies, 1000).items() if k != "max"
                },
                "cpu_s": used,
                "broadcaster_cpu_us_per_event": round(
                    used["broadcaster"] / max(1, events) * 1e6, 1
                ),
                "delivered": answer["counts"],
            },
            started_t,
            published,
            call_latencies=call_latencies,
            call_single=call_single if alternate_s is not None else [],
            call_cpu=call_cpus,
        )

    @property
    def reconnects(self) -> dict[str, int]:
        """After the stack closed: the WebSocket paths on which the subscriber
        was dropped (a fan-out closes one too slow to keep up) and how many
        times; events sent while it was away count as lost."""
        return {k: n for k, n in self.report.get("reconnects", {}).items() if n}

    def complete(self, results: Sequence[PhaseResult]) -> None:
        """After the stack closed: merge the subscriber's report into each
        phase's figures (latency per adapter, lost, duplicates, end-to-end rate)."""
        report = self.report
        reconnects = self.reconnects
        if reconnects:
            progress(
                f"the subscriber's WebSocket paths were dropped and reconnected {reconnects}:"
                " events sent while it was away count as lost in their phase"
            )
        for result in results:
            figures = result.figures
            events = figures["events"]
            last = result.started_t
            lost_total = 0
            for adapter in ADAPTERS:
                seen = report.get(f"{result.name}/{adapter}")
                if adapter not in figures["delivered"]:
                    continue
                if seen is None:
                    seen = {"received": 0, "duplicates": 0, "last_t": result.started_t, "bins": []}
                lost = events - seen["received"]
                lost_total += lost
                figures[adapter] = {
                    "received": seen["received"],
                    "lost": lost,
                    "duplicates": seen["duplicates"],
                    "p50_ms": seen.get("p50_ms", float("nan")),
                    "p99_ms": seen.get("p99_ms", float("nan")),
                    "p999_ms": seen.get("p999_ms", float("nan")),
                    "max_ms": seen.get("max_ms", float("nan")),
                }
                last = max(last, seen["last_t"])
                result.received[adapter] = seen["bins"]
            figures["lost"] = lost_total
            if lost_total and reconnects:
                # Not the broadcaster's loss: the fan-out dropped the measuring
                # subscriber (too slow; the broadcaster logs it) and what it
                # sent meanwhile went to no one here.
                figures["subscriber_reconnects"] = reconnects
            figures["delivered_events_per_s"] = round(events / max(1e-9, last - result.started_t))
            figures["checksum_mismatches"] = sum(report.get("mismatches", {}).values())
            del figures["delivered"]
