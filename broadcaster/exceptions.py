"""Every error the broadcaster raises on purpose.

All of them derive from one root, so a caller can catch ``BroadcasterError``
and know it came from here. Third-party errors (websockets, the Realtime
client, sqlite3, psycopg) are translated into this tree at the adapter or store
edge, with the original kept as ``__cause__``.

::

    BroadcasterError
    ├── InvalidEvent            bad input to publish(); .field names what is wrong
    ├── ConfigError             bad setting; .variable and .value name it
    ├── BroadcasterClosed       publish() after close(), or before start
    ├── FlushTimeout            flush(timeout=...) ran out; .pending counts what is left
    ├── StoreError
    │   └── StoreUnavailable    the store cannot durably accept the event (disk full,
    │                           database down); the event was NOT accepted
    ├── AdapterError            an adapter could not take a batch; .adapter names it
    │   ├── AdapterUnavailable  not connected / not started / connection lost
    │   ├── AdapterTimeout      no acknowledgement in time
    │   ├── AdapterRejected     the far side answered with an error
    │   │   └── HistoryPruned   a resume asked for events the store no longer has;
    │   │                       .since and .oldest (the oldest still stored) say how far
    │   └── AdapterRefused      a quota said no: neither an outage nor a success to
    │       │                   the breaker; .reason names the quota
    │       ├── AdapterThrottled  over a rate quota: retry the whole batch after
    │       │                   .retry_after_s (.refused: by the far side, or held
    │       │                   back by the adapter's own cap)
    │       └── EventsRefused   .refused events can never fit (too large); every
    │                           other event of the batch was delivered
    ├── BreakerOpen             an adapter's circuit breaker refused the call: nothing
    │                           was sent, so no delivery failed (.adapter, .state, .retry_at)
    ├── RolloutConflict         a rollout cannot do that now: its category has another one
    │                           active, it changed since it was read, or its state does not
    │                           allow the move (.rollout_id names the one in the way)
    └── FrameError              a received frame is not a valid event (consumer side)
        ├── ChecksumMismatch    the event's checksum does not match its canonical bytes
        └── SignatureMismatch   a consumer holding signing keys got an event with no
                                signature, an unknown key id or a wrong value
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AdapterRefused",
    "AdapterRejected",
    "AdapterThrottled",
    "AdapterTimeout",
    "AdapterUnavailable",
    "BreakerOpen",
    "BroadcasterClosed",
    "BroadcasterError",
    "ChecksumMismatch",
    "ConfigError",
    "EventsRefused",
    "FlushTimeout",
    "FrameError",
    "HistoryPruned",
    "InvalidEvent",
    "RolloutConflict",
    "SignatureMismatch",
    "StoreError",
    "StoreUnavailable",
]


class BroadcasterError(Exception):
    """Root of every error raised by this package."""


class InvalidEvent(BroadcasterError, ValueError):
    """``publish()`` was given an event that cannot be accepted.

    Nothing was stored and no sequence id was consumed. ``field`` is the name
    of the offending field (``category``, ``event_type``, ``payload``, ``key``,
    ``source``); ``index`` is the position in a ``publish_many`` batch.
    """

    def __init__(self, field: str, reason: str, *, index: int | None = None) -> None:
        self.field = field
        self.reason = reason
        self.index = index
        where = f"event[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {reason}")

    def at(self, index: int) -> InvalidEvent:
        """The same error, located at position ``index`` of a batch."""
        return InvalidEvent(self.field, self.reason, index=index)


class ConfigError(BroadcasterError, ValueError):
    """A setting is invalid. ``variable`` is the environment variable's name."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"{variable}={value!s}: {reason}")


class BroadcasterClosed(BroadcasterError, RuntimeError):
    """The broadcaster is not running (never started, or already closed)."""


class FlushTimeout(BroadcasterError, TimeoutError):
    """``flush(timeout=...)`` returned before every routed event was acknowledged."""

    def __init__(self, pending: int, timeout: float) -> None:
        self.pending = pending
        self.timeout = timeout
        super().__init__(f"{pending} event deliveries still unacknowledged after {timeout}s")


class StoreError(BroadcasterError):
    """The event store failed."""


