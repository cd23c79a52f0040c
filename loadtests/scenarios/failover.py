"""``failover``: SIGKILL the Realtime server, restart it, time the breaker.

:func:`measure`: a producer publishes CRITICAL
events (routed to both paths) at ``--rate`` throughout; the Realtime server
process is SIGKILLed after ``--seconds`` and restarted ``--outage`` seconds
after the breaker opened. Figures: publish() latency per phase (steady,
failover, backfill), SIGKILL → breaker open, restart → half-open / closed /
full share / every pending event backfilled (``restore_s``; null past
``--restore-timeout``), and the counts. The plot shows
the publish rate and publish() latency over time with those moments marked.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broadcaster.adapters.realtime import RealtimeAdapter
from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.breaker_policy import BreakerConfig
from broadcaster.core import Broadcaster
from broadcaster.settings import load_settings
from broadcaster.spawn import RealtimeServerProcess

from .._common import (
    REALTIME_KEY,
    Bins,
    TokenBucket,
    load_average,
    percentile,
    progress,
    python_env,
)
from ..plotting import plot_timeline

NAME = "failover"
HELP = "kill and restart the Realtime server: failover, restore and backfill times"
DEFAULTS: dict[str, Any] = {
    "seconds": 3.0,
    "outage": 3.0,
    "rate": 2000.0,
    "recovery": 1.0,
    "ramp_step": 1.0,
    "restore_timeout": 120.0,
}
SMOKE: dict[str, Any] = {
    "seconds": 0.5,
    "outage": 0.3,
    "rate": 500.0,
    "recovery": 0.3,
    "ramp_step": 0.1,
    "restore_timeout": 5.0,
}
PLOTS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, help="steady phase length (default 3)")
    parser.add_argument("--outage", type=float, help="seconds the server stays down (default 3)")
    parser.add_argument("--rate", type=float, help="events/s published (default 2000)")
    parser.add_argument("--recovery", type=float, help="breaker recovery_time_s (default 1)")
    parser.add_argument("--ramp-step", type=float, help="breaker ramp_step_s (default 1)")
    parser.add_argument("--backfill-rate", type=float, default=5000.0, help="events/s")
    parser.add_argument("--producers", type=int, default=8, help="concurrent publish() callers")
    parser.add_argument(
        "--restore-timeout",
        type=float,
        help="seconds to wait for every pending event to be delivered (default 120); "
        "past it restore_s is null and pending_at_end says how many are left",
    )
    parser.add_argument("--bin", type=float, default=0.25, help="plot bin width, seconds")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    progress(
        f"failover: {args.rate:g} events/s, kill after {args.seconds:g}s, outage {args.outage:g}s"
    )
    # measure's clock is monotonic; bins and marks go on one axis.
    wall_offset = time.time() - time.monotonic()
    result = await measure(args)
    summary = {k: v for k, v in result.summary.items() if k != "summary"}
    figures: dict[str, Any] = {"scenario": NAME, **summary}
    # Achieved rate per phase: its events over its length on the producer's clock.
    first = min((at for at, _ in result.samples), default=result.marks["SIGKILL"])
    bounds = {
        "steady": (first, result.marks["SIGKILL"]),
        "failover": (result.marks["SIGKILL"], result.marks["restart"]),
        "backfill": (result.marks["restart"], result.marks.get("restored", result.samples[-1][0])),
    }
    for phase in result.phases:
        name = phase["phase"]
        figures[name] = {k: v for k, v in phase.items() if k != "phase"}
        start, end = bounds[name]
        figures[name]["events_per_s"] = round(phase["events"] / max(1e-9, end - start))
    figures["load_avg_1m"] = load
    if args.plot:
        bins = Bins(args.bin)
        for at, seconds in result.samples:
            bins.add(at + wall_offset, seconds * 1000)
        marks = {name: at + wall_offset for name, at in result.marks.items()}
        origin = min([*(at for at, _ in result.samples), *result.marks.values()]) + wall_offset
        plot_timeline(
            args.plot,
            f"failover at {args.rate:g} events/s (CRITICAL, both paths)",
            {"publish()": bins.rows(origin=0.0)},
            bin_s=args.bin,
            origin=origin,
            markers=marks,
            latency_label="publish() latency (ms)",
        )
        progress(f"wrote {args.plot}")
    return figures


async def _until(predicate: Any, within_s: float) -> float:
    # The breaker exposes no awaitable for its state: poll it finely.
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
    return time.monotonic()


class _Producer:
    """``producers`` tasks calling ``publish()`` one event at a time, paced
    together to ``rate`` events/s by a shared token bucket (one sequential
    caller could not reach the rate: each call waits for its commit)."""

    def __init__(self, b: Broadcaster, rate: float, producers: int = 8) -> None:
        self.b = b
        self.rate = rate
        self.producers = producers
        self.phase = "steady"
        self.latencies: dict[str, list[float]] = {}
        #: (monotonic time the call returned, seconds it took), for plots.
        self.samples: list[tuple[float, float]] = []
        self.task: asyncio.Task[None] | None = None
        self._next = 0

    async def _one(self, bucket: TokenBucket) -> None:
        while True:
            await bucket.take(1, float("inf"))
            i = self._next
            self._next += 1
            started = time.monotonic()
            await self.b.publish("CRITICAL", "bench.failover", {"i": i}, key=f"k{i}")
            ended = time.monotonic()
            self.latencies.setdefault(self.phase, []).append(ended - started)
            self.samples.append((ended, ended - started))

    async def run(self) -> None:
        bucket = TokenBucket(self.rate, burst=self.producers)
        await asyncio.gather(*(self._one(bucket) for _ in range(self.producers)))


def _phase_line(name: str, latencies: list[float]) -> dict[str, Any]:
    return {
        "phase": name,
        "events": len(latencies),
        "publish_p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "publish_p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "publish_max_ms": round(max(latencies, default=float("nan")) * 1e3, 3),
    }


@dataclass
class FailoverRun:
    """One run's figures: a line per phase, the summary, and for plots the
    producer's (monotonic time, publish seconds) samples and event marks."""

    phases: list[dict[str, Any]]
    summary: dict[str, Any]
    samples: list[tuple[float, float]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


async def measure(args: argparse.Namespace) -> FailoverRun:
    server = RealtimeServerProcess(key=REALTIME_KEY, env=python_env(), start_timeout_s=20)
    await server.start()
    try:
        url = server.url
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                env_file=None,
                websocket_port=0,
                supabase_url=url,
                supabase_key=REALTIME_KEY,
                store_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                # No background reconcile: its pass over the store stalls the
                # publish path, which is not failover.
                reconcile_interval_s=0,
            )

            def config(name: str) -> BreakerConfig:
                return dataclasses.replace(
                    BreakerConfig.from_settings(settings, name),
                    recovery_time_s=args.recovery,
                    ramp_step_s=args.ramp_step,
                )

            ws = WebSocketAdapter.from_settings(settings)
            rt = RealtimeAdapter(url, REALTIME_KEY, reconnect_max_s=0.2, poll_s=0.1)
            b = Broadcaster(
                settings, adapters=[ws, rt], breaker_config=config, backfill_rate=args.backfill_rate
            )
            async with b:
                breaker, lane = b.breakers["realtime"], b.lane("realtime")
                producer = _Producer(b, args.rate, getattr(args, "producers", 8))
                producer.task = asyncio.get_running_loop().create_task(producer.run())
                try:
                    await asyncio.sleep(args.seconds)  # steady state runs for a fixed time

                    producer.phase = "failover"
                    killed = time.monotonic()
                    await server.kill()
                    opened = await _until(lambda: breaker.state == "open", 30)
                    await asyncio.sleep(args.outage)  # the outage lasts a fixed time

                    producer.phase = "backfill"
                    restarted = time.monotonic()
                    await server.start()
                    half_open = await _until(lambda: breaker.state != "open", 60)
                    closed = await _until(lambda: breaker.state == "closed", 60)
                    full = await _until(
                        lambda: breaker.state == "closed" and breaker.share == 100, 120
                    )
                    # Restored: closed, and every event recorded PENDING during the
                    # outage and the ramp is delivered. (Not ``lane.settled``: with
                    # producers publishing all the time, something is always in flight.)
                    restored: float | None
                    try:
                        restored = await _until(
                            lambda: lane.pending == 0 and breaker.state == "closed",
                            getattr(args, "restore_timeout", 300.0),
                        )
                    except TimeoutError:
                        restored = None  # reported as null, with what is still pending
                    pending_left = lane.pending
                finally:
                    producer.task.cancel()
                    await asyncio.gather(producer.task, return_exceptions=True)
                await b.flush(timeout=60)
                phases = [
                    _phase_line(name, producer.latencies.get(name, []))
                    for name in ("steady", "failover", "backfill")
                ]
                summary = {
                    "summary": True,
                    "rate": args.rate,
                    "failover_s": round(opened - killed, 3),
                    "half_open_s": round(half_open - restarted, 3),
                    "closed_s": round(closed - restarted, 3),
                    "full_share_s": round(full - restarted, 3),
                    "restore_s": None if restored is None else round(restored - restarted, 3),
                    "pending_at_end": pending_left,
                    "backfilled": b.stats.backfilled["realtime"],
                    "parked": b.stats.parked["realtime"],
                    "transitions": breaker.transitions,
                    "recovery_time_s": args.recovery,
                    "ramp_step_s": args.ramp_step,
                    "backfill_rate": args.backfill_rate,
                }
                marks = {
                    "SIGKILL": killed,
                    "open": opened,
                    "restart": restarted,
                    "half-open": half_open,
                    "closed": closed,
                    "full share": full,
                    **({"restored": restored} if restored is not None else {}),
                }
        return FailoverRun(phases, summary, producer.samples, marks)
    finally:
        await server.kill()
