"""``per-event``: ``await publish()`` once per event, as a request handler
publishes, beside the raw loop and the peer a user would try first, in one run.

Each round measures, one after the other:

* the raw two-connection loop (:func:`raw_limit.raw_loop`): pre-encoded
  frames of the same events, as fast as ``send`` lets them go, on two
  connections — the ceiling of this machine's transport;
* the broadcaster, once per ``--loops`` entry (each in a process of its own,
  ``python -m loadtests per-event --part broadcaster --loop L``): the
  :mod:`sustained` stack (both real adapters, SQLite store, subscribers
  verifying in another process), with 1 and 16 producer tasks calling
  ``publish()`` per event as fast as they can, then 16 tasks calling
  ``publish_many`` with batches of 100;
* the peer (``--peer``): encode/broadcaster with its memory backend fanning
  out to two WebSocket connections (:mod:`loadtests.encode_peer`, in an
  environment of its own), with 1 and 16 producer tasks.

Every rate is delivered events per second: events both paths delivered ÷
the time from the first to the last one received. Ratios pair figures of the
same round (the machine's speed drifts between rounds); each figure and ratio
is reported as min / median / max over ``--rounds`` rounds, so a figure quoted
is one a user will see, not the best of a lucky run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._common import load_average, progress, running_loop_name, spawn
from .._peer_env import peer_env
from .._stack import PhaseResult, Stack, end_process
from . import raw_limit

NAME = "per-event"
HELP = "publish() per event (1 and 16 producers, both loops) vs the raw loop and a peer"
DEFAULTS: dict[str, Any] = {
    "seconds": 5.0,
    "rounds": 3,
    "loops": "asyncio,uvloop",
    "producer_counts": "1,16",
    "realtime": "process",
}
SMOKE: dict[str, Any] = {
    "seconds": 0.3,
    "rounds": 1,
    "loops": "asyncio",
    "producer_counts": "1",
    "realtime": "embedded",
}
PLOTS = False
#: The ``publish_many`` row: producer tasks and events per call.
BATCH_PRODUCERS = 16
BATCH = 100
PEER_SCRIPT = Path(__file__).resolve().parents[1] / "encode_peer.py"


def _counts(value: str) -> str:
    try:
        if value and all(int(part) > 0 for part in value.split(",")):
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected positive integers like 1,16, not {value!r}")


def _rounds(value: str) -> int:
    try:
        if int(value) > 0:
            return int(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a positive number of rounds, not {value!r}")


def _loops(value: str) -> str:
    if value and all(part in ("asyncio", "uvloop") for part in value.split(",")):
        return value
    raise argparse.ArgumentTypeError(
        f"expected asyncio and/or uvloop like asyncio,uvloop, not {value!r}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, help="length of each measurement (default 5)")
    parser.add_argument("--rounds", type=_rounds, help="rounds for the spread (default 3)")
    parser.add_argument(
        "--loops", type=_loops, help="event loops of the broadcaster (default asyncio,uvloop)"
    )
    parser.add_argument(
        "--producers",
        dest="producer_counts",
        type=_counts,
        help="producer task counts calling publish() (default 1,16)",
    )
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure encode/broadcaster (builds its environment the first time)",
    )
    parser.add_argument("--payload-bytes", type=int, default=200, help="approximate payload size")
    parser.add_argument(
        "--part",
        choices=("all", "broadcaster"),
        default="all",
        help=argparse.SUPPRESS,  # a round's broadcaster measurement, in its own process
    )
    parser.add_argument(
        "--realtime",
        choices=("process", "embedded"),
        help="where the local Realtime server runs (default: its own process)",
    )


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of ``values`` (rounded as the figures are)."""
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


async def _broadcaster(args: argparse.Namespace) -> dict[str, Any]:
    """This process's measurements: per-event with each producer count, then
    ``publish_many``; every event reaches both paths."""
    phases: list[PhaseResult] = []
    async with Stack(embedded_realtime=args.realtime == "embedded") as stack:
        kinds = [(f"publish_x{n}", int(n), 1, True) for n in args.producer_counts.split(",")]
        kinds.append((f"publish_many{BATCH}_x{BATCH_PRODUCERS}", BATCH_PRODUCERS, BATCH, False))
        for name, producers, batch, single in kinds:
            progress(f"per-event ({running_loop_name()}): {name} for {args.seconds:g}s")
            phases.append(
                await stack.phase(
                    name,
                    seconds=args.seconds,
                    rate=None,
                    producers=producers,
                    max_batch=batch,
                    single_calls=single,
                    payload_bytes=args.payload_bytes,
                )
            )
    # The subscribers' report (delivered rates, losses) comes once they stopped.
    stack.complete(phases)
    rows = {
        phase.name: {
            "events_per_s": phase.figures["delivered_events_per_s"],
            "cpu_us_per_event": phase.figures["broadcaster_cpu_us_per_event"],
            "lost": phase.figures["lost"],
        }
        for phase in phases
    }
    return {"loop": running_loop_name(), "rows": rows}


