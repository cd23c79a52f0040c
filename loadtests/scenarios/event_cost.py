"""``event-cost``: per-event cost of the producer's pure hot path,
``EventFactory.draft`` and ``seal`` (issue 6), in µs per event, for a CRC32
and a SHA256 category.

Each figure is the best of ``--repeat`` runs of ``--events`` events (the
machine is shared: the minimum is the least disturbed run). As with
:mod:`timeit`, the garbage collector is off while a run is timed and results
are dropped at once, as ``publish()`` drops its drafts, so the figures are
the calls' own cost rather than the heap's state. Nothing here asserts a
timing.
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
from collections.abc import Callable
from typing import Any

from broadcaster.events import Category, EventDraft, EventFactory, seal

from .._common import load_average, progress

NAME = "event-cost"
HELP = "µs per event of EventFactory.draft and seal, per checksum algorithm"
DEFAULTS: dict[str, Any] = {"events": 20_000, "repeat": 7}
SMOKE: dict[str, Any] = {"events": 200, "repeat": 2}
PLOTS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="events per run (default 20 000)")
    parser.add_argument("--repeat", type=int, help="runs; the best is reported (default 7)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    progress(f"event-cost: best of {args.repeat} runs of {args.events} events")
    return {**measure(args.events, args.repeat), "load_avg_1m": load}


#: A realistic small metrics/activity payload: ints, strings, a float, a list
#: and a nested object.
PAYLOAD: dict[str, Any] = {
    "i": 1,
    "host": "h1",
    "v": 0.5,
    "tags": ["a", "b"],
    "nested": {"k": "v"},
}

#: One category per checksum algorithm (SPEC 2 defaults).
CATEGORIES = {"crc32": Category.PERFORMANCE, "sha256": Category.CRITICAL}


def _best_us(run: Callable[[], object], events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return round(best / events * 1e6, 3)


def _draft_all(factory: EventFactory, category: Category, events: int) -> None:
    draft = factory.draft
    for _ in range(events):
        draft(category, "metric.sample", PAYLOAD, key="user-1")


def _seal_all(drafts: list[EventDraft]) -> None:
    for seq, draft in enumerate(drafts, start=1):
        seal(draft, seq)


def measure(events: int, repeat: int) -> dict[str, Any]:
    """µs/event of ``draft`` and ``seal`` per algorithm (best of ``repeat``)."""
    figures: dict[str, Any] = {"scenario": NAME, "events": events, "repeat": repeat}
    for algorithm, category in CATEGORIES.items():
        factory = EventFactory()
        run_draft = functools.partial(_draft_all, factory, category, events)
        figures[f"draft_us_{algorithm}"] = _best_us(run_draft, events, repeat)
        drafts = [
            factory.draft(category, "metric.sample", PAYLOAD, key="user-1") for _ in range(events)
        ]
        assert drafts[0].checksum_algorithm == algorithm
        figures[f"seal_us_{algorithm}"] = _best_us(
            functools.partial(_seal_all, drafts), events, repeat
        )
        figures[f"total_us_{algorithm}"] = round(
            figures[f"draft_us_{algorithm}"] + figures[f"seal_us_{algorithm}"], 3
        )
    return figures
