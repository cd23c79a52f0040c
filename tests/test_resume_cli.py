"""``broadcaster subscribe`` resumes (SPEC 12, issue 26): as real child
processes against a real ``broadcaster serve`` (or a fan-out server in this
test's loop), killed, restarted and reconnected while events keep coming."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.events import Category, EventFactory, EventRecord
from broadcaster.store import MemoryStore
from broadcaster.store.base import DeliveryState
from tests.test_service import REPO, TOKEN, Child

pytestmark = pytest.mark.slow


class Publisher(threading.Thread):
    """POSTs batches of CRITICAL events to the service until stopped,
    keeping the sequence ids of its receipts."""

    def __init__(self, admin_url: str) -> None:
        super().__init__(daemon=True)
        self.admin_url = admin_url
        self.published: list[int] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.admin_url, timeout=30) as client:
                i = 0
                while not self._halt.is_set():
                    events = [
                        {"category": "CRITICAL", "event_type": "resume", "payload": {"i": i + k}}
                        for k in range(50)
                    ]
                    response = client.post(
                        "/events", json=events, headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                    response.raise_for_status()
                    self.published += [r["sequence_id"] for r in response.json()]
                    i += 50
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def wait_for(self, count: int) -> None:
        """Until at least ``count`` events are published (the thread appends
        after each batch; reading the length is safe)."""
        published = threading.Event()
        while len(self.published) < count and self.is_alive():
            published.wait(0.01)
        assert len(self.published) >= count, self.error

    def stop(self) -> list[int]:
        self._halt.set()
        self.join(60)
        if self.error is not None:
            raise self.error
        return self.published


class Subscriber:
    """``broadcaster subscribe`` as a child process; its complete stdout lines
    arrive in a queue as they are printed."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "subscribe", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.ids: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            # A line cut short by SIGKILL (a flush mid-line) was not printed.
            if line.endswith("\n"):
                self.lines.put(line)
        self.lines.put(None)

    def take(self, line: str | None) -> bool:
        if line is None:
            return False
        seq, category, event_type, verdict = line.split()
        assert (category, event_type, verdict) == ("CRITICAL", "resume", "OK"), line
        self.ids.append(int(seq))
        return True

    def read_until(self, done: int | None = None, *, at_least: int | None = None) -> None:
        """Take printed lines until the id ``done`` was printed, or ``at_least``
        lines were; fail if the process ends first."""
        while not (
            (done is not None and self.ids and self.ids[-1] >= done)
            or (at_least is not None and len(self.ids) >= at_least)
        ):
            if not self.take(self.lines.get(timeout=120)):
                raise AssertionError(f"subscribe ended: {self.finish()}")

    def kill(self) -> None:
        """SIGKILL it mid-stream, and take whatever it had printed."""
        self.proc.send_signal(signal.SIGKILL)
        while self.take(self.lines.get(timeout=60)):
            pass
        self.proc.wait(60)

    def finish(self) -> str:
        """Stop it (if still running) and return its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except ValueError:  # the reader thread holds stdout: read stderr alone
            assert self.proc.stderr is not None
            err = self.proc.stderr.read()
            self.proc.wait(60)
        self._reader.join(60)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


def test_a_sigkilled_subscriber_restarted_with_its_last_id_misses_nothing(
    tmp_path: Path,
) -> None:
    """The issue's test: a subscriber killed mid-stream and restarted with
    ``--since <its last sequence id>`` gets every event it had not seen,
    once, in order, while publishing continues throughout."""
    child = Child(tmp_path)
    publisher = Publisher(child.url)
    subscribers: list[Subscriber] = []
    try:
        ws_url = next(line.split()[1] for line in child.lines if line.startswith("websocket"))
        publisher.start()
        first = Subscriber(child.env, "--url", ws_url, "--since", "0")
        subscribers.append(first)
        first.read_until(at_least=2000)
        first.kill()
        last = first.ids[-1]
        # Publishing goes on while it is dead: wait for events it missed
        # (sequence ids count up from 1 here, one per published event).
        publisher.wait_for(last + 100)

        second = Subscriber(child.env, "--url", ws_url, "--since", str(last))
        subscribers.append(second)
        second.read_until(at_least=2000)  # replayed and live, while publishing goes on
        published = publisher.stop()
        second.read_until(done=published[-1])
        err = second.finish()
    finally:
        if publisher.is_alive():
            publisher.stop()
        for sub in subscribers:
            sub.finish()
        code, _, serve_err = child.stop()
    assert code == 0, serve_err
    seen = first.ids + second.ids
    assert seen == published, (
        f"missing {sorted(set(published) - set(seen))[:10]},"
        f" duplicates {len(seen) - len(set(seen))}"
    )
    assert err.splitlines()[0] == f"connecting to {ws_url}?since={last} …", err
    assert "Traceback" not in err


async def run_subscribe(*args: str) -> subprocess.Popen[bytes]:
    """Start ``broadcaster subscribe ARGS`` (not waiting for it)."""
    return await asyncio.create_subprocess_exec(  # type: ignore[return-value]
        sys.executable,
        "-m",
        "broadcaster",
        "--env-file",
        "/dev/null",
        "subscribe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )


async def append(store: MemoryStore, n: int) -> list[EventRecord]:
    factory = EventFactory()
    return await store.append(
        [(factory.draft(Category.CRITICAL, "resume", {"i": i}), ("websocket",)) for i in range(n)]
    )


def stderr_lines(err: bytes) -> list[str]:
    """The command's own stderr lines (a child inheriting PYTHONASYNCIODEBUG
    may add asyncio's slow-step warnings)."""
    text = err.decode()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if not line.startswith("WARNING:asyncio:")]


