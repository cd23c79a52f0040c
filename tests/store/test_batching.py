"""The SQL backends' shared helpers: group commit of marks and their coalescing."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.store import DeliveryState
from broadcaster.store._batching import GroupCommit, MarkRequest, coalesce_marks

__all__: list[str] = []

ACKED, FAILED = DeliveryState.ACKED, DeliveryState.FAILED


def test_coalesce_merges_consecutive_runs_per_adapter() -> None:
    requests = [
        MarkRequest("ws", (1,), ACKED, None),
        MarkRequest("rt", [1], ACKED, None),
        MarkRequest("ws", [2, 3], ACKED, None),
        MarkRequest("ws", [4], FAILED, "boom"),
        MarkRequest("ws", [5], FAILED, "boom"),
        MarkRequest("ws", [4], ACKED, None),  # after the failure: stays a run of its own
    ]
    assert coalesce_marks(requests) == [
        MarkRequest("ws", [1, 2, 3], ACKED, None),
        MarkRequest("ws", [4, 5], FAILED, "boom"),
        MarkRequest("ws", [4], ACKED, None),
        MarkRequest("rt", [1], ACKED, None),
    ]
    assert requests[0].sequence_ids == (1,)  # the callers' sequences are not touched
    assert coalesce_marks([]) == []


async def test_group_commit_batches_concurrent_calls() -> None:
    flushed: list[list[MarkRequest]] = []

    async def flush(batch: list[MarkRequest]) -> None:
        flushed.append(batch)
        await asyncio.sleep(0.001)

    group = GroupCommit(flush)
    requests = [MarkRequest("ws", [i], ACKED, None) for i in range(10)]
    await asyncio.gather(*(group.submit(r) for r in requests))
    assert [r for batch in flushed for r in batch] == requests  # all, in order
    assert len(flushed) < len(requests)  # the first flush runs alone, the rest share one
    await group.wait_idle()


async def test_group_commit_failure_reaches_every_waiter_of_its_batch() -> None:
    calls = 0

    async def flush(batch: list[MarkRequest]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk full")

    group = GroupCommit(flush)
    results = await asyncio.gather(
        *(group.submit(MarkRequest("ws", [i], ACKED, None)) for i in range(3)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [RuntimeError] * 3
    await group.submit(MarkRequest("ws", [9], ACKED, None))  # the next batch commits
    assert calls == 2


async def test_group_commit_cancelled_flush_cancels_its_waiters() -> None:
    started = asyncio.Event()

    async def flush(batch: list[MarkRequest]) -> None:
        started.set()
        await asyncio.sleep(10)

    group = GroupCommit(flush)
    waiter = asyncio.create_task(group.submit(MarkRequest("ws", [1], ACKED, None)))
    await started.wait()
    assert group._task is not None
    group._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_group_commit_linger_gathers_calls_that_come_apart() -> None:
    """Calls a few milliseconds apart (the acks of two adapters at low rates)
    share one transaction when the first one lingers for company."""
    flushed: list[list[MarkRequest]] = []

    async def flush(batch: list[MarkRequest]) -> None:
        flushed.append(batch)

    async def apart(group: GroupCommit) -> None:
        """The second call comes turns of the loop after the first, once the
        first one's transaction task has started (and lingers, or has already
        committed alone) — however slow the machine, not after a fixed time."""
        first = asyncio.create_task(group.submit(MarkRequest("ws", [1], ACKED, None)))
        for _ in range(3):  # the first call queues, its transaction task starts
            await asyncio.sleep(0)
        await group.submit(MarkRequest("rt", [1], ACKED, None))
        await first

    await apart(GroupCommit(flush))
    assert len(flushed) == 2
    flushed.clear()
    await apart(GroupCommit(flush, linger_s=0.05))
    assert flushed == [[MarkRequest("ws", [1], ACKED, None), MarkRequest("rt", [1], ACKED, None)]]


async def test_group_commit_cancelled_while_lingering_cancels_its_waiters() -> None:
    async def flush(batch: list[MarkRequest]) -> None:
        raise AssertionError("nothing is flushed")

    group = GroupCommit(flush, linger_s=10)
    waiter = asyncio.create_task(group.submit(MarkRequest("ws", [1], ACKED, None)))
    await asyncio.sleep(0)
    assert group._task is not None
    group._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await group.wait_idle()
