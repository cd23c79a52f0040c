"""The quotas of a Supabase plan, as Supabase's Realtime server enforces them.

The figures are the "Realtime Limits" page's, per plan (:data:`PLANS`); the
rules are the server's, each named by file and function of the
``supabase/realtime`` repository:

* **Concurrent connections**: a connection counts once it has joined a
  channel, until it closes (``lib/realtime/users_counter.ex``). At the limit
  a new WebSocket is refused with HTTP 429 ``Too many connected users``
  (``lib/realtime_web/channels/tenant_rate_limiters.ex``, ``check_tenant``;
  ``lib/realtime_web/channels/user_socket.ex``, ``connect`` and
  ``handle_error``), and the first join of a connection not yet counted gets
  ``ConnectionRateLimitReached: Too many connected users``
  (``lib/realtime_web/channels/realtime_channel.ex``, ``join`` and
  ``limit_max_users``).
* **Channel joins per second**: every join that gets past that check counts
  (``realtime_channel.ex``, ``limit_joins``). While the rate is over the
  limit a join gets ``ClientJoinRateLimitReached: Too many joins per second``
  and the whole connection is closed (``realtime_channel.ex``, ``join``: a
  ``disconnect`` broadcast to the transport); a new WebSocket gets HTTP 429
  ``Too many joins per second`` (``tenant_rate_limiters.ex``,
  ``max_joins_per_second_check``).
* **Channels per connection**: a join beyond the limit gets
  ``ChannelRateLimitReached: Too many channels``; the connection stays
  (``realtime_channel.ex``, ``limit_channels``).
* **Messages per second**: every broadcast a client sends counts once
  (``lib/realtime_web/channels/realtime_channel/broadcast_handler.ex``,
  ``increment_rate_counter``), every copy delivered to a subscriber once
  more (``realtime_channel/message_dispatcher.ex``, ``dispatch`` sends
  ``:update_rate_counter`` per subscriber), and so does any other message a
  client sends on a joined channel (``realtime_channel.ex``, ``handle_in``).
  The sender is never refused: while the rate is over the limit, each
  channel that receives a message is shut down with a ``system`` message
  ``Too many messages per second`` and ``phx_close`` (``realtime_channel.ex``,
  ``handle_info(:update_rate_counter, ...)`` and ``shutdown_response``).
* **Broadcast payload size**: a broadcast whose payload is larger than the
  plan's kilobytes (times 1000, plus 500 bytes of padding) in Erlang's
  external term format (:func:`external_size`) is not delivered; a sender that
  joined with ``ack: true`` gets the reply ``{"status": "error", "response":
  "payload_size_exceeded"}`` (``lib/realtime/tenants.ex``,
  ``validate_payload_size``; ``broadcast_handler.ex``, ``handle``).

Both rates are judged as ``lib/realtime/rate_counter/rate_counter.ex``
judges them (:class:`RateCounter`; the arguments in ``tenants.ex``,
``joins_per_second_rate`` and ``events_per_second_rate``): counted between
ticks five seconds apart, averaged per second over the last twelve ticks,
and over the limit from the tick at which that average reaches it until the
tick at which it falls below.

Pure: values in, decisions out; the caller passes the time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "LIMITS",
    "PAYLOAD_PADDING_BYTES",
    "PLANS",
    "JoinRefusal",
    "Plan",
    "Quota",
    "Quotas",
    "RateCounter",
    "external_size",
    "plan_named",
    "user_broadcast_size",
]

#: Bytes ``validate_payload_size`` allows beyond the plan's kilobytes.
PAYLOAD_PADDING_BYTES: Final = 500


@dataclass(frozen=True, slots=True)
class Plan:
    """One plan's Realtime quotas (per project, except channels per connection)."""

    name: str
    messages_per_second: int
    joins_per_second: int
    channels_per_connection: int
    concurrent_connections: int
    #: Broadcast payload size, in kilobytes of 1000 bytes.
    payload_kb: int

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload (external term size) a broadcast may carry."""
        return self.payload_kb * 1000 + PAYLOAD_PADDING_BYTES


#: Supabase's "Realtime Limits" page, per plan.
PLANS: Final[dict[str, Plan]] = {
    "free": Plan("free", 100, 100, 100, 200, 256),
    "pro": Plan("pro", 500, 500, 100, 500, 3000),
    "team": Plan("team", 2500, 2500, 100, 10_000, 3000),
}
#: What ``--limits`` takes: a plan, or ``none`` for no quota at all.
LIMITS: Final = (*PLANS, "none")


def plan_named(name: str) -> Plan | None:
    """The plan called ``name``; None for ``none``. Raises ``ValueError``
    naming the choices for anything else."""
    if name == "none":
        return None
    try:
        return PLANS[name]
    except KeyError:
        raise ValueError(f"unknown plan {name!r}; expected one of {', '.join(LIMITS)}") from None


class Quota(StrEnum):
    """Which quota a refusal is for (each counted on its own)."""

    CONNECTIONS = "too_many_connections"
    JOINS = "too_many_joins"
    CHANNELS = "too_many_channels"
    MESSAGES = "too_many_messages"
    PAYLOAD = "payload_too_large"


@dataclass(frozen=True, slots=True)
class JoinRefusal:
    """Why a join is refused: the reason its error reply carries, and whether
    the connection is closed as well."""

    quota: Quota
    reason: str
    disconnect: bool


class RateCounter:
    """A rate with a limit, judged as ``Realtime.RateCounter`` judges it.

    Counts add up between ticks ``tick_s`` apart, the first at creation; each
    tick keeps the count since the last one among the latest ``max_buckets``
    and sets :attr:`average` to their mean per second. The counter is over
    its limit from a tick at which the average reaches the limit until a tick
    at which it is below it again.
    """

    def __init__(
        self, limit: float, now: float, *, tick_s: float = 5.0, max_buckets: int = 12
    ) -> None:
        self.limit = limit
        self.tick_s = tick_s
        self._max_buckets = max_buckets
        self._buckets: deque[int] = deque(maxlen=max_buckets)
        self._pending = 0
        self._next_tick = now
        self._over = False
        #: Mean count per second over the kept ticks, as of the last tick.
        self.average = 0.0
        #: The highest :attr:`average` any tick has set.
        self.peak = 0.0

    def _advance(self, now: float) -> None:
        if now < self._next_tick:
            return
        ticks = math.floor((now - self._next_tick) / self.tick_s) + 1
        # Past this many ticks every kept bucket is an empty one: further
        # ticks change nothing, so a long idle time costs no loop.
        worked = min(ticks, self._max_buckets + 1)
        for _ in range(worked):
            self._buckets.append(self._pending)
            self._pending = 0
            self.average = sum(self._buckets) / len(self._buckets) / self.tick_s
            self.peak = max(self.peak, self.average)
            # Set at or above the limit, cleared below it (maybe_trigger_limit).
            self._over = self.average >= self.limit
        self._next_tick += ticks * self.tick_s

    def add(self, now: float, n: int = 1) -> None:
        """Count ``n`` at time ``now``."""
        self._advance(now)
        self._pending += n

    def over(self, now: float) -> bool:
        """Whether the rate is over the limit at time ``now``."""
        self._advance(now)
        return self._over


class Quotas:
    """One project's Realtime quotas under ``plan``: the rate counters and the
    decisions taken on them. Counters start at their first use."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._joins: RateCounter | None = None
        self._messages: RateCounter | None = None

    def _join_counter(self, now: float) -> RateCounter:
        if self._joins is None:
            self._joins = RateCounter(self.plan.joins_per_second, now)
        return self._joins

    def _message_counter(self, now: float) -> RateCounter:
        if self._messages is None:
            self._messages = RateCounter(self.plan.messages_per_second, now)
        return self._messages

    def connection_refusal(self, now: float, users: int) -> tuple[Quota, str] | None:
        """Why a new WebSocket is refused (HTTP 429 with that text) while
        ``users`` connections count, or None to accept it."""
        if users >= self.plan.concurrent_connections:
            return Quota.CONNECTIONS, "Too many connected users"
        if self._join_counter(now).over(now):
            return Quota.JOINS, "Too many joins per second"
        return None

    def join_refusal(
        self, now: float, *, counted: bool, users: int, channels: int
    ) -> JoinRefusal | None:
        """Why a join is refused, or None to let it through (it then counts
        as a join). ``counted``: whether its connection already counts among
        the ``users``; ``channels``: how many other channels it has joined."""
        if not counted and users >= self.plan.concurrent_connections:
            return JoinRefusal(
                Quota.CONNECTIONS, "ConnectionRateLimitReached: Too many connected users", False
            )
        joins = self._join_counter(now)
        if joins.over(now):
            return JoinRefusal(
                Quota.JOINS, "ClientJoinRateLimitReached: Too many joins per second", True
            )
        joins.add(now)
        if channels >= self.plan.channels_per_connection:
            return JoinRefusal(Quota.CHANNELS, "ChannelRateLimitReached: Too many channels", False)
        return None

    def joined(self, now: float) -> None:
        """A join went through: the message counter runs from the first."""
        self._message_counter(now)

    def count_messages(self, now: float, n: int) -> None:
        """``n`` messages were sent or delivered at time ``now``."""
        self._message_counter(now).add(now, n)

    def judged_messages_per_s(self, now: float) -> tuple[float, float]:
        """The message rate as the server judges it at ``now``: the average of
        the last tick and the highest one so far (zeros before the first join)."""
        if self._messages is None:
            return 0.0, 0.0
        self._messages.over(now)  # brings the ticks up to ``now``
        return self._messages.average, self._messages.peak

    def messages_over(self, now: float) -> bool:
        """Whether the message rate is over the limit: a channel that receives
        a message now is shut down."""
        return self._message_counter(now).over(now)

    def payload_fits(self, size: int) -> bool:
        """Whether a broadcast payload of external term ``size`` is accepted."""
        return size <= self.plan.max_payload_bytes


