"""Circuit-breaker policy (docs/configuration.md): a pure, resilience4j-style state machine.

No I/O, no event loop, no clock of its own: every method that depends on time
takes ``now`` (seconds on any monotonic scale the caller picks, e.g.
``time.monotonic()``). :mod:`broadcaster.breaker` wraps it for async calls.

States and rules
----------------

``CLOSED`` — calls flow. Each finished call is recorded in a time-based
:class:`SlidingWindow` as a success, a failure, or a *slow* call (it succeeded
but took longer than ``latency_threshold_ms × latency_multiplier``; slow calls
count as failures). The breaker opens when:

1. **Rate rule (the main one).** With at least ``min_calls`` calls in the
   window, the failure rate ``(failures + slow) / calls`` *exceeds*
   ``error_threshold`` (a rate exactly at the threshold does not trip).
   Timeouts (``AdapterTimeout``), rejections (``AdapterRejected``), slow calls
   and unexpected exceptions go through this rule.
2. **Connection rule.** A single call raising one of
   ``BreakerConfig.immediate_trip_errors`` (default: ``AdapterUnavailable``)
   opens at once, whatever the window holds.
3. **Ramp rule.** While the post-recovery ramp is under way (below), any
   failure or slow call re-opens at once.

The breaker counts "a call raises" and "a call is slower than threshold × multiplier"
as trip conditions next to the rate. Read literally, one timed-out batch among
thousands would cut an adapter off for ``recovery_time_s``, which makes the
threshold pointless. So: an ``AdapterUnavailable`` means the connection is
gone — every following call will fail too and waiting for ``min_calls`` of
them only adds latency — and trips on one occurrence; a timeout, a rejection
or a slow call is evidence about *one* batch and is judged by the rate. A
deployment wanting the literal reading sets ``immediate_trip_errors=(Exception,)``.

A quota refusal (``AdapterRefused``: the far side's message rate or payload
limit said no) is evidence about neither: the adapter is up and answering,
and the batch is retried or refused by design. Calls raising one of
``BreakerConfig.neutral_errors`` are recorded as nothing at all (a half-open
probe slot is freed, as for a cancelled call).

``OPEN`` — :meth:`BreakerPolicy.allow` refuses every call until
``recovery_time_s`` has passed since opening; the first ``allow`` after that
moves to ``HALF_OPEN``.

``HALF_OPEN`` — at most ``half_open_requests`` probe calls are admitted (a
probe cancelled via :meth:`BreakerPolicy.release` frees its slot). When that
many probes have succeeded the breaker closes; the first probe that fails (or
is slow) re-opens it and restarts the recovery timer.

Ramp — on closing, :meth:`BreakerPolicy.share` returns the percentage of live
traffic the recovered adapter should get: ``ramp_steps[0]`` for the first
``ramp_step_s`` seconds, then the next step, up to the last (100). What the
ramp holds back is meant to stay pending and be backfilled (docs/configuration.md), so it
changes timing, never completeness. In ``HALF_OPEN`` the share is
``ramp_steps[0]`` too, so there is live traffic to probe with (``allow`` still
caps the probes); ``OPEN`` gives 0; a breaker that never tripped gives 100.

Every state change produces a :class:`Transition`, returned by the call that
caused it (:meth:`~BreakerPolicy.record`, :meth:`~BreakerPolicy.poll`), passed
to the ``on_transition`` callback, and kept in a short history.

Concurrent calls: each state change bumps :attr:`BreakerPolicy.epoch`. A caller
that reads ``epoch`` when a call is admitted and passes it to ``record`` gets
outcomes of calls that started before the last transition ignored — a batch
that was in flight when the breaker opened cannot later count as a probe.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .exceptions import AdapterRefused, AdapterUnavailable

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "BreakerConfig",
    "BreakerPolicy",
    "BreakerState",
    "CallOutcome",
    "SlidingWindow",
    "Transition",
]

#: How many recent transitions :attr:`BreakerPolicy.history` keeps.
HISTORY_SIZE = 64


class BreakerState(enum.StrEnum):
    """The three breaker states; values are what ``/health`` shows."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CallOutcome(enum.Enum):
    """How one finished call is counted."""

    SUCCESS = "success"
    FAILURE = "failure"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change: ``from_state`` → ``to_state`` at ``at`` (caller's clock)."""

    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float

    @property
    def key(self) -> str:
        """``"closed->open"`` and so on: a label for counters."""
        return f"{self.from_state.value}->{self.to_state.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """Settings of one adapter's breaker. All keyword-only.

    Defaults and why:

    * ``error_threshold=0.05`` — the default of ``ADAPTER_<NAME>_ERROR_THRESHOLD``.
    * ``latency_threshold_ms`` — required: the settings have per-adapter defaults
      (websocket 200, realtime 150); :meth:`from_settings` fills it.
    * ``latency_multiplier=2.0`` — the settings' default; a call slower than
      ``latency_threshold_ms × latency_multiplier`` counts as failed.
    * ``window_s=10.0`` — long enough to gather ``min_calls`` at modest rates,
      short enough that a failure burst is judged within seconds.
    * ``min_calls=20`` — with the 5 % threshold, the smallest sample where one
      failure is *not* already above the threshold (1/20 = 5 %).
    * ``recovery_time_s=30.0`` / ``half_open_requests=5`` — the settings' defaults.
    * ``ramp_steps=(10, 25, 50, 100)`` — percent of live traffic after recovery;
      strictly increasing, ending at 100.
    * ``ramp_step_s=10.0`` — one window per step, so the rate rule sees a full
      window of traffic at each share before it widens (30 s to full traffic).
    * ``bucket_s=1.0`` — the window's resolution (memory is one bucket per
      ``bucket_s`` of ``window_s``).
    * ``immediate_trip_errors=(AdapterUnavailable,)`` — errors that open the
      breaker on a single occurrence (see the module doc).
    * ``neutral_errors=(AdapterRefused,)`` — errors that count as no outcome:
      quota refusals (see the module doc).
    """

    error_threshold: float = 0.05
    latency_threshold_ms: float
    latency_multiplier: float = 2.0
    window_s: float = 10.0
    min_calls: int = 20
    recovery_time_s: float = 30.0
    half_open_requests: int = 5
    ramp_steps: tuple[int, ...] = (10, 25, 50, 100)
    ramp_step_s: float = 10.0
    bucket_s: float = 1.0
    immediate_trip_errors: tuple[type[BaseException], ...] = (AdapterUnavailable,)
    neutral_errors: tuple[type[BaseException], ...] = (AdapterRefused,)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0.0 <= self.error_threshold <= 1.0:
            problems.append(f"error_threshold {self.error_threshold} not in [0, 1]")
        if not self.latency_threshold_ms > 0:
            problems.append(f"latency_threshold_ms {self.latency_threshold_ms} must be > 0")
        if not self.latency_multiplier >= 1:
            problems.append(f"latency_multiplier {self.latency_multiplier} must be >= 1")
        if not self.bucket_s > 0 or not self.window_s >= self.bucket_s:
            problems.append(f"need 0 < bucket_s ({self.bucket_s}) <= window_s ({self.window_s})")
        if self.min_calls < 1:
            problems.append(f"min_calls {self.min_calls} must be >= 1")
        if not self.recovery_time_s > 0:
            problems.append(f"recovery_time_s {self.recovery_time_s} must be > 0")
        if self.half_open_requests < 1:
            problems.append(f"half_open_requests {self.half_open_requests} must be >= 1")
        steps = self.ramp_steps
        if (
            not steps
            or steps[-1] != 100
            or steps[0] < 1
            or any(a >= b for a, b in zip(steps, steps[1:], strict=False))
        ):
            problems.append(f"ramp_steps {steps} must rise strictly from >= 1 to 100")
        if not self.ramp_step_s > 0:
            problems.append(f"ramp_step_s {self.ramp_step_s} must be > 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def slow_call_s(self) -> float:
        """A successful call taking longer than this (seconds) counts as failed."""
        return self.latency_threshold_ms * self.latency_multiplier / 1000.0

    @classmethod
    def from_settings(cls, settings: Settings, adapter_name: str) -> BreakerConfig:
        """The config of ``adapter_name`` from the settings (``ADAPTER_<NAME>_*``,
        ``BREAKER_*``); the other fields keep their defaults. Raises
        ``ValueError`` for an adapter the settings do not know."""
        try:
            adapter = settings.adapters[adapter_name]
        except KeyError:
            known = ", ".join(sorted(settings.adapters))
            raise ValueError(f"no settings for adapter {adapter_name!r}; known: {known}") from None
        return cls(
            error_threshold=adapter.error_threshold,
            latency_threshold_ms=adapter.latency_threshold_ms,
            latency_multiplier=settings.breaker_latency_multiplier,
            recovery_time_s=settings.breaker_recovery_time_s,
            half_open_requests=settings.breaker_half_open_requests,
        )


class SlidingWindow:
    """Call outcomes of the last ``window_s`` seconds, in per-bucket counters.

    Memory is fixed: ``ceil(window_s / bucket_s)`` buckets of three counters,
    however many calls are recorded. The window at time ``now`` is the bucket
    holding ``now`` plus the buckets before it, so it spans between
    ``window_s - bucket_s`` and ``window_s`` seconds of history. A timestamp
    older than the newest bucket seen (a clock that stepped back) is counted
    in the newest bucket.
    """

    __slots__ = ("_bucket_s", "_calls", "_epochs", "_failures", "_head", "_size", "_slow", "_tot")

    def __init__(self, window_s: float, bucket_s: float = 1.0) -> None:
        if not bucket_s > 0 or not window_s >= bucket_s:
            raise ValueError(f"need 0 < bucket_s ({bucket_s}) <= window_s ({window_s})")
        self._bucket_s = bucket_s
        self._size = math.ceil(window_s / bucket_s)
        self._epochs: list[int | None] = [None] * self._size
        self._calls = [0] * self._size
        self._failures = [0] * self._size
        self._slow = [0] * self._size
        self._tot = [0, 0, 0]  # calls, failures, slow
        self._head: int | None = None

    @property
    def buckets(self) -> int:
        """Number of buckets (the memory bound)."""
        return self._size

    def _advance(self, now: float) -> int:
        """Move the window to ``now``: drop buckets that left it. Returns the
        index of the bucket holding ``now``."""
        index = math.floor(now / self._bucket_s)
        head = self._head
        if head is None:
            self._head = index
            return index
        if index <= head:
            return head
        for step in range(head + 1, min(index, head + self._size) + 1):
            slot = step % self._size
            if self._epochs[slot] is not None:
                self._tot[0] -= self._calls[slot]
                self._tot[1] -= self._failures[slot]
                self._tot[2] -= self._slow[slot]
                self._calls[slot] = self._failures[slot] = self._slow[slot] = 0
                self._epochs[slot] = None
        self._head = index
        return index

    def record(self, now: float, outcome: CallOutcome) -> None:
        """Count one finished call at time ``now``."""
        index = self._advance(now)
        slot = index % self._size
        self._epochs[slot] = index
        self._calls[slot] += 1
        self._tot[0] += 1
        if outcome is CallOutcome.FAILURE:
            self._failures[slot] += 1
            self._tot[1] += 1
        elif outcome is CallOutcome.SLOW:
            self._slow[slot] += 1
            self._tot[2] += 1

    def calls(self, now: float) -> int:
        """Calls recorded in the window at ``now``."""
        self._advance(now)
        return self._tot[0]

    def failures(self, now: float) -> int:
        """Failed calls (not counting slow ones) in the window at ``now``."""
        self._advance(now)
        return self._tot[1]

    def slow(self, now: float) -> int:
        """Slow (but successful) calls in the window at ``now``."""
        self._advance(now)
        return self._tot[2]

    def failure_rate(self, now: float) -> float:
        """``(failures + slow) / calls`` in the window at ``now``; 0.0 when empty."""
        self._advance(now)
        calls, failures, slow = self._tot
        return (failures + slow) / calls if calls else 0.0

    def clear(self) -> None:
        """Forget every recorded call."""
        self._epochs = [None] * self._size
        self._calls = [0] * self._size
        self._failures = [0] * self._size
        self._slow = [0] * self._size
        self._tot = [0, 0, 0]
        self._head = None


class BreakerPolicy:
    """The breaker state machine of one adapter (rules in the module doc).

    Protocol for a caller, per call::

        if not policy.allow(now):          # may it start? (counts a probe in HALF_OPEN)
            ...refuse; retry at policy.retry_at...
        epoch = policy.epoch
        ...make the call...
        policy.record(end, ok, duration_s, error, epoch=epoch)
        # or, if it was cancelled and has no outcome:
        policy.release(epoch)

    Every admitted call must end in exactly one ``record`` or ``release``,
    or a half-open probe slot stays taken until the next transition.
    ``on_transition`` is called synchronously with every :class:`Transition`,
    after the state changed.
    """

    def __init__(
        self,
        config: BreakerConfig,
        *,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.config = config
        self._on_transition = on_transition
        self._window = SlidingWindow(config.window_s, config.bucket_s)
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._opened_at: float | None = None
        self._closed_at: float | None = None  # start of the ramp; None: never tripped
        self._probes_in_flight = 0
        self._probes_ok = 0
        self._history: deque[Transition] = deque(maxlen=HISTORY_SIZE)

    # -- read-only views -----------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state. ``OPEN`` stays ``OPEN`` past ``retry_at`` until
        :meth:`allow` or :meth:`poll` is called."""
        return self._state

    @property
    def epoch(self) -> int:
        """Bumped by every transition; pass it to :meth:`record`/:meth:`release`."""
        return self._epoch

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened (caller's clock), or None if it never did."""
        return self._opened_at

    @property
    def retry_at(self) -> float | None:
        """While ``OPEN``: when it may go half-open. Otherwise None."""
        if self._state is BreakerState.OPEN and self._opened_at is not None:
            return self._opened_at + self.config.recovery_time_s
        return None

    @property
    def history(self) -> tuple[Transition, ...]:
        """The last :data:`HISTORY_SIZE` transitions, oldest first."""
        return tuple(self._history)

    @property
    def probes_in_flight(self) -> int:
        """Half-open probes admitted and not yet finished."""
        return self._probes_in_flight

    def calls(self, now: float) -> int:
        """Calls in the sliding window at ``now`` (since the last close)."""
        return self._window.calls(now)

    def failure_rate(self, now: float) -> float:
        """Failure rate (slow calls included) in the window at ``now``."""
        return self._window.failure_rate(now)

    def share(self, now: float) -> int:
        """Percent (0–100) of live traffic the adapter should get at ``now``."""
        if self._state is BreakerState.OPEN:
            return 0
        steps = self.config.ramp_steps
        if self._state is BreakerState.HALF_OPEN:
            return steps[0]
        if self._closed_at is None:
            return 100
        step = math.floor((now - self._closed_at) / self.config.ramp_step_s)
        return steps[min(max(step, 0), len(steps) - 1)]

    # -- driving it ----------------------------------------------------------

    def poll(self, now: float) -> Transition | None:
        """Apply time-driven transitions (``OPEN`` → ``HALF_OPEN`` once
        ``retry_at`` has passed). Returns the transition, if any."""
        retry_at = self.retry_at
        if retry_at is not None and now >= retry_at:
            return self._move(BreakerState.HALF_OPEN, now, "recovery time elapsed")
        return None

    def allow(self, now: float) -> bool:
        """May a call start at ``now``? ``CLOSED``: yes. ``OPEN``: no, unless the
        recovery time has passed (then it goes half-open). ``HALF_OPEN``: yes
        while fewer than ``half_open_requests`` probes were admitted; a True
        answer takes a probe slot, so the call must be recorded or released."""
        self.poll(now)
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return False
        if self._probes_in_flight + self._probes_ok < self.config.half_open_requests:
            self._probes_in_flight += 1
            return True
        return False

    def release(self, epoch: int | None = None) -> None:
        """An admitted call ended without an outcome (cancelled): free its
        half-open probe slot. Nothing is recorded."""
        if self._state is BreakerState.HALF_OPEN and self._current(epoch):
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def classify(self, ok: bool, duration_s: float) -> CallOutcome:
        """How a call that finished ``ok`` (or not) after ``duration_s`` counts."""
        if not ok:
            return CallOutcome.FAILURE
        return CallOutcome.SLOW if duration_s > self.config.slow_call_s else CallOutcome.SUCCESS

    def record(
        self,
        now: float,
        ok: bool,
        duration_s: float,
        error: BaseException | None = None,
        *,
        epoch: int | None = None,
    ) -> Transition | None:
        """Record a call that finished at ``now`` after ``duration_s`` seconds.

        ``ok`` is False when the call raised ``error`` (``error`` may be None
        for a failure without an exception; it must be None when ``ok``).
        ``epoch`` is :attr:`epoch` as read when the call was admitted; an
        outcome from an older epoch is ignored (None means "current").
        Returns the transition this outcome caused, if any.
        """
        if ok and error is not None:
            raise ValueError("a successful call has no error")
        if not self._current(epoch):
            return None
        if error is not None and isinstance(error, self.config.neutral_errors):
            self.release(epoch)
            return None
        outcome = self.classify(ok, duration_s)
        if self._state is BreakerState.HALF_OPEN:
            return self._record_probe(now, outcome, duration_s, error)
        if self._state is BreakerState.OPEN:
            return None  # only reachable with epoch=None: a straggler
        if error is not None and isinstance(error, self.config.immediate_trip_errors):
            return self._move(BreakerState.OPEN, now, f"connection failure: {error!r}")
        ramping = self.share(now) < 100
        self._window.record(now, outcome)
        if ramping and outcome is not CallOutcome.SUCCESS:
            return self._move(
                BreakerState.OPEN, now, f"{_describe(outcome, duration_s, error)} during ramp"
            )
        calls = self._window.calls(now)
        rate = self._window.failure_rate(now)
        if calls >= self.config.min_calls and rate > self.config.error_threshold:
            return self._move(
                BreakerState.OPEN,
                now,
                f"failure rate {rate:.3f} > {self.config.error_threshold} over {calls} calls"
                f" ({self._window.failures(now)} failed, {self._window.slow(now)} slow)",
            )
        return None

    # -- internals -----------------------------------------------------------

    def _current(self, epoch: int | None) -> bool:
        return epoch is None or epoch == self._epoch

    def _record_probe(
        self, now: float, outcome: CallOutcome, duration_s: float, error: BaseException | None
    ) -> Transition | None:
        self._probes_in_flight = max(0, self._probes_in_flight - 1)
        if outcome is not CallOutcome.SUCCESS:
            reason = f"probe failed: {_describe(outcome, duration_s, error)}"
            return self._move(BreakerState.OPEN, now, reason)
        self._probes_ok += 1
        if self._probes_ok >= self.config.half_open_requests:
            return self._move(BreakerState.CLOSED, now, f"{self._probes_ok} probe calls succeeded")
        return None

    def _move(self, to: BreakerState, now: float, reason: str) -> Transition:
        transition = Transition(self._state, to, reason, now)
        self._state = to
        self._epoch += 1
        self._probes_in_flight = 0
        self._probes_ok = 0
        if to is BreakerState.OPEN:
            self._opened_at = now
        elif to is BreakerState.CLOSED:
            self._closed_at = now
            self._window.clear()
        self._history.append(transition)
        if self._on_transition is not None:
            self._on_transition(transition)
        return transition


def _describe(outcome: CallOutcome, duration_s: float, error: BaseException | None) -> str:
    if outcome is CallOutcome.SLOW:
        return f"slow call ({duration_s * 1000:.0f} ms)"
    return repr(error) if error is not None else "failure"
