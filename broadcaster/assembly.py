"""What a :class:`~broadcaster.core.Broadcaster` is built from when nothing
is injected, and how its adapters start.

At the edge of the flow: the adapters the lanes deliver to — the WebSocket
fan-out server and the Realtime adapter, as the settings describe them —
and, without a Supabase project, the local Realtime stand-in the Realtime
adapter pushes to. Also the line a broadcaster built from the environment
logs about its configuration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from .adapters.base import Adapter
from .exceptions import BroadcasterError
from .security import mask_url_password
from .settings import Settings
from .store import Store

if TYPE_CHECKING:
    from .local_realtime import LocalRealtime

__all__ = ["default_adapters", "log_configuration", "start_adapters"]

log = structlog.get_logger("broadcaster")


def log_configuration(settings: Settings, env_file: str | None) -> None:
    """Log the configuration a broadcaster was built from (the store URL's
    password masked)."""
    table = settings.routing_table()
    log.info(
        "configuration loaded",
        env_file=env_file if env_file is not None and Path(env_file).is_file() else None,
        dual_write_enabled=table.enabled,
        primary=table.primary,
        override=table.override,
        categories={
            cat.value: f"{'on' if r.enabled else 'off'} {r.percentage}% {','.join(r.adapters)}"
            for cat, r in table.categories.items()
        },
        store_url=mask_url_password(settings.store_url),
    )


async def default_adapters(
    settings: Settings, store: Store, closers: list[Callable[[], Any]]
) -> tuple[list[Adapter], LocalRealtime | None]:
    """The WebSocket fan-out server (resuming subscribers from ``store``) and
    the Realtime adapter, and the local Realtime stand-in started for it when
    ``SUPABASE_URL`` is unset (its ``close`` appended to ``closers``)."""
    from .adapters.realtime import RealtimeAdapter
    from .adapters.websocket import WebSocketAdapter

    url = settings.supabase_url
    local = None
    if url is None:
        # All in one, without a Supabase project: a stand-in in this
        # process, so that the realtime path is real end to end.
        from .local_realtime import start_local_realtime

        local = await start_local_realtime(settings.supabase_key, settings.supabase_jwt_secret)
        closers.append(local.close)
        url = local.url
    realtime_url = url.rstrip("/") + "/realtime/v1"
    rt_settings = settings
    if local is not None and not settings.supabase_key:
        rt_settings = rt_settings.model_copy(update={"supabase_key": SecretStr(local.key)})
    adapters: list[Adapter] = [
        # Resume (?since=N) replays from this broadcaster's store.
        WebSocketAdapter.from_settings(settings, replay=store),
        RealtimeAdapter.from_settings(rt_settings, url=realtime_url),
    ]
    return adapters, local


async def start_adapters(adapters: Mapping[str, Adapter], primary: str) -> None:
    """Start every adapter at once. The ``primary`` one failing, or any
    failing with an error that is not the broadcaster's, raises; a secondary
    one that is down is logged and left to its lane's retries."""
    results = await asyncio.gather(*(a.start() for a in adapters.values()), return_exceptions=True)
    for adapter, result in zip(adapters.values(), results, strict=True):
        if isinstance(result, BaseException):
            if adapter.name == primary or not isinstance(result, BroadcasterError):
                raise result
            # A secondary path that is down at start must not stop the
            # primary: its lane retries until it comes up.
            log.warning("adapter failed to start", adapter=adapter.name, error=str(result))
        else:
            log.info("adapter started", adapter=adapter.name)
