"""``realtime-quota``: the Realtime path against Supabase's plan quotas.

The :mod:`sustained` stack, with the local Realtime server in its own process
enforcing a plan's quotas (``--limits``, docs/realtime-server.md) and the
subscriber process listening on both paths. Two stacks, started together:

* ``too-large`` (first on the free stack: ``--limits free``, no
  ``REALTIME_PLAN``, ``EVENT_MAX_BYTES=400000``): a 300 KB event between two
  small ones. Figures: the server's and the adapter's count of payload
  refusals, the event's state in the store, whether the WebSocket path
  delivered it, and what reconciliation reports missing on Realtime (the
  subscriber posts its receipts to the broadcaster's admin API).
* ``free``: the same stack, ``--free-rate`` events/s for ``--free-seconds``.
  With no plan the adapter assumes no quota; the server refuses as Supabase
  does, shutting the channels that receive messages while the plan's mean
  rate is over, the subscriber's and the adapter's canary. Then the drain:
  once every event is acknowledged, reconciliation finds what the subscriber
  missed while its channels were shut and repair sends it again, round after
  round, until the subscriber holds every event or ``--drain-timeout``
  passes. Figures: the server's refusals, the adapter's refusals for rate
  and rejoins, the subscriber's channel losses and rejoins, what
  reconciliation first found missing and what repair sent, breaker trips,
  and lost events after the drain (must be 0).
* ``pro`` (the other stack: ``--limits pro``, ``REALTIME_PLAN=pro``):
  ``--rate`` events/s (``max``: as fast as the producers go) for
  ``--seconds``, routed to both paths; then ``pro-moderate``, the same at
  ``--moderate-rate``, where events are few enough to go in small pushes and
  the plan's rate is what holds the pushes back. Figures per phase: what the
  server counted (messages, pushes and the copies it delivered, per second
  over the phase, and the rate its plan judged, at its highest), refusals
  counted by the server and by the adapter (both must be 0), breaker trips
  and lost events (both must be 0).

The server's count of a phase is the difference between its counters (read
from its process on SIGUSR1) before the phase and after its drain. Nothing
here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from broadcaster.adapters import RealtimeAdapter
from broadcaster.core import Broadcaster
from broadcaster.reconcile.matching import Outcome, Report

from .._common import load_average, progress
from .._stack import PhaseResult, Stack
from .sustained import add_realtime_argument, rate_arg

NAME = "realtime-quota"
HELP = "the Realtime path against a plan's quotas: pro within them, free refused and drained"
DEFAULTS: dict[str, Any] = {
    "rate": "20000",
    "moderate_rate": 2000.0,
    "free_rate": 100.0,
    "seconds": 20.0,
    "free_seconds": 30.0,
    "drain_timeout": 600.0,
    "realtime": "process",
}
SMOKE: dict[str, Any] = {
    "rate": "2000",
    "moderate_rate": 500.0,
    "free_rate": 100.0,
    "seconds": 0.5,
    "free_seconds": 0.5,
    "drain_timeout": 60.0,
    "realtime": "embedded",
}
PLOTS = False

#: Bytes of the payload too large for the Free plan, and the event size allowed.
TOO_LARGE_BYTES = 300_000
EVENT_MAX_BYTES = 400_000
#: Reconciliation judges an event missing this long after it (the subscriber
#: has posted its receipts by then: :meth:`Stack.receipts_posted`).
RECONCILE_SETTINGS: dict[str, Any] = {
    "reconcile_window_s": 0.5,
    "reconcile_buffer_s": 0.0,
    "reconcile_max_delay_s": 0.5,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=rate_arg, help="pro phase: offered events/s, or 'max' (default 20000)"
    )
    parser.add_argument(
        "--moderate-rate",
        type=float,
        help="pro-moderate phase: offered events/s (default 2000), where pushes are "
        "small and the plan's rate, not the batch size, bounds them",
    )
    parser.add_argument(
        "--free-rate",
        type=float,
        help="free phase: offered events/s (default 100: each goes in a push of its own, "
        "and each push and its copy are two messages of the Free plan's 100/s)",
    )
    parser.add_argument(
        "--seconds", type=float, help="length of each of the two pro phases (default 20)"
    )
    parser.add_argument(
        "--free-seconds",
        type=float,
        help="length of the free phase (default 30: Supabase judges a minute's mean rate, "
        "so an excess is refused only once it has lasted a while)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="the most the free phase's drain may take, seconds (default 600)",
    )
    parser.add_argument("--producers", type=int, default=4, help="producer tasks")
    parser.add_argument("--batch", type=int, default=100, help="most events per publish_many")
    add_realtime_argument(parser)


def _delta(before: dict[str, Any], after: dict[str, Any], *keys: str) -> dict[str, int]:
    return {key: after[key] - before[key] for key in keys}


def _realtime(b: Broadcaster) -> RealtimeAdapter:
    adapter = b.adapters["realtime"]
    assert isinstance(adapter, RealtimeAdapter)
    return adapter


def _breaker_trips(b: Broadcaster) -> int:
    return sum(
        n
        for (name, key), n in b.stats.breaker_transitions.items()
        if name == "realtime" and key.endswith("->open")
    )


def _adapter_figures(adapter: RealtimeAdapter) -> dict[str, Any]:
    extra = adapter.health().extra
    return {
        "pushes": extra["pushes"],
        "refused": extra["refused"],
        "reconnects": extra["reconnects"],
        "max_messages_per_s": extra["max_messages_per_s"],
    }


async def _settled_report(b: Broadcaster, timeout_s: float = 60.0) -> Report:
    """Reconcile until no event is still awaiting its receipts."""
    async with asyncio.timeout(timeout_s):
        while True:
            report = await b.reconcile()
            if not report.total(Outcome.AWAITING):
                return report
            await asyncio.sleep(0.1)  # events younger than the reconcile delay


async def _pro(
    stack: Stack, args: argparse.Namespace, name: str, rate: str
) -> tuple[dict[str, Any], PhaseResult]:
    """One phase at ``rate`` on the ``pro`` stack; its figures, and the phase
    to complete once the stack is closed."""
    b = stack.broadcaster
    adapter = _realtime(b)
    before = await stack.server_counters()
    pushes = adapter.pushes
    started = time.monotonic()
    progress(f"{name}: {args.seconds:g}s at {rate} events/s")
    phase = await stack.phase(
        name,
        seconds=args.seconds,
        rate=None if rate == "max" else float(rate),
        producers=args.producers,
        max_batch=args.batch,
    )
    after = await stack.server_counters()
    elapsed = time.monotonic() - started
    counted = _delta(before, after, "messages", "broadcasts", "fanout_frames", "quota_refusals")
    figures = {
        "limits": "pro",
        "realtime_plan": "pro",
        "target_rate": rate,
        "events": phase.figures["events"],
        "seconds": phase.figures["seconds"],
        "achieved_events_per_s": phase.figures["achieved_events_per_s"],
        "server": {
            **counted,
            "messages_per_s": round(counted["messages"] / elapsed, 1),
            "peak_judged_messages_per_s": after["peak_messages_per_s"],
        },
        "adapter": {**_adapter_figures(adapter), "pushes": adapter.pushes - pushes},
        "lane_refused_events": b.stats.refused_by_reason("realtime"),
        "breaker_trips": _breaker_trips(b),
    }
    return figures, phase


async def _too_large(stack: Stack) -> dict[str, Any]:
    b = stack.broadcaster
    before = await stack.server_counters()

    def payload(**extra: Any) -> dict[str, Any]:
        return {"t": time.time(), "phase": "too-large", **extra}

    small = await b.publish("CRITICAL", "bench.small", payload(n=1))
    big = await b.publish("CRITICAL", "bench.attachment", payload(blob="x" * TOO_LARGE_BYTES))
    last = await b.publish("CRITICAL", "bench.small", payload(n=2))
    await b.flush(timeout=60)
    websocket = await stack.wait_received("too-large", 3, ["websocket"], 30)
    realtime = await stack.wait_received("too-large", 2, ["realtime"], 30)
    await stack.receipts_posted()
    report = await _settled_report(b)
    after = await stack.server_counters()
    stored = await b.store.get(big.sequence_id)
    assert stored is not None
    missing = report.missing.get("realtime", [])
    progress(f"too-large: realtime state {stored.states['realtime'].value}, missing {missing}")
    return {
        "payload_bytes": TOO_LARGE_BYTES,
        "event_max_bytes": EVENT_MAX_BYTES,
        "server_refused": _delta(before, after, "payload_too_large")["payload_too_large"],
        "adapter_refused": b.stats.refused_by_reason("realtime").get("payload_too_large", 0),
        "realtime_state": stored.states["realtime"].value,
        "realtime_error": stored.errors.get("realtime"),
        "websocket_state": stored.states["websocket"].value,
        "websocket_received": websocket["counts"]["websocket"],
        "realtime_received": realtime["counts"]["realtime"],
        "reported_missing_on_realtime": missing == [big.sequence_id],
        "others_matched": not (
            {small.sequence_id, last.sequence_id} & set(missing) or report.missing.get("websocket")
        ),
        "sequence_id": big.sequence_id,
    }


async def _free(stack: Stack, args: argparse.Namespace, refused_id: int) -> dict[str, Any]:
    b = stack.broadcaster
    adapter = _realtime(b)
    before = await stack.server_counters()
    refused_before = b.stats.refused_by_reason("realtime").get("rate_limit", 0)
    started = time.monotonic()
    deadline = started + args.free_seconds + args.drain_timeout
    progress(f"free: {args.free_seconds:g}s at {args.free_rate:g} events/s, no REALTIME_PLAN")
    # The phase waits for the WebSocket path only: what the Realtime
    # subscriber missed comes back through reconciliation below.
    phase = await stack.phase(
        "free",
        seconds=args.free_seconds,
        rate=args.free_rate,
        producers=args.producers,
        max_batch=args.batch,
        adapters=("websocket",),
        drain_timeout_s=args.drain_timeout,
    )
    events = phase.figures["events"]
    first_missing: int | None = None
    repaired = 0
    rounds = 0
    while True:
        await b.flush(timeout=max(1.0, deadline - time.monotonic()))
        got = await stack.wait_received("free", events, ["realtime"], 1.0)
        if got["reached"] or time.monotonic() > deadline:
            break
        await stack.receipts_posted()
        report = await _settled_report(b)
        missing = [i for i in report.missing.get("realtime", []) if i != refused_id]
        if first_missing is None:
            first_missing = len(missing)
        if missing:
            rounds += 1
            repaired += len(missing)
            progress(f"free: drain round {rounds}: {len(missing)} missing on Realtime, repairing")
            await b.repair(Report(missing={"realtime": missing}))
    drain_s = time.monotonic() - started - phase.figures["seconds"]
    after = await stack.server_counters()
    received = got["counts"]["realtime"]
    websocket = phase.figures["delivered"]["websocket"]
    refused_after = b.stats.refused_by_reason("realtime").get("rate_limit", 0)
    return {
        "limits": "free",
        "realtime_plan": None,
        "target_rate": args.free_rate,
        "events": events,
        "seconds": phase.figures["seconds"],
        "achieved_events_per_s": phase.figures["achieved_events_per_s"],
        "server": {
            **_delta(before, after, "messages", "too_many_messages", "quota_refusals"),
            "peak_judged_messages_per_s": after["peak_messages_per_s"],
        },
        "adapter": _adapter_figures(adapter),
        "lane_throttled_events": refused_after - refused_before,
        "breaker_trips": _breaker_trips(b),
        "reported_missing": first_missing or 0,
        "repair_rounds": rounds,
        "repaired_events": repaired,
        "drain_s": round(drain_s, 1),
        "lost": {"websocket": events - websocket, "realtime": events - received},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="loadtests-quota-") as tmp:
        pro_stack = Stack(
            embedded_realtime=args.realtime == "embedded",
            realtime_limits="pro",
            settings={"realtime_plan": "pro"},
        )
        free_stack = Stack(
            embedded_realtime=args.realtime == "embedded",
            realtime_limits="free",
            # Every channel it shuts down is a warning line: kept out of the progress.
            server_log=Path(tmp) / "realtime-server.log",
            receipts=True,
            settings={"event_max_bytes": EVENT_MAX_BYTES, **RECONCILE_SETTINGS},
        )
        async with AsyncExitStack() as pro_exit:
            async with AsyncExitStack() as free_exit:
                # Both start at once (their processes' imports take seconds),
                # before anything is measured. The free stack goes first: its
                # server judges a minute's mean, and a minute of idling would
                # hide the excess the free phase is about.
                await _start_together([(pro_exit, pro_stack), (free_exit, free_stack)])
                too_large = await _too_large(free_stack)
                free = await _free(free_stack, args, too_large["sequence_id"])
            free["subscriber"] = {
                "realtime_link": free_stack.report.get("realtime_link"),
                "receipts": free_stack.report.get("receipts"),
            }
            pro, pro_phase = await _pro(pro_stack, args, "pro", args.rate)
            moderate, moderate_phase = await _pro(
                pro_stack, args, "pro-moderate", f"{args.moderate_rate:g}"
            )
        pro_stack.complete([pro_phase, moderate_phase])
        for figures, phase in ((pro, pro_phase), (moderate, moderate_phase)):
            figures["realtime"] = phase.figures.get("realtime", {})
            figures["lost"] = phase.figures["lost"]
            progress(f"{phase.name}: {figures}")
    return {
        "scenario": NAME,
        "pro": pro,
        "pro_moderate": moderate,
        "too_large": too_large,
        "free": free,
        "lost": pro["lost"] + moderate["lost"] + sum(free["lost"].values()),
        "load_avg_1m": load,
    }


async def _start_together(stacks: list[tuple[AsyncExitStack, Stack]]) -> None:
    """Enter every stack at once; each one entered is left by its exit stack.
    If one fails, the others are stopped and the error raised."""
    entering = [asyncio.create_task(stack.__aenter__()) for _, stack in stacks]
    try:
        await asyncio.gather(*entering)
    finally:
        for task in entering:
            task.cancel()
        for (exits, stack), task in zip(stacks, entering, strict=True):
            try:
                await task
            except BaseException:  # noqa: S112 - it stopped what it had started
                continue
            exits.push_async_exit(stack)
