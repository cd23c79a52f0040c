"""The benchmark harness (``python -m loadtests``): every scenario runs once in
``--smoke`` mode through ``all`` (in this process, to pay the interpreter's
start and the imports once; each scenario still starts its own servers and
subscriber processes), and its JSON line must have the expected keys and sane values. No
timing is asserted: the figures of a smoke run mean nothing. The pure helpers
(pacing, percentiles, bins, the table, argument handling) are tested in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from broadcaster.loop import run_on_loop
from loadtests.__main__ import _apply_defaults, _scenario_argv, build_parser, main, run_all
from loadtests._common import (
    Bins,
    TokenBucket,
    flatten,
    markdown_table,
    percentile,
    python_env,
    running_loop_name,
    spawn,
    summarise,
    syscall_us,
)
from loadtests._stack import PhaseResult, Stack, end_process
from loadtests.scenarios import SCENARIOS, per_event
from loadtests.subscriber import Recorder
from tests._env import SETTING_PREFIXES

# A module-scoped fixture runs before conftest.clean_env (function-scoped), so
# it removes the same settings itself (the scenarios and the processes they
# start read them).
ALL_ARGS = ["all", "--smoke", "--skip-postgres"]


class Smoke:
    def __init__(self, code: int, stdout: str, out: Path) -> None:
        self.code = code
        self.stdout = stdout
        self.out = out
        self.results: dict[str, dict[str, Any]] = {}
        for line in stdout.splitlines():
            if line.startswith("{"):
                result = json.loads(line)
                self.results[result["scenario"]] = result


def _in_process(argv: list[str]) -> tuple[int, str]:
    """One scenario as ``python -m loadtests`` runs it, in this process: the
    scenarios' own child processes (subscribers, servers) still run apart, but
    the interpreter and the broadcaster's imports are paid once."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


# Every test here on one worker (scripts/check runs --dist loadgroup): the
# smoke run below is a module fixture, and each worker would pay for its own.
pytestmark = pytest.mark.xdist_group("loadtests-smoke")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smoke]:
    out = tmp_path_factory.mktemp("loadtests-out")
    argv = [*ALL_ARGS, "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(SETTING_PREFIXES):
                mp.delenv(name)
        mp.chdir(out)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = run_all(build_parser().parse_args(argv), argv, runner=_in_process)
    yield Smoke(code, buffer.getvalue(), out)


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_every_scenario_ran(smoke: Smoke) -> None:
    assert smoke.code == 0
    assert set(smoke.results) == set(SCENARIOS)
    # --loop auto, as `broadcaster serve`: uvloop, which the package installs.
    assert {r["event_loop"] for r in smoke.results.values()} == {"uvloop"}
    assert all(r["pinned"] is None for r in smoke.results.values())  # no --pin
    # The timing scenarios say what a system call cost on the machine.
    timed = ("sustained", "dual-vs-single", "publish-overhead", "raw-limit")
    assert all(_finite_positive(smoke.results[name]["syscall_us"]) for name in timed)


_PIN_PROBE = """
import json, os
from loadtests._common import pin_cpus, spawn
split = pin_cpus()
child = spawn("-c", "import os; print(sorted(os.sched_getaffinity(0)))")
out, _ = child.communicate(timeout=30)
print(json.dumps({"split": split, "own": sorted(os.sched_getaffinity(0)),
                  "helper": json.loads(out)}))
"""


def test_pin_keeps_this_process_on_one_cpu_and_spawned_helpers_on_the_others() -> None:
    # In a child interpreter: pinning the test process would pin the suite.
    probe = subprocess.run(
        [sys.executable, "-c", _PIN_PROBE],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=60,
        check=True,
    )
    seen = json.loads(probe.stdout)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:  # nothing to split: nothing pinned
        assert seen == {"split": None, "own": cpus, "helper": cpus}
    else:
        assert seen["split"] == {"broadcaster": cpus[:1], "helpers": cpus[1:]}
        assert seen["own"] == cpus[:1]
        assert seen["helper"] == cpus[1:]


def test_pin_is_reported_in_the_scenarios_json() -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "loadtests", "checksum-cost", "--smoke", "--pin"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
        check=True,
    )
    result = json.loads(probe.stdout.splitlines()[-1])
    cpus = sorted(os.sched_getaffinity(0))
    assert result["pinned"] == (
        {"broadcaster": cpus[:1], "helpers": cpus[1:]} if len(cpus) > 1 else None
    )


