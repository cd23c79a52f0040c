"""What the server keeps per connection and per channel join, and its counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from .protocol import Vsn

__all__ = ["Peer", "ServerStats", "Subscription"]


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
