"""Fixtures of the Realtime adapter's tests: a recording server, records, a
listener, and a factory of adapters closed at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broadcaster.adapters.realtime import RealtimeAdapter
from tests.adapters.realtime._support import FAST, KEY, Listener, RecordingServer, Records


@pytest.fixture
def records() -> Records:
    return Records()


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    srv = RecordingServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def make_adapter() -> AsyncIterator[Callable[..., Any]]:
    """Factory of started adapters; every one is closed at the end."""
    made: list[RealtimeAdapter] = []

    async def make(url: str, *, start: bool = True, **kwargs: Any) -> RealtimeAdapter:
        adapter = RealtimeAdapter(url, kwargs.pop("key", KEY), **{**FAST, **kwargs})
        made.append(adapter)
        if start:
            await adapter.start()
        return adapter

    yield make
    for adapter in made:
        await adapter.close()


@pytest.fixture
async def listener(server: RecordingServer) -> AsyncIterator[Listener]:
    lis = Listener(server.realtime_url)
    await lis.start()
    try:
        yield lis
    finally:
        await lis.close()
