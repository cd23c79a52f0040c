"""The pure Realtime plan policy: the published quotas, the caps the adapter
derives from them and the explicit settings, how a server's refusal reads,
and the rate governor, on explicit times."""

from __future__ import annotations

import pytest

from broadcaster.realtime_plan import (
    BACKOFF,
    CANARY_MESSAGES_PER_S,
    DEFAULT_BATCH_MAX,
    ENVELOPE_BYTES,
    PAYLOAD_TOO_LARGE,
    QUOTAS,
    RATE_LIMIT,
    RATE_MARGIN,
    RateCanary,
    RateGovernor,
    RealtimeLimits,
    RealtimePlan,
    pushes_per_s,
    refusal_reason,
    resolve_limits,
)

FREE, PRO, TEAM = RealtimePlan.FREE, RealtimePlan.PRO, RealtimePlan.TEAM


def test_the_published_quotas() -> None:
    assert [QUOTAS[p].messages_per_s for p in (FREE, PRO, TEAM)] == [100, 500, 2_500]
    assert [QUOTAS[p].max_payload_bytes for p in (FREE, PRO, TEAM)] == [
        256_000,
        3_000_000,
        3_000_000,
    ]
    assert [QUOTAS[p].concurrent_connections for p in (FREE, PRO, TEAM)] == [200, 500, 10_000]
    assert {QUOTAS[p].channels_per_connection for p in RealtimePlan} == {100}


def test_without_a_plan_the_settings_are_used_as_given() -> None:
    assert resolve_limits(None) == RealtimeLimits(0.0, DEFAULT_BATCH_MAX, 200_000, None)
    assert resolve_limits(
        None, max_messages_per_s=7, batch_max=3, batch_bytes=10_000
    ) == RealtimeLimits(7, 3, 10_000, None)


@pytest.mark.parametrize(
    ("plan", "rate", "batch_max", "max_event"),
    [
        (FREE, 44, 1000, 230_400 - ENVELOPE_BYTES),
        (PRO, 224, 200, 2_700_000 - ENVELOPE_BYTES),
        (TEAM, 1_124, 100, 2_700_000 - ENVELOPE_BYTES),
    ],
)
def test_a_plan_sets_a_margin_under_its_quotas(
    plan: RealtimePlan, rate: int, batch_max: int, max_event: int
) -> None:
    limits = resolve_limits(plan)  # one subscriber per channel
    assert limits == RealtimeLimits(rate, batch_max, min(200_000, max_event), max_event)
    # A push and its copy to the subscriber are two messages; the canary's
    # pings and their echoes two more a second.
    used = 2 * limits.max_messages_per_s + CANARY_MESSAGES_PER_S
    assert used <= QUOTAS[plan].messages_per_s * RATE_MARGIN
    assert max_event + ENVELOPE_BYTES < QUOTAS[plan].max_payload_bytes


@pytest.mark.parametrize(
    ("plan", "subscribers", "pushes"),
    [
        (PRO, 0, 448),  # nobody listens: the pushes (and the canary's 2)
        (PRO, 1, 224),  # 224 pushes + 224 copies + 2 = 450 messages
        (PRO, 4, 89),
        (FREE, 2, 29),
        (FREE, 1000, 1),  # never below one push a second
    ],
)
def test_the_budget_counts_every_copy_the_server_delivers(
    plan: RealtimePlan, subscribers: int, pushes: int
) -> None:
    assert pushes_per_s(plan, subscribers) == pushes
    assert resolve_limits(plan, subscribers=subscribers).max_messages_per_s == pushes
    assert pushes * (1 + subscribers) <= QUOTAS[plan].messages_per_s or pushes == 1


def test_for_quotas_the_stricter_wins_and_an_explicit_batch_size_wins() -> None:
    # A lower explicit rate stays; a higher one is cut to the plan's.
    assert resolve_limits(PRO, max_messages_per_s=100).max_messages_per_s == 100
    assert resolve_limits(PRO, max_messages_per_s=5000).max_messages_per_s == 224
    # Batch bytes: never beyond what the plan's payload limit leaves.
    assert resolve_limits(FREE, batch_bytes=1_000_000).batch_bytes == 230_400 - ENVELOPE_BYTES
    assert resolve_limits(PRO, batch_bytes=1_000_000).batch_bytes == 1_000_000
    assert resolve_limits(FREE, batch_bytes=50_000).batch_bytes == 50_000
    # Events per push: tuning, not a quota; the explicit setting wins.
    assert resolve_limits(FREE, batch_max=10).batch_max == 10


