"""AdapterBreaker: real async calls against small fake adapters (no mocks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pybreaker
import pytest
from structlog.testing import capture_logs

from broadcaster.breaker import AdapterBreaker, BreakerOpen
from broadcaster.breaker_policy import BreakerConfig, Transition
from broadcaster.exceptions import AdapterError, AdapterTimeout, AdapterUnavailable
from broadcaster.settings import Settings

CFG = BreakerConfig(latency_threshold_ms=100.0, recovery_time_s=30.0, half_open_requests=3)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeAdapter:
    """Sends succeed, fail, or hang on a gate; counts what reached it."""

    def __init__(self, name: str = "websocket") -> None:
        self.name = name
        self.sent = 0
        self.active = 0
        self.max_active = 0
        self.fail: BaseException | None = None
        self.delay = 0.0
        self.gate: asyncio.Event | None = None

    async def send(self, batch: list[int]) -> int:
        self.sent += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return len(batch)
        finally:
            self.active -= 1


def lost() -> AdapterUnavailable:
    return AdapterUnavailable("websocket", "connection lost")


def state_changes(logs: Sequence[Mapping[str, Any]]) -> list[tuple[object, ...]]:
    return [
        (e["log_level"], e["adapter"], e["from_state"], e["to_state"])
        for e in logs
        if e["event"] == "circuit breaker state changed"
    ]


async def trip(breaker: AdapterBreaker, adapter: FakeAdapter) -> None:
    adapter.fail = lost()
    with pytest.raises(AdapterUnavailable):
        await breaker.call(lambda: adapter.send([1]))
    adapter.fail = None


async def test_a_closed_breaker_passes_calls_through() -> None:
    adapter = FakeAdapter()
    breaker = AdapterBreaker("websocket", CFG, FakeClock())
    with capture_logs() as logs:
        assert await breaker.call(lambda: adapter.send([1, 2, 3])) == 3
    assert logs == []
    assert (breaker.state, breaker.share, breaker.failure_rate) == ("closed", 100, 0.0)
    assert breaker.circuit.current_state == pybreaker.STATE_CLOSED
    assert breaker.transitions == {}
    assert breaker.opened_at is None and breaker.retry_at is None


async def test_a_lost_connection_opens_it_and_further_calls_are_refused() -> None:
    clock = FakeClock()
    adapter = FakeAdapter()
    breaker = AdapterBreaker("websocket", CFG, clock)
    error = lost()
    adapter.fail = error
    with capture_logs() as logs:
        with pytest.raises(AdapterUnavailable) as caught:
            await breaker.call(lambda: adapter.send([1]))
    assert caught.value is error  # re-raised unchanged
    assert state_changes(logs) == [("warning", "websocket", "closed", "open")]
    assert "connection failure" in str(logs[0]["reason"])
    assert breaker.state == "open"
    assert breaker.circuit.current_state == pybreaker.STATE_OPEN
    assert breaker.transitions == {"closed->open": 1}
    assert breaker.opened_at == clock.now
    assert breaker.share == 0

    with pytest.raises(BreakerOpen) as refused:
        await breaker.call(lambda: adapter.send([2]))
    assert adapter.sent == 1  # the refused call never reached the adapter
    assert not isinstance(refused.value, AdapterError)  # no delivery was attempted
    assert refused.value.adapter == "websocket"
    assert refused.value.state == "open"
    assert refused.value.retry_at == clock.now + 30.0
    assert str(refused.value) == "websocket: circuit breaker open; retry at 1030.000"


async def test_recovery_goes_half_open_then_closed_then_ramps() -> None:
    clock = FakeClock()
    adapter = FakeAdapter()
    seen: list[Transition] = []
    breaker = AdapterBreaker("realtime", CFG, clock, on_transition=seen.append)
    await trip(breaker, adapter)
    clock.now += 30.0
    with capture_logs() as logs:
        await breaker.call(lambda: adapter.send([1]))
        assert breaker.state == "half_open"
        assert breaker.circuit.current_state == pybreaker.STATE_HALF_OPEN
        assert breaker.share == 10
        await breaker.call(lambda: adapter.send([2]))
        await breaker.call(lambda: adapter.send([3]))
    assert state_changes(logs) == [
        ("info", "realtime", "open", "half_open"),
        ("info", "realtime", "half_open", "closed"),
    ]
    assert [e["reason"] for e in logs] == ["recovery time elapsed", "3 probe calls succeeded"]
    assert breaker.state == "closed"
    assert breaker.circuit.current_state == pybreaker.STATE_CLOSED
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}
    assert [t.key for t in seen] == ["closed->open", "open->half_open", "half_open->closed"]
    assert breaker.share == 10
    clock.now += 10.0
    assert breaker.share == 25
    clock.now += 20.0
    assert breaker.share == 100


async def test_a_failed_probe_reopens() -> None:
    clock = FakeClock()
    adapter = FakeAdapter()
    breaker = AdapterBreaker("websocket", CFG, clock)
    await trip(breaker, adapter)
    clock.now += 30.0
    adapter.fail = AdapterTimeout("websocket", "no ack")
    with pytest.raises(AdapterTimeout):
        await breaker.call(lambda: adapter.send([1]))
    assert breaker.state == "open"
    assert breaker.circuit.current_state == pybreaker.STATE_OPEN
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->open": 1}
    assert breaker.retry_at == clock.now + 30.0


async def test_a_slow_call_counts_as_failed() -> None:
    # 10 ms x 2: a 60 ms call is slow; with min_calls=1 one slow call trips it.
    config = replace(CFG, latency_threshold_ms=10.0, min_calls=1, error_threshold=0.0)
    adapter = FakeAdapter("realtime")
    adapter.delay = 0.06
    breaker = AdapterBreaker("realtime", config)  # the real monotonic clock
    with capture_logs() as logs:
        assert await breaker.call(lambda: adapter.send([1, 2])) == 2  # the result still returns
    assert breaker.state == "open"
    assert breaker.circuit.current_state == pybreaker.STATE_OPEN
    assert state_changes(logs) == [("warning", "realtime", "closed", "open")]
    assert logs[0]["reason"] == "failure rate 1.000 > 0.0 over 1 calls (0 failed, 1 slow)"
    assert breaker.opened_at is not None
    assert breaker.opened_at <= time.monotonic()


async def test_the_rate_rule_trips_on_timeouts() -> None:
    config = replace(CFG, min_calls=10, error_threshold=0.2)
    adapter = FakeAdapter()
    breaker = AdapterBreaker("websocket", config, FakeClock())
    for _ in range(8):
        await breaker.call(lambda: adapter.send([1]))
    adapter.fail = AdapterTimeout("websocket", "no ack")
    for _ in range(2):
        with pytest.raises(AdapterTimeout):
            await breaker.call(lambda: adapter.send([1]))
    assert breaker.state == "closed"  # 2/10 = 20 %: not above
    assert breaker.failure_rate == 0.2
    with pytest.raises(AdapterTimeout):
        await breaker.call(lambda: adapter.send([1]))
    assert breaker.state == "open"


async def test_half_open_admits_at_most_n_concurrent_probes() -> None:
    clock = FakeClock()
    adapter = FakeAdapter()
    breaker = AdapterBreaker("websocket", CFG, clock)
    await trip(breaker, adapter)
    clock.now += 30.0
    adapter.gate = asyncio.Event()
    sent_before = adapter.sent
    calls = [asyncio.create_task(breaker.call(lambda: adapter.send([1]))) for _ in range(20)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert adapter.active == 3
    adapter.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BreakerOpen)]
    assert len(refused) == 17
    assert all(r.state == "half_open" and r.retry_at is None for r in refused)
    assert results.count(1) == 3
    assert adapter.sent - sent_before == 3
    assert adapter.max_active == 3
    assert breaker.state == "closed"


async def test_a_cancelled_probe_frees_its_slot() -> None:
    clock = FakeClock()
    adapter = FakeAdapter()
    breaker = AdapterBreaker("websocket", replace(CFG, half_open_requests=1), clock)
    await trip(breaker, adapter)
    clock.now += 30.0
    adapter.gate = asyncio.Event()
    probe = asyncio.create_task(breaker.call(lambda: adapter.send([1])))
    await asyncio.sleep(0)
    with pytest.raises(BreakerOpen):
        await breaker.call(lambda: adapter.send([1]))
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert breaker.state == "half_open"
    adapter.gate.set()
    assert await breaker.call(lambda: adapter.send([1])) == 1
    assert breaker.state == "closed"


async def test_calls_in_flight_when_it_opened_do_not_count_later() -> None:
    clock = FakeClock()
    adapter = FakeAdapter()
    stale = FakeAdapter()
    stale.gate = asyncio.Event()
    stale.fail = lost()
    breaker = AdapterBreaker("websocket", CFG, clock)
    stragglers = [asyncio.create_task(breaker.call(lambda: stale.send([1]))) for _ in range(9)]
    await asyncio.sleep(0)
    assert stale.active == 9  # admitted while closed
    await trip(breaker, adapter)
    clock.now += 30.0
    adapter.gate = asyncio.Event()
    probe = asyncio.create_task(breaker.call(lambda: adapter.send([1])))
    await asyncio.sleep(0)
    assert breaker.state == "half_open"
    # The stragglers fail now, during half-open: they are not probes.
    stale.gate.set()
    results = await asyncio.gather(*stragglers, return_exceptions=True)
    assert all(isinstance(r, AdapterUnavailable) for r in results)
    assert breaker.state == "half_open"
    assert breaker.policy.probes_in_flight == 1
    adapter.gate.set()
    assert await probe == 1
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1}


async def test_health_and_from_settings() -> None:
    clock = FakeClock()
    breaker = AdapterBreaker.from_settings(Settings(_env_file=None), "realtime", clock)
    assert breaker.config.latency_threshold_ms == 150.0
    assert breaker.config.half_open_requests == 5
    adapter = FakeAdapter("realtime")
    await breaker.call(lambda: adapter.send([1]))
    assert breaker.health() == {
        "state": "closed",
        "share": 100,
        "failure_rate": 0.0,
        "calls": 1,
        "opened_at": None,
        "retry_at": None,
        "transitions": {},
    }
    await trip(breaker, adapter)
    health = breaker.health()
    assert (health["state"], health["opened_at"], health["retry_at"]) == ("open", 1000.0, 1030.0)


async def test_a_state_set_directly_on_pybreaker_is_still_logged() -> None:
    breaker = AdapterBreaker("websocket", CFG, FakeClock())
    with capture_logs() as logs:
        breaker.circuit.open()
    assert logs[0]["reason"] == "set directly on pybreaker"
    assert breaker.transitions == {"closed->open": 1}
