"""Pure reconciliation matching: every outcome, every criterion, and
properties over out-of-order, duplicated and corrupted receipts."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from broadcaster.events import Category
from broadcaster.reconcile.matching import (
    CRITERIA,
    Criterion,
    Expected,
    Judgement,
    MatchPolicy,
    Observation,
    Outcome,
    Report,
    judge,
)

POLICY = MatchPolicy(window_ms=5_000, buffer_ms=30_000, max_delay_ms=300_000)
T0 = 1_700_000_000_000


def expected(category: Category = Category.CRITICAL, **kw: object) -> Expected:
    values: dict[str, object] = {
        "sequence_id": 7,
        "adapter": "realtime",
        "category": category,
        "event_type": "order.created",
        "event_time_ms": T0,
        "checksum": "abcd1234",
        "payload_keys": frozenset({"order", "total"}),
    }
    values.update(kw)
    return Expected(**values)  # type: ignore[arg-type]


def seen(after_ms: int = 10, **kw: object) -> Observation:
    values: dict[str, object] = {
        "sequence_id": 7,
        "adapter": "realtime",
        "event_type": "order.created",
        "received_at_ms": T0 + after_ms,
        "checksum": "abcd1234",
        "checksum_ok": True,
        "payload_keys": frozenset({"order", "total"}),
    }
    values.update(kw)
    return Observation(**values)  # type: ignore[arg-type]


JUDGED = T0 + 40_000  # past the buffer, before max delay
LATE_NOW = T0 + 400_000  # past max delay


def test_criteria_per_category_follow_the_spec() -> None:
    assert CRITERIA[Category.CRITICAL] is Criterion.EXACT
    assert CRITERIA[Category.SYSTEM] is Criterion.EXACT
    assert CRITERIA[Category.USER_ACTIVITY] is Criterion.EXACT
    assert CRITERIA[Category.PERFORMANCE] is Criterion.SEMANTIC
    assert CRITERIA[Category.DEBUG] is Criterion.PRESENCE


def test_from_seconds() -> None:
    assert MatchPolicy.from_seconds(5, 30, 300) == POLICY


def test_matched_within_window() -> None:
    assert judge(expected(), [seen()], JUDGED, POLICY) == Judgement(Outcome.MATCHED)


def test_awaiting_inside_buffer_even_when_received() -> None:
    assert judge(expected(), [seen()], T0 + 1_000, POLICY).outcome is Outcome.AWAITING


def test_not_received_is_awaiting_until_max_delay_then_missing() -> None:
    assert judge(expected(), [], JUDGED, POLICY).outcome is Outcome.AWAITING
    result = judge(expected(), [], LATE_NOW, POLICY)
    assert result.outcome is Outcome.MISSING and "300000" in result.reason


def test_pending_behind_open_breaker() -> None:
    assert judge(expected(pending=True), [], JUDGED, POLICY).outcome is Outcome.PENDING
    assert judge(expected(pending=True), [], LATE_NOW, POLICY).outcome is Outcome.PENDING


def test_late_receipt() -> None:
    assert judge(expected(), [seen(after_ms=6_000)], JUDGED, POLICY).outcome is Outcome.LATE


def test_the_window_is_inclusive_a_receipt_at_its_edge_is_matched() -> None:
    edge = POLICY.window_ms
    assert judge(expected(), [seen(after_ms=edge)], JUDGED, POLICY).outcome is Outcome.MATCHED
    assert judge(expected(), [seen(after_ms=edge + 1)], JUDGED, POLICY).outcome is Outcome.LATE


def test_repaired() -> None:
    result = judge(expected(repaired=True), [seen(after_ms=60_000)], LATE_NOW, POLICY)
    assert result.outcome is Outcome.REPAIRED


def test_exact_checksum_mismatch_and_bad_verdict() -> None:
    result = judge(expected(), [seen(checksum="ffff0000")], JUDGED, POLICY)
    assert result.outcome is Outcome.MISMATCH and "ffff0000" in result.reason
    assert judge(expected(), [seen(checksum_ok=False)], JUDGED, POLICY).outcome is Outcome.MISMATCH


def test_event_type_mismatch() -> None:
    result = judge(expected(), [seen(event_type="order.deleted")], JUDGED, POLICY)
    assert result.outcome is Outcome.MISMATCH and "order.deleted" in result.reason


def test_semantic_ignores_checksum_but_not_keys() -> None:
    perf = expected(Category.PERFORMANCE)
    assert judge(perf, [seen(checksum="00000000")], JUDGED, POLICY).outcome is Outcome.MATCHED
    result = judge(perf, [seen(payload_keys=frozenset({"order"}))], JUDGED, POLICY)
    assert result.outcome is Outcome.MISMATCH and "keys" in result.reason
    assert judge(perf, [seen(payload_keys=None)], JUDGED, POLICY).outcome is Outcome.MATCHED


def test_presence_only_for_debug() -> None:
    debug = expected(Category.DEBUG)
    corrupt = seen(checksum="00000000", checksum_ok=False, payload_keys=frozenset())
    assert judge(debug, [corrupt], JUDGED, POLICY).outcome is Outcome.MATCHED


def test_duplicates_counted_and_first_receipt_decides() -> None:
    receipts = [seen(after_ms=9_000), seen(after_ms=100), seen(after_ms=50_000)]
    result = judge(expected(), receipts, JUDGED, POLICY)
    assert result == Judgement(Outcome.MATCHED, duplicates=2)


@given(
    delays=st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=6),
    seed=st.integers(),
)
def test_order_of_receipts_never_changes_the_verdict(delays: list[int], seed: int) -> None:
    receipts = [seen(after_ms=d) for d in delays]
    shuffled = receipts[:]
    random.Random(seed).shuffle(shuffled)
    a = judge(expected(), receipts, LATE_NOW, POLICY)
    b = judge(expected(), shuffled, LATE_NOW, POLICY)
    assert a == b
    assert a.duplicates == len(delays) - 1
    assert a.outcome is (Outcome.MATCHED if min(delays) <= 5_000 else Outcome.LATE)


@given(
    category=st.sampled_from(list(Category)),
    corrupt=st.sampled_from(["checksum", "verdict", "event_type", "keys"]),
)
def test_a_corrupted_first_receipt_is_a_mismatch_where_the_criterion_looks(
    category: Category, corrupt: str
) -> None:
    changes: dict[str, object] = {
        "checksum": {"checksum": "deadbeef"},
        "verdict": {"checksum_ok": False},
        "event_type": {"event_type": "other"},
        "keys": {"payload_keys": frozenset({"x"})},
    }[corrupt]  # type: ignore[assignment]
    result = judge(expected(category), [seen(**changes)], JUDGED, POLICY)  # type: ignore[arg-type]
    criterion = CRITERIA[category]
    looks = (
        corrupt == "event_type"
        or (criterion is Criterion.EXACT and corrupt in ("checksum", "verdict"))
        or (criterion is Criterion.SEMANTIC and corrupt == "keys")
    )
    assert (result.outcome is Outcome.MISMATCH) == looks


def test_report_counts_and_ids() -> None:
    report = Report(max_missing_ids=2)
    pairs = [
        (expected(sequence_id=1), Judgement(Outcome.MATCHED, duplicates=1)),
        (expected(sequence_id=2), Judgement(Outcome.MISSING)),
        (expected(sequence_id=3), Judgement(Outcome.MISSING)),
        (expected(sequence_id=4), Judgement(Outcome.MISSING)),
        (expected(sequence_id=5), Judgement(Outcome.MISMATCH)),
        (expected(sequence_id=6, adapter="websocket"), Judgement(Outcome.LATE)),
    ]
    report.extend(pairs)
    assert report.total(Outcome.MISSING) == 3 == report.unrepaired_loss
    assert report.missing == {"realtime": [2, 3]}  # capped at max_missing_ids
    assert report.mismatched == {"realtime": [5]}
    data = report.as_dict()
    row = data["categories"]["CRITICAL"]["realtime"]  # type: ignore[index]
    assert row["matched"] == 1 and row["missing"] == 3 and row["duplicate"] == 1
    assert data["categories"]["CRITICAL"]["websocket"]["late"] == 1  # type: ignore[index]
    assert data["totals"]["duplicate"] == 1  # type: ignore[index]


def test_report_duplicates_only_row() -> None:
    report = Report()
    report.duplicates[("SYSTEM", "websocket")] += 2
    data = report.as_dict()
    assert data["categories"]["SYSTEM"]["websocket"]["duplicate"] == 2  # type: ignore[index]


def test_report_caps_mismatched_ids() -> None:
    report = Report(max_missing_ids=1)
    report.add(expected(sequence_id=1), Judgement(Outcome.MISMATCH))
    report.add(expected(sequence_id=2), Judgement(Outcome.MISMATCH))
    assert report.mismatched == {"realtime": [1]}
    assert report.total(Outcome.MISMATCH) == 2


def test_counted_matches_add_to_judged_ones() -> None:
    report = Report()
    report.add(expected(), judge(expected(), [seen()], JUDGED, POLICY))
    report.add_matched({("CRITICAL", "realtime"): 2, ("SYSTEM", "realtime"): 0})
    assert report.counts == {("CRITICAL", "realtime", "matched"): 3}
    assert report.total(Outcome.MATCHED) == 3


# -- several consumers, deliveries, nobody watching -------------------------------


def test_one_consumers_receipt_is_enough_to_match() -> None:
    observations = [seen(10, consumer="probe:a"), seen(9_000, consumer="browser")]
    assert judge(expected(), observations, JUDGED, POLICY) == Judgement(Outcome.MATCHED)


def test_the_earliest_consumer_decides_late_or_matched() -> None:
    assert judge(expected(), [seen(9_000, consumer="a")], JUDGED, POLICY).outcome is Outcome.LATE
    both = [seen(9_000, consumer="a"), seen(4_000, consumer="b")]
    assert judge(expected(), both, JUDGED, POLICY).outcome is Outcome.MATCHED


def test_any_consumer_that_got_bad_data_makes_a_mismatch() -> None:
    observations = [seen(10, consumer="probe"), seen(20, consumer="b", checksum="ffff0000")]
    result = judge(expected(), observations, JUDGED, POLICY)
    assert result.outcome is Outcome.MISMATCH and "ffff0000" in result.reason
    wrong_type = [seen(10, consumer="probe"), seen(20, consumer="b", event_type="x")]
    assert judge(expected(), wrong_type, JUDGED, POLICY).outcome is Outcome.MISMATCH


def test_a_consumers_later_receipts_are_duplicates_and_its_first_is_judged() -> None:
    observations = [
        seen(50, consumer="a", checksum="ffff0000"),  # its second delivery, corrupted
        seen(10, consumer="a"),
        seen(20, consumer="b", deliveries=3),
    ]
    assert judge(expected(), observations, JUDGED, POLICY) == Judgement(Outcome.MATCHED, 3)


def test_nobody_watching_is_unobserved_not_missing() -> None:
    assert judge(expected(), [], LATE_NOW, POLICY, None).outcome is Outcome.UNOBSERVED
    # The adapter's consumers watch from a later event than this one (7).
    later = judge(expected(), [], LATE_NOW, POLICY, 8)
    assert later.outcome is Outcome.UNOBSERVED
    assert judge(expected(), [], LATE_NOW, POLICY, 7).outcome is Outcome.MISSING
    assert judge(expected(), [], LATE_NOW, POLICY).outcome is Outcome.MISSING
    # Before max delay it may still come, watched or not.
    assert judge(expected(), [], JUDGED, POLICY, None).outcome is Outcome.AWAITING
    assert judge(expected(pending=True), [], LATE_NOW, POLICY, None).outcome is Outcome.PENDING


def test_unobserved_is_not_loss() -> None:
    report = Report()
    report.add(expected(), judge(expected(), [], LATE_NOW, POLICY, None))
    assert report.unrepaired_loss == 0
    assert report.as_dict()["totals"]["unobserved"] == 1  # type: ignore[index]


def test_from_seconds_converts_each_bound_to_milliseconds() -> None:
    assert MatchPolicy.from_seconds(1.5, 2, 3.25) == MatchPolicy(1_500, 2_000, 3_250)


def test_the_buffer_and_max_delay_end_at_their_edge() -> None:
    at_buffer = T0 + POLICY.buffer_ms
    assert judge(expected(), [seen()], at_buffer - 1, POLICY).outcome is Outcome.AWAITING
    assert judge(expected(), [seen()], at_buffer, POLICY).outcome is Outcome.MATCHED
    at_max_delay = T0 + POLICY.max_delay_ms
    assert judge(expected(), [], at_max_delay - 1, POLICY).outcome is Outcome.AWAITING
    assert judge(expected(), [], at_max_delay, POLICY).outcome is Outcome.MISSING


def test_by_default_every_event_was_watched_even_the_first() -> None:
    first = expected(sequence_id=1)
    assert judge(first, [], LATE_NOW, POLICY).outcome is Outcome.MISSING


def test_unobserved_says_nobody_was_reporting() -> None:
    result = judge(expected(), [], LATE_NOW, POLICY, None)
    assert result.reason == "no consumer of the adapter was reporting"


def test_duplicates_are_counted_whatever_the_outcome() -> None:
    twice = [seen(10, checksum="ffff0000"), seen(20, checksum="ffff0000")]
    assert judge(expected(), twice, JUDGED, POLICY).duplicates == 1
    wrong_type = [seen(10, event_type="x"), seen(20, event_type="x", consumer="b", deliveries=2)]
    assert judge(expected(), wrong_type, JUDGED, POLICY).duplicates == 1
    repaired = judge(expected(repaired=True), [seen(10), seen(20)], LATE_NOW, POLICY)
    assert repaired == Judgement(Outcome.REPAIRED, 1)


def test_report_adds_up_duplicates_of_every_event_of_a_row() -> None:
    report = Report()
    report.add(expected(sequence_id=1), Judgement(Outcome.MATCHED, duplicates=2))
    report.add(expected(sequence_id=2), Judgement(Outcome.LATE, duplicates=3))
    assert report.duplicates == {("CRITICAL", "realtime"): 5}


def test_report_as_dict_has_every_outcome_of_a_row_and_at_most_100_ids() -> None:
    report = Report(consumers=[{"adapter": "realtime", "consumer": "probe"}])
    for sequence_id in range(1, 103):
        report.add(expected(sequence_id=sequence_id), Judgement(Outcome.MISSING))
    report.add(expected(sequence_id=200, adapter="websocket"), Judgement(Outcome.MISMATCH))
    report.duplicates[("SYSTEM", "websocket")] += 1
    zeros = {o.value: 0 for o in Outcome} | {"duplicate": 0}
    assert report.as_dict() == {
        "categories": {
            "CRITICAL": {
                "realtime": zeros | {"missing": 102},
                "websocket": zeros | {"mismatch": 1},
            },
            "SYSTEM": {"websocket": zeros | {"duplicate": 1}},
        },
        "totals": zeros | {"missing": 102, "mismatch": 1, "duplicate": 1},
        "missing": {"realtime": list(range(1, 101))},
        "mismatched": {"websocket": [200]},
        "consumers": [{"adapter": "realtime", "consumer": "probe"}],
    }


def test_a_semantic_mismatch_says_the_payload_keys_differ() -> None:
    result = judge(
        expected(Category.PERFORMANCE), [seen(payload_keys=frozenset({"x"}))], JUDGED, POLICY
    )
    assert result.reason == "payload keys differ"
