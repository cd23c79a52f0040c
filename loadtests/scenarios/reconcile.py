"""``reconcile``: reconciliation of ``--events`` stored events (SQLite).

Wraps :func:`loadtests.bench_store.reconcile_figures`: the store is filled with
``--events`` events routed to two adapters, each acknowledged and received once
(the fill is timed too), then a fresh process runs one reconciliation over all
of it, so its peak RSS (``VmHWM``) is the reconciler's own and not the fill's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from .._common import load_average, progress
from ..bench_store import reconcile_figures

NAME = "reconcile"
HELP = "reconcile N stored events (SQLite) in a fresh process: seconds and peak RSS"
DEFAULTS: dict[str, Any] = {"events": 1_000_000}
SMOKE: dict[str, Any] = {"events": 2_000}
PLOTS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="stored events (default 1 000 000)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="loadtests-reconcile-") as tmp:
        progress(f"filling a SQLite store with {args.events} events, then reconciling")
        fill, recon = await reconcile_figures(args.events, Path(tmp))
    return {
        "scenario": NAME,
        "events": args.events,
        "fill_seconds": fill["seconds"],
        "pairs": recon["pairs"],
        "matched": recon["matched"],
        "seconds": recon["seconds"],
        "pairs_per_s": recon["pairs_per_s"],
        "peak_rss_mib": recon["peak_rss_mib"],
        "load_avg_1m": load,
    }
