"""``store``: store write throughput per backend, and publish with the store on/off.

``append`` in batches of ``--batch`` then ``mark`` ACKED for two adapters,
on the memory store, SQLite and (unless ``--skip-postgres``, or when
``pgserver`` is not installed) a throwaway PostgreSQL; then the publish rate
through the broadcaster with adapters that acknowledge at once, store off
(memory) and on (SQLite), in ``publish_many`` calls of 100 and from 16
concurrent ``publish()`` producers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from broadcaster.core import Broadcaster
from broadcaster.settings import load_settings
from broadcaster.store import store_from_url

from .._common import load_average, progress
from .._stores import NullAdapter, fill, postgres_server

NAME = "store"
HELP = "append/mark throughput per store backend; publish rate with the store on and off"
DEFAULTS: dict[str, Any] = {"events": 200_000, "publish_events": 100_000}
SMOKE: dict[str, Any] = {"events": 2_000, "publish_events": 2_000}
PLOTS = False
PRODUCERS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="events written per backend")
    parser.add_argument("--publish-events", type=int, help="events published per store mode")
    parser.add_argument("--batch", type=int, default=200, help="append batch size")
    parser.add_argument("--skip-postgres", action="store_true", help="memory and SQLite only")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    append: dict[str, int] = {}
    mark: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="loadtests-store-") as tmp_name:
        tmp = Path(tmp_name)
        backends: list[tuple[str, str, int]] = [
            ("memory", "memory://", args.events),
            ("sqlite", f"sqlite:///{tmp / 'write.db'}", args.events),
        ]
        server = None
        if not args.skip_postgres:
            progress("starting a throwaway PostgreSQL (pgserver)")
            server = await asyncio.to_thread(postgres_server)
            if server is None:
                progress("pgserver is not installed: PostgreSQL left out")
            else:
                backends.append(("postgresql", server.get_uri(), max(1, args.events // 2)))
        try:
            for name, url, n in backends:
                progress(f"store write: {name}, {n} events")
                figures = await store_write_figures(url, name, n, args.batch)
                append[name] = figures["append_events_per_s"]
                mark[name] = figures["mark_state_changes_per_s"]
        finally:
            if server is not None:
                server.cleanup()
        publish: dict[str, dict[str, int]] = {}
        for mode, url in (("off", "memory://"), ("on", f"sqlite:///{tmp / 'publish.db'}")):
            progress(f"publish with the store {mode}")
            figures = await publish_figures(url, args.publish_events, 100, PRODUCERS)
            publish[mode] = {
                "publish_many_100_per_s": figures["publish_many_100_per_s"],
                f"publish_{PRODUCERS}_producers_per_s": figures[
                    f"publish_{PRODUCERS}_producers_per_s"
                ],
            }
    return {
        "scenario": NAME,
        "events": args.events,
        "batch": args.batch,
        "append_events_per_s": append,
        "mark_state_changes_per_s": mark,
        "publish_store_off": publish["off"],
        "publish_store_on": publish["on"],
        "publish_on_over_off": {
            key: round(publish["on"][key] / publish["off"][key], 3) for key in publish["on"]
        },
        "load_avg_1m": load,
    }


async def store_write_figures(url: str, name: str, n: int, batch: int) -> dict[str, Any]:
    async with store_from_url(url) as store:
        append_s, mark_s = await fill(store, n, batch, receipts=False)
    return {
        "bench": "store_write",
        "backend": name,
        "events": n,
        "batch": batch,
        "append_events_per_s": round(n / append_s),
        "mark_state_changes_per_s": round(2 * n / mark_s),
    }


async def publish_figures(store_url: str, n: int, batch: int, producers: int) -> dict[str, Any]:
    settings = load_settings(env_file=None, store_url=store_url, log_level="WARNING")
    adapters = [NullAdapter("websocket"), NullAdapter("realtime")]
    result: dict[str, Any] = {"bench": "publish", "store": store_url.split(":")[0]}
    async with Broadcaster(settings, adapters=adapters) as b:
        b.set_routing(b.routing.with_override("all"))
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            await b.publish_many(
                [
                    {"category": "SYSTEM", "event_type": "bench", "payload": {"i": start + k}}
                    for k in range(batch)
                ]
            )
        await b.flush()
        result[f"publish_many_{batch}_per_s"] = round(n / (time.perf_counter() - t0))

        async def producer(p: int) -> None:
            for i in range(n // producers):
                await b.publish("SYSTEM", "bench", {"p": p, "i": i})

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        await b.flush()
        result[f"publish_{producers}_producers_per_s"] = round(n / (time.perf_counter() - t0))
    return result
