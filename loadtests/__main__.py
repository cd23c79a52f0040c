"""``python -m loadtests <scenario> [options]``: the benchmark harness.

Each scenario prints progress on stderr and ONE JSON line of figures on
stdout; ``--plot PATH.png`` (where it applies) writes rate and latency over
time; ``--smoke`` runs it in seconds with tiny numbers (for the tests: its
figures mean nothing). ``all`` runs every scenario in its own process, prints
their JSON lines as they finish and then a markdown table, one row per figure;
``--out DIR`` also writes ``results.jsonl``, ``results.md`` and the PNGs there.

Scenarios: sustained, dual-vs-single, publish-overhead, checksum-cost,
event-cost, reconcile, store, failover, raw-limit, per-event, wakeup, admin-api,
admin-body, receipts, probe-cost, producers, realtime-quota (``python -m
loadtests <scenario> --help`` for each).
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from broadcaster.logs import configure_logging
from broadcaster.loop import EVENT_LOOPS, resolve_event_loop, run_on_loop

from ._common import load_average, markdown_table, pin_cpus, progress, python_env, syscall_us
from .scenarios import SCENARIOS

__all__ = ["build_parser", "main", "run_all", "run_in_subprocess"]

#: Scenarios whose length ``all --seconds`` sets.
_TIMED = ("sustained", "dual-vs-single", "publish-overhead", "raw-limit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, module in SCENARIOS.items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        _add_loop_argument(p)
        p.add_argument("--smoke", action="store_true", help="tiny numbers, done in seconds")
        if module.PLOTS:
            p.add_argument("--plot", metavar="PATH.png", help="write rate/latency over time")
        else:
            p.set_defaults(plot=None)
    p = sub.add_parser(
        "all",
        help="every scenario, then a markdown table of all figures",
        description="Run every scenario (each in its own process) and print the "
        "JSON lines and a markdown table of the figures.",
    )
    p.add_argument("--smoke", action="store_true", help="every scenario with --smoke")
    p.add_argument("--out", metavar="DIR", help="write results.jsonl, results.md and PNGs here")
    p.add_argument("--seconds", type=float, help=f"length of the {', '.join(_TIMED)} runs")
    p.add_argument("--rate", help="sustained: target events/s or max")
    p.add_argument("--events", type=int, help="reconcile: stored events")
    p.add_argument(
        "--skip-postgres",
        action="store_true",
        help="without PostgreSQL (store, receipts, producers)",
    )
    _add_loop_argument(p)
    return parser


def _add_loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the event loop of the broadcaster and subscriber processes, as EVENT_LOOP "
        "(default auto: uvloop where installed, as `broadcaster serve`)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="keep the broadcaster's process on one CPU and the local servers, "
        "subscribers and peers on the others (JSON: pinned)",
    )


def _apply_defaults(module: ModuleType, args: argparse.Namespace) -> None:
    values = module.SMOKE if args.smoke else module.DEFAULTS
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


#: Scenarios that also run on PostgreSQL unless told ``--skip-postgres``.
_WITH_POSTGRES = ("store", "receipts", "producers")


def _scenario_argv(name: str, args: argparse.Namespace, out: Path | None) -> list[str]:
    argv = [name]
    if args.smoke:
        argv.append("--smoke")
    if args.loop != "auto":
        argv += ["--loop", args.loop]
    if args.pin:
        argv.append("--pin")
    if args.seconds is not None and name in _TIMED:
        argv += ["--seconds", str(args.seconds)]
    if args.rate is not None and name == "sustained":
        argv += ["--rate", args.rate]
    if args.events is not None and name == "reconcile":
        argv += ["--events", str(args.events)]
    if args.skip_postgres and name in _WITH_POSTGRES:
        argv.append("--skip-postgres")
    if out is not None and SCENARIOS[name].PLOTS:
        argv += ["--plot", str(out / f"{name}.png")]
    return argv


def run_in_subprocess(argv: list[str]) -> tuple[int, str]:
    """``python -m loadtests *argv`` in a fresh process: (exit code, stdout)."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", *argv],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
        check=False,
    )
    return proc.returncode, proc.stdout


def run_all(
    args: argparse.Namespace,
    argv: list[str],
    runner: Callable[[list[str]], tuple[int, str]] = run_in_subprocess,
) -> int:
    """Every scenario through ``runner`` (default: each in its own process,
    so none inherits another's memory, caches or event loop), in order."""
    command = "python -m loadtests " + shlex.join(argv)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    progress(f"{command} (load average {load_average()})")
    results: list[dict[str, Any]] = []
    commands: list[str] = []
    failed: list[str] = []
    for name in SCENARIOS:
        scenario_argv = _scenario_argv(name, args, out)
        commands.append("python -m loadtests " + shlex.join(scenario_argv))
        progress(f"--- {commands[-1]}")
        code, stdout = runner(scenario_argv)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            failed.append(name)
            progress(f"{name} failed (exit code {code})")
            continue
        result = json.loads(lines[-1])
        results.append(result)
        print(lines[-1], flush=True)
    table = markdown_table(command, results)
    listing = "\n".join(f"- `{c}`" for c in commands)
    report = f"{table}\n\nPer scenario:\n\n{listing}\n"
    if failed:
        report += f"\nFailed: {', '.join(failed)}\n"
    print()
    print(report, flush=True)
    if out is not None:
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        (out / "results.md").write_text(report)
        progress(f"wrote {out / 'results.jsonl'} and {out / 'results.md'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    configure_logging("console", "WARNING")
    if args.scenario == "all":
        return run_all(args, argv)
    module = SCENARIOS[args.scenario]
    _apply_defaults(module, args)
    # Before the loop: its threads (the store's worker) inherit the mask.
    pinned = pin_cpus() if args.pin else None
    result = run_on_loop(module.run(args), loop=args.loop)
    result["event_loop"] = resolve_event_loop(args.loop)
    result["pinned"] = pinned
    if args.scenario in _TIMED:
        # What a system call costs here: runs on different VMs compare only
        # with this beside them.
        result["syscall_us"] = syscall_us()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