# Erlang's external term format: tag bytes and length fields per term.
_VERSION_BYTE: Final = 1
_SMALL_INTEGER: Final = 2
_INTEGER: Final = 5
_FLOAT: Final = 9
_BINARY_HEAD: Final = 5
_CONTAINER_HEAD: Final = 5
_NIL: Final = 1
_SMALL_TUPLE_HEAD: Final = 2
_ATOM_SIZES: Final = {True: 2 + len("true"), False: 2 + len("false"), None: 2 + len("nil")}
_INT32: Final = 2**31


def _term_size(value: object) -> int:
    if isinstance(value, str):
        return _BINARY_HEAD + len(value.encode())
    if value is None or isinstance(value, bool):
        return _ATOM_SIZES[value]
    if isinstance(value, int):
        if 0 <= value < 256:
            return _SMALL_INTEGER
        if -_INT32 <= value < _INT32:
            return _INTEGER
        digits = (abs(value).bit_length() + 7) // 8
        return (3 if digits < 256 else 6) + digits
    if isinstance(value, float):
        return _FLOAT
    if isinstance(value, dict):
        return _CONTAINER_HEAD + sum(_term_size(k) + _term_size(v) for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return _NIL
        return _CONTAINER_HEAD + sum(_term_size(v) for v in value) + _NIL
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def external_size(value: object) -> int:
    """``:erlang.external_size/1`` of the term Supabase's server decodes
    ``value`` (a JSON value as :mod:`orjson` loads it) into: objects are maps,
    strings binaries, ``true``/``false``/``null`` atoms. Raises ``TypeError``
    for anything JSON does not hold."""
    return _VERSION_BYTE + _term_size(value)


def user_broadcast_size(event: str, payload: bytes, json: bool, metadata: object) -> int:
    """``:erlang.external_size/1`` of the tuple a binary-framed broadcast
    becomes, ``{event, :json | :binary, payload, metadata}`` (``metadata``
    None: the empty map it then is)."""
    encoding = 2 + len("json" if json else "binary")
    return (
        _VERSION_BYTE
        + _SMALL_TUPLE_HEAD
        + _BINARY_HEAD
        + len(event.encode())
        + encoding
        + _BINARY_HEAD
        + len(payload)
        + _term_size({} if metadata is None else metadata)
    )
