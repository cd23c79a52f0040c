"""The peer a user would try first: encode/broadcaster (``broadcaster`` 0.3.1
on PyPI) with its memory backend, fanning each published message out to two
WebSocket connections, one per "path".

Its import name, ``broadcaster``, is ours too: it runs with encode's package
first on ``PYTHONPATH`` (:mod:`loadtests._peer_env`), and this file imports
nothing from the repository, only the standard library, encode's
``broadcaster`` and ``websockets``.

Run: ``PYTHONPATH=loadtests/.peer python -P encode_peer.py --producers N
--seconds S --payload-bytes B``.
Prints ``port N``; a counting peer (:mod:`loadtests.raw_peer`) then connects
``/a`` and ``/b``; once both subscribed, ``N`` tasks each ``await
broadcast.publish()`` one JSON-encoded event after another for ``S`` seconds,
then ``end`` goes to both. Prints one JSON object: ``published``, ``seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from broadcaster import Broadcast

CHANNEL = "events"
END = "end"


async def _run(producers: int, seconds: float, payload_bytes: int) -> dict[str, Any]:
    broadcast = Broadcast("memory://")
    await broadcast.connect()
    subscribed = asyncio.Event()
    finished: list[asyncio.Event] = []
    connected = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connected
        done = asyncio.Event()
        finished.append(done)
        async with broadcast.subscribe(channel=CHANNEL) as subscriber:
            connected += 1
            if connected == 2:
                subscribed.set()
            async for event in subscriber:
                await ws.send(event.message, text=True)
                if event.message == END:
                    break
        done.set()
        await ws.wait_closed()

    pad = "x" * max(0, payload_bytes - 60)
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.wait_for(subscribed.wait(), 60)
        counts = [0] * producers
        deadline = time.monotonic() + seconds

        async def produce(p: int) -> None:
            i = 0
            clock = time.time
            while time.monotonic() < deadline:
                event = {
                    "id": str(uuid.uuid4()),
                    "category": "SYSTEM",
                    "event_type": "bench.tick",
                    "timestamp": clock(),
                    "payload": {"t": clock(), "phase": "peer", "p": p, "i": i, "pad": pad},
                }
                await broadcast.publish(channel=CHANNEL, message=json.dumps(event))
                i += 1
            counts[p] = i

        started = time.monotonic()
        await asyncio.gather(*(produce(p) for p in range(producers)))
        publish_s = time.monotonic() - started
        await broadcast.publish(channel=CHANNEL, message=END)
        for done in finished:
            await asyncio.wait_for(done.wait(), 120)
    await broadcast.disconnect()
    return {"published": sum(counts), "seconds": round(publish_s, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--producers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--payload-bytes", type=int, default=200)
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args.producers, args.seconds, args.payload_bytes))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
