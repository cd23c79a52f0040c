"""The monitoring configuration in config/: Prometheus alert rules and the
Grafana dashboard parse, have the structure their tools need, and name only
metrics that BroadcasterMetrics exports (checked against a live render())."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.core import Broadcaster
from broadcaster.events import Category
from broadcaster.metrics import METRIC_NAMES, BroadcasterMetrics
from broadcaster.rollout.manager import Rollouts
from broadcaster.rollout.plan import Gates
from broadcaster.routing import ADAPTER_NAMES
from broadcaster.settings import Settings, load_settings
from broadcaster.store.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
ALERTS = CONFIG / "prometheus" / "alerts.yml"
ALERT_TESTS = CONFIG / "prometheus" / "alerts.test.yml"
DASHBOARD = CONFIG / "grafana" / "broadcaster-dashboard.json"

_METRIC = re.compile(r"broadcaster_[a-z_]+")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
_DURATION = re.compile(r"\d+[smhd]")
_SEVERITIES = {"info", "warning", "critical"}


def metric_names(expression: str) -> set[str]:
    """Every broadcaster_* metric an expression names, histogram series
    (``_bucket``/``_sum``/``_count``) reduced to the histogram's name."""
    found = set()
    for name in _METRIC.findall(expression):
        base = _HISTOGRAM_SERIES.sub("", name)
        found.add(base if base in METRIC_NAMES else name)
    return found


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_expressions() -> list[str]:
    board = dashboard()
    expressions = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            expressions.append(variable["definition"])
    return expressions


async def exported_names() -> set[str]:
    """Metric names in a live render() (see :func:`live_metrics`). Counters by
    their ``_total`` sample name, histograms by their base name."""
    names = set()
    for family in text_string_to_metric_families((await live_metrics()).decode()):
        if family.type == "histogram":
            names.add(family.name)
        else:
            names.update(sample.name for sample in family.samples)
    return names


