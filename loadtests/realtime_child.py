"""The Realtime adapter in a process of its own, for the ``publish-overhead``
experiment ``--paths realtime-process``: how much of dual-write's cost to the
producer would leave its thread if the official Realtime client ran elsewhere.

:class:`ChildRealtimeAdapter` (name ``realtime``) lives in the broadcaster and
forwards each batch to this module run as ``python -m loadtests.realtime_child
URL``: one pipe write per batch (the records' sealed wire bytes, framed), one
line read per acknowledgement. The child rebuilds the records from their wire
bytes and sends them through the real :class:`RealtimeAdapter`, each batch in
a task of its own (as many in flight as the lane has), and answers ``ID ok`` or
``ID error TEXT``.

Frames on the child's stdin: ``!II`` (batch id, body length), then the body:
the batch's wires joined by ``\\n`` (a sealed wire is compact JSON: it holds no
raw newline). A benchmark aid, not a production adapter: no reconnection of
the child, no breaker of its own (the lane's breaker sees its errors).
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from collections.abc import Sequence

from broadcaster.adapters.base import Adapter, AdapterHealth
from broadcaster.adapters.memory import MemoryHealth
from broadcaster.adapters.realtime import RealtimeAdapter
from broadcaster.events import EventRecord, record_from_wire
from broadcaster.exceptions import AdapterUnavailable
from broadcaster.logs import configure_logging

from ._common import pin_helper, python_env

__all__ = ["ChildRealtimeAdapter", "main"]

_HEAD = struct.Struct("!II")


class ChildRealtimeAdapter(Adapter):
    """The Realtime path through a child process (see the module doc)."""

    name = "realtime"

    def __init__(self, url: str) -> None:
        self.url = url
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._next = 0
        self.events = 0

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtests.realtime_child",
            self.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=python_env(),
        )
        pin_helper(self._proc.pid)
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if line.strip() != b"ready":
            raise AdapterUnavailable(self.name, f"child did not start: {line!r}")
        self._reader = asyncio.create_task(self._read(self._proc.stdout))

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            batch_id, _, verdict = line.decode().rstrip("\n").partition(" ")
            future = self._waiting.pop(int(batch_id), None)
            if future is None or future.done():
                continue
            if verdict == "ok":
                future.set_result(None)
            else:
                future.set_exception(AdapterUnavailable(self.name, verdict))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(AdapterUnavailable(self.name, "child exited"))
        self._waiting.clear()

    async def send(self, batch: Sequence[EventRecord]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise AdapterUnavailable(self.name, "child not running")
        self._next += 1
        batch_id = self._next
        body = b"\n".join(record.wire for record in batch)
        future = asyncio.get_running_loop().create_future()
        self._waiting[batch_id] = future
        proc.stdin.write(_HEAD.pack(batch_id, len(body)) + body)
        await future
        self.events += len(batch)

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader

    def health(self) -> AdapterHealth[MemoryHealth]:
        running = self._proc is not None and self._proc.returncode is None
        return AdapterHealth(
            name=self.name, connected=running, extra=MemoryHealth(events=self.events)
        )


async def _serve(url: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    tasks: set[asyncio.Task[None]] = set()

    async def forward(adapter: RealtimeAdapter, batch_id: int, body: bytes) -> None:
        try:
            await adapter.send([record_from_wire(wire) for wire in body.split(b"\n")])
            answer = f"{batch_id} ok\n"
        except Exception as exc:  # every failure goes back to the broadcaster
            answer = f"{batch_id} error {type(exc).__name__}: {exc}".replace("\n", " ") + "\n"
        out.write(answer.encode())
        out.flush()

    # The key comes in the environment (python_env), like the server's.
    async with RealtimeAdapter(url, os.environ.get("SUPABASE_KEY")) as adapter:
        out.write(b"ready\n")
        out.flush()
        while True:
            try:
                head = await reader.readexactly(_HEAD.size)
            except asyncio.IncompleteReadError:
                break
            batch_id, size = _HEAD.unpack(head)
            body = await reader.readexactly(size)
            task = asyncio.create_task(forward(adapter, batch_id, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtests.realtime_child REALTIME_URL", file=sys.stderr)
        return 2
    configure_logging("console", "WARNING")  # stdout carries the acknowledgements
    asyncio.run(_serve(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
