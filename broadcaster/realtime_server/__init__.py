"""A local server speaking the Supabase Realtime broadcast protocol.

It implements the part of Realtime the broadcaster and its consumers use —
Phoenix channels, ``phx_join``, ``heartbeat``, ``broadcast`` (with ``ack``
and ``self``), ``access_token``, ``phx_leave`` — so that the demo and the
tests run the official clients against a real socket without a Supabase
project, and it behaves as Supabase's server does wherever a client can tell.
Point ``SUPABASE_URL`` at :attr:`LocalRealtimeServer.url`; clients connect to
``<SUPABASE_URL>/realtime/v1/websocket?apikey=...&vsn=...`` (the server also
accepts ``/socket/websocket`` and ``/websocket``).

* **Protocols** (:mod:`.protocol`): ``vsn=1.0.0`` (JSON objects; the Python
  client) and ``2.0.0`` (JSON arrays and binary user broadcasts;
  ``@supabase/realtime-js``), per connection. Subscribers get each broadcast
  in their own version's framing.
* **API key**: given one (``key``), the server accepts only clients that
  present it, in the ``x-api-key`` header, else the ``apikey`` query
  parameter; any other is refused at the handshake with HTTP 401 and
  Realtime's JSON error, before the WebSocket opens. Without one it accepts
  any key (or none), and says so in its log: any local process can then
  broadcast.
* **Quotas** (:mod:`.quotas`): ``limits`` names a plan whose published
  Realtime quotas the server enforces with Supabase's refusals.
* **Private channels** (:mod:`.tokens`): a join with ``config.private: true``
  needs an access token signed with ``jwt_secret`` whose role is allowed;
  the token is checked again when it expires or is replaced.

Fault injection: each client frame goes through :meth:`LocalRealtimeServer.decode`,
then each client event is handled by an overridable coroutine
(:meth:`LocalRealtimeServer.on_join`, :meth:`~LocalRealtimeServer.on_broadcast`,
:meth:`~LocalRealtimeServer.ack_broadcast`, ...). A test subclass may delay an
ack (schedule it with :meth:`~LocalRealtimeServer.spawn` so the connection keeps
reading), drop it (do nothing), answer with an error, or stall (sleep inline,
which stops reading that connection).

Run it on its own with ``python -m broadcaster.realtime_server --port N
[--key KEY] [--limits PLAN] [--jwt-secret SECRET]`` (``--key`` defaults to
``$SUPABASE_KEY`` and ``--jwt-secret`` to ``$SUPABASE_JWT_SECRET``; the
environment keeps them out of the process list, where every local user can
read them).
"""

from __future__ import annotations

from .cli import main, run
from .peers import Peer, ServerSnapshot, ServerStats, Subscription
from .protocol import Message
from .quotas import PLANS, Plan
from .server import LocalRealtimeServer
from .tokens import mint_token
from .transport import DEFAULT_MAX_BUFFER_BYTES, DEFAULT_PORT

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_PORT",
    "PLANS",
    "LocalRealtimeServer",
    "Message",
    "Peer",
    "Plan",
    "ServerSnapshot",
    "ServerStats",
    "Subscription",
    "main",
    "mint_token",
    "run",
]
