"""The pure breaker policy, driven by explicit times (a fake clock)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.breaker_policy import (
    HISTORY_SIZE,
    BreakerConfig,
    BreakerPolicy,
    BreakerState,
    CallOutcome,
    SlidingWindow,
    Transition,
)
from broadcaster.exceptions import (
    AdapterRejected,
    AdapterThrottled,
    AdapterTimeout,
    AdapterUnavailable,
    EventsRefused,
)
from broadcaster.settings import Settings

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# latency 100 ms x 2 -> calls over 0.2 s are slow
CFG = BreakerConfig(latency_threshold_ms=100.0)
FAST = 0.01
SLOW = 0.5


def unavailable() -> AdapterUnavailable:
    return AdapterUnavailable("websocket", "connection lost")


def timeout() -> AdapterTimeout:
    return AdapterTimeout("websocket", "no ack")


def fill(policy: BreakerPolicy, now: float, successes: int) -> None:
    for _ in range(successes):
        assert policy.record(now, True, FAST) is None


def tripped(config: BreakerConfig = CFG, at: float = 0.0) -> BreakerPolicy:
    policy = BreakerPolicy(config)
    policy.record(at, False, FAST, unavailable())
    assert policy.state is OPEN
    return policy


def half_open(config: BreakerConfig = CFG) -> tuple[BreakerPolicy, float]:
    policy = tripped(config)
    now = config.recovery_time_s
    assert policy.poll(now) is not None
    assert policy.state is HALF_OPEN
    return policy, now


def recovered(config: BreakerConfig = CFG) -> tuple[BreakerPolicy, float]:
    policy, now = half_open(config)
    for _ in range(config.half_open_requests):
        assert policy.allow(now)
        policy.record(now, True, FAST)
    assert policy.state is CLOSED
    return policy, now


# -- config -------------------------------------------------------------------


def test_config_defaults_and_slow_bound() -> None:
    assert CFG.error_threshold == 0.05
    assert CFG.latency_multiplier == 2.0
    assert CFG.recovery_time_s == 30.0
    assert CFG.half_open_requests == 5
    assert CFG.ramp_steps == (10, 25, 50, 100)
    assert CFG.immediate_trip_errors == (AdapterUnavailable,)
    assert CFG.slow_call_s == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("error_threshold", 1.5, "error_threshold"),
        ("error_threshold", -0.1, "error_threshold"),
        ("latency_threshold_ms", 0.0, "latency_threshold_ms"),
        ("latency_threshold_ms", math.nan, "latency_threshold_ms"),
        ("latency_multiplier", 0.5, "latency_multiplier"),
        ("bucket_s", 0.0, "bucket_s"),
        ("window_s", 0.5, "bucket_s"),
        ("min_calls", 0, "min_calls"),
        ("recovery_time_s", 0.0, "recovery_time_s"),
        ("half_open_requests", 0, "half_open_requests"),
        ("ramp_steps", (), "ramp_steps"),
        ("ramp_steps", (10, 50), "ramp_steps"),
        ("ramp_steps", (0, 100), "ramp_steps"),
        ("ramp_steps", (50, 25, 100), "ramp_steps"),
        ("ramp_steps", (50, 50, 100), "ramp_steps"),
        ("ramp_step_s", 0.0, "ramp_step_s"),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(CFG, **{field: value})


def test_config_accepts_a_single_full_step() -> None:
    assert replace(CFG, ramp_steps=(100,)).ramp_steps == (100,)


def test_config_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        breaker_recovery_time_s=12,
        breaker_half_open_requests=3,
        breaker_latency_multiplier=3.0,
    )
    ws = BreakerConfig.from_settings(settings, "websocket")
    rt = BreakerConfig.from_settings(settings, "realtime")
    assert (ws.latency_threshold_ms, rt.latency_threshold_ms) == (200.0, 150.0)
    assert ws.error_threshold == 0.05
    assert (ws.recovery_time_s, ws.half_open_requests, ws.latency_multiplier) == (12, 3, 3.0)
    assert rt.slow_call_s == pytest.approx(0.45)


def test_config_from_settings_reads_adapter_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_REALTIME_ERROR_THRESHOLD", "0.2")
    monkeypatch.setenv("ADAPTER_REALTIME_LATENCY_THRESHOLD_MS", "80")
    config = BreakerConfig.from_settings(Settings(_env_file=None), "realtime")
    assert (config.error_threshold, config.latency_threshold_ms) == (0.2, 80.0)


def test_config_from_settings_unknown_adapter() -> None:
    with pytest.raises(ValueError, match="'kafka'.*known: realtime, websocket"):
        BreakerConfig.from_settings(Settings(_env_file=None), "kafka")


# -- sliding window -------------------------------------------------------------


def test_window_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(window_s=1.0, bucket_s=0.0)
    with pytest.raises(ValueError):
        SlidingWindow(window_s=0.5, bucket_s=1.0)


def test_window_counts_and_expires() -> None:
    window = SlidingWindow(window_s=3.0)
    assert window.buckets == 3
    assert (window.calls(0.0), window.failure_rate(0.0)) == (0, 0.0)
    window.record(0.1, CallOutcome.SUCCESS)
    window.record(0.2, CallOutcome.FAILURE)
    window.record(1.5, CallOutcome.SLOW)
    window.record(2.9, CallOutcome.SUCCESS)
    assert (window.calls(2.9), window.failures(2.9), window.slow(2.9)) == (4, 1, 1)
    assert window.failure_rate(2.9) == 0.5
    # At 3.0 the bucket [0, 1) leaves the window.
    assert (window.calls(3.0), window.failures(3.0), window.slow(3.0)) == (2, 0, 1)
    # Far later, everything is gone.
    assert window.calls(100.0) == 0
    assert window.failure_rate(100.0) == 0.0


def test_window_counts_a_late_timestamp_in_the_newest_bucket() -> None:
    window = SlidingWindow(window_s=2.0)
    window.record(5.5, CallOutcome.SUCCESS)
    window.record(1.0, CallOutcome.FAILURE)  # the clock stepped back
    assert window.calls(5.9) == 2
    assert window.calls(6.0) == 2
    assert window.calls(7.0) == 0


def test_window_clear() -> None:
    window = SlidingWindow(window_s=2.0)
    window.record(0.0, CallOutcome.FAILURE)
    window.clear()
    assert (window.calls(0.0), window.failures(0.0)) == (0, 0)
    window.record(0.5, CallOutcome.SLOW)
    assert window.failure_rate(0.5) == 1.0


def test_window_of_non_whole_buckets_rounds_up() -> None:
    assert SlidingWindow(window_s=2.5, bucket_s=1.0).buckets == 3
    assert SlidingWindow(window_s=1.0, bucket_s=0.25).buckets == 4


@settings(max_examples=200, deadline=None)
@given(
    window_s=st.integers(1, 6),
    steps=st.lists(
        st.tuples(st.floats(0, 4, allow_nan=False), st.sampled_from(list(CallOutcome))),
        max_size=60,
    ),
)
def test_window_matches_a_brute_force_model(
    window_s: int, steps: list[tuple[float, CallOutcome]]
) -> None:
    window = SlidingWindow(window_s=float(window_s))
    seen: list[tuple[float, CallOutcome]] = []
    now = 0.0
    for delta, outcome in steps:
        now += delta
        window.record(now, outcome)
        seen.append((now, outcome))
        newest = math.floor(now)
        inside = [o for t, o in seen if math.floor(t) > newest - window_s]
        assert window.calls(now) == len(inside)
        assert window.failures(now) == inside.count(CallOutcome.FAILURE)
        assert window.slow(now) == inside.count(CallOutcome.SLOW)
        assert window.buckets == window_s  # memory does not grow with calls


# -- closed: the trip rules -------------------------------------------------------


def test_a_fresh_breaker_is_closed_with_full_share() -> None:
    policy = BreakerPolicy(CFG)
    assert policy.state is CLOSED
    assert policy.allow(0.0)
    assert policy.share(0.0) == 100
    assert (policy.opened_at, policy.retry_at, policy.history) == (None, None, ())
    assert policy.epoch == 0


def test_rate_rule_trips_above_the_threshold_only() -> None:
    policy = BreakerPolicy(CFG)
    fill(policy, 0.0, 19)
    assert policy.record(0.0, False, FAST, timeout()) is None  # 1/20 == 5 %: not above
    assert policy.failure_rate(0.0) == 0.05
    transition = policy.record(0.1, False, FAST, AdapterRejected("websocket", "400"))
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.at) == (CLOSED, OPEN, 0.1)
    assert transition.reason == "failure rate 0.095 > 0.05 over 21 calls (2 failed, 0 slow)"
    assert transition.key == "closed->open"
    assert policy.state is OPEN
    assert policy.opened_at == 0.1
    assert policy.retry_at == pytest.approx(30.1)


def test_slow_calls_count_as_failures() -> None:
    policy = BreakerPolicy(replace(CFG, min_calls=4, error_threshold=0.5))
    assert policy.classify(True, 0.2) is CallOutcome.SUCCESS  # at the bound: not slower
    assert policy.classify(True, 0.2001) is CallOutcome.SLOW
    assert policy.classify(False, 0.0) is CallOutcome.FAILURE
    fill(policy, 0.0, 1)
    assert policy.record(0.0, True, SLOW) is None
    assert policy.record(0.0, True, SLOW) is None  # 2 calls < min_calls
    transition = policy.record(0.0, True, SLOW)
    assert transition is not None and transition.to_state is OPEN
    assert "0.750" in transition.reason


def test_one_connection_failure_trips_at_once() -> None:
    policy = BreakerPolicy(CFG)
    transition = policy.record(3.0, False, FAST, unavailable())
    assert transition is not None
    assert transition.reason.startswith("connection failure: AdapterUnavailable(")
    assert policy.state is OPEN


def test_immediate_trip_errors_are_configurable() -> None:
    policy = BreakerPolicy(replace(CFG, immediate_trip_errors=(Exception,)))
    assert policy.record(0.0, False, FAST, timeout()) is not None
    policy = BreakerPolicy(replace(CFG, immediate_trip_errors=()))
    assert policy.record(0.0, False, FAST, unavailable()) is None
    assert policy.state is CLOSED


def test_a_quota_refusal_is_no_outcome_at_all() -> None:
    # Closed: a window of nothing but refusals neither trips nor fills.
    policy = BreakerPolicy(replace(CFG, min_calls=1, error_threshold=0.0))
    for _ in range(30):
        assert policy.record(0.0, False, SLOW, AdapterThrottled("realtime", "429", 1.0)) is None
        refused = EventsRefused("realtime", {7: "too big"}, "")
        assert policy.record(0.0, False, FAST, refused) is None
    assert policy.state is CLOSED and policy.calls(0.0) == 0
    # Half-open: a refused probe frees its slot and decides nothing.
    policy, now = half_open(replace(CFG, half_open_requests=1))
    assert policy.allow(now)
    assert policy.record(now, False, FAST, AdapterThrottled("realtime", "429", 1.0)) is None
    assert policy.state is HALF_OPEN and policy.probes_in_flight == 0
    assert policy.allow(now)
    # Configurable, like the immediate-trip errors.
    policy = BreakerPolicy(replace(CFG, neutral_errors=(), min_calls=1, error_threshold=0.0))
    assert policy.record(0.0, False, FAST, AdapterThrottled("realtime", "429", 1.0)) is not None


def test_failures_without_an_exception_and_other_errors_use_the_rate() -> None:
    policy = BreakerPolicy(replace(CFG, min_calls=2, error_threshold=0.5))
    assert policy.record(0.0, False, FAST) is None
    assert policy.record(0.0, False, FAST, RuntimeError("adapter bug")) is not None


def test_old_failures_leave_the_window() -> None:
    policy = BreakerPolicy(replace(CFG, min_calls=2, error_threshold=0.5))
    assert policy.record(0.0, False, FAST) is None
    # 10 s later the first failure has left the window: 1 call, under min_calls.
    assert policy.record(10.0, False, FAST) is None
    assert policy.calls(10.0) == 1
    assert policy.state is CLOSED


def test_a_successful_call_cannot_carry_an_error() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(CFG).record(0.0, True, FAST, timeout())


# -- open and half-open ------------------------------------------------------------


def test_open_refuses_until_the_recovery_time() -> None:
    policy = tripped(at=10.0)
    assert not policy.allow(39.9)
    assert policy.poll(39.9) is None
    assert policy.share(39.9) == 0
    assert policy.state is OPEN
    assert policy.allow(40.0)
    assert policy.state is HALF_OPEN
    last = policy.history[-1]
    assert (last.key, last.reason, last.at) == ("open->half_open", "recovery time elapsed", 40.0)
    assert policy.retry_at is None


def test_a_straggler_in_open_is_ignored() -> None:
    policy = tripped()
    assert policy.record(1.0, False, FAST, unavailable()) is None
    assert policy.record(1.0, True, FAST) is None
    assert policy.state is OPEN


def test_half_open_admits_n_probes_then_closes() -> None:
    policy, now = half_open()
    assert policy.share(now) == 10
    admitted = [policy.allow(now) for _ in range(7)]
    assert admitted == [True] * 5 + [False] * 2
    assert policy.probes_in_flight == 5
    for _ in range(4):
        assert policy.record(now, True, FAST) is None
    assert not policy.allow(now)  # 4 done + 1 in flight = 5 admitted
    transition = policy.record(now, True, FAST)
    assert transition is not None
    assert (transition.key, transition.reason) == ("half_open->closed", "5 probe calls succeeded")
    assert policy.state is CLOSED
    assert policy.calls(now) == 0  # a closed breaker starts with an empty window


@pytest.mark.parametrize(
    ("ok", "duration", "error", "reason"),
    [
        (False, FAST, timeout(), "probe failed: AdapterTimeout("),
        (True, SLOW, None, "probe failed: slow call (500 ms)"),
        (True, 2.25, None, "probe failed: slow call (2250 ms)"),
        (False, FAST, None, "probe failed: failure"),
    ],
)
def test_a_failed_probe_reopens(
    ok: bool, duration: float, error: BaseException | None, reason: str
) -> None:
    policy, now = half_open()
    assert policy.allow(now) and policy.allow(now)
    policy.record(now, True, FAST)
    transition = policy.record(now + 1, ok, duration, error)
    assert transition is not None
    assert transition.key == "half_open->open"
    assert transition.reason.startswith(reason)
    assert policy.opened_at == now + 1
    assert policy.retry_at == now + 1 + CFG.recovery_time_s
    assert not policy.allow(now + 2)


def test_release_frees_a_probe_slot() -> None:
    policy, now = half_open(replace(CFG, half_open_requests=1))
    epoch = policy.epoch
    assert policy.allow(now)
    assert not policy.allow(now)
    policy.release(epoch)
    assert policy.probes_in_flight == 0
    assert policy.allow(now)
    policy.release()  # epoch None: the current one
    assert policy.probes_in_flight == 0
    policy.release()  # more releases than probes never go negative
    assert policy.probes_in_flight == 0


def test_release_outside_half_open_or_from_an_old_epoch_does_nothing() -> None:
    policy = BreakerPolicy(CFG)
    policy.release(0)
    policy, now = half_open()
    assert policy.allow(now)
    policy.release(policy.epoch - 1)
    assert policy.probes_in_flight == 1


def test_outcomes_from_an_old_epoch_are_ignored() -> None:
    policy = BreakerPolicy(CFG)
    before = policy.epoch
    policy.record(0.0, False, FAST, unavailable())
    policy.poll(CFG.recovery_time_s)
    # A batch sent while closed fails after the breaker went half-open: not a probe.
    assert policy.record(31.0, False, FAST, timeout(), epoch=before) is None
    assert policy.state is HALF_OPEN
    assert policy.allow(31.0)
    assert policy.record(31.0, True, FAST, epoch=policy.epoch) is None
    assert policy.probes_in_flight == 0


# -- ramp -------------------------------------------------------------------------


def test_ramp_steps_up_to_full_traffic() -> None:
    policy, t0 = recovered()
    shares = [policy.share(t0 + dt) for dt in (0, 9.9, 10, 19.9, 20, 29.9, 30, 1000)]
    assert shares == [10, 10, 25, 25, 50, 50, 100, 100]
    assert policy.share(t0 - 5) == 10  # a clock before the close reads as step one


def test_a_failure_during_the_ramp_reopens() -> None:
    policy, t0 = recovered()
    fill(policy, t0 + 1, 3)
    transition = policy.record(t0 + 12, False, FAST, timeout())
    assert transition is not None
    assert transition.key == "closed->open"
    assert transition.reason.startswith("AdapterTimeout(") and "during ramp" in transition.reason
    assert policy.share(t0 + 12) == 0


def test_a_slow_call_during_the_ramp_reopens() -> None:
    policy, t0 = recovered()
    transition = policy.record(t0, True, SLOW)
    assert transition is not None
    assert transition.reason == "slow call (500 ms) during ramp"


def test_after_the_ramp_the_rate_rule_applies_again() -> None:
    policy, t0 = recovered()
    now = t0 + 30
    assert policy.record(now, False, FAST, timeout()) is None
    assert policy.state is CLOSED


def test_full_cycle_history_and_callback() -> None:
    seen: list[Transition] = []
    policy = BreakerPolicy(replace(CFG, half_open_requests=1), on_transition=seen.append)
    policy.record(0.0, False, FAST, unavailable())
    assert policy.allow(30.0)
    policy.record(30.0, True, FAST)
    assert [t.key for t in seen] == ["closed->open", "open->half_open", "half_open->closed"]
    assert policy.history == tuple(seen)
    assert policy.epoch == 3


def test_history_is_bounded() -> None:
    policy = BreakerPolicy(replace(CFG, half_open_requests=1))
    now = 0.0
    for _ in range(HISTORY_SIZE):
        policy.record(now, False, FAST, unavailable())
        now += CFG.recovery_time_s
        policy.poll(now)
    assert len(policy.history) == HISTORY_SIZE
    assert policy.epoch == 2 * HISTORY_SIZE


# -- properties -------------------------------------------------------------------

OUTCOMES = st.sampled_from(
    [
        (True, FAST, None),
        (True, SLOW, None),
        (False, FAST, None),
        (False, FAST, timeout()),
        (False, SLOW, AdapterRejected("realtime", "bad")),
        (False, FAST, RuntimeError("bug")),
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    min_calls=st.integers(1, 40),
    threshold=st.floats(0, 1),
    calls=st.data(),
)
def test_never_trips_under_min_calls(
    min_calls: int, threshold: float, calls: st.DataObject
) -> None:
    policy = BreakerPolicy(replace(CFG, min_calls=min_calls, error_threshold=threshold))
    outcomes = calls.draw(st.lists(OUTCOMES, max_size=min_calls - 1))
    times = calls.draw(
        st.lists(st.floats(0, 100), min_size=len(outcomes), max_size=len(outcomes)).map(sorted)
    )
    for now, (ok, duration, error) in zip(times, outcomes, strict=True):
        assert policy.record(now, ok, duration, error) is None
    assert policy.state is CLOSED


@settings(max_examples=200, deadline=None)
@given(calls=st.integers(20, 300), data=st.data())
def test_a_rate_exactly_at_the_threshold_does_not_trip_and_above_does(
    calls: int, data: st.DataObject
) -> None:
    failures = data.draw(st.integers(0, calls - 1))
    policy = BreakerPolicy(replace(CFG, error_threshold=failures / calls, min_calls=calls))
    fill(policy, 0.0, calls - failures)
    for _ in range(failures):
        assert policy.record(0.0, False, FAST, timeout()) is None
    assert policy.state is CLOSED
    transition = policy.record(0.0, True, SLOW)  # (failures + 1) / (calls + 1) is above
    assert transition is not None and transition.to_state is OPEN


@settings(max_examples=200, deadline=None)
@given(
    probes=st.integers(1, 8),
    ops=st.lists(st.sampled_from(["allow", "ok", "release"]), max_size=60),
)
def test_half_open_never_admits_more_than_n_probes(probes: int, ops: list[str]) -> None:
    policy, now = half_open(replace(CFG, half_open_requests=probes))
    in_flight = 0
    admitted = released = 0
    for op in ops:
        if policy.state is not HALF_OPEN:
            break
        if op == "allow":
            if policy.allow(now):
                in_flight += 1
                admitted += 1
        elif in_flight:
            in_flight -= 1
            if op == "ok":
                policy.record(now, True, FAST)
            else:
                policy.release(policy.epoch)
                released += 1
        assert in_flight <= probes
        assert admitted - released <= probes
        if policy.state is HALF_OPEN:
            assert policy.probes_in_flight == in_flight
    if policy.state is CLOSED:
        assert admitted - released == probes


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 8), min_size=1, max_size=40),
    fail_at=st.one_of(st.none(), st.integers(0, 39)),
)
def test_ramp_share_never_decreases_until_a_failure(gaps: list[float], fail_at: int | None) -> None:
    policy, now = recovered()
    last = policy.share(now)
    for i, gap in enumerate(gaps):
        now += gap
        if i == fail_at:
            policy.record(now, False, FAST, timeout())
            assert policy.share(now) in (0, 100)  # re-opened, or the ramp was over
            return
        policy.record(now, True, FAST)
        share = policy.share(now)
        assert share >= last
        last = share
    assert policy.state is CLOSED


def test_calls_recorded_after_a_clear_leave_the_window_like_any_other() -> None:
    window = SlidingWindow(window_s=2.0)
    window.record(0.0, CallOutcome.FAILURE)
    window.record(0.0, CallOutcome.SLOW)
    window.clear()
    window.record(1.0, CallOutcome.SUCCESS)
    window.record(1.5, CallOutcome.FAILURE)
    window.record(1.5, CallOutcome.SLOW)
    assert (window.calls(1.5), window.failures(1.5), window.slow(1.5)) == (3, 1, 1)
    assert (window.calls(10.0), window.failures(10.0), window.slow(10.0)) == (0, 0, 0)


def test_config_accepts_every_value_at_its_bound() -> None:
    assert replace(CFG, latency_threshold_ms=0.5).latency_threshold_ms == 0.5
    assert replace(CFG, latency_multiplier=1.0).slow_call_s == CFG.latency_threshold_ms / 1000
    assert replace(CFG, latency_multiplier=1.5).latency_multiplier == 1.5
    assert replace(CFG, window_s=2.0, bucket_s=2.0).window_s == 2.0
    assert replace(CFG, recovery_time_s=0.5).recovery_time_s == 0.5
    assert replace(CFG, ramp_step_s=0.5).ramp_step_s == 0.5
    assert replace(CFG, ramp_steps=(1, 100)).ramp_steps == (1, 100)


def test_config_names_every_bad_value_at_once() -> None:
    with pytest.raises(ValueError) as info:
        replace(CFG, min_calls=0, half_open_requests=0)
    assert str(info.value) == "min_calls 0 must be >= 1; half_open_requests 0 must be >= 1"


def test_a_window_refuses_buckets_it_cannot_hold_saying_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"^need 0 < bucket_s \(2\.0\) <= window_s \(1\.0\)$"):
        SlidingWindow(window_s=1.0, bucket_s=2.0)


def test_the_policy_counts_calls_over_its_configured_window_and_buckets() -> None:
    policy = BreakerPolicy(replace(CFG, window_s=4.0, bucket_s=0.5))
    policy.record(0.6, True, FAST)  # in the bucket [0.5, 1.0)
    assert policy.calls(4.4) == 1
    assert policy.calls(4.5) == 0  # that bucket has left the eight half-second ones


def test_the_ramp_counts_from_the_close_not_from_half_open() -> None:
    policy, now = half_open()
    closed_at = now + 5
    for _ in range(CFG.half_open_requests):
        assert policy.allow(closed_at)
        policy.record(closed_at, True, FAST)
    assert policy.state is CLOSED
    assert policy.share(closed_at + CFG.ramp_step_s - 0.1) == CFG.ramp_steps[0]
    assert policy.share(closed_at + CFG.ramp_step_s) == CFG.ramp_steps[1]


def test_a_call_that_failed_during_the_ramp_reopens_from_that_moment() -> None:
    policy, t0 = recovered()
    transition = policy.record(t0 + 3, False, FAST)
    assert transition is not None and transition.at == t0 + 3
    assert policy.opened_at == t0 + 3
    assert policy.retry_at == t0 + 3 + CFG.recovery_time_s


def test_a_successful_call_with_an_error_is_refused() -> None:
    with pytest.raises(ValueError, match="^a successful call has no error$"):
        BreakerPolicy(CFG).record(0.0, True, FAST, timeout())
