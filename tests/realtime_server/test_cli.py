"""Running the server on its own (``broadcaster realtime-server``, ``python -m
broadcaster.realtime_server``): its plan and private-channel options reach
the server, SIGUSR1 prints its counters; bad ones exit 2. (Keys and the URL
line: test_server.py.)"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from websockets.asyncio.client import connect

from broadcaster.spawn import RealtimeServerProcess
from tests.realtime_server._clients import TOPIC, RawClient


async def test_a_child_server_enforces_its_plan_and_checks_private_tokens() -> None:
    secret = "child-jwt-secret-0123456789-0123456789"
    child = RealtimeServerProcess(
        command=("-m", "broadcaster", "realtime-server"),
        limits="free",
        jwt_secret=secret,
        stderr=asyncio.subprocess.PIPE,
    )
    await child.start()
    proc = child.proc
    assert proc is not None and proc.stderr is not None
    try:
        url = f"ws://127.0.0.1:{child.port}/realtime/v1/websocket?apikey={child.key}&vsn=2.0.0"
        async with connect(url, compression=None) as ws:
            client = RawClient(ws, "2.0.0")
            await client.joined(private=True)  # its service key is its token
            blob = {"type": "broadcast", "event": "events", "payload": {"blob": "x" * 300_000}}
            await client.push(TOPIC, "broadcast", blob)
            reply = await client.recv()
            assert reply["payload"] == {"status": "error", "response": "payload_size_exceeded"}
        # SIGUSR1: its counters, one JSON line on stdout, and it keeps running.
        assert proc.stdout is not None
        proc.send_signal(signal.SIGUSR1)
        async with asyncio.timeout(10):
            counters = json.loads(await proc.stdout.readline())
        assert proc.returncode is None
        assert counters["limits"] == "free" and counters["joins"] == 1
        assert counters["payload_too_large"] == counters["quota_refusals"] == 1
        assert counters["broadcasts"] == counters["messages"] == 1
        assert counters["peak_messages_per_s"] >= counters["judged_messages_per_s"] >= 0
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            stderr = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
    assert "limits=free" in stderr and "private_channels='tokens checked'" in stderr
    assert secret not in stderr and child.key not in stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--limits", "gold"], "invalid choice: 'gold'"),
        (["--private-roles", " , "], "expected one role or more"),
    ],
)
def test_bad_server_options_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    from broadcaster.cli import main as cli_main
    from broadcaster.realtime_server import main

    for entry in (main, lambda args: cli_main(["realtime-server", *args])):
        with pytest.raises(SystemExit) as exited:
            entry(argv)
        assert exited.value.code == 2
        assert says in capsys.readouterr().err
