"""``dual-vs-single``: what writing to both paths costs, in one run.

The :mod:`sustained` stack (both real adapters, SQLite store on, subscribers
in another process). Routing is switched with the global override, the
runtime equivalent of ``DUAL_WRITE_GLOBAL_OVERRIDE``: ``all`` (dual-write:
WebSocket fan-out and Realtime) then ``websocket`` (the legacy single path).
For each mode, two phases:

* ``latency``: ``--latency-producers`` tasks paced together to ``--rate``
  events/s, one ``publish()`` per event: the producer-visible ``publish()``
  latency (validation, routing, group commit to SQLite, hand-off to the lanes);
* ``max``: ``--producers`` tasks as fast as possible in ``publish_many`` calls
  of ``--batch``: the highest achieved (publish side) and delivered
  (end-to-end) rates.

Figures per mode, and dual ÷ single ratios of publish p50/p99 and of both
maximum rates. Every phase waits until the subscribers got all its events.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._common import load_average, progress
from .._stack import PhaseResult, Stack
from ..plotting import plot_timeline
from .sustained import add_load_arguments

NAME = "dual-vs-single"
HELP = "dual-write vs WebSocket-only: publish() latency and max throughput, same run"
DEFAULTS: dict[str, Any] = {"seconds": 5.0, "rate": 2000.0, "realtime": "process"}
SMOKE: dict[str, Any] = {"seconds": 0.5, "rate": 500.0, "realtime": "embedded"}
PLOTS = True

MODES = (("dual", False), ("single", True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, help="length of each phase (default 5)")
    parser.add_argument(
        "--rate", type=float, help="paced rate of the publish() latency phases (default 2000)"
    )
    parser.add_argument(
        "--latency-producers",
        type=int,
        default=16,
        help="concurrent publish() callers in the latency phases: enough that the "
        "paced rate is reached (each caller waits for its own commit)",
    )
    add_load_arguments(parser)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    phases: list[PhaseResult] = []
    common: dict[str, Any] = {
        "category": args.category,
        "payload_bytes": args.payload_bytes,
        "seconds": args.seconds,
    }
    async with Stack(bin_s=args.bin, embedded_realtime=args.realtime == "embedded") as stack:
        for mode, single in MODES:
            stack.single_write(single)
            adapters = ("websocket",) if single else ("websocket", "realtime")
            progress(f"{mode}: publish() latency at {args.rate:g} events/s")
            phases.append(
                await stack.phase(
                    f"{mode}-latency",
                    rate=args.rate,
                    single_calls=True,
                    producers=args.latency_producers,
                    adapters=adapters,
                    **common,
                )
            )
            progress(f"{mode}: maximum throughput")
            phases.append(
                await stack.phase(
                    f"{mode}-max",
                    rate=None,
                    producers=args.producers,
                    max_batch=args.batch,
                    adapters=adapters,
                    **common,
                )
            )
    stack.complete(phases)
    by_name = {p.name: p.figures for p in phases}
    result: dict[str, Any] = {
        "scenario": NAME,
        "rate": args.rate,
        "latency_producers": args.latency_producers,
        "producers": args.producers,
        "max_batch": args.batch,
        "category": args.category,
    }
    for mode, _ in MODES:
        lat, top = by_name[f"{mode}-latency"], by_name[f"{mode}-max"]
        result[mode] = {
            "publish_p50_ms": lat["publish_call_ms"]["p50"],
            "publish_p99_ms": lat["publish_call_ms"]["p99"],
            "paced_events_per_s": lat["achieved_events_per_s"],
            "max_events_per_s": top["achieved_events_per_s"],
            "max_delivered_events_per_s": top["delivered_events_per_s"],
            "max_publish_many_p50_ms": top["publish_call_ms"]["p50"],
            "broadcaster_cpu_us_per_event": top["broadcaster_cpu_us_per_event"],
            "websocket_p99_ms_paced": lat["websocket"]["p99_ms"],
            "lost": lat["lost"] + top["lost"],
        }
        if "realtime" in lat:
            result[mode]["realtime_p99_ms_paced"] = lat["realtime"]["p99_ms"]
    dual, single = result["dual"], result["single"]
    result["ratio_dual_over_single"] = {
        "publish_p50": _ratio(dual["publish_p50_ms"], single["publish_p50_ms"]),
        "publish_p99": _ratio(dual["publish_p99_ms"], single["publish_p99_ms"]),
        "max_events_per_s": _ratio(dual["max_events_per_s"], single["max_events_per_s"]),
        "max_delivered_events_per_s": _ratio(
            dual["max_delivered_events_per_s"], single["max_delivered_events_per_s"]
        ),
    }
    result["lost"] = dual["lost"] + single["lost"]
    result["checksum_mismatches"] = phases[-1].figures["checksum_mismatches"]
    result["load_avg_1m"] = load
    if args.plot:
        # Phases follow each other and bins carry wall-clock times: one line
        # per role across the four phases, the markers say which is which.
        series: dict[str, list[list[float]]] = {"published (call latency)": []}
        for phase in phases:
            series["published (call latency)"] += phase.published.rows(origin=0.0)
            for adapter, bins in phase.received.items():
                series.setdefault(f"received {adapter}", []).extend(bins)
        plot_timeline(
            args.plot,
            "dual-vs-single: dual then single, each paced (publish()) then max (publish_many)",
            series,
            bin_s=args.bin,
            origin=phases[0].started_t,
            markers={p.name: p.started_t for p in phases},
        )
        progress(f"wrote {args.plot}")
    return result