async def live_metrics() -> bytes:
    """A live render(), after traffic in every category, a reconciliation run,
    a rollout and a store refresh, so every labelled series exists."""
    b = Broadcaster(
        load_settings(env_file=None),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    metrics = BroadcasterMetrics(b)
    async with b:
        for category in ("CRITICAL", "PERFORMANCE", "USER_ACTIVITY", "SYSTEM", "DEBUG"):
            await b.publish(category, "config.check", {"n": 1})
        await b.flush(timeout=5)
        await b.reconcile()
        await Rollouts(b).start(
            Category.DEBUG, (10, 100), hold_s=60, gates=Gates(), cutover=False, by="test"
        )
        await metrics.refresh()
        body, _ = metrics.render()
    metrics.close()
    return bytes(body)


# -- Prometheus's own checker (scripts/check installs Debian's prometheus) ------


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_promtool_accepts_the_alert_rules() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"SUCCESS: 11 rules found" in done.stdout


async def test_promtool_accepts_a_live_metrics_page() -> None:
    """Names, help texts, types and units as Prometheus's linter wants them."""
    done = promtool("check", "metrics", stdin=await live_metrics())
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


# -- alert rules -------------------------------------------------------------------


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    done = promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"SUCCESS" in done.stdout


async def test_the_rollout_metrics_say_where_each_categorys_rollout_stands() -> None:
    families = {f.name: f for f in text_string_to_metric_families((await live_metrics()).decode())}
    (step,) = families["broadcaster_rollout_step"].samples
    assert step.labels == {"category": "DEBUG"} and step.value == 1
    states = {s.labels["state"]: s.value for s in families["broadcaster_rollout_state"].samples}
    assert states == {
        "running": 1,
        "paused": 0,
        "rolled_back": 0,
        "aborted": 0,
        "completed": 0,
    }


def test_alert_rules_have_the_fields_prometheus_and_alertmanager_need() -> None:
    found = rules()
    assert len(found) >= 6
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in found:
        assert isinstance(rule["alert"], str) and rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert _DURATION.fullmatch(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in _SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_alert_rules_cover_the_required_conditions() -> None:
    expressions = {rule["alert"]: " ".join(rule["expr"].split()) for rule in rules()}
    joined = "\n".join(expressions.values())
    assert "rate(broadcaster_events_failed_total[5m])" in joined
    assert "rate(broadcaster_events_routed_total[5m])" in joined
    assert "> 0.05" in joined
    assert "histogram_quantile( 0.99," in joined
    assert "broadcaster_delivery_latency_seconds_bucket" in joined
    assert "increase(broadcaster_checksum_mismatches_total" in joined
    assert "broadcaster_reconciliation_lag_seconds > 600" in joined
    assert "deriv(broadcaster_events_pending" in joined
    assert 'broadcaster_rollout_state{state="rolled_back"}) == 1' in joined
    breaker = [rule for rule in rules() if rule["expr"].strip() == "broadcaster_breaker_state == 2"]
    assert len(breaker) == 1 and breaker[0]["for"] == "1m"


# -- dashboard --------------------------------------------------------------------------


def test_dashboard_is_importable_with_a_prometheus_input() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["title"] and board["uid"]
    inputs = {i["name"]: i for i in board["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_has_a_title_and_prometheus_targets() -> None:
    for panel in dashboard()["panels"]:
        assert panel["title"].strip()
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"], panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_dashboard_has_the_required_panels() -> None:
    panels = {panel["title"]: panel for panel in dashboard()["panels"]}

    def expressions(title: str) -> str:
        return " ".join(target["expr"] for target in panels[title]["targets"])

    assert "broadcaster_events_published_total" in expressions("Event rates per category")
    assert "by (category)" in expressions("Event rates per category")
    assert "broadcaster_dual_write_success_ratio" in expressions("Dual-write success per category")
    latency = expressions("Delivery latency p50 / p99 per adapter")
    assert "histogram_quantile(0.5," in latency and "histogram_quantile(0.99," in latency
    assert "by (le, adapter)" in latency
    assert "broadcaster_checksum_mismatches_total" in expressions("Checksum mismatches")
    assert "broadcaster_reconciliation_lag_seconds" in expressions("Reconciliation lag")
    assert "broadcaster_breaker_state" in expressions("Breaker state per adapter")
    pending = expressions("Pending and backfilled")
    assert "broadcaster_events_pending" in pending
    assert "broadcaster_events_backfilled_total" in pending


# -- names against the exporter ---------------------------------------------------------


def test_metric_name_extraction_reduces_histogram_series() -> None:
    expression = (
        "histogram_quantile(0.99, sum by (le) (rate(broadcaster_send_seconds_bucket[5m])))"
        " / broadcaster_events_routed_total + broadcaster_nonexistent_count"
    )
    assert metric_names(expression) == {
        "broadcaster_send_seconds",
        "broadcaster_events_routed_total",
        "broadcaster_nonexistent_count",  # not a histogram: left as written
    }


@pytest.mark.parametrize(
    ("source", "expressions"),
    [
        ("alerts.yml", lambda: [rule["expr"] for rule in rules()]),
        ("broadcaster-dashboard.json", dashboard_expressions),
    ],
)
async def test_every_metric_used_is_declared_and_exported(source: str, expressions: Any) -> None:
    used: set[str] = set()
    for expression in expressions():
        used |= metric_names(expression)
    assert used, f"{source} names no broadcaster metric"
    undeclared = used - set(METRIC_NAMES)
    assert not undeclared, f"{source} uses metrics not in METRIC_NAMES: {sorted(undeclared)}"
    missing = used - await exported_names()
    assert not missing, f"{source} uses metrics render() does not export: {sorted(missing)}"


async def test_every_declared_metric_is_exported() -> None:
    assert await exported_names() == set(METRIC_NAMES)


def test_env_example_lists_every_variable() -> None:
    """SPEC 4: .env.example lists every variable, and only real ones."""
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    flat = {
        name.upper() for name in Settings.model_fields if name not in ("categories", "adapters")
    }
    families = {
        f"DUAL_WRITE_{cat.value}_{field}"
        for cat in Category
        for field in ("ENABLED", "PERCENTAGE", "ADAPTERS", "CHECKSUM")
    } | {
        f"ADAPTER_{name.upper()}_{field}"
        for name in ADAPTER_NAMES
        for field in ("ERROR_THRESHOLD", "LATENCY_THRESHOLD_MS")
    }
    assert flat - listed == set()
    assert listed - flat - families == set()
