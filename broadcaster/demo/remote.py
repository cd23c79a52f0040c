"""The demo's remote subscriber: ``broadcaster subscribe`` in a child
process, as a consumer on another machine would run it.

It reports receipts through the admin API (``--report``, so they reach the
store by ``POST /receipts``), is SIGKILLed mid-stream and started again with
``--since <the last sequence id it printed>``; the demo then checks it got
every event routed to the WebSocket path exactly once — without repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter

__all__ = ["RemoteSubscriber"]


class RemoteSubscriber:
    """``start(since)``, ``kill()``, ``stop()``; ``seen`` counts the sequence
    ids it printed across every run, ``last`` is the highest."""

    def __init__(
        self, ws_url: str, admin_url: str, token: str, *, consumer: str, env: dict[str, str]
    ) -> None:
        self._args = [
            "subscribe",
            "--url",
            ws_url,
            "--report",
            "--consumer",
            consumer,
            "--admin-url",
            admin_url,
            "--token",
            token,
        ]
        self._env = env
        self.seen: Counter[int] = Counter()
        self.last = 0
        self.runs = 0
        self.consumer = consumer
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._first_line: asyncio.Event = asyncio.Event()

    async def start(self, since: int | None = None) -> None:
        """Start it (resuming after ``since``) and wait for its first event."""
        args = [*self._args, *([] if since is None else ["--since", str(since)])]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broadcaster",
            "--env-file",
            os.devnull,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=self._env,
        )
        self.runs += 1
        self._first_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read(self._proc), name="demo-remote-reader")

    async def wait_started(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_line.wait(), timeout_s)
        return self._first_line.is_set()

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            head = line.split(b" ", 1)[0]
            if head.isdigit():  # "<sequence id> <category> <type> OK"
                seq = int(head)
                self.seen[seq] += 1
                self.last = max(self.last, seq)
                self._first_line.set()

    async def kill(self) -> int:
        """SIGKILL it, as a crash would; returns the last sequence id it printed."""
        await self._end(signal.SIGKILL)
        return self.last

    async def stop(self) -> None:
        """Stop it the way Ctrl-C does, so it posts its last receipts."""
        await self._end(signal.SIGINT)

    async def _end(self, sig: signal.Signals) -> None:
        proc, reader = self._proc, self._reader
        if proc is None or reader is None:
            return
        if proc.returncode is None:
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await reader  # every line it wrote before it ended
        self._proc = self._reader = None
