"""One adapter's breaker settings, checked as a whole.

Pure code. :class:`BreakerConfig` is built from the service's settings (or by
hand in tests and benchmarks) and handed to
:class:`~broadcaster.breaker_policy.BreakerPolicy`, which the breaker in front
of each delivery lane runs; the rules those settings feed are in
:mod:`.breaker_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .exceptions import AdapterRefused, AdapterUnavailable

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["BreakerConfig"]


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
      breaker on a single occurrence (see :mod:`.breaker_policy`).
    * ``neutral_errors=(AdapterRefused,)`` — errors that count as no outcome:
      quota refusals (see :mod:`.breaker_policy`).
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