async def test_subscribe_says_when_it_reconnects_and_resumes_across_a_server_restart() -> None:
    async with MemoryStore() as store:
        first = WebSocketAdapter(port=0, replay=store)
        await first.start()
        url, port = first.url, first.port
        proc = await run_subscribe("--url", url, "--since", "0", "--limit", "6")
        assert isinstance(proc, asyncio.subprocess.Process)
        try:
            async with asyncio.timeout(60):
                await first.wait_for_subscribers(1)
                await first.send(await append(store, 3))
                await first.close()  # the child reconnects, resuming after what it got
                async with WebSocketAdapter(port=port, replay=store) as second:
                    await second.send(await append(store, 3))
                    out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == [f"{n} CRITICAL resume OK" for n in range(1, 7)]
    lines = stderr_lines(err)
    assert lines[0] == f"connecting to {url}?since=0 …"
    assert any(line.startswith(f"reconnecting (attempt 1) to {url}?since=") for line in lines)


async def test_subscribe_ends_with_one_line_and_exit_1_when_history_was_pruned() -> None:
    async with MemoryStore() as store, WebSocketAdapter(port=0, replay=store) as server:
        records = await append(store, 8)
        await store.mark("websocket", [r.sequence_id for r in records], DeliveryState.ACKED)
        await store.prune(through=5, older_than_ms=2**62)
        url = server.url
        proc = await run_subscribe("--url", url, "--since", "2")
        assert isinstance(proc, asyncio.subprocess.Process)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 1
    assert out == b""
    assert stderr_lines(err) == [
        f"connecting to {url}?since=2 …",
        "subscribe: cannot resume after sequence id 2: the store goes back only to sequence"
        " id 6 (the events between were pruned); --since 5 reads on from there",
    ]


@pytest.mark.parametrize("value", ["-1", "x", "1.0", "9223372036854775808"])
def test_a_bad_since_exits_2(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "subscribe"]
        + ["--url", "ws://127.0.0.1:1/events", f"--since={value}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--since" in result.stderr and "not a sequence id" in result.stderr
