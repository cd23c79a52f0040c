"""What the server keeps per connection and per channel join, and its counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TypedDict

from websockets.asyncio.server import ServerConnection

from .protocol import Vsn

__all__ = ["Peer", "ServerSnapshot", "ServerStats", "Subscription"]


@dataclass(slots=True)
class Subscription:
    """One peer's join of one topic, with the options it asked for."""

    topic: str
    join_ref: str | None
    ack: bool
    self_broadcast: bool
    #: Joined with ``config.private: true``: its token was checked.
    private: bool = False
    #: The access token a private channel was last authorised with.
    token: str | None = field(default=None, repr=False)
    #: When the token is checked again (a private channel only).
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False, compare=False)

    @property
    def channel(self) -> str:
        """The topic as the client named it (without ``realtime:``)."""
        return self.topic.removeprefix("realtime:")


@dataclass(eq=False, slots=True)
class Peer:
    """One client connection and the topics it joined (identity-hashed)."""

    conn: ServerConnection
    id: int
    #: The protocol version it speaks (the ``vsn`` of its URL).
    vsn: Vsn = "1.0.0"
    #: The ``apikey`` it connected with: the token of a private join that
    #: brings none of its own.
    apikey: str | None = field(default=None, repr=False)
    joins: dict[str, Subscription] = field(default_factory=dict)
    evicted: bool = False
    #: Counted against the concurrent-connection quota (from its first join).
    counted: bool = False

    def buffered(self) -> int:
        """Bytes written to this peer but not yet taken by the kernel."""
        return self.conn.transport.get_write_buffer_size()


@dataclass(slots=True)
class ServerStats:
    """Counters for tests and logs; never reset."""

    connections: int = 0
    joins: int = 0
    broadcasts: int = 0
    fanout_frames: int = 0
    #: Messages as Supabase counts them against the message-rate quota (each
    #: broadcast a client sends, each copy delivered, any other message on a
    #: joined channel), counted with or without limits.
    messages: int = 0
    acks: int = 0
    errors_replied: int = 0
    malformed: int = 0
    evicted: int = 0
    #: Handshakes refused for a missing or wrong ``apikey``.
    refused: int = 0
    #: Handshakes refused for a ``vsn`` no serializer speaks.
    bad_version: int = 0
    #: Refusals for a quota of the plan (``--limits``): handshakes and joins
    #: over the connection limit, joins (and handshakes) over the join rate,
    #: joins over the channels of a connection, channels shut down over the
    #: message rate, broadcasts over the payload size.
    too_many_connections: int = 0
    too_many_joins: int = 0
    too_many_channels: int = 0
    too_many_messages: int = 0
    payload_too_large: int = 0
    #: Private joins refused for their token, and private channels shut down
    #: when their token expired or was replaced by one that does not pass.
    unauthorized: int = 0

    @property
    def quota_refusals(self) -> int:
        """Every refusal for a quota, all kinds together."""
        return (
            self.too_many_connections
            + self.too_many_joins
            + self.too_many_channels
            + self.too_many_messages
            + self.payload_too_large
        )

    def snapshot(self, limits: str, judged: float | None, peak: float | None) -> ServerSnapshot:
        """The counters as JSON-able data, with every quota refusal together,
        the plan the server runs under (``limits``) and its judged and peak
        message rates."""
        return ServerSnapshot(
            connections=self.connections,
            joins=self.joins,
            broadcasts=self.broadcasts,
            fanout_frames=self.fanout_frames,
            messages=self.messages,
            acks=self.acks,
            errors_replied=self.errors_replied,
            malformed=self.malformed,
            evicted=self.evicted,
            refused=self.refused,
            bad_version=self.bad_version,
            too_many_connections=self.too_many_connections,
            too_many_joins=self.too_many_joins,
            too_many_channels=self.too_many_channels,
            too_many_messages=self.too_many_messages,
            payload_too_large=self.payload_too_large,
            unauthorized=self.unauthorized,
            quota_refusals=self.quota_refusals,
            limits=limits,
            judged_messages_per_s=judged,
            peak_messages_per_s=peak,
        )


class ServerSnapshot(TypedDict):
    """:meth:`ServerStats.snapshot`: what the server prints on SIGUSR1. The
    counters are :class:`ServerStats`' (see each there)."""

    connections: int
    joins: int
    broadcasts: int
    fanout_frames: int
    messages: int
    acks: int
    errors_replied: int
    malformed: int
    evicted: int
    refused: int
    bad_version: int
    too_many_connections: int
    too_many_joins: int
    too_many_channels: int
    too_many_messages: int
    payload_too_large: int
    unauthorized: int
    #: Every refusal for a quota, all kinds together.
    quota_refusals: int
    #: The plan whose quotas the server enforces, or ``none``.
    limits: str
    #: Under a plan, the message rate as it judges it now (the mean over the
    #: kept ticks) and at its highest; None without limits.
    judged_messages_per_s: float | None
    peak_messages_per_s: float | None
