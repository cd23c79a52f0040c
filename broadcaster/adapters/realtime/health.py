"""What the Realtime adapter reports of itself in ``health().extra``."""

from __future__ import annotations

from typing import TypedDict

from .canary import CanaryHealth

__all__ = ["RealtimeHealth"]


class RealtimeHealth(TypedDict):
    """:meth:`RealtimeAdapter.health`'s ``extra``: the connection, what is in
    flight, the limits in force and what the project refused."""

    #: The Realtime endpoint, without its query (the API key).
    url: str
    #: Whether it joins private channels (``REALTIME_PRIVATE_CHANNELS``).
    private_channels: bool
    #: The channels joined now (none while reconnecting).
    joined_channels: list[str]
    #: Pushes sent and not yet answered.
    outstanding_acks: int
    #: Events batched and not yet pushed.
    queued_events: int
    #: Pushes sent, and the events in the ones acknowledged.
    pushes: int
    events_acked: int
    #: The message-rate cap now (0: none): the configured one, or lower
    #: after a refusal for rate.
    max_messages_per_s: float
    #: Events, and bytes, one push carries at most (the bytes lowered after a
    #: push was refused as too large).
    batch_max: int
    batch_bytes: int
    #: Larger events are refused for good under the plan's payload limit
    #: (None: no limit).
    max_event_bytes: int | None
    #: Seconds left of the pause after a refusal for rate (0: none).
    throttled_for_s: float
    #: Reason (``payload_too_large``, ``rate_limit``) -> refusals.
    refused: dict[str, int]
    #: Connections opened again after the first.
    reconnects: int
    #: The rate canary, when the adapter runs one.
    canary: CanaryHealth | None
