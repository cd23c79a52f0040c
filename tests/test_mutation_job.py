"""The mutation-testing job (scripts/mutation, docs/testing.md) mutates the
pure core that scripts/check holds to full coverage, runs the unit tests of
that core, and reports each module's verdicts. The job itself runs outside
the suite; these checks keep its configuration and its report honest."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mutation_report", ROOT / "scripts" / "mutation_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_report", module)
    spec.loader.exec_module(module)
    return module


report = _report_module()


def _mutmut_config() -> dict[str, list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mutmut: dict[str, list[str]] = config["tool"]["mutmut"]
    return mutmut


def test_the_job_mutates_exactly_the_files_held_to_full_coverage() -> None:
    check = (ROOT / "scripts" / "check").read_text(encoding="utf-8")
    match = re.search(r"--include='([^']+)'", check)
    assert match is not None, "scripts/check no longer names the pure core with --include"
    assert sorted(_mutmut_config()["only_mutate"]) == sorted(match.group(1).split(","))


def test_the_job_runs_unit_tests_of_the_pure_core_only() -> None:
    selection = _mutmut_config()["pytest_add_cli_args_test_selection"]
    assert selection, "the job must name its tests: without them mutmut runs the whole suite"
    for path in selection:
        assert (ROOT / path).is_file(), f"{path} (pyproject.toml [tool.mutmut]) does not exist"
        text = (ROOT / path).read_text(encoding="utf-8")
        # The end-to-end tests start processes and servers: minutes per mutant.
        assert "subprocess" not in text and "spawn" not in text, f"{path} is not a unit test"


#: ``mutmut results --all true`` as mutmut prints it (one mutant per line).
RESULTS = """\
    broadcaster.routing.x_bucket__mutmut_1: killed
    broadcaster.routing.x_bucket__mutmut_2: survived
    broadcaster.routing.xǁRouterǁroute__mutmut_1: timeout
    broadcaster.settings.x_load__mutmut_1: killed
    broadcaster.settings.model.x_check__mutmut_1: no tests
    broadcaster.rollout.policy.x_decide__mutmut_1: not checked
warning: something mutmut says that is not a verdict
"""


def test_the_report_counts_each_modules_verdicts_and_lists_what_went_unnoticed() -> None:
    tallies = report.tally(report.parse_results(RESULTS.splitlines()))
    assert list(tallies) == ["routing", "settings", "settings.model"]  # not-checked left out
    routing = tallies["routing"]
    assert (routing.mutants, routing.killed, routing.survived, routing.timeout) == (3, 1, 1, 1)
    assert routing.score == 2 / 3  # a timeout is a detected change
    assert routing.unnoticed == ["broadcaster.routing.x_bucket__mutmut_2"]
    assert tallies["settings.model"].unnoticed == ["broadcaster.settings.model.x_check__mutmut_1"]
    table = report.render(tallies)
    assert re.search(r"^total\s+5\s+2\s+1\s+1\s+1\s+0\s+60\.0 %$", table, re.MULTILINE), table


def test_a_package_selects_its_modules_and_a_module_only_itself() -> None:
    verdicts = report.parse_results(RESULTS.splitlines())
    assert list(report.tally(verdicts, "settings")) == ["settings", "settings.model"]
    assert list(report.tally(verdicts, "settings.model")) == ["settings.model"]
    assert list(report.tally(verdicts, "rout")) == []  # a prefix of a name is not a module


def test_a_module_outside_the_pure_core_is_refused_by_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert report.main(["--check-module", "rollout.policy"]) == 0
    assert report.main(["--check-module", "settings"]) == 0
    assert report.main(["--check-module", "core"]) == 2
    refusal = capsys.readouterr().err
    assert "--module core is not in the pure core" in refusal
    assert "rollout.policy" in refusal  # it names the modules there are
