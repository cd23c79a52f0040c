"""Consumer of the WebSocket fan-out: receive frames, verify, count, report.

:class:`WebSocketSubscriber` connects to ``ws://HOST:PORT/events`` or
``wss://`` (optionally with a category filter, a TLS context that trusts a
private CA, and a token sent as ``Authorization: Bearer``), decodes every
text frame with orjson and feeds the object to a
:class:`~broadcaster.consumer.ReceiptCollector`, which verifies the checksum
and counts it. A malformed frame is counted in
``collector.stats.malformed`` and logged; it never stops the loop. After a
drop the subscriber reconnects with capped exponential backoff and resumes
(docs/deploying.md): it remembers the highest sequence id it received and reconnects
with ``?since=<that id>``, so the server replays what it missed, with no gap
and no duplicate; ``since=`` starts the first connection that way too. A
server that pruned that history closes with 4410, which ends the
subscription with :class:`~broadcaster.exceptions.HistoryPruned`.

The URL helpers are in :mod:`.websocket_urls` and :func:`tail` in
:mod:`.websocket_tail`; both are re-exported here.
"""

from __future__ import annotations

import asyncio
import http
import logging
import random
import re
from collections.abc import Callable, Sequence
from ssl import SSLCertVerificationError, SSLContext
from types import TracebackType
from typing import Any, Final, Self

import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from ..exceptions import AdapterError, AdapterRejected, AdapterUnavailable, HistoryPruned
from ._common import ConsumerStats, ReceiptCollector
from .websocket_urls import (
    ADAPTER,
    _rejection,
    _since_of,
    redact_url,
    resume_url,
    subscription_url,
)

__all__ = ["WebSocketSubscriber", "redact_url", "resume_url", "subscription_url", "tail"]

# A missing or insufficient token: no retry can fix it, at a reconnect either.
_AUTH_STATUSES: Final = frozenset({401, 403})

# Close codes of a refused resume (broadcaster.adapters.websocket): history
# pruned after the cursor, and a cursor beyond the store. Not retried.
_PRUNED: Final = 4410
_AHEAD: Final = 4416
_OLDEST: Final = re.compile(r"oldest stored is (\d+)")

# Frames carry one event each; the payload limit is 256 KiB by default, so a
# 4 MiB cap leaves room for EVENT_MAX_BYTES raised well above it.
_MAX_FRAME_BYTES: Final = 4 * 2**20
# Messages websockets may buffer before it stops reading the socket. The
# default (16) makes the reader pause and resume constantly at high rates.
_MAX_QUEUE: Final = 1024

log = structlog.get_logger("broadcaster.consumer.websocket", adapter=ADAPTER)

# websockets logs the request path and headers at DEBUG: the token. Its logger
# here drops every DEBUG record.
_protocol_log = logging.getLogger("broadcaster.consumer.websocket.protocol")
_protocol_log.addFilter(lambda record: record.levelno > logging.DEBUG)