def test_loop_asyncio_runs_the_scenario_on_asyncios_loop() -> None:
    code, stdout = _in_process(["sustained", "--smoke", "--loop", "asyncio"])
    assert code == 0
    result = json.loads(stdout.splitlines()[-1])
    assert result["event_loop"] == "asyncio"
    assert result["lost"] == 0 and result["events"] > 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_running_loop_name_names_the_loop_children_are_told_to_use(loop: str) -> None:
    async def name() -> str:
        return running_loop_name()

    assert run_on_loop(name(), loop=loop) == loop


def _check_adapters(figures: dict[str, Any], adapters: tuple[str, ...]) -> None:
    for adapter in adapters:
        seen = figures[adapter]
        assert seen["lost"] == 0
        assert seen["duplicates"] == 0
        assert seen["received"] == figures["events"]
        for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
            assert _finite_positive(seen[key]), (adapter, key, seen[key])
        assert seen["p50_ms"] <= seen["p99_ms"] <= seen["p999_ms"] <= seen["max_ms"]


def test_sustained(smoke: Smoke) -> None:
    r = smoke.results["sustained"]
    assert r["events"] > 0
    assert r["lost"] == 0
    assert r["subscriber_reconnects"] == {}
    assert r["checksum_mismatches"] == 0
    assert r["checksum"] == "crc32"
    for key in ("achieved_events_per_s", "delivered_events_per_s", "broadcaster_cpu_us_per_event"):
        assert _finite_positive(r[key]), key
    assert set(r["publish_call_ms"]) == {"p50", "p99", "p999"}
    # --smoke embeds the Realtime server in the broadcaster's process.
    assert set(r["cpu_s"]) == {"broadcaster", "subscriber"}
    _check_adapters(r, ("websocket", "realtime"))


def test_realtime_quota(smoke: Smoke) -> None:
    r = smoke.results["realtime-quota"]
    assert r["lost"] == 0
    for name in ("pro", "pro_moderate"):
        pro = r[name]
        assert pro["realtime_plan"] == "pro" and pro["events"] > 0
        # What the server counted: each push, and its copy to the subscriber.
        server = pro["server"]
        assert server["messages"] == server["broadcasts"] + server["fanout_frames"] > 0
        assert server["quota_refusals"] == 0 and pro["adapter"]["refused"] == {}
        assert pro["adapter"]["max_messages_per_s"] == 224  # pro, one subscriber
        # Breaker trips are a figure of the run, not of the code: a loaded
        # machine can time an acknowledgement out. Either way all arrive.
        assert pro["realtime"]["received"] == pro["events"]
    # The 300 KB event: refused by the Free plan's server, counted by both
    # sides, delivered on the WebSocket path, missing on Realtime only.
    big = r["too_large"]
    assert (big["server_refused"], big["adapter_refused"]) == (1, 1)
    assert big["realtime_state"] == "refused" and "payload_too_large" in big["realtime_error"]
    assert (big["websocket_state"], big["websocket_received"]) == ("acked", 3)
    assert big["realtime_received"] == 2
    assert big["reported_missing_on_realtime"] and big["others_matched"]
    free = r["free"]
    assert free["realtime_plan"] is None and free["events"] > 0
    assert free["lost"] == {"websocket": 0, "realtime": 0} and free["breaker_trips"] == 0
    assert free["subscriber"]["receipts"]["posted"] == free["subscriber"]["receipts"]["made"]
    assert free["server"]["peak_judged_messages_per_s"] >= 0


def test_dual_vs_single(smoke: Smoke) -> None:
    r = smoke.results["dual-vs-single"]
    lost = {mode: r[mode]["lost"] for mode in ("dual", "single")}
    assert r["lost"] == 0, (lost, r["subscriber_reconnects"], r["realtime_link"])
    assert r["subscriber_reconnects"] == {}
    assert r["checksum_mismatches"] == 0
    for mode in ("dual", "single"):
        figures = r[mode]
        assert figures["lost"] == 0
        for key in ("publish_p50_ms", "publish_p99_ms", "max_events_per_s"):
            assert _finite_positive(figures[key]), (mode, key)
    assert "realtime_p99_ms_paced" in r["dual"]
    assert "realtime_p99_ms_paced" not in r["single"]
    ratios = r["ratio_dual_over_single"]
    assert set(ratios) == {
        "publish_p50",
        "publish_p99",
        "publish_cpu_p50",
        "publish_p50_phases",
        "publish_p99_phases",
        "max_events_per_s",
        "max_delivered_events_per_s",
    }
    assert all(_finite_positive(v) for v in ratios.values())
    # The interleaved phase counted calls of both modes (it switched routing).
    for mode in ("dual", "single"):
        figures = r["interleaved"][mode]
        assert figures["calls"] > 0, mode
        assert _finite_positive(figures["publish_p50_ms"]), mode
        assert 0 < figures["publish_cpu_p10_ms"] <= figures["publish_cpu_p50_ms"], mode
    assert r["order"][-1] == "interleaved-latency"


