"""``broadcaster subscribe`` as a real child process against a fan-out server
in this test's event loop: wss with ``--ca-file``, tokens with ``--token`` or
from the settings, and one clear line (exit 2) when the handshake is refused."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.events import Category, EventFactory, seal
from broadcaster.security import parse_token_settings
from broadcaster.tls import server_ssl_context
from tests._tls import Certs, make_certs

pytestmark = pytest.mark.slow

CONSUMER = "consumer-secret-0123456789"
READER = "reader-secret-0123456789"
TOKENS_JSON = json.dumps(
    {
        "viewer": {"token": READER, "scope": "read"},
        "tail": {"token": CONSUMER, "scope": "consumer"},
    }
)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def subscribe(
    *args: str,
    env: dict[str, str] | None = None,
    server: WebSocketAdapter | None = None,
    n: int = 0,
) -> Result:
    """Run ``broadcaster subscribe ARGS``; with ``server``, send it ``n``
    events once the child has subscribed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster",
        "--env-file",
        "/dev/null",
        "subscribe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | (env or {}),
    )
    try:
        async with asyncio.timeout(60):
            output = asyncio.ensure_future(proc.communicate())
            if server is not None and n:
                waiting = asyncio.ensure_future(server.wait_for_subscribers(1))
                # A child that fails to subscribe must not leave us waiting.
                await asyncio.wait([waiting, output], return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    factory = EventFactory()
                    await server.send(
                        [
                            seal(factory.draft(Category.CRITICAL, "cli", {"i": i}), i + 1)
                            for i in range(n)
                        ]
                    )
                else:
                    waiting.cancel()
            out, err = await output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def said(result: Result) -> list[str]:
    """What the command said on stderr: its own lines, and no traceback. (A
    child inheriting PYTHONASYNCIODEBUG may add asyncio's slow-step warnings.)"""
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if not line.startswith("WARNING:asyncio:")]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "tls")


@pytest.fixture
async def wss(certs: Certs) -> AsyncIterator[WebSocketAdapter]:
    context = server_ssl_context(certs.cert, certs.key, variable="WEBSOCKET")
    tokens = parse_token_settings(None, TOKENS_JSON)
    async with WebSocketAdapter(port=0, ssl=context, tokens=tokens) as server:
        yield server


async def test_subscribe_over_wss_with_a_ca_file_and_a_token(
    wss: WebSocketAdapter, certs: Certs
) -> None:
    result = await subscribe(
        "--url", wss.url, "--ca-file", str(certs.ca_file), "--token", CONSUMER, "--limit", "3",
        server=wss, n=3,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{i} CRITICAL cli OK" for i in (1, 2, 3)]


async def test_subscribe_defaults_to_wss_and_the_consumer_token_from_settings(
    wss: WebSocketAdapter, certs: Certs
) -> None:
    env = {
        "WEBSOCKET_PORT": str(wss.port),
        "WEBSOCKET_TLS_CERT": str(certs.cert),
        "WEBSOCKET_TLS_KEY": str(certs.key),
        "BROADCASTER_TOKENS": TOKENS_JSON,  # the read token comes first: skipped
    }
    result = await subscribe(
        "--ca-file", str(certs.ca_file), "--limit", "2", env=env, server=wss, n=2
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), (READER, 403)], ids=["no-token", "read-token"]
)
async def test_a_refused_handshake_exits_2_with_one_line(
    wss: WebSocketAdapter, certs: Certs, token: str | None, status: int
) -> None:
    args = ["--url", wss.url, "--ca-file", str(certs.ca_file)]
    result = await subscribe(*args, *(["--token", token] if token else []))
    assert result.returncode == 2
    connecting, *lines = said(result)
    assert connecting == f"connecting to {wss.url} …"
    assert len(lines) == 1 and f"HTTP {status}" in lines[0], result.stderr
    assert READER not in result.stderr


async def test_an_untrusted_certificate_fails_at_once(wss: WebSocketAdapter) -> None:
    result = await subscribe("--url", wss.url, "--token", CONSUMER)  # system trust store
    assert result.returncode == 1
    connecting, *lines = said(result)
    assert connecting == f"connecting to {wss.url} …"
    assert len(lines) == 1 and "CERTIFICATE_VERIFY_FAILED" in lines[0], result.stderr


async def test_ca_file_mistakes_exit_2(certs: Certs, tmp_path: Path) -> None:
    plain = await subscribe("--url", "ws://127.0.0.1:1/events", "--ca-file", str(certs.ca_file))
    assert plain.returncode == 2 and "needs a wss:// URL" in plain.stderr
    missing = await subscribe(
        "--url", "wss://127.0.0.1:1/events", "--ca-file", str(tmp_path / "nope.pem")
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"subscribe: --ca-file: not a PEM CA bundle: {tmp_path / 'nope.pem'}"
        " (No such file or directory)"
    ]
