"""``broadcaster subscribe``: print one line per event received from the
WebSocket fan-out, reconnecting and resuming as the subscriber does.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from ssl import SSLContext
from typing import Any, TextIO

from ..store.base import ConsumerReceipt
from ._common import ConsumerStats, ReceiptCollector
from .websocket import WebSocketSubscriber
from .websocket_urls import ADAPTER

__all__ = ["tail"]


async def tail(
    url: str,
    categories: Sequence[str] | None,
    out: TextIO = sys.stdout,
    *,
    limit: int | None = None,
    ssl: SSLContext | None = None,
    token: str | None = None,
    signing_keys: Mapping[str, str | bytes] | None = None,
    since: int | None = None,
    err: TextIO | None = None,
    consumer: str = "tail",
    on_receipt: Callable[[ConsumerReceipt], None] | None = None,
) -> ConsumerStats:
    """Print one line per event received from the fan-out at ``url``
    (``ssl``, ``token`` and ``since`` as for :class:`WebSocketSubscriber`:
    it resumes after every reconnect). ``err`` (default ``sys.stderr``)
    gets ``connecting to <url> …`` at the start and ``reconnecting (attempt
    n) to <url> …`` before each retry, so ``out`` holds events only. Each
    receipt, named ``consumer``, goes to ``on_receipt`` if given (a
    :class:`~broadcaster.consumer.ReceiptPoster`'s ``add``: ``subscribe --report``).

    Each line is ``<sequence_id> <category> <event_type> OK|MISMATCH`` (the
    checksum verdict); given ``signing_keys`` (key id -> key), an event
    whose signature does not verify ends in ``BAD_SIGNATURE``. Returns the
    stats once ``limit`` events were seen, or when cancelled (Ctrl-C, a
    timeout): cancellation ends the tail, it is not an error. Raises
    :class:`~broadcaster.exceptions.AdapterRejected` for a bad filter or a
    refused token (HTTP 401/403),
    :class:`~broadcaster.exceptions.HistoryPruned` when the server no longer
    has the events to resume from, and
    :class:`~broadcaster.exceptions.AdapterUnavailable` when the server
    cannot be reached at the start.
    """
    done: asyncio.Future[ConsumerStats] = asyncio.get_running_loop().create_future()
    bad_signatures_shown = 0

    def on_event(obj: Mapping[str, Any], ok: bool) -> None:
        nonlocal bad_signatures_shown
        if done.done():
            return  # frames already in flight when the limit was reached
        stats = collector.stats
        if ok:
            verdict = "OK"
        elif stats.bad_signatures > bad_signatures_shown:
            # The collector counted this event as a bad signature just now.
            bad_signatures_shown = stats.bad_signatures
            verdict = "BAD_SIGNATURE"
        else:
            verdict = "MISMATCH"
        out.write(f"{obj['sequence_id']} {obj['category']} {obj['event_type']} {verdict}\n")
        if limit is not None and stats.received >= limit:
            # A snapshot: the connection may deliver a few more before it closes.
            done.set_result(replace(stats, by_category=stats.by_category.copy()))

    collector = ReceiptCollector(
        ADAPTER,
        consumer=consumer,
        on_event=on_event,
        on_receipt=on_receipt,
        track_seen=False,
        signing_keys=signing_keys,
    )

    def on_connect(shown: str, attempt: int) -> None:
        stream = err if err is not None else sys.stderr
        if attempt:
            stream.write(f"reconnecting (attempt {attempt}) to {shown} …\n")
        else:
            stream.write(f"connecting to {shown} …\n")
        stream.flush()

    subscriber = WebSocketSubscriber(
        url,
        categories=categories,
        collector=collector,
        ssl=ssl,
        token=token,
        since=since,
        on_connect=on_connect,
    )
    try:
        await subscriber.start()
        while not done.done():
            # Flush a few times a second: per-line flushes cost too much when
            # piped at thousands of events per second.
            await asyncio.wait([done], timeout=0.25)
            out.flush()
            # The receive task ends on its own only for a refusal no retry can
            # fix (a token refused at a reconnect): report it, do not wait on.
            task = subscriber._task
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
    finally:
        await subscriber.close()
        out.flush()
    return done.result() if done.done() else collector.stats