class WebSocketSubscriber:
    """One subscription to the WebSocket fan-out.

    ``await start()`` returns once the first connection is open (so every
    event sent after that reaches this subscriber) and raises
    :class:`~broadcaster.exceptions.AdapterRejected` if the server refuses the
    path or filter (HTTP 4xx, not retried), or
    :class:`~broadcaster.exceptions.AdapterUnavailable` if no connection
    opened within ``connect_timeout``. With ``reconnect=True`` a dropped
    connection is re-opened after ``backoff_initial`` doubling up to
    ``backoff_max`` seconds (with jitter); ``connections`` counts the opens.
    The constructor raises ``ValueError`` for a URL that is not ``ws://`` or
    ``wss://``, and for ``ssl`` with a ``ws://`` URL.

    ``ssl`` is the client TLS context for ``wss://`` (default: the system
    trust store; :func:`broadcaster.tls.client_ssl_context` builds one that
    trusts a given CA bundle). ``token`` is sent as ``Authorization: Bearer``
    (servers with ``WEBSOCKET_REQUIRE_TOKEN``). A 401 or 403 at a reconnect
    ends the subscription as at the start: no retry can fix a token.

    Resume: :attr:`last_sequence_id` is the highest sequence id received
    (``since`` until one arrives, None without either); every connection
    after the first asks for ``?since=<last_sequence_id>``, and the first
    too when ``since`` is given (or the URL carries one). A subscriber that
    has received nothing and was given no ``since`` reconnects without one:
    it has no position to resume from. A server that pruned the history
    after the cursor closes with 4410: the subscription ends and
    :attr:`error` is a :class:`~broadcaster.exceptions.HistoryPruned`.
    ``on_connect(url, attempt)`` is called before every connection attempt
    with the URL (token masked, ``since`` included): attempt 0 is the first
    connection, n > 0 the n-th retry since the last connection opened.
    """

    def __init__(
        self,
        url: str,
        *,
        categories: Sequence[str] | None = None,
        collector: ReceiptCollector,
        reconnect: bool = True,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        connect_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        ssl: SSLContext | None = None,
        token: str | None = None,
        since: int | None = None,
        on_connect: Callable[[str, int], None] | None = None,
    ) -> None:
        if since is not None and since < 0:
            raise ValueError(f"since must be >= 0, not {since}")
        self.url = subscription_url(url, categories)
        try:
            secure = parse_uri(self.url).secure
        except InvalidURI as exc:
            # Found here, not as a crash of the receive task on first connect.
            raise ValueError(f"not a WebSocket URL: {redact_url(url)!r} ({exc.msg})") from None
        if ssl is not None and not secure:
            raise ValueError(f"a TLS context needs a wss:// URL, not {redact_url(url)!r}")
        self._shown_url = redact_url(self.url)
        # Only what is set: websockets refuses ssl=None for a wss:// URL.
        self._connect_options: dict[str, Any] = {}
        if ssl is not None:
            self._connect_options["ssl"] = ssl
        if token:
            self._connect_options["additional_headers"] = {"Authorization": f"Bearer {token}"}
        self.collector = collector
        self.reconnect = reconnect
        self.connections = 0
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closing = False
        self._last_error: str | None = None
        # (target count, future) pairs of wait_for() callers; empty on the
        # hot path, so checking it costs one truth test per frame.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # The resume cursor: -1 until there is one (ids start at 1, since at 0).
        if since is None:
            since = _since_of(self.url)
        self._last = -1 if since is None else since
        self._on_connect = on_connect
        self._error: AdapterError | None = None
        # False after a server refused a reconnect's since (see _connect_loop).
        self._resuming = True
        self._ended = asyncio.Event()

    @property
    def last_sequence_id(self) -> int | None:
        """The highest sequence id received (``since`` before any): where
        the next connection resumes. None when there is neither."""
        return None if self._last < 0 else self._last

    async def wait_ended(self) -> AdapterError | None:
        """Wait until the subscription has ended on its own (a refusal no
        retry can fix: a token, pruned history; or a drop without
        ``reconnect``) and return :attr:`error`. Bound it with
        ``asyncio.timeout(...)``; a running subscription never ends by itself."""
        await self._ended.wait()
        return self._error

    @property
    def error(self) -> AdapterError | None:
        """What ended the subscription for good (a refused token, pruned
        history), or None while it runs or after a plain :meth:`close`."""
        return self._error

    @property
    def stats(self) -> ConsumerStats:
        """The collector's counters."""
        return self.collector.stats

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now."""
        return self._ws is not None

    async def start(self) -> None:
        """Connect; return once the first connection is open. See the class doc."""
        if self._task is not None:
            return
        self._closing = False
        self._ended.clear()
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._opened = opened
        self._task = loop.create_task(self._run(), name=f"websocket-subscriber {self._shown_url}")
        self._task.add_done_callback(self._on_task_done)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await opened
        except TimeoutError:
            await self.close()
            raise AdapterUnavailable(
                ADAPTER,
                f"no connection to {self._shown_url} within {self._connect_timeout}s"
                + (f" (last error: {self._last_error})" if self._last_error else ""),
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (code 1000) and stop reconnecting. Idempotent."""
        self._closing = True
        task, self._task = self._task, None
        ws = self._ws
        if ws is not None:
            # A clean close ends the receive loop, which then sees _closing.
            await ws.close()
        if task is not None:
            if not task.done():
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
            except AdapterError:
                pass  # already delivered to start(); nothing else to report
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

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

    async def wait_for(self, count: int, timeout: float) -> ConsumerStats:  # noqa: ASYNC109
        """Wait until ``stats.received >= count``; return the stats.

        Raises :class:`TimeoutError` saying how many arrived. (``timeout`` is
        a parameter rather than ``asyncio.timeout`` so the message can say so.)
        """
        if self.collector.stats.received >= count:
            return self.collector.stats
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (count, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise TimeoutError(
                f"received {self.collector.stats.received} of {count} events "
                f"from {self._shown_url} in {timeout}s"
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return self.collector.stats

    # -- receive loop ----------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except AdapterError as exc:
            self._error = exc
            raise

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            url = resume_url(self.url, self.last_sequence_id if self._resuming else None)
            if self._on_connect is not None:
                self._on_connect(redact_url(url), attempt)
            try:
                ws = await connect(
                    url,
                    logger=_protocol_log,
                    # Compression costs CPU on both ends; the server refuses it anyway.
                    compression=None,
                    max_size=_MAX_FRAME_BYTES,
                    max_queue=_MAX_QUEUE,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                    open_timeout=self._connect_timeout,
                    close_timeout=2.0,
                    **self._connect_options,
                )
            except InvalidStatus as exc:
                # A 4xx names a bad path, filter or token: retrying cannot fix it.
                error: AdapterError = _rejection(self._shown_url, exc)
                final = exc.response.status_code in _AUTH_STATUSES
                if (
                    exc.response.status_code == http.HTTPStatus.BAD_REQUEST
                    and self._resuming
                    and self._opened is not None
                    and self._opened.done()
                ):
                    # A reconnect refused for its since: a server that keeps
                    # no history. Go on live at once rather than not at all;
                    # what was missed meanwhile shows up in reconciliation.
                    log.warning(
                        "server cannot resume; continuing without since",
                        url=self._shown_url,
                        since=self.last_sequence_id,
                        error=str(error),
                    )
                    self._resuming = False
                    continue
                if self._fail_start(error) or not self.reconnect or final:
                    raise error from exc
                self._last_error = str(error)
                log.error("subscription refused", url=self._shown_url, error=str(error))
            except SSLCertVerificationError as exc:
                # Not transient: the first connection fails at once, naming it.
                error = AdapterUnavailable(
                    ADAPTER, f"cannot verify the TLS certificate of {self._shown_url}: {exc}"
                )
                if self._fail_start(error) or not self.reconnect:
                    raise error from exc
                self._last_error = str(exc)
                log.warning(
                    "certificate not trusted; will retry", url=self._shown_url, error=str(exc)
                )
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                error = AdapterUnavailable(ADAPTER, f"cannot connect to {self._shown_url}: {exc}")
                if not self.reconnect:
                    self._fail_start(error)
                    raise error from exc
                self._last_error = str(exc)
                log.info("connect failed; will retry", url=self._shown_url, error=str(exc))
            else:
                attempt = 0
                self._resuming = True
                await self._serve(ws)
                if self._closing or not self.reconnect:
                    return
            delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
            attempt += 1
            # Jitter keeps many subscribers from reconnecting in lock-step.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._ended.set()
        # Whatever ended the receive task, a start() still waiting must not
        # wait out its whole timeout, and an unexpected error must be seen.
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, AdapterError):
            log.error("subscriber task failed", url=self._shown_url, error=repr(error))
        opened = self._opened
        if opened is not None and not opened.done():
            reason = f"subscriber stopped: {error!r}" if error else "subscriber stopped"
            opened.set_exception(AdapterUnavailable(ADAPTER, reason))

    def _fail_start(self, error: AdapterError) -> bool:
        """Hand ``error`` to a waiting ``start()``; True if one was waiting."""
        opened = self._opened
        if opened is not None and not opened.done():
            opened.set_exception(error)
            return True
        return False

    async def _serve(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connections += 1
        log.info("subscribed", url=self._shown_url, connection=self.connections)
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)
        try:
            recv = ws.recv
            on_frame = self._on_frame
            while True:
                on_frame(await recv())
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is not None and rcvd.code in (_PRUNED, _AHEAD) and not self._closing:
                # The server cannot resume from our cursor: no retry can fix that.
                self._refused_resume(rcvd.code, rcvd.reason)
            if not self._closing:
                log.warning(
                    "subscription dropped",
                    url=self._shown_url,
                    code=rcvd.code if rcvd else None,
                    reason=rcvd.reason if rcvd else None,
                    received=self.collector.stats.received,
                )
        finally:
            self._ws = None
            # Release the socket whatever ended the loop (cancel included).
            await ws.close()

    def _refused_resume(self, code: int, reason: str) -> None:
        since = self._last
        message = f"{self._shown_url} cannot resume after sequence id {since}: {reason}"
        if code == _PRUNED:
            found = _OLDEST.search(reason)
            raise HistoryPruned(ADAPTER, since, int(found.group(1)) if found else None, message)
        raise AdapterRejected(ADAPTER, message)

    def _on_frame(self, frame: str | bytes) -> None:
        collector = self.collector
        try:
            if isinstance(frame, bytes):
                raise ValueError("binary frame; events are JSON text frames")
            obj = orjson.loads(frame)
            if not isinstance(obj, dict):
                raise ValueError(f"frame is a JSON {type(obj).__name__}, not an object")
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            stats = collector.stats
            stats.received += 1
            stats.malformed += 1
            log.warning(
                "malformed frame", url=self._shown_url, error=str(exc), frame=repr(frame[:200])
            )
        else:
            seq = obj.get("sequence_id")
            if type(seq) is int and seq > self._last:
                self._last = seq
            try:
                collector.handle(obj)
            except Exception as exc:
                # The collector counts what it recognises as malformed; anything
                # else it chokes on (odd types in the checksum object, a failing
                # callback) must not end the subscription either.
                collector.stats.malformed += 1
                log.warning("malformed event", url=self._shown_url, error=repr(exc))
        if self._waiters:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        received = self.collector.stats.received
        for count, waiter in self._waiters:
            if received >= count and not waiter.done():
                waiter.set_result(None)


# Last: websocket_tail imports WebSocketSubscriber from this module.
from .websocket_tail import tail  # noqa: E402