def test_publish_overhead(smoke: Smoke) -> None:
    r = smoke.results["publish-overhead"]
    assert r["lost"] == 0
    assert r["checksum_mismatches"] == 0
    assert list(r["paths"]) == ["realtime", "websocket", "none", "realtime-process"]
    for path, figures in r["paths"].items():
        for mode in ("dual", "single"):
            assert figures[mode]["calls"] > 0, (path, mode)
            assert _finite_positive(figures[mode]["publish_p50_ms"]), (path, mode)
            cpu = figures[mode]
            assert 0 < cpu["publish_cpu_p10_ms"] <= cpu["publish_cpu_p50_ms"], (path, mode)
        for key in ("ratio_p50", "ratio_p99", "ratio_cpu_p50", "broadcaster_cpu_us_per_event"):
            assert _finite_positive(figures[key]), (path, key)
        assert figures["second_path_events"] == figures["dual"]["calls"]
        # Both network paths delivered every dual-write event to the
        # subscriber; the drop adapter's reached nobody.
        expected = 0 if path == "none" else figures["second_path_events"]
        assert figures["second_path_received"] == expected, path


def test_publish_overhead_parts_splits_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = _in_process(["publish-overhead", "--smoke", "--parts", "--paths", "none"])
    assert code == 0
    figures = json.loads(out.strip().splitlines()[-1])["paths"]["none"]
    for mode in ("dual", "single"):
        parts = figures["parts"][mode]
        # Only one-event commits in publish()'s own step, and one-record
        # hand-offs, are timed: on a loaded machine (coverage, asyncio debug)
        # the loop lags and commits go through the writer task, so none may be.
        for part in ("commit", "handoff"):
            assert 0 <= parts[f"{part}_calls"] <= figures[mode]["calls"], (mode, part)
            if parts[f"{part}_calls"]:
                assert 0 < parts[f"{part}_cpu_p10_ms"] <= parts[f"{part}_cpu_p50_ms"], (mode, part)
            else:
                assert math.isnan(parts[f"{part}_cpu_p50_ms"]), (mode, part)
        assert set(parts) == {
            "commit_calls",
            "commit_cpu_p10_ms",
            "commit_cpu_p50_ms",
            "handoff_calls",
            "handoff_cpu_p10_ms",
            "handoff_cpu_p50_ms",
            "other_p50_ms",
        }


async def test_call_parts_probe_times_by_mode_and_puts_the_methods_back(tmp_path: Path) -> None:
    from broadcaster import Broadcaster
    from broadcaster.adapters.memory import MemoryAdapter
    from broadcaster.settings import load_settings
    from loadtests.scenarios.publish_overhead import CallParts

    settings = load_settings(env_file=None, store_url=f"sqlite:///{tmp_path / 'p.db'}")
    adapters = [MemoryAdapter("websocket"), MemoryAdapter("realtime")]
    async with Broadcaster(settings, adapters=adapters) as b:
        b.set_routing(b.routing.with_override("all"))
        probe = CallParts()
        with probe.timing(b):
            await b.publish("SYSTEM", "e", {"i": 1})
            b.set_routing(b.routing.with_override("websocket"))
            await b.publish("SYSTEM", "e", {"i": 2})
            await b.publish("SYSTEM", "e", {"i": 3})
        await b.publish("SYSTEM", "e", {"i": 4})  # not timed: the probe is gone
        assert "append_now" not in vars(b.store) and "dispatch" not in vars(b._handoff)
    counts = {key: len(values) for key, values in probe.cpu.items()}
    # Every call hands its one record over, whichever way it committed; it
    # commits in its own step unless the loop lags (then the writer task
    # commits, untimed): on a loaded machine some calls may.
    assert counts["dual", "handoff"] == 1 and counts["single", "handoff"] == 2
    assert counts["dual", "commit"] <= 1 and counts["single", "commit"] <= 2
    assert all(c > 0 for values in probe.cpu.values() for c in values)
    figures = probe.figures({"dual": 1.0, "single": 1.0})
    assert figures["single"]["handoff_calls"] == 2
    single = figures["single"]
    expected = 1.0 - single["commit_cpu_p50_ms"] - single["handoff_cpu_p50_ms"]
    if counts["single", "commit"]:
        assert single["other_p50_ms"] == round(expected, 4)
    else:
        assert math.isnan(single["commit_cpu_p50_ms"]) and math.isnan(single["other_p50_ms"])
    # A second phase (another round of the path) pools into the same probe.
    async with Broadcaster(settings, adapters=[MemoryAdapter("websocket")]) as again:
        again.set_routing(again.routing.with_override("websocket"))
        with probe.timing(again):
            await again.publish("SYSTEM", "e", {"i": 5})
    assert len(probe.cpu["single", "handoff"]) == 3


