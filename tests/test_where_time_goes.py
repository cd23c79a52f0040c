"""``python -m loadtests.where_time_goes``: py-spy's samples of a publishing
broadcaster, sorted into the roles they were spent on. No timing is
asserted: the figures of a short run mean nothing."""

from __future__ import annotations

import re

import pytest

from loadtests.where_time_goes import OTHER, ROLES, main, roles_of, table

LOOP = (
    "process 1:x;run (asyncio/runners.py:118);BaseEventLoop._run_once (asyncio/base_events.py:1936)"
)


def sample(*frames: str, n: int = 1) -> str:
    return ";".join([LOOP, "Handle._run (asyncio/events.py:80)", *frames]) + f" {n}"


def test_a_sample_goes_to_the_first_role_whose_frames_it_holds() -> None:
    lines = [
        # The producer's publish() committing: the store's, not publish()'s.
        sample(
            "Broadcaster.publish (broadcaster/core.py:329)",
            "GroupCommit._write_now (broadcaster/group_commit.py:96)",
            "append_events (broadcaster/store/sqlite/_writes.py:72)",
            n=3,
        ),
        sample("Broadcaster.publish (broadcaster/core.py:327)", "EventFactory.draft (x)", n=2),
        sample("Lane._deliver (broadcaster/lanes/lane.py:300)", "write_marks (y)"),
        sample(
            "Lane._deliver (broadcaster/lanes/lane.py:300)",
            "AsyncPush.send (realtime/_async/push.py:45)",
        ),
        sample("Lane._deliver (broadcaster/lanes/lane.py:300)"),
        sample("_SelectorSocketTransport.write (asyncio/selector_events.py:1057)"),
    ]
    counts = roles_of(lines)
    assert counts == {
        "store: publish's commit (events and outbox rows)": 3,
        "publish(): draft, seal, route, receipt": 2,
        "store: acknowledgement marks": 1,
        "Realtime path (adapter, official client's push)": 1,
        "lanes and hand-off": 1,
        OTHER: 1,
    }
    assert set(counts) - {OTHER} <= {name for name, _ in ROLES}


def test_samples_outside_the_loop_or_the_phase_are_left_out() -> None:
    lines = [
        "process 1:x;_run_module_as_main (<frozen runpy>:198);_find_and_load (<frozen>) 5",
        sample("Stack.__aenter__ (loadtests/_stack.py:150)", n=7),
        sample("_find_and_load (<frozen importlib._bootstrap>:1176)", n=7),
        "",
        sample("PhasesMixin.phase.<locals>.produce (loadtests/_phases.py:144)", n=2),
    ]
    assert roles_of(lines) == {"load-test producer": 2}


def test_the_table_gives_each_role_its_share_biggest_first() -> None:
    rows = table(roles_of([sample("write_marks (y)"), sample("x (z)", n=3)]))
    assert rows == [
        "| role | share of the loop's samples |",
        "|---|---|",
        f"| {OTHER} | 75.0 % |",
        "| store: acknowledgement marks | 25.0 % |",
    ]


@pytest.mark.parametrize("argv", [["--producers", "0"], ["--seconds", "0"]])
def test_a_run_it_cannot_measure_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "--producers must be at least 1 and --seconds positive" in capsys.readouterr().err


def test_a_short_run_samples_a_real_publishing_broadcaster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--producers", "2", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    said = re.search(r"(\d+) events/s delivered on both paths, .* (\d+) lost; (\d+) samples", out)
    assert said is not None, out
    assert int(said.group(1)) > 0 and said.group(2) == "0" and int(said.group(3)) > 0
    assert "| store: publish's commit (events and outbox rows) |" in out
