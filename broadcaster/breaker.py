"""One circuit breaker per adapter, for async calls (docs/configuration.md).

:class:`AdapterBreaker` runs calls through a :class:`~broadcaster.breaker_policy.BreakerPolicy`
(which decides: rates, slow calls, probes, the ramp) and mirrors every policy
transition onto a ``pybreaker.CircuitBreaker``, whose listener logs it with
structlog (``adapter=<name>`` bound) and counts it.

Calls are *not* made through pybreaker (``cb.call``/``cb.calling``): its async
path needs Tornado, and its own rules — consecutive failures, one success
closes half-open, a wall-clock reset timeout — would race the policy. pybreaker
holds the state (``current_state``) and dispatches listeners; its ``fail_max``
is set out of reach so it never trips on its own.

The lane uses it as::

    try:
        await breaker.call(lambda: adapter.send(batch))
    except BreakerOpen as exc:   # not an AdapterError: nothing was sent
        ...keep the batch pending; try again at exc.retry_at (clock units)...
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import pybreaker
import structlog

from .breaker_policy import BreakerConfig, BreakerPolicy, BreakerState, Transition
from .exceptions import BreakerOpen

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["AdapterBreaker", "BreakerOpen"]

T = TypeVar("T")

# pybreaker's state names -> ours.
_STATE_NAMES = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED.value,
    pybreaker.STATE_OPEN: BreakerState.OPEN.value,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN.value,
}


class _TransitionListener(pybreaker.CircuitBreakerListener):
    """Logs and counts every state change of the pybreaker it listens to."""

    def __init__(self, name: str) -> None:
        self.log = structlog.get_logger("broadcaster.breaker", adapter=name)
        self.counts: Counter[str] = Counter()
        #: The policy transition being mirrored (its reason and time go in the log).
        self.pending: Transition | None = None

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = _STATE_NAMES[old_state.name] if old_state is not None else "none"
        new = _STATE_NAMES[new_state.name]
        self.counts[f"{old}->{new}"] += 1
        pending, self.pending = self.pending, None
        reason = pending.reason if pending is not None else "set directly on pybreaker"
        level = "warning" if new == BreakerState.OPEN.value else "info"
        getattr(self.log, level)(
            "circuit breaker state changed", from_state=old, to_state=new, reason=reason
        )


class AdapterBreaker:
    """The circuit breaker of adapter ``name``.

    ``clock`` gives seconds on a monotonic scale; every time this class reports
    (``opened_at``, ``BreakerOpen.retry_at``) is on it. Not thread-safe: use it
    from one event loop. Nothing here blocks.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._listener = _TransitionListener(name)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=sys.maxsize,  # the policy trips, never pybreaker's own count
            reset_timeout=config.recovery_time_s,
            name=name,
            listeners=[self._listener],
        )
        self._policy = BreakerPolicy(config, on_transition=self._mirror)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> AdapterBreaker:
        """The breaker of adapter ``name`` configured from the settings."""
        config = BreakerConfig.from_settings(settings, name)
        return cls(name, config, clock, on_transition=on_transition)

    # -- the call ------------------------------------------------------------

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` if the breaker allows it, and record how it went.

        Raises :class:`BreakerOpen` (without calling ``fn``) when refused.
        Otherwise returns ``fn()``'s result or re-raises its exception
        unchanged; either way the outcome (failure, success, or slow success)
        is recorded. A cancelled call records nothing and frees its probe slot.
        """
        if not self._policy.allow(self._clock()):
            state = self._policy.state.value
            raise BreakerOpen(self.name, state, self._policy.retry_at)
        epoch = self._policy.epoch
        started = self._clock()
        try:
            result = await fn()
        except Exception as exc:
            ended = self._clock()
            self._policy.record(ended, False, ended - started, exc, epoch=epoch)
            raise
        except BaseException:  # cancelled (or interpreter exit): no outcome
            self._policy.release(epoch)
            raise
        ended = self._clock()
        self._policy.record(ended, True, ended - started, epoch=epoch)
        return result

    # -- views for /health and metrics ----------------------------------------

    @property
    def policy(self) -> BreakerPolicy:
        """The underlying policy (read it; drive it only through :meth:`call`)."""
        return self._policy

    @property
    def circuit(self) -> pybreaker.CircuitBreaker:
        """The pybreaker mirroring the policy's state (read-only use)."""
        return self._cb

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``. An open breaker stays
        ``"open"`` past ``retry_at`` until the next call attempt."""
        return self._policy.state.value

    @property
    def share(self) -> int:
        """Percent of live traffic the adapter should get now (the ramp)."""
        return self._policy.share(self._clock())

    @property
    def failure_rate(self) -> float:
        """Failure rate (slow calls included) over the sliding window now."""
        return self._policy.failure_rate(self._clock())

    @property
    def opened_at(self) -> float | None:
        """When it last opened, on the breaker's clock; None if it never did."""
        return self._policy.opened_at

    @property
    def retry_at(self) -> float | None:
        """While open: when the next call may probe, on the breaker's clock."""
        return self._policy.retry_at

    @property
    def transitions(self) -> dict[str, int]:
        """How often each transition happened: ``{"closed->open": 1, ...}``."""
        return dict(self._listener.counts)

    def health(self) -> dict[str, object]:
        """Everything above as one JSON-able dict."""
        now = self._clock()
        return {
            "state": self.state,
            "share": self._policy.share(now),
            "failure_rate": self._policy.failure_rate(now),
            "calls": self._policy.calls(now),
            "opened_at": self.opened_at,
            "retry_at": self.retry_at,
            "transitions": self.transitions,
        }

    # -- internals -----------------------------------------------------------

    def _mirror(self, transition: Transition) -> None:
        self._listener.pending = transition
        if transition.to_state is BreakerState.OPEN:
            self._cb.open()
        elif transition.to_state is BreakerState.HALF_OPEN:
            self._cb.half_open()
        else:
            self._cb.close()
        if self._on_transition is not None:
            self._on_transition(transition)
