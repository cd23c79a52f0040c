"""Plan quotas as Supabase's Realtime server judges them (pure: the time is
passed in, no socket, no clock)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from broadcaster.realtime_server.quotas import (
    LIMITS,
    PLANS,
    JoinRefusal,
    Plan,
    Quota,
    Quotas,
    RateCounter,
    external_size,
    plan_named,
    user_broadcast_size,
)

SMALL = Plan(
    "small",
    messages_per_second=10,
    joins_per_second=2,
    channels_per_connection=2,
    concurrent_connections=3,
    payload_kb=1,
)


def test_the_plans_are_the_published_limits() -> None:
    figures = {
        name: (
            p.messages_per_second,
            p.joins_per_second,
            p.channels_per_connection,
            p.concurrent_connections,
            p.payload_kb,
        )
        for name, p in PLANS.items()
    }
    assert figures == {
        "free": (100, 100, 100, 200, 256),
        "pro": (500, 500, 100, 500, 3000),
        "team": (2500, 2500, 100, 10_000, 3000),
    }
    assert LIMITS == ("free", "pro", "team", "none")
    assert PLANS["free"].max_payload_bytes == 256_500


def test_a_plan_is_named() -> None:
    assert plan_named("pro") is PLANS["pro"]
    assert plan_named("none") is None
    with pytest.raises(
        ValueError, match="unknown plan 'gold'; expected one of free, pro, team, none"
    ):
        plan_named("gold")


def test_the_first_tick_is_at_creation_and_counts_nothing() -> None:
    counter = RateCounter(100, now=1000.0)
    counter.add(1000.5, 999)
    assert not counter.over(1004.9)  # no tick yet since the first
    assert not counter.over(1005.0)  # (0 + 999) / 2 ticks / 5 s < 100
    assert counter.average == pytest.approx(99.9)
    fresh = RateCounter(100, now=0.0)
    fresh.add(0.1, 1000)
    assert fresh.over(5.0) and fresh.average == 100.0  # the limit is reached


def test_over_from_the_tick_that_reaches_the_limit_until_one_below_it() -> None:
    counter = RateCounter(10, now=0.0)
    counter.add(1.0, 100)  # judged at the tick at 5
    assert not counter.over(4.99)
    assert counter.over(5.0)  # (0 + 100) / 2 / 5 = 10
    counter.add(6.0, 200)
    assert counter.over(10.0)  # 300 / 3 / 5 = 20
    # Quiet from now on: the mean over the kept ticks falls, tick by tick.
    assert counter.over(25.0)  # 300 / 6 / 5 = 10: still at the limit
    assert not counter.over(30.0)  # 300 / 7 / 5 < 10
    assert counter.average == pytest.approx(300 / 7 / 5)


def test_the_peak_is_the_highest_mean_any_tick_set() -> None:
    counter = RateCounter(1000, now=0.0)
    counter.add(1.0, 100)
    counter.over(5.0)  # (0 + 100) / 2 / 5
    counter.over(10.0)  # 100 / 3 / 5: lower
    assert counter.peak == 10.0 and counter.average == pytest.approx(100 / 15)
    quotas = Quotas(PLANS["free"])
    assert quotas.judged_messages_per_s(0.0) == (0.0, 0.0)  # before the first join
    quotas.joined(0.0)
    quotas.count_messages(1.0, 2000)
    assert quotas.judged_messages_per_s(5.0) == (200.0, 200.0)
    assert quotas.judged_messages_per_s(10.0) == (pytest.approx(2000 / 15), 200.0)


def test_the_mean_covers_the_last_twelve_ticks() -> None:
    counter = RateCounter(1000, now=0.0)
    for tick in range(1, 13):
        counter.add(tick * 5 - 1, 50)
    assert counter.over(60.0) is False
    assert counter.average == pytest.approx(12 * 50 / 12 / 5)  # the empty first tick is gone
    counter.add(61.0, 0)
    assert counter.over(65.0) is False
    assert counter.average == pytest.approx(11 * 50 / 12 / 5)


def test_a_long_quiet_spell_leaves_nothing_behind() -> None:
    counter = RateCounter(10, now=0.0)
    counter.add(1.0, 1000)
    assert counter.over(5.0)
    assert not counter.over(86_400.0 * 365)
    assert counter.average == 0.0
    counter.add(86_400.0 * 365 + 1, 10_000)
    # The next tick falls on the same five-second grid as before.
    assert not counter.over(86_400.0 * 365 + 4.9)
    assert counter.over(86_400.0 * 365 + 5.0)


def test_a_handshake_is_refused_at_the_connection_limit_or_over_the_join_rate() -> None:
    quotas = Quotas(SMALL)
    assert quotas.connection_refusal(0.0, users=2) is None
    assert quotas.connection_refusal(0.0, users=3) == (
        Quota.CONNECTIONS,
        "Too many connected users",
    )
    for _ in range(20):
        assert quotas.join_refusal(0.5, counted=True, users=1, channels=0) is None
    assert quotas.connection_refusal(4.9, users=0) is None
    assert quotas.connection_refusal(5.0, users=0) == (Quota.JOINS, "Too many joins per second")


def test_joins_are_refused_in_supabases_order() -> None:
    quotas = Quotas(SMALL)
    # A connection not yet counted, at the connection limit: refused first,
    # and not counted as a join.
    assert quotas.join_refusal(0.0, counted=False, users=3, channels=0) == JoinRefusal(
        Quota.CONNECTIONS, "ConnectionRateLimitReached: Too many connected users", False
    )
    assert quotas.join_refusal(0.0, counted=True, users=3, channels=0) is None
    # Over the channels of a connection: refused, but it counted as a join.
    assert quotas.join_refusal(0.0, counted=True, users=1, channels=2) == JoinRefusal(
        Quota.CHANNELS, "ChannelRateLimitReached: Too many channels", False
    )
    for _ in range(18):
        quotas.join_refusal(1.0, counted=True, users=1, channels=0)
    # 20 joins: (0 + 20) / 2 / 5 = 2 per second, the limit: the next one
    # closes the connection.
    assert quotas.join_refusal(5.0, counted=True, users=1, channels=0) == JoinRefusal(
        Quota.JOINS, "ClientJoinRateLimitReached: Too many joins per second", True
    )


def test_messages_count_from_the_first_join() -> None:
    quotas = Quotas(SMALL)
    quotas.joined(0.0)
    quotas.joined(3.0)  # the counter runs from the first
    quotas.count_messages(1.0, 99)
    assert not quotas.messages_over(5.0)  # 99 / 2 / 5 < 10
    quotas.count_messages(6.0, 151)
    assert quotas.messages_over(10.0)  # 250 / 3 / 5 > 10
    late = Quotas(SMALL)
    late.count_messages(2.0, 100)  # no join yet: counting starts the counter
    assert late.messages_over(7.0)


def test_a_payload_fits_up_to_the_plans_kilobytes_and_the_padding() -> None:
    quotas = Quotas(SMALL)
    assert quotas.payload_fits(1500)
    assert not quotas.payload_fits(1501)
    pro = dataclasses.replace(PLANS["pro"])
    assert Quotas(pro).payload_fits(3_000_500) and not Quotas(pro).payload_fits(3_000_501)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        # term_to_binary byte counts of the terms Jason decodes JSON into.
        ({}, 6),
        ("abc", 9),
        ("é", 8),
        (0, 3),
        (1, 3),
        (255, 3),
        (256, 6),
        (-1, 6),
        (2**31 - 1, 6),
        (-(2**31), 6),
        (2**31, 8),
        (-(2**40), 10),
        (2**2039, 1 + 3 + 255),  # the largest small big: 255 digits
        (2**2040, 1 + 6 + 256),
        (2**2048, 1 + 6 + 257),
        (1.5, 10),
        (True, 7),
        (False, 8),
        (None, 6),
        ([], 2),
        ([1], 9),
        ({"a": [1, "b"]}, 1 + 5 + 6 + (5 + 2 + 6 + 1)),
    ],
)
def test_external_size_is_erlangs(value: object, size: int) -> None:
    assert external_size(value) == size


def test_external_size_refuses_what_json_does_not_hold() -> None:
    with pytest.raises(TypeError, match="not a JSON value: set"):
        external_size({"a": {1}})


def test_a_batch_is_measured_larger_than_its_json() -> None:
    # Each string carries a five-byte head instead of two quotes: a plan's
    # payload limit is reached before the JSON text's length says so.
    batch = {
        "events": [
            {"event_id": "x" * 26, "sequence_id": n, "payload": {"k": "v"}} for n in range(100)
        ]
    }
    assert external_size(batch) > len(orjson.dumps(batch))


def test_a_binary_framed_broadcast_is_measured_as_its_tuple() -> None:
    # {<<"events">>, :json, <<payload>>, %{}}
    assert user_broadcast_size("events", b"{}", True, None) == 1 + 2 + 11 + 6 + 7 + 5
    assert user_broadcast_size("e", b"", False, {"persist": True}) == (
        1 + 2 + 6 + 8 + 5 + (5 + 12 + 6)
    )


def test_a_new_counter_has_counted_nothing() -> None:
    counter = RateCounter(100, now=0.0)
    assert (counter.average, counter.peak) == (0.0, 0.0)


def test_a_count_is_one_unless_told_otherwise() -> None:
    counter = RateCounter(1, now=0.0)
    for _ in range(4):
        counter.add(1.0)
    assert not counter.over(5.0)  # (0 + 4) / 2 ticks / 5 s < 1
    assert counter.average == pytest.approx(0.4)


def test_a_project_nobody_joined_is_not_over_its_message_rate() -> None:
    quotas = Quotas(SMALL)
    assert not quotas.messages_over(0.0)
    assert quotas.judged_messages_per_s(5.0) == (0.0, 0.0)
