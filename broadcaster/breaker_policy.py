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

The settings (:class:`BreakerConfig`, in :mod:`.breaker_config`) and the
window (:class:`SlidingWindow`, in :mod:`.breaker_window`) live apart and are
re-exported here; this module is the state machine that joins them.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .breaker_config import BreakerConfig
from .breaker_window import CallOutcome, SlidingWindow

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