def test_checksum_cost(smoke: Smoke) -> None:
    r = smoke.results["checksum-cost"]
    for algorithm in ("crc32", "sha256"):
        figures = r[algorithm]
        for key in (
            "checksum_ns",
            "draft_ns",
            "seal_ns",
            "publish_memory_cpu_ns",
            "publish_real_cpu_ns",
            "share_of_draft_seal",
            "share_of_publish_memory",
            "share_of_publish_real",
        ):
            assert _finite_positive(figures[key]), (algorithm, key)
        for key in ("share_of_draft_seal", "share_of_publish_memory", "share_of_publish_real"):
            assert figures[key] < 1
    assert set(r["checksum_ns_by_payload_bytes"]) == {"64", "1024", "16384"}


def test_reconcile(smoke: Smoke) -> None:
    r = smoke.results["reconcile"]
    assert r["events"] == 2000
    assert r["pairs"] == r["matched"] == 2 * r["events"]
    for key in ("seconds", "pairs_per_s", "peak_rss_mib"):
        assert _finite_positive(r[key]), key


def test_store(smoke: Smoke) -> None:
    r = smoke.results["store"]
    # --skip-postgres: PostgreSQL is left out of the smoke run on purpose.
    assert set(r["append_events_per_s"]) == {"memory", "sqlite"}
    assert set(r["mark_state_changes_per_s"]) == {"memory", "sqlite"}
    for section in ("append_events_per_s", "mark_state_changes_per_s", "publish_on_over_off"):
        assert all(_finite_positive(v) for v in r[section].values()), section
    assert all(_finite_positive(v) for v in r["publish_store_on"].values())


def test_producers(smoke: Smoke) -> None:
    r = smoke.results["producers"]
    # --skip-postgres: the SQLite run only, two producer processes.
    [run] = r["runs"]
    assert run["store"] == "sqlite"
    assert run["published"] > 0 and run["publish_errors"] == 0
    # One instance (i0), its subscriber on both paths.
    assert run["instances"] == 1
    assert run["lost"] == {"i0/websocket": 0, "i0/realtime": 0}
    assert run["duplicates"] == {"i0/websocket": 0, "i0/realtime": 0}
    assert _finite_positive(run["delivered_per_s"])
    assert set(run["cpu_s"]) == {
        "serve_i0",
        "realtime_server",
        "subscriber_i0",
        "producer_0",
        "producer_1",
    }
    for path in ("i0/websocket", "i0/realtime"):
        assert _finite_positive(run["latency_ms"][path]["p99_ms"])


def test_failover(smoke: Smoke) -> None:
    r = smoke.results["failover"]
    for key in ("failover_s", "half_open_s", "closed_s", "full_share_s"):
        assert _finite_positive(r[key]), key
    assert r["half_open_s"] <= r["closed_s"] <= r["full_share_s"]
    # Restore waits until nothing is pending; past --restore-timeout it is
    # null and says what is left (a figure, not a failure of the harness).
    if r["restore_s"] is None:
        assert r["pending_at_end"] > 0
    else:
        assert r["restore_s"] >= r["full_share_s"]
        assert r["pending_at_end"] == 0
        assert r["backfilled"] == r["parked"]
    assert r["transitions"]["closed->open"] >= 1
    assert r["backfilled"] > 0
    for phase in ("steady", "failover", "backfill"):
        assert r[phase]["events"] > 0


