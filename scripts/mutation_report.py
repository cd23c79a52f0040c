"""The report of scripts/mutation: per module of the pure core, how many
mutants mutmut made, how many the unit tests killed and how many survived,
the score, then the diff of every mutant that was not killed.

It reads mutmut's own commands (``mutmut results --all true`` and ``mutmut
show NAME``, the latter run for every name in one process), not the files
under ``mutants/``, whose layout is mutmut's business; the version is pinned
in pyproject.toml's ``mutation`` extra.

    python scripts/mutation_report.py [--module NAME]
    python scripts/mutation_report.py --list-unnoticed [--module NAME]
    python scripts/mutation_report.py --check-module NAME
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Tally", "core_modules", "main", "module_of", "parse_results", "render", "tally"]

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).parent / "mutmut"

#: mutmut's verdicts that mean the tests noticed the change: a failing test,
#: or a test that ran out of its CPU time (the change made it loop).
DETECTED = frozenset({"killed", "timeout", "caught by type check"})
#: Verdicts whose diff the report prints: the change went unnoticed.
UNNOTICED = frozenset({"survived", "no tests"})


@dataclass
class Tally:
    """What became of one module's mutants."""

    mutants: int = 0
    killed: int = 0
    survived: int = 0
    no_tests: int = 0
    timeout: int = 0
    other: int = 0
    unnoticed: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The share of mutants the tests detected (killed or timed out)."""
        return (self.killed + self.timeout) / self.mutants if self.mutants else 1.0

    def add(self, name: str, status: str) -> None:
        self.mutants += 1
        if status == "killed" or status == "caught by type check":
            self.killed += 1
        elif status == "timeout":
            self.timeout += 1
        elif status == "survived":
            self.survived += 1
        elif status == "no tests":
            self.no_tests += 1
        else:
            self.other += 1
        if status in UNNOTICED:
            self.unnoticed.append(name)


def core_modules(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The dotted names (under ``broadcaster``) of the files mutmut mutates."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    paths = config["tool"]["mutmut"]["only_mutate"]
    return [module_of_path(path) for path in paths]


def module_of_path(path: str) -> str:
    """``broadcaster/settings/model.py`` -> ``settings.model``;
    ``broadcaster/settings/__init__.py`` -> ``settings``."""
    parts = Path(path).with_suffix("").parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_of(mutant: str) -> str:
    """The module a mutant's name belongs to: mutmut names a mutant
    ``broadcaster.<module>.<function>__mutmut_<n>`` (a method's function part
    holds no dot either), with ``__init__`` left out of a package's name."""
    dotted = mutant.rpartition(".")[0]
    return dotted.removeprefix("broadcaster.")


def in_module(module: str, selected: str | None) -> bool:
    """Whether ``module`` is ``selected`` or inside it (``settings`` holds
    ``settings.model``)."""
    return selected is None or module == selected or module.startswith(selected + ".")


def parse_results(lines: Iterable[str]) -> list[tuple[str, str]]:
    """``(mutant, status)`` for each ``    name: status`` line of ``mutmut
    results --all true``; anything else (a warning, a blank line) is not a
    verdict."""
    verdicts = []
    for line in lines:
        name, sep, status = line.strip().partition(": ")
        if sep and name.startswith("broadcaster.") and "__mutmut_" in name:
            verdicts.append((name, status.strip()))
    return verdicts


def tally(verdicts: Iterable[tuple[str, str]], selected: str | None = None) -> dict[str, Tally]:
    """Verdicts by module, in the modules' order of name; with ``selected``,
    only that module (or package). A mutant mutmut did not get to (a run
    of one module leaves the others "not checked") is left out."""
    tallies: dict[str, Tally] = {}
    for name, status in verdicts:
        module = module_of(name)
        if status == "not checked" or not in_module(module, selected):
            continue
        tallies.setdefault(module, Tally()).add(name, status)
    return dict(sorted(tallies.items()))


def render(tallies: dict[str, Tally]) -> str:
    """The per-module table, with a total row."""
    total = Tally()
    rows = []
    header = ("module", "mutants", "killed", "survived", "no tests", "timeout", "other", "score")
    for module, t in tallies.items():
        rows.append(_row(module, t))
        for name in ("mutants", "killed", "survived", "no_tests", "timeout", "other"):
            setattr(total, name, getattr(total, name) + getattr(t, name))
    rows.append(_row("total", total))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _row(module: str, t: Tally) -> tuple[str, int, int, int, int, int, int, str]:
    return (
        module,
        t.mutants,
        t.killed,
        t.survived,
        t.no_tests,
        t.timeout,
        t.other,
        f"{100 * t.score:.1f} %",
    )


def _mutmut(*args: str) -> str:
    done = subprocess.run(
        [str(MUTMUT), *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout


#: ``mutmut show NAME`` for each name read from stdin, in one process: a
#: process per mutant would spend minutes starting mutmut hundreds of times.
_SHOW_EACH = """
import sys
from mutmut.__main__ import cli
for name in sys.stdin.read().split():
    cli.main(["show", name], standalone_mode=False)
    print()
"""


def _show(names: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_EACH],
        cwd=ROOT,
        input="\n".join(names),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation_report.py", description=__doc__)
    parser.add_argument("--check-module", metavar="NAME", help="exit 2 unless NAME is mutated")
    parser.add_argument("--module", help="report only this module (dotted, under broadcaster/)")
    parser.add_argument(
        "--list-unnoticed",
        action="store_true",
        help="print the names of the mutants the last run did not notice, one a line",
    )
    args = parser.parse_args(argv)

    modules = core_modules()
    wanted = args.check_module or args.module
    if wanted is not None and not any(in_module(m, wanted) for m in modules):
        print(
            f"scripts/mutation: --module {wanted} is not in the pure core; one of: "
            + ", ".join(modules),
            file=sys.stderr,
        )
        return 2
    if args.check_module:
        return 0

    tallies = tally(parse_results(_mutmut("results", "--all", "true").splitlines()), args.module)
    unnoticed = [name for t in tallies.values() for name in t.unnoticed]
    if args.list_unnoticed:
        for name in unnoticed:
            print(name)
        return 0
    print(render(tallies))
    if unnoticed:
        print(f"\n{len(unnoticed)} mutants the unit tests did not notice:\n")
        print(_show(unnoticed).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
