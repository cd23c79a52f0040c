"""``sustained``: a target event rate held for a while, end to end.

One broadcaster process with both real adapters and the SQLite store on; the
local Realtime server and the subscribers in other processes (see
:mod:`loadtests._stack`). ``--producers`` tasks share a token bucket paced to
``--rate`` events/s (``max``: no pacing) and publish in ``publish_many`` calls
of up to ``--batch`` events; batches form by themselves at high rates, while a
producer waits for its previous call's group commit. A ``--warmup`` phase
(connections, caches, SQLite file growth) precedes the measured ``run`` phase.

Figures: achieved events/s (publish side) and delivered events/s (the
subscribers got every event of the phase on both paths), publish-call latency,
publish→receive latency p50/p99/p99.9/max per adapter from the ``t`` each
producer put in the payload just before its call, lost (published but never
received; must be 0), duplicates, checksum mismatches, CPU seconds of each
process and the broadcaster's CPU µs per event.
"""

from __future__ import annotations

import argparse
from typing import Any

from broadcaster.events import Category

from .._common import load_average, progress
from .._stack import PhaseResult, Stack
from ..plotting import plot_timeline

NAME = "sustained"
HELP = "hold --rate events/s (or max) through both real adapters, store on"
DEFAULTS: dict[str, Any] = {"rate": "5000", "seconds": 10.0, "warmup": 1.0, "realtime": "process"}
SMOKE: dict[str, Any] = {"rate": "2000", "seconds": 1.0, "warmup": 0.2, "realtime": "embedded"}
PLOTS = True


def rate_arg(value: str) -> str:
    if value == "max":
        return value
    try:
        if float(value) > 0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"rate must be a positive number or 'max', not {value!r}")


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the end-to-end scenarios."""
    parser.add_argument("--producers", type=int, default=4, help="producer tasks")
    parser.add_argument("--batch", type=int, default=100, help="most events per publish_many")
    parser.add_argument(
        "--category",
        default="SYSTEM",
        type=str.upper,
        choices=[c.value for c in Category if c.value not in ("DEBUG", "USER_ACTIVITY")],
        help="category published (SYSTEM: crc32, CRITICAL: sha256 by default)",
    )
    parser.add_argument("--payload-bytes", type=int, default=200, help="approximate payload size")
    parser.add_argument("--bin", type=float, default=0.25, help="plot bin width, seconds")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="SETTING=VALUE",
        type=setting_arg,
        action="append",
        default=[],
        help="a broadcaster setting for this run, by its field name (as in .env, lower"
        " case), e.g. --set realtime_batch_ms=0 --set store_url=memory://; repeatable",
    )
    add_realtime_argument(parser)


def setting_arg(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected SETTING=VALUE, not {value!r}")
    return name.strip().lower(), setting


def add_realtime_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--realtime",
        choices=("process", "embedded"),
        help="where the local Realtime server runs: its own process (default; as a "
        "remote service would) or inside the broadcaster's, as in 'broadcaster demo' "
        "(--smoke: one process start less)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=rate_arg, help="target events/s, or 'max' (default 5000)")
    parser.add_argument("--seconds", type=float, help="measured phase length (default 10)")
    parser.add_argument("--warmup", type=float, help="unmeasured warm-up seconds (default 1)")
    add_load_arguments(parser)


async def measure(
    args: argparse.Namespace, rate: str, seconds: float, warmup: float, label: str = NAME
) -> tuple[dict[str, Any], PhaseResult]:
    """Run the stack at ``rate`` and return (figures, run phase)."""
    target = None if rate == "max" else float(rate)
    load = load_average()
    phases: list[PhaseResult] = []
    overrides = dict(getattr(args, "overrides", None) or [])
    async with Stack(
        bin_s=args.bin, embedded_realtime=args.realtime == "embedded", settings=overrides
    ) as stack:
        checksum = stack.broadcaster.settings.checksum_algorithms()[Category(args.category)]
        kwargs: dict[str, Any] = {
            "rate": target,
            "producers": args.producers,
            "max_batch": args.batch,
            "category": args.category,
            "payload_bytes": args.payload_bytes,
        }
        if warmup > 0:
            progress(f"{label}: warm-up {warmup:g}s at {rate}")
            phases.append(await stack.phase("warmup", seconds=warmup, **kwargs))
        progress(f"{label}: measuring {seconds:g}s at {rate} events/s")
        phases.append(await stack.phase("run", seconds=seconds, **kwargs))
    stack.complete(phases)
    run = phases[-1]
    figures: dict[str, Any] = {
        "target_rate": rate,
        "producers": args.producers,
        "max_batch": args.batch,
        "category": args.category,
        "checksum": checksum,
        "payload_bytes": args.payload_bytes,
        **({"settings": overrides} if overrides else {}),
        **run.figures,
        "lost": sum(p.figures["lost"] for p in phases),
        "subscriber_reconnects": stack.reconnects,
        "load_avg_1m": load,
    }
    return figures, run


def plot(path: str, title: str, run: PhaseResult, bin_s: float) -> None:
    series = {"published (call latency)": run.published.rows(origin=0.0)}
    series.update({f"received {a}": bins for a, bins in run.received.items()})
    plot_timeline(path, title, series, bin_s=bin_s, origin=run.started_t)
    progress(f"wrote {path}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    figures, phase = await measure(args, args.rate, args.seconds, args.warmup)
    if args.plot:
        plot(
            args.plot,
            f"sustained --rate {args.rate}: {figures['achieved_events_per_s']} events/s",
            phase,
            args.bin,
        )
    return {"scenario": NAME, **figures}