def test_raw_limit(smoke: Smoke) -> None:
    r = smoke.results["raw-limit"]
    assert r["raw_delivered"] > 0
    assert r["raw_lost"] == 0
    assert r["raw_one_connection_lost"] == 0
    assert r["broadcaster_lost"] == 0
    # The raw loop runs before and after the broadcaster; the limit is their mean.
    before, after = r["raw_events_per_s_runs"]
    assert _finite_positive(before) and _finite_positive(after)
    assert r["raw_events_per_s"] == round((before + after) / 2)
    for key in (
        "raw_events_per_s",
        "raw_one_connection_events_per_s",
        "raw_two_over_one",
        "broadcaster_max_events_per_s",
        "fraction",
    ):
        assert _finite_positive(r[key]), key


def test_per_event(smoke: Smoke) -> None:
    r = smoke.results["per-event"]
    assert r["lost"] == 0
    # --smoke: one round, asyncio's loop in a process of its own, one producer.
    rows = r["broadcaster"]["asyncio"]
    assert set(rows) == {"publish_x1", "publish_many100_x16"}
    for row in rows.values():
        assert row["lost"] == 0
        for key in ("events_per_s", "cpu_us_per_event"):
            low, mid, high = (row[key][k] for k in ("min", "median", "max"))
            assert _finite_positive(low) and low <= mid <= high
    # The peer (encode/broadcaster, in its own environment) delivered every event.
    assert r["peer"]["publish_x1"]["lost"] == 0
    assert _finite_positive(r["peer"]["publish_x1"]["events_per_s"]["median"])
    assert set(r["ratios"]) == {
        "asyncio_publish_x1_over_raw",
        "asyncio_publish_x1_over_peer",
        "asyncio_publish_many100_x16_over_raw",
    }
    assert all(_finite_positive(ratio["median"]) for ratio in r["ratios"].values())


def test_spread_is_min_median_max() -> None:
    assert per_event.spread([3, 1, 2, 10]) == {"min": 1, "median": 2.5, "max": 10}
    assert per_event.spread([0.123456]) == {"min": 0.1235, "median": 0.1235, "max": 0.1235}


def test_all_prints_a_table_and_writes_results(smoke: Smoke) -> None:
    command = "python -m loadtests " + " ".join(ALL_ARGS)
    assert f"| figure (`{command} --out " in smoke.stdout
    assert "| sustained: websocket.p99_ms |" in smoke.stdout
    assert "| raw-limit: fraction |" in smoke.stdout
    written = (smoke.out / "results.jsonl").read_text().splitlines()
    assert {json.loads(line)["scenario"] for line in written} == set(SCENARIOS)
    assert (smoke.out / "results.md").read_text().startswith("| figure (")


def test_every_timed_scenario_plots_a_png(smoke: Smoke) -> None:
    plotted = [name for name, module in SCENARIOS.items() if module.PLOTS]
    assert {"sustained", "dual-vs-single", "publish-overhead", "failover", "raw-limit"} <= set(
        plotted
    )
    for name in plotted:
        png = smoke.out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


# -- in-process: helpers and argument handling ---------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_paces_and_caps_catch_up() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=50, clock=clock)
    assert bucket.take_now(10) == 1  # starts with one token
    assert bucket.take_now(10) == 0
    assert bucket.wait_s() == pytest.approx(0.001)
    clock.now = 0.0105
    assert bucket.take_now(100) == 10  # whole tokens only
    clock.now = 10.0  # a long stall: catch-up is capped at the burst
    assert bucket.take_now(1000) == 50
    assert bucket.take_now(1000) == 0


def test_token_bucket_unpaced_and_deadline() -> None:
    assert TokenBucket(None, burst=1).take_now(100) == 100
    assert TokenBucket(None, burst=1).wait_s() == 0
    with pytest.raises(ValueError):
        TokenBucket(0, burst=1)


async def test_token_bucket_take_stops_at_the_deadline() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=10, clock=clock)
    assert await bucket.take(5, deadline=1.0) == 1
    clock.now = 2.0
    assert await bucket.take(5, deadline=1.0) == 0


