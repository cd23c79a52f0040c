"""``failover``: SIGKILL the Realtime server, restart it, time the breaker.

Wraps :func:`loadtests.bench_failover.measure`: a producer publishes CRITICAL
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
import time
from typing import Any

from .._common import Bins, load_average, progress
from ..bench_failover import measure
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
    # bench_failover's clock is monotonic; bins and marks go on one axis.
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
