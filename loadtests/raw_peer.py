"""The receiving end of ``raw-limit``: two plain ``websockets`` client
connections, ``URL/a`` and ``URL/b`` (one per path), each counting the text
frames it gets (decoded with orjson, as any consumer must) until the frame
``end``.

Run: ``python -m loadtests.raw_peer --url ws://127.0.0.1:PORT``. Prints
``ready`` once both are open, then one JSON object once both saw ``end``:
per connection ``count``, ``first_t`` and ``last_t`` (wall clock, the last
event frame) and ``bins`` (``[[t, count, 0, 0], ...]``, ``--bin`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from ._common import Bins

__all__ = ["main"]

END = "end"


async def _count(ws: ClientConnection, bin_s: float) -> dict[str, Any]:
    count = 0
    first_t = last_t = 0.0
    bins = Bins(bin_s)
    loads, clock = orjson.loads, time.time
    async for frame in ws:
        if frame == END:
            break
        loads(frame)
        last_t = clock()
        if not count:
            first_t = last_t
        count += 1
        bins.add(last_t, 0.0)
    return {"count": count, "first_t": first_t, "last_t": last_t, "bins": bins.rows(origin=0.0)}


async def _run(url: str, bin_s: float) -> dict[str, Any]:
    options: dict[str, Any] = {"compression": None, "max_queue": 1024, "max_size": 2**22}
    async with connect(url + "/a", **options) as a, connect(url + "/b", **options) as b:
        print("ready", flush=True)
        counted = await asyncio.gather(_count(a, bin_s), _count(b, bin_s))
    return dict(zip(("a", "b"), counted, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bin", type=float, default=0.25)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args.url, args.bin))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