async def test_token_bucket_gives_each_waiting_producer_its_own_slot() -> None:
    """With no token there, concurrent takers reserve consecutive tokens and
    each sleeps until its own: one wake-up per token, not one per producer."""
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))

    bucket = TokenBucket(1000, burst=10, clock=clock, sleep=sleep)
    assert bucket.take_now(1) == 1
    taken = await asyncio.gather(*(bucket.take(5, deadline=1.0) for _ in range(3)))
    assert taken == [1, 1, 1]
    assert slept == [0.001, 0.002, 0.003]
    assert bucket.take_now(5) == 0  # those tokens are spoken for
    clock.now = 0.0035  # all three reserved tokens exist now, half of the next
    assert bucket.take_now(5) == 0
    clock.now = 0.0045
    assert bucket.take_now(5) == 1
    # A reservation that would only be ready after the deadline takes nothing.
    assert await bucket.take(5, deadline=0.0046) == 0
    assert slept[-1] == pytest.approx(0.0001)
    assert bucket.take_now(5) == 0 and bucket.wait_s() == pytest.approx(0.0005)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert math.isnan(percentile([], 50))
    figures = summarise(list(reversed(values)), scale=2)
    assert figures == {"p50": 100, "p99": 198, "p999": 200, "max": 200}
    assert all(math.isnan(v) for v in summarise([]).values())


def test_bins_fill_gaps() -> None:
    bins = Bins(0.5)
    bins.add(10.1, 1.0)
    bins.add(10.2, 3.0)
    bins.add_many(11.2, [5.0, 7.0])
    assert bins.rows(origin=10.0) == [[0.0, 2, 1.0, 3.0], [0.5, 0, 0.0, 0.0], [1.0, 2, 5.0, 7.0]]
    assert Bins(1).rows() == []
    with pytest.raises(ValueError):
        Bins(0)


def test_bins_values_of_is_the_bin_add_appends_to() -> None:
    bins, added = Bins(0.5), Bins(0.5)
    for t, value in [(10.1, 1.0), (10.2, 3.0), (11.2, 5.0), (10.4, 2.0)]:
        bins.values_of(t).append(value)
        added.add(t, value)
    assert bins.rows(origin=10.0) == added.rows(origin=10.0)
    assert bins.values_of(10.3) == [1.0, 3.0, 2.0]


def test_flatten_and_markdown_table() -> None:
    result = {"scenario": "x", "a": {"b": 1500, "c": 0.123456}, "d": [1, 2], "e": float("nan")}
    assert flatten(result) == {"scenario": "x", "a.b": 1500, "a.c": 0.123456, "e": result["e"]}
    table = markdown_table("python -m loadtests all", [result])
    assert table.splitlines() == [
        "| figure (`python -m loadtests all`) | value |",
        "|---|---|",
        "| x: a.b | 1 500 |",
        "| x: a.c | 0.1235 |",
        "| x: e | – |",
    ]


def test_a_loss_in_a_run_whose_subscriber_was_dropped_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = Stack()
    # The subscriber's report: its WebSocket path was dropped once (a fan-out
    # closes a subscriber that falls too far behind) and phase b missed events.
    stack.report = {
        "mismatches": {},
        "reconnects": {"websocket": 1, "realtime": 0},
        **{
            f"{name}/websocket": {"received": received, "duplicates": 0, "last_t": 11.0, "bins": []}
            for name, received in (("a", 10), ("b", 7))
        },
    }
    phases = [
        PhaseResult(name, {"events": 10, "delivered": {"websocket": 10}}, 10.0, Bins(1.0))
        for name in ("a", "b")
    ]
    stack.complete(phases)
    assert stack.reconnects == {"websocket": 1}
    a, b = (p.figures for p in phases)
    assert (a["lost"], b["lost"]) == (0, 3)
    assert "subscriber_reconnects" not in a
    assert b["subscriber_reconnects"] == {"websocket": 1}
    assert "dropped and reconnected {'websocket': 1}" in capsys.readouterr().err


async def test_the_subscriber_process_reports_its_reconnects() -> None:
    """A real subscriber process against a fan-out that closes its first
    connection as too slow (code 1013), as the WebSocket adapter does."""
    connected = asyncio.Event()
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await ws.close(1013, "subscriber too slow")
            return
        connected.set()
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sub = spawn(
            "-m", "loadtests.subscriber", "--ws", f"ws://127.0.0.1:{port}", "--control", stdin=True
        )
        try:
            assert sub.stdin is not None and sub.stdout is not None
            sub.stdin.write("start\n")
            sub.stdin.flush()
            async with asyncio.timeout(30):
                assert await asyncio.to_thread(sub.stdout.readline) == "ready\n"
                await connected.wait()
            sub.stdin.write("report\n")
            sub.stdin.flush()
            report = json.loads(await asyncio.to_thread(sub.stdout.read))
        finally:
            end_process(sub)
    assert report["reconnects"] == {"websocket": 1}


