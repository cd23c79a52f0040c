"""Bare WebSocket clients writing Phoenix frames by hand, in either protocol
version, so that every frame the server sends is visible to a test."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from broadcaster.realtime_server import LocalRealtimeServer

__all__ = ["TOPIC", "FakeClock", "RawClient", "Connect", "broadcast_payload", "clients", "refusal"]

TOPIC = "realtime:events:critical"


def broadcast_payload(n: int) -> dict[str, Any]:
    return {"type": "broadcast", "event": "events", "payload": {"events": [{"n": n}]}}


class FakeClock:
    """The server's clock, moved by the test."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RawClient:
    """A bare WebSocket client speaking ``vsn`` by hand. Whatever version, a
    received frame comes back as a dict ``{topic, event, payload, ref,
    join_ref}`` (``join_ref`` only where the version carries it), plus
    ``"binary": True`` for a binary user broadcast."""

    def __init__(self, ws: ClientConnection, vsn: str = "1.0.0") -> None:
        self.ws = ws
        self.vsn = vsn
        self._ref = 0
        self.join_refs: dict[str, str] = {}

    def _next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def push(self, topic: str, event: str, payload: Any = None) -> str:
        ref = self._next_ref()
        if event == "phx_join":
            self.join_refs[topic] = ref
        body = {} if payload is None else payload
        join_ref = self.join_refs.get(topic)
        if self.vsn == "1.0.0":
            frame: Any = {
                "topic": topic,
                "event": event,
                "payload": body,
                "ref": ref,
                "join_ref": join_ref,
            }
        else:
            frame = [join_ref, ref, topic, event, body]
        await self.ws.send(orjson.dumps(frame).decode())
        return ref

    async def push_user_broadcast(
        self, topic: str, event: str, payload: bytes, *, json: bool = True
    ) -> str:
        """A broadcast as realtime-js frames it (binary, kind 3)."""
        ref = self._next_ref()
        fields = [self.join_refs.get(topic, "").encode(), ref.encode(), topic.encode()]
        fields += [event.encode(), b""]
        header = bytes([3, *(len(f) for f in fields), 1 if json else 0])
        await self.ws.send(header + b"".join(fields) + payload)
        return ref

    async def recv(self, wait_s: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            raw = await self.ws.recv()
        if isinstance(raw, bytes):
            assert self.vsn == "2.0.0", "only 2.0.0 clients get binary frames"
            kind, topic_size, event_size, meta_size, encoding = struct.unpack_from("5B", raw)
            assert kind == 4 and meta_size == 0
            at = 5 + topic_size
            body = raw[at + event_size :]
            return {
                "topic": raw[5:at].decode(),
                "event": "broadcast",
                "payload": {
                    "type": "broadcast",
                    "event": raw[at : at + event_size].decode(),
                    "payload": orjson.loads(body) if encoding == 1 else body,
                },
                "ref": None,
                "join_ref": None,
                "binary": True,
            }
        msg = orjson.loads(raw)
        if self.vsn == "1.0.0":
            assert isinstance(msg, dict) and "join_ref" not in msg
            result: dict[str, Any] = msg
            return result
        assert isinstance(msg, list) and len(msg) == 5
        join_ref, ref, topic, event, payload = msg
        return {
            "topic": topic,
            "event": event,
            "payload": payload,
            "ref": ref,
            "join_ref": join_ref,
        }

    async def expect_silence(self, seconds: float = 0.15) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(wait_s=seconds)

    async def join(
        self,
        topic: str = TOPIC,
        *,
        ack: bool = True,
        self_: bool = False,
        private: bool = False,
        access_token: str | None = None,
    ) -> dict[str, Any]:
        """Join ``topic``; returns the reply's payload (status and response)."""
        config: dict[str, Any] = {"broadcast": {"ack": ack, "self": self_}, "presence": {"key": ""}}
        if private:
            config["private"] = True
        payload: dict[str, Any] = {"config": config}
        if access_token is not None:
            payload["access_token"] = access_token
        ref = await self.push(topic, "phx_join", payload)
        reply = await self.recv()
        assert reply["event"] == "phx_reply" and reply["ref"] == ref, reply
        result: dict[str, Any] = reply["payload"]
        return result

    async def joined(self, topic: str = TOPIC, **options: Any) -> None:
        result = await self.join(topic, **options)
        assert result["status"] == "ok", result


Connect = Callable[..., Awaitable[RawClient]]


@asynccontextmanager
async def clients(server: LocalRealtimeServer) -> AsyncIterator[Connect]:
    """A factory of raw clients of ``server`` (``await make(vsn=..., apikey=...)``),
    all closed at the end."""
    opened: list[ClientConnection] = []

    async def make(vsn: str = "1.0.0", apikey: str = "k") -> RawClient:
        url = f"ws://127.0.0.1:{server.port}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}"
        ws = await connect(url, compression=None, max_size=None)
        opened.append(ws)
        return RawClient(ws, vsn)

    try:
        yield make
    finally:
        for ws in opened:
            await ws.close()


async def refusal(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """The HTTP status and body a WebSocket handshake to ``url`` is refused with."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, compression=None, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, response.body or b""
