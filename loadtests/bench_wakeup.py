"""What one loopback TCP ``send()`` costs, back to back and after idle gaps.

A reader in another process receives 500-byte messages over 127.0.0.1 (as the
subscribers and the Realtime server do); this process times each ``send()``
call, sending back to back and then with a pause before each send. Prints one
JSON line: per gap, p50/p90 µs per call.

Why it is here: on the README's 2-core VM a send to a reader that went idle
costs about ten times one sent back to back — waking the reader's idle CPU is
paid inside the sender's ``send()``. That is why the broadcaster's CPU per
event is highest at low rates (every event wakes the subscribers and the
Realtime server), and why it falls as batches grow.

    python -m loadtests.bench_wakeup --sends 300
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

from ._common import percentile

__all__ = ["main", "measure"]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=300, help="sends per gap")
    parser.add_argument(
        "--gaps-ms", type=float, nargs="+", default=[0, 1, 10], help="pause before each send"
    )
    args = parser.parse_args(argv)
    print(json.dumps({"bench": "wakeup", "sends": args.sends, **measure(args.sends, args.gaps_ms)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
