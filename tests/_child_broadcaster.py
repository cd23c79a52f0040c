"""A broadcaster in its own process, for crash tests.

``python -m tests._child_broadcaster publish STORE_URL WS_PORT REALTIME_URL``
publishes a steady mixed stream and prints ``ack <sequence_id> <adapters>``
after each ``publish()`` returns, until killed.

``python -m tests._child_broadcaster recover STORE_URL WS_PORT REALTIME_URL``
starts the broadcaster on the same store (so it re-sends what the dead one left
undelivered) once a WebSocket subscriber is back, flushes, prints ``recovered``
and waits to be terminated.
"""

from __future__ import annotations

import asyncio
import sys

from broadcaster.adapters.realtime import RealtimeAdapter
from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.core import Broadcaster
from broadcaster.logs import configure_logging
from broadcaster.settings import load_settings

CATEGORIES = ("CRITICAL", "SYSTEM", "PERFORMANCE", "USER_ACTIVITY")


async def main(mode: str, store_url: str, ws_port: int, realtime_url: str) -> None:
    # The test's Realtime server accepts any key; the supabase client needs one.
    settings = load_settings(
        env_file=None,
        store_url=store_url,
        websocket_port=ws_port,
        supabase_url=realtime_url,
        supabase_key="crash-test-key",
    )
    ws = WebSocketAdapter.from_settings(settings)
    await ws.start()
    rt = RealtimeAdapter.from_settings(settings, url=settings.realtime_url())
    # The legacy fan-out only reaches connected subscribers: wait for the
    # test's subscriber so what is re-sent on recovery has someone to reach.
    async with asyncio.timeout(30):
        await ws.wait_for_subscribers(1)
    async with Broadcaster(settings, adapters=[ws, rt]) as b:
        if mode == "recover":
            await b.flush(timeout=60)
            print("recovered", flush=True)
            await asyncio.Event().wait()
        i = 0
        while True:
            receipt = await b.publish(
                CATEGORIES[i % len(CATEGORIES)], "crash.test", {"i": i}, key=f"k{i}"
            )
            print(f"ack {receipt.sequence_id} {','.join(receipt.routed_to)}", flush=True)
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0.005)  # a steady stream, not a flood


if __name__ == "__main__":
    configure_logging("console", "WARNING")
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