@pytest.mark.parametrize(
    "kwargs",
    [{"max_messages_per_s": -1}, {"batch_bytes": 0}, {"batch_max": 0}, {"subscribers": -1}],
)
def test_bad_values_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        resolve_limits(FREE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        # What Supabase's server sends (BroadcastHandler, RealtimeChannel).
        ("payload_size_exceeded", PAYLOAD_TOO_LARGE),
        ({"reason": "payload_size_exceeded"}, PAYLOAD_TOO_LARGE),
        ("Too many messages per second", RATE_LIMIT),
        ({"reason": "ClientJoinRateLimitReached: Too many joins per second"}, RATE_LIMIT),
        ({"message": "Too many messages per second"}, RATE_LIMIT),
        ({"error": "too_many_requests"}, RATE_LIMIT),
        ({"reason": "Track message size exceeded"}, PAYLOAD_TOO_LARGE),
        # Anything else is no quota.
        ({"reason": "unmatched topic"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_refusal_reason_reads_what_the_server_said(response: object, reason: str | None) -> None:
    assert refusal_reason(response) == reason


def test_the_governor_keeps_the_ceiling_until_a_refusal() -> None:
    assert RateGovernor().cap(0.0) == 0  # no cap
    governor = RateGovernor(450)
    assert governor.cap(100.0) == 450
    assert governor.learned_ceiling is None and governor.refusals == 0


def test_a_refusal_halves_the_cap_and_it_never_climbs_back_past_half_the_refused_rate() -> None:
    governor = RateGovernor(recover_s=10.0, growth=2.0)
    # No cap yet: half the rate that was refused.
    assert governor.refused(0.0, observed_per_s=200.0) == 100.0
    assert governor.learned_ceiling == 100.0 and governor.refusals == 1
    assert governor.cap(10.0) == 100.0  # never back past half of what was refused
    # A second refusal at a lower rate lowers the learned ceiling too.
    assert governor.refused(100.0, observed_per_s=80.0) == 40.0
    assert governor.learned_ceiling == 40.0
    assert governor.cap(130.0) == 40.0
    # Halved from a configured ceiling, the cap climbs back to what was learned.
    climbing = RateGovernor(300, recover_s=10.0, growth=2.0)
    assert climbing.refused(0.0, observed_per_s=400.0) == 150.0
    assert climbing.learned_ceiling == 400.0 * BACKOFF
    assert climbing.cap(9.9) == 150.0
    assert climbing.cap(10.0) == 200.0  # doubled, but only up to the learned 200
    assert climbing.cap(100.0) == 200.0


def test_with_a_ceiling_the_cap_is_halved_from_it_and_never_climbs_past_it() -> None:
    governor = RateGovernor(90, recover_s=5.0, growth=10.0)
    # The cap (90) is below the observed rate: halve the cap.
    assert governor.refused(0.0, observed_per_s=500.0) == 45.0
    assert governor.cap(5.0) == 90.0  # back to the configured ceiling, not 450
    # Observed below the cap: halve what was observed; floor at 1.
    assert governor.refused(5.0, observed_per_s=0.5) == 1.0
    assert governor.cap(5.0) == 1.0


def test_bad_governor_settings_are_refused() -> None:
    for kwargs in ({"ceiling": -1}, {"recover_s": 0}, {"growth": 1.0}, {"floor": 0}):
        with pytest.raises(ValueError):
            RateGovernor(**kwargs)  # type: ignore[arg-type]


def test_the_canary_gate_closes_on_a_refusal_and_opens_after_two_echoes_on_one_join() -> None:
    canary = RateCanary()
    assert canary.is_open(0.0) and not canary.due(pushed=False) and canary.due(pushed=True)
    assert canary.echoed() is False  # echoes while open change nothing
    assert canary.refused(1.0) is True  # a new excess: slow down
    assert not canary.is_open(1.0) and canary.due(pushed=False)  # ping to see it end
    assert canary.refused(2.0) is False  # the same excess, still judged over
    canary.joined()
    assert canary.echoed() is False  # one echo: that ping may yet shut the channel
    canary.joined()  # it did, and the channel was joined again
    assert canary.echoed() is False
    assert canary.echoed() is True  # the second echo on one join: the first passed
    assert canary.is_open(3.0) and (canary.refusals, canary.reopened) == (2, 1)
    assert canary.echoed() is False


def test_a_canary_gate_closed_too_long_opens_anyway() -> None:
    """A canary that no longer comes back (a policy that stopped letting it
    through) must not hold pushes for ever."""
    canary = RateCanary(max_closed_s=120.0)
    assert canary.refused(10.0) is True
    assert not canary.is_open(129.9) and canary.closed_at == 10.0
    assert canary.refused(100.0) is False  # refusals within do not extend it
    assert canary.is_open(130.0) and canary.timed_out == 1 and canary.reopened == 1
    assert canary.refused(131.0) is True  # shut again: a new excess
    with pytest.raises(ValueError):
        RateCanary(max_closed_s=0)


def test_bad_values_are_refused_with_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"^subscribers must be >= 0$"):
        pushes_per_s(FREE, -1)
    with pytest.raises(ValueError, match=r"^batch sizes must be >= 1 and the message rate >= 0$"):
        resolve_limits(FREE, batch_bytes=0)
    with pytest.raises(
        ValueError, match=r"^need ceiling >= 0, recover_s > 0, growth > 1 and floor > 0$"
    ):
        RateGovernor(growth=1.0)
    with pytest.raises(ValueError, match=r"^max_closed_s must be > 0$"):
        RateCanary(max_closed_s=0)


def test_the_least_valid_values_are_accepted() -> None:
    assert resolve_limits(None, batch_max=1, batch_bytes=1) == RealtimeLimits(0.0, 1, 1, None)
    assert RateGovernor(recover_s=0.5).cap(0.0) == 0
    assert RateCanary(max_closed_s=0.5).refused(0.0) is True


def test_by_default_the_cap_grows_by_a_quarter_every_five_seconds_from_the_refusal() -> None:
    governor = RateGovernor(1000)
    assert governor.refused(100.0, observed_per_s=2000.0) == 500.0
    assert governor.cap(104.9) == 500.0
    assert governor.cap(110.0) == 500.0 * 1.25**2  # two periods at once
    assert governor.cap(114.9) == 500.0 * 1.25**2  # the next period counts from 110
    assert governor.cap(115.0) == 500.0 * 1.25**3
    assert governor.cap(120.0) == 1000.0  # up to the ceiling, not past it


def test_a_refusal_at_a_higher_rate_never_raises_the_learned_ceiling() -> None:
    governor = RateGovernor()
    governor.refused(0.0, observed_per_s=200.0)
    assert governor.learned_ceiling == 100.0
    governor.refused(10.0, observed_per_s=1000.0)
    assert governor.learned_ceiling == 100.0 and governor.refusals == 2


def test_a_cap_down_at_the_floor_still_climbs_back() -> None:
    governor = RateGovernor(2, recover_s=10.0, growth=2.0)
    assert governor.refused(0.0, observed_per_s=10.0) == 1.0
    assert governor.cap(10.0) == 2.0


def test_by_default_a_canary_gate_opens_anyway_after_two_minutes() -> None:
    canary = RateCanary()
    canary.refused(0.0)
    assert not canary.is_open(119.9)
    assert canary.is_open(120.0)


def test_a_refusal_forgets_the_echoes_heard_before_it() -> None:
    canary = RateCanary()
    canary.joined()
    assert canary.echoed() is False  # open: an echo changes nothing
    canary.refused(1.0)
    assert canary.echoed() is False  # one echo since the refusal
    assert canary.echoed() is True


def test_the_canary_counts_every_reopening_and_every_timeout() -> None:
    canary = RateCanary(max_closed_s=10.0)
    for start in (0.0, 20.0):
        canary.refused(start)
        assert canary.is_open(start + 10.0)
    assert (canary.refusals, canary.reopened, canary.timed_out) == (2, 2, 2)
