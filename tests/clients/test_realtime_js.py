"""The official JavaScript client, @supabase/realtime-js (protocol 2.0.0, in
Node), against the local Realtime server: clients/js/consumer.mjs verifies
and reports every event a real service sends, a tampered one as a mismatch;
realtime-js's own binary broadcasts, private channels and token refresh
work beside the Python client (protocol 1.0.0)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from broadcaster.core import Broadcaster
from broadcaster.realtime_server import LocalRealtimeServer, Message, Peer, mint_token
from broadcaster.settings import load_settings
from tests._wait import until
from tests.clients._node import CLIENTS_JS, REPO, node, node_modules
from tests.test_probes import running

pytestmark = pytest.mark.slow

SECRET = "js-test-jwt-secret-0123456789-0123456789"
SERVICE_KEY = mint_token(SECRET, {"role": "service_role", "exp": int(time.time()) + 86_400})
ADMIN = "js-admin-token-0123456789"
CONSUMER = "js-consumer-token-0123456789"
TAMPERED = 6  # the sequence id changed in transit


class Tampering(LocalRealtimeServer):
    """Changes one event's payload in transit, keeping its checksum."""

    async def on_broadcast(self, peer: Peer, msg: Message) -> None:
        for event in msg["payload"].get("payload", {}).get("events", []):
            if event.get("sequence_id") == TAMPERED:
                event["payload"] = {**event["payload"], "amount": 999.0}
        await super().on_broadcast(peer, msg)


