"""``reconcile``: reconciliation of ``--events`` stored events (SQLite).

The store is filled with ``--events`` events routed to two adapters, each
acknowledged and received once (the fill is timed too), then a fresh process
(:mod:`loadtests.reconcile_child`) runs one reconciliation over all of it, so
its peak RSS (``VmHWM``) is the reconciler's own and not the fill's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from broadcaster.store import store_from_url

from .._common import load_average, progress, python_env
from .._stores import fill as fill_store

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


async def reconcile_figures(events: int, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fill a SQLite store in ``tmp`` with ``events`` events (2 adapters, acked,
    one receipt each), then reconcile it in a fresh process: (fill, reconcile)."""
    recon_url = f"sqlite:///{tmp / 'reconcile.db'}"
    async with store_from_url(recon_url) as store:
        t0 = time.perf_counter()
        await fill_store(store, events, 1000, receipts=True)
        fill_s = time.perf_counter() - t0
    fill = {"bench": "reconcile_fill", "events": events, "seconds": round(fill_s, 1)}
    out = await asyncio.to_thread(
        lambda: (
            subprocess.run(
                [sys.executable, "-m", "loadtests.reconcile_child", recon_url],
                check=True,
                capture_output=True,
                text=True,
                env=python_env(),
            ).stdout
        )
    )
    recon: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return fill, recon
