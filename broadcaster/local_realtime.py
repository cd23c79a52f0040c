"""The local Realtime stand-in of a process without a Supabase project.

With ``SUPABASE_URL`` unset the Realtime path still runs end to end: through
the official client, over a real socket, to a
:class:`~broadcaster.realtime_server.LocalRealtimeServer` on the loopback
that accepts only this process's key. Like a Supabase project's, that key is
a ``service_role`` JWT signed with the stand-in's JWT secret
(``SUPABASE_JWT_SECRET``, else one made up at start), so private channels
work with it too. ``broadcaster serve`` starts it
itself, before its broadcaster (:func:`realtime_settings`); the all-in-one
:class:`~broadcaster.core.Broadcaster` starts one when it is built without a
Supabase URL (the README's first script, the tests).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from pydantic import SecretStr

from .realtime_server import LocalRealtimeServer
from .realtime_server.tokens import service_role_key
from .settings import Settings

__all__ = ["LocalRealtime", "realtime_settings", "start_local_realtime"]

log = structlog.get_logger("broadcaster.local_realtime")


@dataclass(frozen=True, slots=True)
class LocalRealtime:
    """A started stand-in: where it listens, the one key it accepts, and how
    to stop it."""

    url: str
    key: str
    close: Callable[[], Awaitable[None]]


async def start_local_realtime(
    configured_key: SecretStr | None, jwt_secret: SecretStr | None = None
) -> LocalRealtime:
    """Start a stand-in on a free loopback port. It accepts only
    ``configured_key`` (``SUPABASE_KEY``) or, without one, a service key made
    up at start, so that no other local process can inject broadcasts; it
    checks private channels' tokens with ``jwt_secret``
    (``SUPABASE_JWT_SECRET``), else with a secret made up at start."""
    secret = jwt_secret.get_secret_value() if jwt_secret else secrets.token_urlsafe(32)
    if configured_key:
        key = configured_key.get_secret_value()
    else:
        key = service_role_key(secret, time.time())
    server = LocalRealtimeServer(host="127.0.0.1", port=0, key=key, jwt_secret=secret)
    await server.start()
    log.info("local realtime server started", url=server.url)
    return LocalRealtime(server.url, key, server.close)


@asynccontextmanager
async def realtime_settings(settings: Settings) -> AsyncIterator[Settings]:
    """The settings a service pushes to Realtime with: ``settings`` as they
    are when ``SUPABASE_URL`` names a project; otherwise a copy pointing at a
    stand-in started for the block (``SUPABASE_URL`` and ``SUPABASE_KEY``
    set to it) and stopped after it."""
    if settings.supabase_url is not None:
        yield settings
        return
    local = await start_local_realtime(settings.supabase_key, settings.supabase_jwt_secret)
    try:
        yield settings.model_copy(
            update={"supabase_url": local.url, "supabase_key": SecretStr(local.key)}
        )
    finally:
        await local.close()
