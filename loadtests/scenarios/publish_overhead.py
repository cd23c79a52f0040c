"""``publish-overhead``: what of dual-write's ``publish()`` cost is the
broadcaster's, and what is the second transport's.

``dual-vs-single``'s interleaved latency phase (routing switched between
dual- and single-write every ``ALTERNATE_S``, ``--rate`` events/s from
``--latency-producers`` callers, one ``publish()`` per event), run once per
second path, each in a fresh :class:`~loadtests._stack.Stack`:

* ``realtime``: the real Realtime adapter (the official client, the local
  Realtime server in its own process): what ``dual-vs-single`` measures;
* ``websocket``: a second WebSocket fan-out server in its place, its
  subscriber in the same subscriber process: the plainest second network
  path (one frame per batch, one transport write, no reply to wait for);
* ``none``: an adapter that acknowledges and drops every batch: no
  transport, only the broadcaster's own part (a second lane, its
  acknowledgements in the store).

Per path: calls, ``publish()`` p50/p99 and the loop thread's CPU time
during a call (p10/p50: a call's own work, as against waiting) per mode, the
dual ÷ single ratios,
the broadcaster's CPU per event, and how many events went to the second path
and how many of them its subscriber received (none with ``none``; ``lost``
counts the WebSocket path, the one every phase waits for). ``--rounds`` repeats the set, in
mirrored order (a drift over the run weighs on every path alike), and pools
each path's calls.

``--parts`` adds a probe that splits each call's CPU time into the store
commit (``Store.append_now``, the call's own commit) and the hand-off of the
committed record (``Handoff.dispatch``: it queues the record, and
the lanes take it a loop turn later, outside the call), per mode
(``parts``: p10/p50 of each, and ``other``: the call's CPU less the two).
The probe wraps those two methods on the running instances for the phase
and costs each call ~1-2 µs in both modes; off by default, so the ratios of
a plain run carry no probe.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from broadcaster import Broadcaster
from broadcaster.events import EventDraft, EventRecord

from .._common import load_average, percentile, progress
from .._stack import SECOND_PATHS, PhaseResult, Stack
from ..plotting import plot_timeline
from .dual_vs_single import ALTERNATE_S, _ratio, interleaved_figures

NAME = "publish-overhead"
HELP = "dual/single publish() ratio with the real Realtime path, a plain WebSocket one, none"
DEFAULTS: dict[str, Any] = {"seconds": 10.0, "rate": 2000.0, "realtime": "process", "rounds": 1}
SMOKE: dict[str, Any] = {"seconds": 0.5, "rate": 500.0, "realtime": "embedded", "rounds": 1}
PLOTS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, help="length of each path's phase (default 10)")
    parser.add_argument("--rate", type=float, help="paced publish() rate (default 2000)")
    parser.add_argument(
        "--latency-producers",
        type=int,
        default=16,
        help="concurrent publish() callers (as dual-vs-single)",
    )
    parser.add_argument("--rounds", type=_positive_int, help="times each path runs (default 1)")
    parser.add_argument(
        "--paths",
        type=_paths,
        default=SECOND_PATHS,
        help=f"comma-separated second paths, of {','.join(SECOND_PATHS)} (default all)",
    )
    parser.add_argument(
        "--realtime",
        choices=("process", "embedded"),
        help="where the local Realtime server runs (--smoke: embedded)",
    )
    parser.add_argument("--category", default="SYSTEM", type=str.upper, help="category published")
    parser.add_argument("--payload-bytes", type=int, default=200, help="approximate payload size")
    parser.add_argument("--bin", type=float, default=0.25, help="plot bin width, seconds")
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also split each call's CPU into commit, hand-off to the lanes and the rest",
    )


def _paths(value: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in paths if p not in SECOND_PATHS]
    if not paths or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SECOND_PATHS)}, not {value!r}"
        )
    return paths


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {value!r}")
    return number


_Items = Sequence[tuple[EventDraft, tuple[str, ...]]]


class CallParts:
    """The probe of ``--parts``: the loop thread's CPU time of every one-event
    commit in ``publish()``'s own step and of every one-record hand-off
    (queued for the lanes), keyed by mode (dual: the event was routed to two adapters).
    ``with probe.timing(b):`` wraps ``b.store.append_now`` and the dispatch of
    the broadcaster's :class:`~broadcaster.handoff.Handoff` on the instances
    and puts the methods back on exit; timings of several such phases (one
    path's rounds) pool in ``cpu``."""

    def __init__(self) -> None:
        self.cpu: dict[tuple[str, str], list[float]] = {
            (mode, part): [] for mode in ("dual", "single") for part in ("commit", "handoff")
        }

    @contextlib.contextmanager
    def timing(self, b: Broadcaster) -> Iterator[None]:
        store, clock = b.store, time.thread_time
        # The probe's one reach inside the broadcaster: its hand-off queue.
        handoff = b._handoff
        append_now: Callable[[_Items], list[EventRecord] | None] = store.append_now
        dispatch: Callable[[list[EventRecord], _Items], None] = handoff.dispatch
        commits, dual_commits = self.cpu["single", "commit"], self.cpu["dual", "commit"]
        handoffs, dual_handoffs = self.cpu["single", "handoff"], self.cpu["dual", "handoff"]

        def timed_append_now(items: _Items) -> list[EventRecord] | None:
            c0 = clock()
            records = append_now(items)
            if records is not None and len(items) == 1:
                (dual_commits if len(items[0][1]) > 1 else commits).append(clock() - c0)
            return records

        def timed_dispatch(records: list[EventRecord], items: _Items) -> None:
            c0 = clock()
            dispatch(records, items)
            if len(items) == 1:
                (dual_handoffs if len(items[0][1]) > 1 else handoffs).append(clock() - c0)

        store.append_now = timed_append_now  # type: ignore[method-assign]
        handoff.dispatch = timed_dispatch  # type: ignore[method-assign]
        try:
            yield
        finally:
            del store.append_now  # type: ignore[attr-defined]
            del handoff.dispatch  # type: ignore[attr-defined]

    def figures(self, call_cpu_p50_ms: dict[str, float]) -> dict[str, Any]:
        """Per mode, p10/p50 ms of each part; ``other_p50_ms``: the calls'
        CPU p50 (``call_cpu_p50_ms[mode]``) less the parts' p50s (a
        difference of medians: drafting, routing, the receipt, the probe)."""
        result: dict[str, Any] = {}
        for mode in ("dual", "single"):
            parts: dict[str, Any] = {}
            for part in ("commit", "handoff"):
                values = self.cpu[mode, part]
                parts[f"{part}_calls"] = len(values)
                parts[f"{part}_cpu_p10_ms"] = round(percentile(values, 10) * 1000, 4)
                parts[f"{part}_cpu_p50_ms"] = round(percentile(values, 50) * 1000, 4)
            parts["other_p50_ms"] = round(
                call_cpu_p50_ms[mode] - parts["commit_cpu_p50_ms"] - parts["handoff_cpu_p50_ms"], 4
            )
            result[mode] = parts
        return result


def _figures(phases: list[PhaseResult]) -> dict[str, Any]:
    """One path's figures from its interleaved phases (one per round)."""
    figures = interleaved_figures(phases)
    del figures["alternate_s"]  # the result has it once
    dual, single = figures["dual"], figures["single"]
    figures["ratio_p50"] = _ratio(dual["publish_p50_ms"], single["publish_p50_ms"])
    figures["ratio_p99"] = _ratio(dual["publish_p99_ms"], single["publish_p99_ms"])
    figures["ratio_cpu_p50"] = _ratio(dual["publish_cpu_p50_ms"], single["publish_cpu_p50_ms"])
    events = sum(p.figures["events"] for p in phases)
    figures["broadcaster_cpu_us_per_event"] = round(
        sum(p.figures["cpu_s"]["broadcaster"] for p in phases) / max(1, events) * 1e6, 1
    )
    figures["second_path_events"] = dual["calls"]
    figures["second_path_received"] = sum(p.figures["second_path_received"] for p in phases)
    figures["lost"] = sum(p.figures["lost"] for p in phases)
    figures["checksum_mismatches"] = max(p.figures["checksum_mismatches"] for p in phases)
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    phases: dict[str, list[PhaseResult]] = {path: [] for path in args.paths}
    parts = {path: CallParts() for path in args.paths} if args.parts else {}
    for round_ in range(args.rounds):
        order = args.paths if round_ % 2 == 0 else tuple(reversed(args.paths))
        for path in order:
            progress(
                f"second path {path} (round {round_ + 1}/{args.rounds}): publish() latency"
                f" at {args.rate:g} events/s, dual and single switching every {ALTERNATE_S:g}s"
            )
            stack = Stack(
                bin_s=args.bin,
                embedded_realtime=args.realtime == "embedded",
                second_path=path,
            )
            async with stack:
                probe = parts[path].timing(stack.broadcaster) if parts else contextlib.nullcontext()
                with probe:
                    phase = await stack.phase(
                        f"{path}-{round_ + 1}",
                        rate=args.rate,
                        single_calls=True,
                        producers=args.latency_producers,
                        # Every event reaches the WebSocket path; the second only
                        # the dual ones (and with "none" no subscriber sees them).
                        adapters=("websocket",),
                        alternate_s=ALTERNATE_S,
                        seconds=args.seconds,
                        category=args.category,
                        payload_bytes=args.payload_bytes,
                        call_cpu=True,
                    )
                # The dual-write calls' events also went the second way: wait
                # for them there too (none with "none"), to show the swap
                # carried traffic.
                sent = sum(1 for single in phase.call_single if not single)
                received = 0
                if path != "none":
                    answer = await stack.wait_received(phase.name, sent, ("realtime",))
                    received = answer["counts"]["realtime"]
            stack.complete([phase])
            phase.figures["second_path_received"] = received
            phases[path].append(phase)
    per_path = {path: _figures(results) for path, results in phases.items()}
    for path, calls in parts.items():
        figures = per_path[path]
        per_path[path]["parts"] = calls.figures(
            {mode: figures[mode]["publish_cpu_p50_ms"] for mode in ("dual", "single")}
        )
    if args.plot:
        _plot(args.plot, phases, args.bin)
    return {
        "scenario": NAME,
        "rate": args.rate,
        "latency_producers": args.latency_producers,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "alternate_s": ALTERNATE_S,
        "paths": per_path,
        "lost": sum(f["lost"] for f in per_path.values()),
        "checksum_mismatches": sum(f["checksum_mismatches"] for f in per_path.values()),
        "load_avg_1m": load,
    }


def _plot(path: str, phases: dict[str, list[PhaseResult]], bin_s: float) -> None:
    """One timeline across every path's phases (each starts at its marker):
    the producers' call latency per path and what the WebSocket subscriber got."""
    ordered = sorted((p for results in phases.values() for p in results), key=lambda p: p.started_t)
    series: dict[str, list[list[float]]] = {}
    for second, results in phases.items():
        for phase in results:
            series.setdefault(f"published, second path {second} (call latency)", []).extend(
                phase.published.rows(origin=0.0)
            )
            for adapter, bins in phase.received.items():
                series.setdefault(f"received {adapter}", []).extend(bins)
    plot_timeline(
        path,
        "publish-overhead: dual and single interleaved, per second path",
        series,
        bin_s=bin_s,
        origin=ordered[0].started_t,
        markers={p.name: p.started_t for p in ordered},
    )
    progress(f"wrote {path}")