def test_recorder_counts_distinct_events_and_duplicates() -> None:
    recorder = Recorder(bin_s=1.0)
    event = {"sequence_id": 1, "payload": {"t": 100.0, "phase": "run"}}
    recorder.on_event("websocket", event, True, 100.01)
    recorder.on_event("websocket", event, False, 100.02)
    assert recorder.count("run", "websocket") == 1
    assert recorder.short("run", 1, ["websocket", "realtime"])
    report = recorder.report()
    assert report["mismatches"] == {"websocket": 1}
    assert report["run/websocket"]["duplicates"] == 1
    assert report["run/websocket"]["p50_ms"] == pytest.approx(10, abs=0.01)


def _reference_report(events: list[tuple[str, dict[str, Any], bool, float]], bin_s: float) -> Any:
    """The subscriber's report of ``events`` (adapter, object, verdict, receive
    time), worked out in the plainest way: the figures Recorder must give."""
    tracks: dict[tuple[str, str], dict[str, Any]] = {}
    mismatches: dict[str, int] = {}
    for adapter, obj, ok, now in events:
        key = (str(obj["payload"].get("phase", "?")), adapter)
        track = tracks.setdefault(
            key, {"seen": set(), "duplicates": 0, "latencies": [], "bins": Bins(bin_s), "t": []}
        )
        track["duplicates"] += obj["sequence_id"] in track["seen"]
        track["seen"].add(obj["sequence_id"])
        latency = (now - obj["payload"]["t"]) * 1000
        track["latencies"].append(latency)
        track["bins"].add(now, latency)
        track["t"].append(now)
        if not ok:
            mismatches[adapter] = mismatches.get(adapter, 0) + 1
    report: dict[str, Any] = {"mismatches": mismatches}
    for (phase, adapter), track in sorted(tracks.items()):
        figures = summarise(track["latencies"])
        report[f"{phase}/{adapter}"] = {
            "received": len(track["seen"]),
            "duplicates": track["duplicates"],
            "p50_ms": figures["p50"],
            "p99_ms": figures["p99"],
            "p999_ms": figures["p999"],
            "max_ms": figures["max"],
            "first_t": track["t"][0],
            "last_t": track["t"][-1],
            "bins": track["bins"].rows(origin=0.0),
        }
    return report


def test_recorder_handler_and_on_event_give_the_reference_report() -> None:
    # Phases of every JSON type (1, 1.0 and "1" are three phases, not one;
    # lists are not hashable), duplicates, mismatches, and receive times that
    # cross bins, come back to an earlier bin and stay on a bin's edge.
    phases: list[Any] = ["run", "warm", 1, "1", 1.0, True, None, ["x"], {"p": 1}]
    events: list[tuple[str, dict[str, Any], bool, float]] = []
    now = 1_700_000_000.0
    for i in range(400):
        now += [0.01, 0.3, -0.7, 0.0, 0.25][i % 5]
        payload: dict[str, Any] = {"t": now - (i % 7) / 1000}
        if i % 11:
            payload["phase"] = phases[i % len(phases)]
        obj = {"sequence_id": i // 3, "payload": payload}
        events.append((["websocket", "realtime"][i % 2], obj, i % 13 != 0, now))
    expected = _reference_report(events, 0.25)

    by_call = Recorder(bin_s=0.25)
    for adapter, obj, ok, t in events:
        by_call.on_event(adapter, obj, ok, t)
    assert by_call.report() == expected

    times = iter([t for _, _, _, t in events])
    recorder = Recorder(bin_s=0.25)
    handlers = {
        a: recorder.handler(a, clock=lambda: next(times)) for a in ("websocket", "realtime")
    }
    for adapter, obj, ok, _ in events:
        handlers[adapter](obj, ok)
    assert recorder.report() == expected
    assert recorder.count("run", "websocket") == len(
        {
            o["sequence_id"]
            for a, o, _, _ in events
            if a == "websocket" and o["payload"].get("phase") == "run"
        }
    )


def test_smoke_defaults_fill_only_unset_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["sustained", "--smoke", "--rate", "max"])
    _apply_defaults(SCENARIOS["sustained"], args)
    assert args.rate == "max"
    assert args.seconds == SCENARIOS["sustained"].SMOKE["seconds"]
    args = parser.parse_args(["sustained"])
    _apply_defaults(SCENARIOS["sustained"], args)
    assert args.seconds == SCENARIOS["sustained"].DEFAULTS["seconds"]


