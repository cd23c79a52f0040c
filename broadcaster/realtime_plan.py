"""Supabase Realtime plans and what the Realtime adapter makes of them (pure).

Supabase publishes, per plan, how many messages a project may send per second
and how large one broadcast payload may be (its "Realtime Limits" page:
100 / 500 / 2 500 messages per second on Free / Pro / Team, 256 KB of payload
on Free and 3 000 KB on paid plans). Beyond them its server refuses: a
broadcast pushed with ``ack: true`` whose payload is too large gets an error
reply (``payload_size_exceeded``), and a project over its message rate has
its channels shut with a ``system`` error (``Too many messages per second``).

:func:`resolve_limits` turns ``REALTIME_PLAN`` and the explicit settings into
the caps the adapter works with (docs/configuration.md says which wins);
:func:`refusal_reason` reads a server's refusal; :class:`RateGovernor` is the
adapter's own message-rate cap, lowered when the server refuses for rate and
raised again slowly; :class:`RateCanary` judges from the adapter's canary
channel whether the project is over its message rate. No I/O and no clock of
its own: time is passed in.

Supabase never refuses the *sender* of a broadcast for rate: it counts the
push and every copy it delivers, judges the mean rate over the last minute,
and while that is over the quota it shuts each channel that receives a
message — the subscribers', not the publisher's. The adapter learns it the
same way a subscriber does: it listens on a channel of its own (the canary)
to which it broadcasts a ping now and then, with ``self: true``, so that the
ping comes back to it and the server shuts that channel when the project is
over its rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "BACKOFF",
    "CANARY_INTERVAL_S",
    "CANARY_MESSAGES_PER_S",
    "DEFAULT_BATCH_MAX",
    "ENVELOPE_BYTES",
    "PAYLOAD_MARGIN",
    "PAYLOAD_TOO_LARGE",
    "QUOTAS",
    "RATE_LIMIT",
    "RATE_MARGIN",
    "PlanQuotas",
    "RateCanary",
    "RateGovernor",
    "RealtimeLimits",
    "RealtimePlan",
    "pushes_per_s",
    "refusal_reason",
    "resolve_limits",
]


class RealtimePlan(StrEnum):
    """A Supabase plan, as ``REALTIME_PLAN`` names it."""

    FREE = "free"
    PRO = "pro"
    TEAM = "team"


@dataclass(frozen=True, slots=True)
class PlanQuotas:
    """The Realtime quotas Supabase publishes for one plan."""

    messages_per_s: int
    #: Largest broadcast payload, in bytes (Supabase's KB are 1000 bytes).
    max_payload_bytes: int
    channel_joins_per_s: int
    channels_per_connection: int
    concurrent_connections: int


QUOTAS: Final[Mapping[RealtimePlan, PlanQuotas]] = {
    RealtimePlan.FREE: PlanQuotas(100, 256_000, 100, 100, 200),
    RealtimePlan.PRO: PlanQuotas(500, 3_000_000, 500, 100, 500),
    RealtimePlan.TEAM: PlanQuotas(2_500, 3_000_000, 2_500, 100, 10_000),
}

#: The share of a plan's message rate the adapter budgets for: the project's
#: quota also counts what other clients of the project send, and the server
#: judges an average the adapter cannot see.
RATE_MARGIN: Final = 0.9
#: The share of a plan's payload limit a push may fill. The server measures
#: the decoded payload as Erlang terms, not the JSON bytes the adapter counts;
#: the two differ by a few percent either way.
PAYLOAD_MARGIN: Final = 0.9
#: Bytes of a push's payload around its events
#: (``{"type":"broadcast","event":"events","payload":{"events":[...]}}``), rounded up.
ENVELOPE_BYTES: Final = 128
#: How often the adapter pings its canary channel while it is pushing.
CANARY_INTERVAL_S: Final = 1.0
#: What the pings cost the quota: each ping and the copy that comes back.
CANARY_MESSAGES_PER_S: Final = 2 / CANARY_INTERVAL_S
#: What a refusal for rate multiplies the push rate by, for good: Supabase
#: says no only once a minute's mean is over, so the rate refused was already
#: well over the quota, and a margin of a tenth would be refused again.
BACKOFF: Final = 0.5
#: ``REALTIME_BATCH_MAX`` when neither it nor a plan says otherwise.
DEFAULT_BATCH_MAX: Final = 100
#: Events per push by plan, where ``REALTIME_BATCH_MAX`` is not set: larger
#: where the message rate is scarce, so that a busy channel still keeps up.
_PLAN_BATCH_MAX: Final[Mapping[RealtimePlan, int]] = {
    RealtimePlan.FREE: 1000,
    RealtimePlan.PRO: 200,
    RealtimePlan.TEAM: 100,
}

#: :func:`refusal_reason` values.
RATE_LIMIT: Final = "rate_limit"
PAYLOAD_TOO_LARGE: Final = "payload_too_large"


@dataclass(frozen=True, slots=True)
class RealtimeLimits:
    """What the adapter works with.

    ``max_messages_per_s``: the adapter's own pushes per second over all
    channels (0: no cap); the copies the server delivers come on top.
    ``batch_max`` / ``batch_bytes``: events and event bytes per push.
    ``max_event_bytes``: the largest event (its sealed JSON) a push can carry
    within the plan's payload limit; a larger one is refused without being
    sent (None: no plan, no limit assumed).
    """

    max_messages_per_s: float
    batch_max: int
    batch_bytes: int
    max_event_bytes: int | None


def pushes_per_s(plan: RealtimePlan, subscribers: int) -> int:
    """The pushes per second that keep a project on ``plan`` within its
    message quota, less :data:`RATE_MARGIN` and the canary's pings
    (:data:`CANARY_MESSAGES_PER_S`), when each push reaches ``subscribers``
    subscribers: Supabase counts the push and every copy it delivers, so each
    push costs ``1 + subscribers`` messages. At least one."""
    if subscribers < 0:
        raise ValueError("subscribers must be >= 0")
    budget = QUOTAS[plan].messages_per_s * RATE_MARGIN - CANARY_MESSAGES_PER_S
    return max(1, math.floor(budget / (1 + subscribers)))


def resolve_limits(
    plan: RealtimePlan | None,
    *,
    max_messages_per_s: float = 0.0,
    batch_max: int | None = None,
    batch_bytes: int = 200_000,
    subscribers: int = 1,
) -> RealtimeLimits:
    """The adapter's limits under ``plan`` and the explicit settings.

    Quotas: the stricter wins. The push rate is the lower of
    ``max_messages_per_s`` (pushes; 0: not set) and what the plan's message
    quota less :data:`RATE_MARGIN` allows when each push reaches
    ``subscribers`` subscribers (:func:`pushes_per_s`); ``batch_bytes`` is
    capped by what the plan's payload limit leaves for events. Tuning:
    ``batch_max`` (None: not set) wins over the plan's batch size. Without a
    plan nothing is assumed: the settings are used as given.
    """
    if max_messages_per_s < 0 or batch_bytes < 1 or (batch_max is not None and batch_max < 1):
        raise ValueError("batch sizes must be >= 1 and the message rate >= 0")
    if plan is None:
        return RealtimeLimits(
            max_messages_per_s,
            DEFAULT_BATCH_MAX if batch_max is None else batch_max,
            batch_bytes,
            None,
        )
    quota = QUOTAS[plan]
    plan_rate = pushes_per_s(plan, subscribers)
    rate = plan_rate if max_messages_per_s == 0 else min(max_messages_per_s, plan_rate)
    max_event = math.floor(quota.max_payload_bytes * PAYLOAD_MARGIN) - ENVELOPE_BYTES
    return RealtimeLimits(
        rate,
        _PLAN_BATCH_MAX[plan] if batch_max is None else batch_max,
        min(batch_bytes, max_event),
        max_event,
    )


_RATE_MARKERS: Final = (
    "ratelimitreached",
    "too many messages",
    "too_many_requests",
    "rate limit",
    "rate_limit",
)
_SIZE_MARKERS: Final = ("payload_size_exceeded", "payload too large", "message size exceeded")


def refusal_reason(response: Any) -> str | None:
    """:data:`RATE_LIMIT` or :data:`PAYLOAD_TOO_LARGE` when a server's error
    says so, else None (an error of another kind).

    ``response`` is what came with the error: the ``response`` of an error
    ``phx_reply`` (Supabase sends ``"payload_size_exceeded"`` there as a bare
    string, other errors as ``{"reason": ...}``) or the ``message`` of a
    ``system`` error (``"Too many messages per second"``).
    """
    if isinstance(response, Mapping):
        text = " ".join(str(response.get(key, "")) for key in ("reason", "message", "error"))
    else:
        text = str(response)
    text = text.lower()
    if any(marker in text for marker in _SIZE_MARKERS):
        return PAYLOAD_TOO_LARGE
    if any(marker in text for marker in _RATE_MARKERS):
        return RATE_LIMIT
    return None


class RateGovernor:
    """The adapter's message-rate cap: ``ceiling`` (0: none) until the server
    refuses for rate, then lower, rising back slowly.

    :meth:`refused` halves the cap (taken as the rate just observed when
    there was none) and remembers the refused rate times :data:`BACKOFF` as
    a learned ceiling, so the cap never climbs back to where the server said
    no. Every ``recover_s`` seconds without a refusal the cap grows by
    ``growth`` up to the lower of the two ceilings. ``floor`` is the least it
    goes to.
    """

    def __init__(
        self,
        ceiling: float = 0.0,
        *,
        recover_s: float = 5.0,
        growth: float = 1.25,
        floor: float = 1.0,
    ) -> None:
        if ceiling < 0 or recover_s <= 0 or growth <= 1 or floor <= 0:
            raise ValueError("need ceiling >= 0, recover_s > 0, growth > 1 and floor > 0")
        self._ceiling = ceiling
        self._recover_s = recover_s
        self._growth = growth
        self._floor = floor
        self._learned: float | None = None
        self._cap = ceiling
        self._since = 0.0
        #: Refusals seen so far.
        self.refusals = 0

    @property
    def learned_ceiling(self) -> float | None:
        """The cap the governor will not climb past again (None: no refusal yet)."""
        return self._learned

    def cap(self, now: float) -> float:
        """Messages per second allowed at ``now`` (0: no cap)."""
        if self._cap == 0 or self._learned is None:
            return self._cap
        steps = math.floor((now - self._since) / self._recover_s)
        if steps > 0:
            target = self._learned if self._ceiling == 0 else min(self._ceiling, self._learned)
            self._cap = min(target, self._cap * self._growth**steps)
            self._since += steps * self._recover_s
        return self._cap

    def refused(self, now: float, observed_per_s: float) -> float:
        """The server refused for rate at ``now``, after ``observed_per_s``
        messages per second: lower the cap and return it."""
        self.refusals += 1
        current = self.cap(now)
        observed = max(self._floor, observed_per_s)
        base = observed if current == 0 else min(current, observed)
        learned = max(self._floor, BACKOFF * observed)
        self._learned = learned if self._learned is None else min(self._learned, learned)
        self._cap = max(self._floor, base / 2)
        self._since = now
        return self._cap


class RateCanary:
    """Whether the adapter may push, judged from its canary channel.

    The gate is open until the canary channel is shut for rate
    (:meth:`refused`): the project is then over its message rate, and every
    channel that receives a message is shut, the subscribers' too, so pushing
    on would only lose copies. It opens again once the canary has come back
    twice on one join of the channel (:meth:`echoed`): a ping that found the
    project over its rate would have had the channel shut before the next
    one could arrive on it. :meth:`joined` starts a fresh join. A gate closed
    for ``max_closed_s`` opens anyway (:meth:`is_open`): longer than the
    server remembers an excess, the canary has stopped telling anything, and
    pushing again is how to find out.
    """

    def __init__(self, max_closed_s: float = 120.0) -> None:
        if max_closed_s <= 0:
            raise ValueError("max_closed_s must be > 0")
        self._max_closed_s = max_closed_s
        self._closed_at: float | None = None
        self._echoes = 0
        #: Times the canary channel was shut for rate.
        self.refusals = 0
        #: Times the gate opened again: on the canary's echoes, or timed out.
        self.reopened = 0
        self.timed_out = 0

    @property
    def closed_at(self) -> float | None:
        """When the gate closed (None: open), as of the last look at the time."""
        return self._closed_at

    def is_open(self, now: float) -> bool:
        """Whether pushes may go at ``now``."""
        closed_at = self._closed_at
        if closed_at is not None and now - closed_at >= self._max_closed_s:
            self._reopen()
            self.timed_out += 1
        return self._closed_at is None

    def joined(self) -> None:
        """The canary channel was joined (again): no ping has come back on it yet."""
        self._echoes = 0

    def refused(self, now: float) -> bool:
        """The canary channel was shut for rate at ``now``. Closes the gate;
        True when it was open (a new excess: the one refusal that should slow
        the adapter down), False while it stays closed."""
        self.refusals += 1
        self._echoes = 0
        if not self.is_open(now):
            return False
        self._closed_at = now
        return True

    def echoed(self) -> bool:
        """A ping came back. True when this opens the gate."""
        self._echoes += 1
        if self._closed_at is None or self._echoes < 2:
            return False
        self._reopen()
        return True

    def due(self, pushed: bool) -> bool:
        """Whether to ping now, given whether the adapter ``pushed`` since the
        last ping: while pushing, to notice an excess; while the gate is
        closed, to notice its end. An idle adapter costs the quota nothing."""
        return pushed or self._closed_at is not None

    def _reopen(self) -> None:
        self._closed_at = None
        self.reopened += 1