class StoreUnavailable(StoreError):
    """The store cannot durably accept events right now (disk full, database down).

    The events of the failed call were not accepted: the caller may retry them.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"store unavailable: {reason}")


class AdapterError(BroadcasterError):
    """An adapter could not deliver a batch. ``adapter`` names it."""

    def __init__(self, adapter: str, reason: str) -> None:
        self.adapter = adapter
        self.reason = reason
        super().__init__(f"{adapter}: {reason}")


class AdapterUnavailable(AdapterError):
    """The adapter is not connected, not started, or lost its connection."""


class AdapterTimeout(AdapterError):
    """The adapter got no acknowledgement in time."""


class AdapterRejected(AdapterError):
    """The far side answered the batch with an error."""


class HistoryPruned(AdapterRejected):
    """A resume (``?since=N``) was refused because events after ``since``
    were pruned from the store (WebSocket close code 4410). ``oldest`` is the
    oldest sequence id still stored, None when none is. Reconnecting cannot
    fix it: read what is left with ``GET /events``, or resume from
    ``oldest - 1`` knowing what was lost."""

    def __init__(self, adapter: str, since: int, oldest: int | None, reason: str) -> None:
        self.since = since
        self.oldest = oldest
        super().__init__(adapter, reason)


class AdapterRefused(AdapterError):
    """A quota of the far side refused the batch (Supabase Realtime's message
    rate or payload size). Not an outage: the breaker records neither a
    failure nor a success, and nothing is lost. ``reason`` names the quota
    (``rate_limit``, ``payload_too_large``); ``detail`` is what the far side said."""

    def __init__(self, adapter: str, reason: str, detail: str) -> None:
        self.detail = detail
        super().__init__(adapter, reason)

    def __str__(self) -> str:
        return f"{self.adapter}: refused ({self.reason}): {self.detail}"


class AdapterThrottled(AdapterRefused):
    """Over a rate quota: no event of the batch counts as delivered. Send the
    whole batch again after ``retry_after_s`` seconds. ``refused``: the far
    side refused for rate (True), or the adapter held the batch back itself
    because its own cap under the quota would make it wait too long (False:
    pacing, not a refusal)."""

    def __init__(
        self, adapter: str, detail: str, retry_after_s: float, *, refused: bool = True
    ) -> None:
        self.retry_after_s = retry_after_s
        self.refused = refused
        super().__init__(adapter, "rate_limit", detail)


class EventsRefused(AdapterRefused):
    """Some events can never be delivered on this path (each is too large even
    alone); every other event of the batch was delivered. ``refused`` maps the
    sequence id of each refused event to its reason."""

    def __init__(self, adapter: str, refused: dict[int, str], detail: str) -> None:
        self.refused = refused
        reasons = sorted(set(refused.values()))
        super().__init__(adapter, ", ".join(reasons), detail)


class BreakerOpen(BroadcasterError):
    """The breaker refused the call: nothing was sent to the adapter. Not an
    :class:`AdapterError` (no delivery was attempted), so a handler of those
    never takes it for a failed send.

    ``adapter`` names it; ``state`` is ``"open"`` or ``"half_open"`` (every
    probe slot taken); ``retry_at`` is when an open breaker goes half-open, on
    the breaker's clock (``time.monotonic`` by default), or None in half-open
    (retry when a probe finishes). Callers should keep the work pending, not
    count it as a delivery failure.
    """

    def __init__(self, adapter: str, state: str, retry_at: float | None) -> None:
        self.adapter = adapter
        self.state = state
        self.retry_at = retry_at
        when = f"; retry at {retry_at:.3f}" if retry_at is not None else ""
        super().__init__(f"{adapter}: circuit breaker {state}{when}")


class RolloutConflict(BroadcasterError):
    """A progressive rollout cannot make the change asked for: its category
    has another rollout running or paused, the rollout changed since the
    caller read it (another instance moved it), or its state does not allow
    the move (pausing a completed one). ``rollout_id`` names the rollout in
    the way, when there is one. Nothing was written."""

    def __init__(self, reason: str, *, rollout_id: int | None = None) -> None:
        self.reason = reason
        self.rollout_id = rollout_id
        super().__init__(reason)


class FrameError(BroadcasterError, ValueError):
    """A received frame is not a valid event object."""


class ChecksumMismatch(FrameError):
    """An event's checksum does not match its canonical bytes."""

    def __init__(self, sequence_id: int, algorithm: str, expected: str, actual: str) -> None:
        self.sequence_id = sequence_id
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"sequence_id {sequence_id}: {algorithm} checksum {actual} != expected {expected}"
        )


class SignatureMismatch(FrameError):
    """An event is not signed with any key the consumer holds (docs/security.md): it
    has no signature, names a key id the consumer does not know, or its value
    is not the HMAC of its canonical bytes. ``reason`` says which."""

    def __init__(self, sequence_id: int, reason: str) -> None:
        self.sequence_id = sequence_id
        self.reason = reason
        super().__init__(f"sequence_id {sequence_id}: bad signature: {reason}")