class NodeProcess:
    """A Node script in clients/js's package, its stdout read as JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def line(self, wait_s: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(wait_s):
            raw = await self.proc.stdout.readline()
        assert raw, f"node ended early: {await self.stderr()}"
        found: dict[str, Any] = json.loads(raw)
        self.lines.append(found)
        return found

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


@asynccontextmanager
async def node_script(
    script: Path, env: dict[str, str], *, preload: Path | None = None
) -> AsyncIterator[NodeProcess]:
    node_modules()
    flags = [] if preload is None else ["--import", preload.as_uri()]
    proc = await asyncio.create_subprocess_exec(
        node(),
        *flags,
        str(script),
        cwd=script.parent,
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "category": "CRITICAL" if i % 2 else "SYSTEM",
            "event_type": "order.paid",
            # 1.0 and 2.0 read back as 1 and 2 in JavaScript: the helper keeps
            # the text, or these would not verify.
            "payload": {"amount": float(i), "rate": 0.1 * i, "note": "réglé 😀", "i": i},
        }
        for i in range(n)
    ]


async def test_realtime_js_verifies_and_reports_every_event_a_tampered_one_as_a_mismatch(
    tmp_path: Path,
) -> None:
    async with Tampering(key=SERVICE_KEY, jwt_secret=SECRET) as realtime:
        settings = load_settings(
            env_file=None,
            store_url=f"sqlite:///{tmp_path / 'js.db'}",
            websocket_port=0,
            admin_port=0,
            reconcile_interval_s=0,
            reconcile_buffer_s=0,  # judge receipts as soon as they are in
            reconcile_probe=False,
            broadcaster_admin_token=ADMIN,
            broadcaster_tokens=json.dumps({"browser": {"token": CONSUMER, "scope": "consumer"}}),
            supabase_url=realtime.url,
            supabase_key=SERVICE_KEY,
        )
        async with running(settings) as svc:
            env = {
                "SUPABASE_URL": realtime.url,
                "SUPABASE_KEY": SERVICE_KEY,
                "ADMIN_URL": svc.admin.url,
                "BROADCASTER_TOKEN": CONSUMER,
                "CONSUMER": "browser-js",
                "CATEGORIES": "CRITICAL,SYSTEM",
                "REALTIME_PRIVATE_CHANNELS": "true",
            }
            async with node_script(CLIENTS_JS / "consumer.mjs", env) as consumer:
                subscribed = {(await consumer.line())["channel"] for _ in range(2)}
                assert subscribed == {"events:critical", "events:system"}, consumer.lines
                assert all(line["status"] == "SUBSCRIBED" for line in consumer.lines)
                assert {p.vsn for p in realtime.peers} == {"1.0.0", "2.0.0"}
                posted = await svc.client.post(
                    "/events", json=events(40), headers={"Authorization": f"Bearer {ADMIN}"}
                )
                assert posted.status_code == 201, posted.text
                ids = [r["sequence_id"] for r in posted.json()]
                assert TAMPERED in ids
                while (await consumer.line()).get("posted", 0) < len(ids):
                    pass
                consumer.proc.send_signal(signal.SIGTERM)
                while "done" not in (last := await consumer.line()):
                    pass
                done = last["done"]
                assert await consumer.proc.wait() == 0
                stderr = await consumer.stderr()
            assert (done["received"], done["verified"], done["mismatches"]) == (40, 39, 1), stderr
            assert f"event {TAMPERED} failed: checksum mismatch" in stderr
            response = await svc.client.post(
                "/reconciliation/run", headers={"Authorization": f"Bearer {ADMIN}"}
            )
            assert response.status_code == 200, response.text
            report = response.json()["report"]
    realtime = [row["realtime"] for row in report["categories"].values()]
    assert sum(r["matched"] for r in realtime) == 39
    assert sum(r["mismatch"] for r in realtime) == 1
    assert report["consumers"] == [
        {**report["consumers"][0], "adapter": "realtime", "consumer": "browser-js", "receipts": 40}
    ]


async def test_realtime_js_broadcasts_in_binary_joins_private_channels_and_refreshes_tokens() -> (
    None
):
    async with LocalRealtimeServer(key=SERVICE_KEY, jwt_secret=SECRET) as server:
        # The Python client (1.0.0) listens beside the two realtime-js ones.
        python_client = AsyncRealtimeClient(server.realtime_url, SERVICE_KEY, auto_reconnect=False)
        await python_client.connect()
        got: list[dict[str, Any]] = []
        states: list[RealtimeSubscribeStates] = []
        channel = python_client.channel("events:critical", {"config": {"private": True}})
        channel.on_broadcast("events", lambda message: got.append(dict(message)))
        await channel.subscribe(lambda state, _err: states.append(state))
        await until(lambda: bool(states))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        anon = mint_token(SECRET, {"role": "anon", "exp": int(time.time()) + 3600})
        env = {"SUPABASE_URL": server.url, "SUPABASE_KEY": SERVICE_KEY, "ANON_TOKEN": anon}
        script = REPO / "tests" / "clients" / "realtime_js_roundtrip.mjs"
        try:
            async with node_script(script, env) as roundtrip:
                lines = [await roundtrip.line() for _ in range(4)]
                assert await roundtrip.proc.wait() == 0, await roundtrip.stderr()
        finally:
            await python_client.close()
        sent, received, acks, system = (
            line[key]
            for line, key in zip(lines, ("sent", "received", "acks", "system"), strict=True)
        )
        # realtime-js framed its broadcasts in binary; its other client got them
        # in binary, the Python client as JSON, all equal to what was sent.
        assert server.stats.malformed == 0 and server.stats.broadcasts == len(sent)
        assert received == sent and acks == ["ok"] * len(sent)
        await until(lambda: len(got) == len(sent))
        assert [m["payload"] for m in got] == sent
        # setAuth with an anonymous user's token: the channel is shut down.
        assert system == {
            "extension": "system",
            "status": "error",
            "message": "You do not have permissions to read from this Channel topic: "
            "events:critical",
            "channel": "events:critical",
        }
        assert server.stats.unauthorized == 1


async def test_the_readmes_browser_example_verifies_every_event(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^```js\n(.*?)^```", readme, re.S | re.M)
    assert found is not None, "the README shows no JavaScript example"
    async with LocalRealtimeServer(key=SERVICE_KEY) as server:
        # As written, but for the two lines that say where the project is.
        example = found[1]
        for placeholder, value in (
            ("'https://your-project.supabase.co'", server.url),
            ("'your-anon-key'", SERVICE_KEY),
        ):
            assert placeholder in example
            example = example.replace(placeholder, json.dumps(value))
        # Beside the copied helper, as the README says; Node 20 has no
        # WebSocket of its own, which a browser has: ws stands in for it.
        (tmp_path / "broadcaster-verify.js").symlink_to(CLIENTS_JS / "broadcaster-verify.js")
        (tmp_path / "node_modules").symlink_to(node_modules())
        (tmp_path / "example.mjs").write_text(example, encoding="utf-8")
        preload = tmp_path / "browser-websocket.mjs"
        preload.write_text("import W from 'ws'\nglobalThis.WebSocket ??= W\n", encoding="utf-8")
        settings = load_settings(
            env_file=None,
            websocket_port=0,
            store_url="memory://",
            supabase_url=server.url,
            supabase_key=SERVICE_KEY,
        )
        async with (
            node_script(tmp_path / "example.mjs", {}, preload=preload) as browser,
            Broadcaster(settings) as b,
        ):
            # The broadcaster's adapter and the example on the channel.
            await until(lambda: server.subscribers("realtime:events:critical") == 2)
            sent = [
                (
                    await b.publish("CRITICAL", "order.paid", {"amount": float(i), "i": i})
                ).sequence_id
                for i in range(10)
            ]
            assert browser.proc.stdout is not None
            lines = []
            async with asyncio.timeout(30):
                while len(lines) < len(sent):
                    lines.append((await browser.proc.stdout.readline()).decode().strip())
    # Batches verify concurrently in the example: the lines come in any order.
    assert sorted(lines) == sorted(f"{seq} verified" for seq in sent)
