"""Realtime consumer: joins the category channels with the official client and
feeds every received event object to a :class:`ReceiptCollector`.

Each broadcast ``events`` carries ``{"events": [<event object>, ...]}`` (docs/wire-format.md);
every object goes to ``collector.handle`` (which verifies its checksum and
counts it). The connection is supervised by
:class:`~broadcaster.adapters.realtime.RealtimeLink`, through the project's
``supabase`` client: a lost connection or a server restart is followed by a
reconnect and a rejoin of every channel. With ``private=True`` the channels
are joined as private ones, authorised by the access token.
Events broadcast while the subscriber is disconnected are not replayed
(Realtime broadcast has no history); reconciliation reports them missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import structlog
from realtime import BroadcastPayload

from ..adapters.realtime import FastBroadcastClient, RealtimeLink, channel_topic
from ..events import Category
from ._common import ReceiptCollector

__all__ = ["FastBroadcastClient", "RealtimeSubscriber"]

log = structlog.get_logger("broadcaster.consumer.realtime", adapter="realtime")


def _categories(values: Iterable[Category | str] | None) -> list[Category]:
    if values is None:
        return list(Category)
    return [v if isinstance(v, Category) else Category(str(v).strip().upper()) for v in values]


class RealtimeSubscriber:
    """Subscribes to ``<channel_prefix>:<category>`` for each of ``categories``.

    ``url`` is the project URL or its Realtime endpoint (``.../realtime/v1``),
    ``key`` the project's API key (a browser would hold the anon key).
    ``start()`` raises the client's error if the first connection fails and
    keeps nothing running then; once started, it reconnects on its own until
    ``close()``. Use as ``async with RealtimeSubscriber(...) as sub:``.
    ``batches`` counts broadcasts received; ``malformed`` counts broadcasts
    whose payload had no ``events`` list (logged, and not fed to the collector).
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        categories: Iterable[Category | str] | None = None,
        channel_prefix: str = "events",
        private: bool = False,
        collector: ReceiptCollector,
        connect_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 2.0,
        poll_s: float = 0.5,
    ) -> None:
        self.collector = collector
        self.categories = _categories(categories)
        self.topics = [channel_topic(channel_prefix, cat) for cat in self.categories]
        self.batches = 0
        self.malformed = 0
        self._link = RealtimeLink(
            url,
            key,
            self.topics,
            ack=False,
            private=private,
            on_broadcast=self._on_broadcast,
            connect_timeout_s=connect_timeout_s,
            reconnect_initial_s=reconnect_initial_s,
            reconnect_max_s=reconnect_max_s,
            poll_s=poll_s,
            logger=log,
            client_factory=FastBroadcastClient,
        )

    @property
    def link(self) -> RealtimeLink:
        """The supervised connection (``ready``, ``connects``, ``wait_ready()``)."""
        return self._link

    @property
    def ready(self) -> bool:
        """Connected and every channel joined."""
        return self._link.ready

    async def start(self) -> None:
        """Connect and join every channel (raises if the first attempt fails)."""
        await self._link.start()
        log.info("realtime subscriber joined", channels=self.topics)

    async def close(self) -> None:
        """Leave and disconnect. Idempotent."""
        await self._link.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _on_broadcast(self, topic: str, payload: BroadcastPayload) -> None:
        self.batches += 1
        body: Any = payload.get("payload")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            self.malformed += 1
            log.warning("broadcast without an events list", topic=topic)
            return
        handle = self.collector.handle
        for obj in events:
            if isinstance(obj, dict):
                handle(obj)
            else:
                self.malformed += 1
                log.warning("event is not an object", topic=topic, kind=type(obj).__name__)