def test_all_passes_options_to_the_right_scenarios(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["all", "--smoke", "--seconds", "2", "--rate", "max", "--events", "10", "--skip-postgres"]
    )
    assert _scenario_argv("sustained", args, tmp_path) == [
        "sustained",
        "--smoke",
        "--seconds",
        "2.0",
        "--rate",
        "max",
        "--plot",
        str(tmp_path / "sustained.png"),
    ]
    assert _scenario_argv("reconcile", args, None) == ["reconcile", "--smoke", "--events", "10"]
    assert _scenario_argv("store", args, None) == ["store", "--smoke", "--skip-postgres"]
    assert _scenario_argv("receipts", args, None) == ["receipts", "--smoke", "--skip-postgres"]
    assert _scenario_argv("producers", args, None)[-1] == "--skip-postgres"
    assert _scenario_argv("checksum-cost", args, tmp_path) == ["checksum-cost", "--smoke"]
    on_asyncio = build_parser().parse_args(["all", "--loop", "asyncio"])
    assert _scenario_argv("failover", on_asyncio, None) == ["failover", "--loop", "asyncio"]
    pinned = build_parser().parse_args(["all", "--pin"])
    assert _scenario_argv("raw-limit", pinned, None) == ["raw-limit", "--pin"]


@pytest.mark.parametrize(
    "argv",
    [
        ["sustained", "--rate", "fast"],
        ["sustained", "--rate", "-5"],
        ["store", "--plot", "x.png"],
        ["publish-overhead", "--paths", "realtime,pigeon"],
        ["publish-overhead", "--paths", ","],
        ["publish-overhead", "--rounds", "0"],
        ["publish-overhead", "--rounds", "two"],
        ["nonsense"],
        ["sustained", "--loop", "trio"],
        ["per-event", "--producers", "1,0"],
        ["per-event", "--loops", "asyncio,trio"],
        ["per-event", "--rounds", "0"],
        [],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().out == ""


def test_wakeup_prints_send_costs_per_gap(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wakeup", "--sends", "5", "--gaps-ms", "0", "1"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["scenario"] == "wakeup" and line["sends"] == 5
    gaps = {k: v for k, v in line.items() if k.startswith("gap_")}
    assert set(gaps) == {"gap_0_ms", "gap_1_ms"}
    assert all(v["p50_us"] > 0 and v["p90_us"] >= v["p50_us"] for v in gaps.values())


def test_event_cost(smoke: Smoke) -> None:
    result = smoke.results["event-cost"]
    for algorithm in ("crc32", "sha256"):
        assert _finite_positive(result[f"draft_us_{algorithm}"])
        assert _finite_positive(result[f"seal_us_{algorithm}"])


def test_admin_api(smoke: Smoke) -> None:
    result = smoke.results["admin-api"]
    assert result["ingest_single"]["events"] > 0 and result["ingest_batched"]["events"] > 0
    assert set(result["admin_latency"]["idle"]) == {"health", "stats", "config", "patch"}


def test_syscall_us_times_one_call_in_the_kernel() -> None:
    cost = syscall_us(2000)
    # Well above a plain function call, well below a context switch: both
    # bounds hold on any machine this runs on (0.05-0.9 us seen).
    assert 0.01 < cost < 50


def test_probe_cost(smoke: Smoke) -> None:
    r = smoke.results["probe-cost"]
    (rate,) = r["rates"].values()
    for side in ("off", "on"):
        assert _finite_positive(rate[side]["cpu_us_per_event"])
        assert _finite_positive(rate[side]["events_per_s"])
        assert len(rate["runs"][side]) == 1
    assert isinstance(rate["probe_share"], float)
    # The probed run's probes were connected and verified what they got.
    probes = rate["probes_last_run"]
    assert set(probes) == {"websocket", "realtime"}
    for p in probes.values():
        assert p["connected"] and p["received"] > 0 and not p["mismatches"]
    assert "probes" not in rate["runs"]["off"][0]
