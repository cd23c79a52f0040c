"""What a rollout's gates count as breaker trips: openings of the new
adapter's breaker on this instance since the step was first looked at (the
rest of a step's evidence is judged over a real store in test_manager)."""

from __future__ import annotations

from broadcaster.rollout.evidence import StageEvidence, breaker_opens


def test_opens_are_counted_from_a_breakers_view() -> None:
    assert breaker_opens(None) == (0, False)  # no lane here: never opened
    view = {
        "state": "half_open",
        "transitions": {"closed->open": 2, "open->half_open": 2, "half_open->open": 1},
    }
    assert breaker_opens(view) == (3, True)
    assert breaker_opens({"state": "closed", "transitions": {}}) == (0, False)


def test_trips_are_openings_since_the_step_was_first_seen_or_one_if_open_all_along() -> None:
    evidence = StageEvidence(
        (1, 0, 0), category="USER_ACTIVITY", adapter="realtime", from_sequence_id=0, opens=2
    )
    assert evidence.trips(2, False) == 0
    assert evidence.trips(4, False) == 2  # opened twice since, closed again
    assert evidence.trips(2, True) == 1  # open when the step began, and still
    assert evidence.trips(3, True) == 1
