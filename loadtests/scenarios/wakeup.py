"""``wakeup``: what one loopback TCP ``send()`` costs, back to back and
after idle gaps.

A reader in another process receives ``--size``-byte messages over 127.0.0.1
(as the subscribers and the Realtime server do); this process times each
``send()`` call, sending back to back and then with a pause of each of
``--gaps-ms`` before each send. Figures: per gap, p50/p90 µs per call.

Why it is here: a send to a reader that went idle costs several times one
sent back to back, because waking the reader's idle CPU is paid inside the
sender's ``send()``. That is why the broadcaster's CPU per event is highest
at low rates (every event wakes the subscribers and the Realtime server), and
why it falls as batches grow (loadtests/HISTORY.md has the figures).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from typing import Any

from .._common import load_average, percentile, progress

NAME = "wakeup"
HELP = "µs per loopback send(), back to back and after idle gaps"
DEFAULTS: dict[str, Any] = {"sends": 300, "gaps_ms": [0.0, 1.0, 10.0], "size": 500}
SMOKE: dict[str, Any] = {"sends": 5, "gaps_ms": [0.0, 1.0], "size": 500}
PLOTS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sends", type=int, help="sends per gap (default 300)")
    parser.add_argument(
        "--gaps-ms", type=float, nargs="+", help="pause before each send (default 0 1 10)"
    )
    parser.add_argument("--size", type=int, help="bytes per message (default 500)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    progress(f"wakeup: {args.sends} sends per gap of {args.gaps_ms} ms")
    # Timed on this thread, as the broadcaster's loop sends: no executor hop.
    figures = measure(args.sends, args.gaps_ms, args.size)
    return {"scenario": NAME, "sends": args.sends, **figures, "load_avg_1m": load}


_READER = (
    "import socket, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "while s.recv(65536):\n"
    "    pass\n"
)


def measure(sends: int, gaps_ms: list[float], size: int = 500) -> dict[str, dict[str, float]]:
    """µs per ``send()`` call (p50, p90) for each pause before a send, in ms."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        reader = subprocess.Popen([sys.executable, "-c", _READER, str(port)])
        try:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                message = b"x" * size
                result: dict[str, dict[str, float]] = {}
                for gap_ms in gaps_ms:
                    took = []
                    for _ in range(sends):
                        if gap_ms:
                            time.sleep(gap_ms / 1000)
                        started = time.perf_counter()
                        conn.sendall(message)
                        took.append(time.perf_counter() - started)
                    result[f"gap_{gap_ms:g}_ms"] = {
                        "p50_us": round(percentile(took, 50) * 1e6, 1),
                        "p90_us": round(percentile(took, 90) * 1e6, 1),
                    }
            return result
        finally:
            reader.wait(timeout=10)
