"""The reconcile schedule (``broadcaster.reconcile.schedule``): what
``RECONCILE_INTERVAL_S`` and ``RETENTION_S`` run in a service. The sleep
between rounds is injected: these tests never wait for the clock."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster import Broadcaster, MemoryAdapter, StoreUnavailable
from broadcaster.reconcile import RECONCILED_THROUGH
from broadcaster.reconcile.schedule import ReconcileSchedule
from broadcaster.settings import load_settings
from broadcaster.store import MemoryStore
from tests._fakes import receipts_for
from tests.reconcile.test_reconciler import Clock


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)  # a turn of the loop, no time


async def test_each_round_reconciles_then_prunes_what_is_old_enough() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with Broadcaster(
        load_settings(env_file=None), adapters=[ws, rt], store=store, clock=clock
    ) as b:
        for i in range(3):
            await b.publish("CRITICAL", "e", {"i": i})
        await b.flush(timeout=5)
        at = int(clock.now * 1000)
        await store.record_receipts(receipts_for(ws.events, "websocket", at))
        await store.record_receipts(receipts_for(rt.events, "realtime", at))
        clock.now += 3600  # past the buffer and the retention age
        schedule = ReconcileSchedule(b, interval_s=30, retention_s=60, sleep=_no_wait)
        async with schedule, asyncio.timeout(30):  # fails instead of hanging
            while await store.get(3) is not None:  # noqa: ASYNC110 (the store has no event)
                await asyncio.sleep(0)
        assert b.reconciler.last_report is not None
        assert await store.get_watermark(RECONCILED_THROUGH) == 3
        assert [await store.get(seq) for seq in (1, 2, 3)] == [None, None, None]


async def test_without_retention_a_round_prunes_nothing() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    async with Broadcaster(
        load_settings(env_file=None), adapters=[], store=store, clock=clock
    ) as b:
        await b.publish("CRITICAL", "e", {})
        clock.now += 3600
        assert await ReconcileSchedule(b, interval_s=1, retention_s=None).run_once() == 0
        assert await store.get(1) is not None


class _Flaky:
    """A target whose first reconciliation finds the store unavailable."""

    def __init__(self) -> None:
        self.rounds = 0
        self.done = asyncio.Event()

    async def reconcile(self) -> None:
        self.rounds += 1
        if self.rounds == 1:
            raise StoreUnavailable("database is locked")
        self.done.set()

    async def prune(self, older_than_s: float) -> int:
        return 0


async def test_a_failed_round_is_logged_and_the_next_one_runs() -> None:
    target = _Flaky()
    async with ReconcileSchedule(target, interval_s=5, retention_s=10, sleep=_no_wait):
        async with asyncio.timeout(30):
            await target.done.wait()
    assert target.rounds >= 2


def test_the_settings_choose_the_schedule() -> None:
    target = _Flaky()
    off = load_settings(env_file=None, reconcile_interval_s=0, retention_s=0)
    assert ReconcileSchedule.from_settings(target, off) is None
    keep = ReconcileSchedule.from_settings(
        target, load_settings(env_file=None, reconcile_interval_s=5, retention_s=0)
    )
    assert keep is not None and (keep.interval_s, keep.retention_s) == (5, None)
    both = ReconcileSchedule.from_settings(
        target, load_settings(env_file=None, reconcile_interval_s=5, retention_s=10)
    )
    assert both is not None and (both.interval_s, both.retention_s) == (5, 10)
    with pytest.raises(ValueError, match="interval_s"):
        ReconcileSchedule(target, interval_s=0, retention_s=None)


async def test_a_broadcaster_runs_no_schedule_of_its_own() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    settings = load_settings(env_file=None, reconcile_interval_s=0.001, retention_s=1)
    async with Broadcaster(settings, adapters=[MemoryAdapter("websocket")], store=store) as b:
        await b.publish("CRITICAL", "e", {})
        await b.flush(timeout=5)
        for _ in range(100):
            await asyncio.sleep(0)
        assert b.reconciler.last_report is None
