"""One reconciliation over a filled store, in a process of its own so that
its peak RSS is the reconciler's and not the fill's: ``python -m
loadtests.reconcile_child STORE_URL`` prints one JSON line (the ``reconcile``
scenario runs it)."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from broadcaster.logs import configure_logging
from broadcaster.reconcile.matching import MatchPolicy, Outcome
from broadcaster.reconcile.reconciler import Reconciler
from broadcaster.store import store_from_url

__all__ = ["main"]


def _peak_rss_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
    # fork/exec, so a child would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def _reconcile_only(url: str) -> dict[str, Any]:
    async with store_from_url(url) as store:
        policy = MatchPolicy.from_seconds(5, 30, 300)
        reconciler = Reconciler(store, policy, clock=lambda: time.time() + 60)
        t0 = time.perf_counter()
        report = await reconciler.run()
        seconds = time.perf_counter() - t0
    return {
        "bench": "reconcile",
        "pairs": sum(report.counts.values()),
        "matched": report.total(Outcome.MATCHED),
        "seconds": round(seconds, 4),
        "pairs_per_s": round(sum(report.counts.values()) / seconds),
        "peak_rss_mib": _peak_rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtests.reconcile_child STORE_URL", file=sys.stderr)
        return 2
    configure_logging("console", "WARNING")
    print(json.dumps(asyncio.run(_reconcile_only(args[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
