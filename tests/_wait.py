"""Waiting in tests for a state to hold — never for a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["until"]


async def until(predicate: Callable[[], bool], within_s: float = 30.0) -> None:
    """Return as soon as ``predicate()`` holds, checking every 10 ms (for states
    with nothing to await); fail with TimeoutError after ``within_s``. The bound
    only ends a hung test: generous, so a loaded machine cannot trip it."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - the state has no awaitable
            await asyncio.sleep(0.01)
