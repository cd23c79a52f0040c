"""``python -m loadtests.where_time_goes``: where the broadcaster's CPU goes
while producers call ``publish()`` once per event.

It runs the ``per-event`` stack (both real adapters, SQLite store, the local
Realtime server and the verifying subscribers in other processes) in a child
process with ``--producers`` tasks publishing as fast as they can for
``--seconds``, samples that process with py-spy, and sorts every sample of
its event loop into the role it was spent on, the first of :data:`ROLES`
whose frames it holds (the store's writes before the code that called them).
Start-up and shutdown samples are left out. It prints the delivered rate, the
CPU per event and one markdown row per role, and with ``--raw FILE`` keeps
py-spy's collapsed stacks for a flame graph.

Nothing here asserts a timing; the figures belong in loadtests/HISTORY.md
with this command.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ._common import python_env

__all__ = ["ROLES", "main", "roles_of"]

#: (role, substrings of a frame that put a sample in it), first match wins.
ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("store: acknowledgement marks", ("_flush_marks", "write_marks")),
    (
        "store: publish's commit (events and outbox rows)",
        ("append_now", "SQLiteStore.append", "append_events", "write_tail", "GroupCommit."),
    ),
    ("store: other (checkpoints, reads)", ("broadcaster/store/",)),
    (
        "Realtime path (adapter, official client's push)",
        ("RealtimeAdapter", "adapters/realtime/", "realtime/_async/"),
    ),
    ("WebSocket path (frames, transport writes)", ("websocket_fanout", "WebSocketAdapter")),
    ("lanes and hand-off", ("lanes/", "handoff.py", "lane_set.py", "breaker.py")),
    ("publish(): draft, seal, route, receipt", ("Broadcaster.publish", "event_")),
    ("load-test producer", ("loadtests/_phases.py",)),
)
OTHER = "event loop and the rest"
#: Frames of a sample taken outside the measured phase.
_OUTSIDE = ("_find_and_load", "__aenter__", "__aexit__", "wait_received", "Stack.complete")
#: Frames of a sample taken in the event loop's own step.
_IN_LOOP = "_run_once"

_CHILD = """
import asyncio, json, sys
from loadtests._stack import Stack

async def main(producers: int, seconds: float) -> None:
    async with Stack() as stack:
        phase = await stack.phase(
            "profiled", seconds=seconds, rate=None, producers=producers,
            max_batch=1, single_calls=True, payload_bytes=200,
        )
    stack.complete([phase])
    f = phase.figures
    print(repr({k: f[k] for k in
                ("events", "delivered_events_per_s", "broadcaster_cpu_us_per_event", "lost")}))

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""


def roles_of(lines: Iterable[str]) -> Counter[str]:
    """Samples per role of py-spy's collapsed stacks (``frame;frame;... N``),
    counting only the event loop's steps inside the measured phase."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or _IN_LOOP not in stack or any(s in stack for s in _OUTSIDE):
            continue
        frames = stack.split(";")
        role = next(
            (name for name, keys in ROLES if any(k in f for f in frames for k in keys)), OTHER
        )
        counts[role] += int(n)
    return counts


def table(counts: Counter[str]) -> list[str]:
    """Markdown rows, biggest share first."""
    total = sum(counts.values())
    rows = ["| role | share of the loop's samples |", "|---|---|"]
    rows += [f"| {role} | {100 * n / total:.1f} % |" for role, n in counts.most_common()]
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.where_time_goes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--producers", type=int, default=1, help="publishing tasks (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="phase length (default 10)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.producers < 1 or args.seconds <= 0:
        print("--producers must be at least 1 and --seconds positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or Path(tmp) / "stacks.txt"
        spy = Path(sys.executable).with_name("py-spy")
        command = [
            str(spy), "record", "--nonblocking", "-r", str(args.rate), "-f", "raw",
            "-o", str(raw), "--", sys.executable, "-c", _CHILD,
            str(args.producers), str(args.seconds),
        ]  # fmt: skip
        done = subprocess.run(
            command, env=python_env(), capture_output=True, text=True, check=False
        )
        figures = next(
            (ast.literal_eval(x) for x in done.stdout.splitlines() if x[:1] == "{"), None
        )
        if done.returncode != 0 or figures is None or not raw.exists():
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        counts = roles_of(raw.read_text().splitlines())
    print(
        f"{args.producers} producer(s) calling publish() per event for {args.seconds:g} s:"
        f" {figures['delivered_events_per_s']} events/s delivered on both paths,"
        f" {figures['broadcaster_cpu_us_per_event']} µs of broadcaster CPU per event,"
        f" {figures['lost']} lost; {sum(counts.values())} samples of its event loop"
    )
    print("\n".join(table(counts)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    raise SystemExit(main())
