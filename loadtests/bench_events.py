"""Per-event cost of the producer's pure hot path: ``EventFactory.draft`` and
``seal`` (issue 6), in µs per event, for a CRC32 and a SHA256 category.

    python -m loadtests.bench_events
    python -m loadtests.bench_events --events 50000 --repeat 9

Prints ONE JSON line. Each figure is the best of ``--repeat`` runs of
``--events`` events (the machine is shared: the minimum is the least disturbed
run). As with :mod:`timeit`, the garbage collector is off while a run is
timed and results are dropped at once, as ``publish()`` drops its drafts, so
the figures are the calls' own cost rather than the heap's state. Nothing here
asserts a timing.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from broadcaster.events import Category, EventDraft, EventFactory, seal

__all__ = ["PAYLOAD", "main", "measure"]

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
    figures: dict[str, Any] = {"bench": "events", "events": events, "repeat": repeat}
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is reported")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.events, args.repeat)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