async def _child(loop: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        "-m", "loadtests", NAME, "--part", "broadcaster", "--loop", loop,
        "--seconds", str(args.seconds), "--producers", args.producer_counts,
        "--payload-bytes", str(args.payload_bytes), "--realtime", args.realtime,
    ]  # fmt: skip
    proc = spawn(*argv)
    out, _ = await asyncio.to_thread(proc.communicate)
    if proc.returncode != 0:
        raise RuntimeError(f"per-event on {loop} exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _start_peer(
    env: dict[str, str], producers: int, args: argparse.Namespace
) -> subprocess.Popen[str]:
    # -P: no script directory on sys.path; PYTHONPATH (env) puts encode's
    # ``broadcaster`` ahead of ours.
    return subprocess.Popen(
        [sys.executable, "-P", str(PEER_SCRIPT), "--producers", str(producers),
         "--seconds", str(args.seconds), "--payload-bytes", str(args.payload_bytes)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


async def _peer(env: dict[str, str], producers: int, args: argparse.Namespace) -> dict[str, Any]:
    peer = _start_peer(env, producers, args)
    counter = None
    try:
        assert peer.stdout is not None
        line = await asyncio.to_thread(peer.stdout.readline)
        if not line.startswith("port "):
            raise RuntimeError(f"the peer did not start: {line!r}")
        counter = spawn("-m", "loadtests.raw_peer", "--url", f"ws://127.0.0.1:{line.split()[1]}")
        assert counter.stdout is not None
        counted = json.loads((await asyncio.to_thread(counter.communicate))[0].splitlines()[-1])
        published = json.loads(await asyncio.to_thread(peer.stdout.readline))
    finally:
        for proc in (peer, counter):
            if proc is not None:
                end_process(proc)
    a, b = counted["a"], counted["b"]
    delivered = min(a["count"], b["count"])
    elapsed = max(a["last_t"], b["last_t"]) - min(a["first_t"], b["first_t"])
    return {
        "events_per_s": round(delivered / max(1e-9, elapsed)),
        "lost": published["published"] - delivered,
    }


def _collect(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Spread of every figure over the rounds, and per-round ratios."""
    first = rounds[0]
    raw = [r["raw"] for r in rounds]
    out: dict[str, Any] = {"raw_events_per_s": spread(raw), "broadcaster": {}, "ratios": {}}
    for loop, rows in first["broadcaster"].items():
        out["broadcaster"][loop] = {}
        for name in rows:
            per = [r["broadcaster"][loop][name] for r in rounds]
            out["broadcaster"][loop][name] = {
                "events_per_s": spread([p["events_per_s"] for p in per]),
                "cpu_us_per_event": spread([p["cpu_us_per_event"] for p in per]),
                "lost": sum(p["lost"] for p in per),
            }
            out["ratios"][f"{loop}_{name}_over_raw"] = spread(
                [p["events_per_s"] / r["raw"] for p, r in zip(per, rounds, strict=True)]
            )
            for peer_name in first.get("peer", {}):
                if peer_name.split("_x")[-1] == name.split("_x")[-1] and "many" not in name:
                    out["ratios"][f"{loop}_{name}_over_peer"] = spread(
                        [
                            p["events_per_s"] / r["peer"][peer_name]["events_per_s"]
                            for p, r in zip(per, rounds, strict=True)
                        ]
                    )
    if "peer" in first:
        out["peer"] = {
            name: {
                "events_per_s": spread([r["peer"][name]["events_per_s"] for r in rounds]),
                "lost": sum(r["peer"][name]["lost"] for r in rounds),
            }
            for name in first["peer"]
        }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.part == "broadcaster":
        return {"scenario": NAME, **await _broadcaster(args)}
    load = load_average()
    env = peer_env() if args.peer else None
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        progress(f"per-event: round {i + 1}/{args.rounds}")
        raw = await raw_limit.raw_loop(args.seconds, args.payload_bytes, 0.25)
        measured: dict[str, Any] = {"raw": raw["events_per_s"], "broadcaster": {}}
        for loop in args.loops.split(","):
            child = await _child(loop, args)
            measured["broadcaster"][child["loop"]] = child["rows"]
        if env is not None:
            measured["peer"] = {
                f"publish_x{n}": await _peer(env, int(n), args)
                for n in args.producer_counts.split(",")
            }
        rounds.append(measured)
    lost = sum(
        row["lost"] for r in rounds for rows in r["broadcaster"].values() for row in rows.values()
    )
    return {
        "scenario": NAME,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "payload_bytes": args.payload_bytes,
        **_collect(rounds),
        "lost": lost,
        "load_avg_1m": load,
    }
