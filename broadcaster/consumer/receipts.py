"""Receipts from consumers in other processes: ``POST /receipts`` (docs/deploying.md).

A :class:`ReceiptPoster` takes receipts from a
:class:`~broadcaster.consumer.ReceiptCollector` (``on_receipt=poster.add``)
and posts them to the admin API in batches, off the receive path::

    async with ReceiptPoster("https://admin:8080", token) as poster:
        collector = ReceiptCollector("websocket", consumer="billing", on_receipt=poster.add)
        ...

``add`` never waits: receipts go into a bounded buffer that a background task
drains. When the API cannot be reached or answers 5xx/429, that task retries
with capped exponential backoff while the buffer keeps filling; once full, the
oldest receipts are dropped and counted (a lost receipt only makes an event
look missing until repair re-sends it). A 401/403 stops posting for good and
a 413/422 drops that batch: no retry can fix them; both are logged and counted.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx
import orjson
import structlog

from ..store.base import ConsumerReceipt

__all__ = ["ReceiptPoster", "ReceiptPosterStats"]

log = structlog.get_logger("broadcaster.consumer.receipts")

#: The most receipts one ``POST /receipts`` may carry (docs/deploying.md).
MAX_BATCH: Final = 10_000
# Answers that say "try again": the server is overloaded or its store is down.
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
# Answers that mean this token will never be accepted: stop posting.
_AUTH_STATUSES: Final = frozenset({401, 403})


@dataclass
class ReceiptPosterStats:
    """What a :class:`ReceiptPoster` did with the receipts it was given."""

    #: Receipts the API accepted (answered 200 for).
    posted: int = 0
    #: Batches: POST calls answered 200.
    batches: int = 0
    #: Failed attempts that were retried (unreachable, 5xx, 429).
    retries: int = 0
    #: Receipts dropped from a full buffer, or left over at close.
    dropped: int = 0
    #: Receipts refused for good (401/403, 413, 422, another 4xx).
    rejected: int = 0
    #: Receipts the API counted as checksum mismatches.
    mismatches: int = 0
    #: Receipts whose sequence id the store does not hold.
    unknown: int = 0
    #: The last failure (kept after later successes: a dropped batch's
    #: reason stays visible); None while there has been none.
    last_error: str | None = None


class ReceiptPoster:
    """Posts receipts to ``<admin_url>/receipts`` in batches.

    A batch goes when ``max_batch`` receipts are waiting (at most 10 000, the
    API's limit) or ``interval_s`` after the oldest arrived, whichever is
    first. ``max_buffer`` bounds what waits; ``backoff_initial_s`` doubles up
    to ``backoff_max_s`` between attempts (with jitter). ``verify`` is
    httpx's: an :class:`ssl.SSLContext` for a private CA, or a CA bundle path.

    ``start()`` starts the background task (``async with`` does it);
    ``close(timeout_s)`` stops it after one last try at what is buffered,
    counting what could not go as dropped. Raises ``ValueError`` for a
    ``max_batch`` outside 1..10 000 or a ``max_buffer`` below it.
    """

    def __init__(
        self,
        admin_url: str,
        token: str,
        *,
        interval_s: float = 0.25,
        max_batch: int = 1000,
        max_buffer: int = 100_000,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        request_timeout_s: float = 10.0,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1..{MAX_BATCH}, not {max_batch}")
        if max_buffer < max_batch:
            raise ValueError(f"max_buffer ({max_buffer}) must be at least max_batch ({max_batch})")
        self.url = admin_url.rstrip("/") + "/receipts"
        self._token = token
        self._interval = interval_s
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._request_timeout = request_timeout_s
        self._verify = verify
        self.stats = ReceiptPosterStats()
        self._buffer: deque[dict[str, Any]] = deque()
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The batch being posted (or waiting to be retried), oldest first.
        self._inflight: list[dict[str, Any]] = []
        self._client: httpx.AsyncClient | None = None
        #: Set once the API refused the token: nothing more is posted.
        self._refused: str | None = None
        self._drop_logged = 0

    @property
    def pending(self) -> int:
        """Receipts waiting to be posted."""
        return len(self._buffer)

    def add(self, receipt: ConsumerReceipt) -> None:
        """Queue one receipt (a collector's ``on_receipt``). Never waits."""
        if self._refused is not None:
            self.stats.rejected += 1
            return
        buffer = self._buffer
        if len(buffer) >= self._max_buffer:
            buffer.popleft()
            self.stats.dropped += 1
            self._log_drops()
        item: dict[str, Any] = {
            "sequence_id": receipt.sequence_id,
            "adapter": receipt.adapter,
            "checksum": receipt.checksum,
            "consumer": receipt.consumer,
            "received_at": receipt.received_at_ms,
        }
        if receipt.deliveries != 1:  # a consumer's own duplicate: the API counts it
            item["delivery"] = receipt.deliveries
        if not receipt.checksum_ok:
            # The consumer's own verdict: a bad signature on intact bytes
            # would otherwise pass the service's checksum comparison.
            item["verified"] = False
        buffer.append(item)
        if not self._has_data.is_set():
            self._has_data.set()
        if len(buffer) >= self._max_batch and not self._full.is_set():
            self._full.set()

    def _log_drops(self) -> None:
        # Once per power of two: a stalled API must not turn into a log flood.
        dropped = self.stats.dropped
        if dropped >= 2 * self._drop_logged or self._drop_logged == 0:
            self._drop_logged = dropped
            log.warning(
                "receipt buffer full: dropping the oldest",
                dropped=dropped,
                buffer=self._max_buffer,
                url=self.url,
                last_error=self.stats.last_error,
            )

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start posting in the background. Idempotent."""
        if self._task is not None:
            return
        self._client = httpx.AsyncClient(
            timeout=self._request_timeout,
            verify=self._verify,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
            },
        )
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"receipt-poster {self.url}"
        )

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the background task, try once more (for up to ``timeout_s``)
        to post what is buffered, and count the rest as dropped. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._inflight:
            # Cut off mid-post or between retries: the oldest go first again
            # (the API keeps a receipt once, should it have got them).
            self._buffer.extendleft(reversed(self._inflight))
            self._inflight = []
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                while self._buffer and self._refused is None:
                    batch = self._take()
                    if not await self._post(client, batch):
                        # Put it back: counted with the rest below.
                        self._buffer.extendleft(reversed(batch))
                        break
        except TimeoutError:
            pass
        finally:
            await client.aclose()
        if self._buffer:
            left = len(self._buffer)
            self.stats.dropped += left
            self._buffer.clear()
            log.warning(
                "receipts not posted at close",
                count=left,
                url=self.url,
                last_error=self.stats.last_error,
            )

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

    # -- posting ---------------------------------------------------------------

    def _take(self) -> list[dict[str, Any]]:
        buffer = self._buffer
        n = min(len(buffer), self._max_batch)
        batch = [buffer.popleft() for _ in range(n)]
        if len(buffer) < self._max_batch:
            self._full.clear()
        if not buffer:
            self._has_data.clear()
        return batch

    async def _run(self) -> None:
        client = self._client
        assert client is not None
        while self._refused is None:
            await self._has_data.wait()
            if len(self._buffer) < self._max_batch:
                # Let a batch form, but never hold a receipt longer than this.
                try:
                    async with asyncio.timeout(self._interval):
                        await self._full.wait()
                except TimeoutError:
                    pass
            batch = self._inflight = self._take()
            attempt = 0
            while not await self._post(client, batch):
                delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
                attempt += 1
                self.stats.retries += 1
                # Jitter: many consumers of one restarted API do not retry in step.
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                # What did not fit while we waited was dropped from the buffer,
                # oldest first; this batch is older still, so it yields first.
                spill = len(self._buffer) + len(batch) - self._max_buffer
                if spill > 0:
                    del batch[:spill]
                    self.stats.dropped += spill
                    self._log_drops()
                    if not batch:
                        break
            self._inflight = []

    async def _post(self, client: httpx.AsyncClient, batch: Sequence[dict[str, Any]]) -> bool:
        """One attempt. True when the batch is done with (accepted, or refused
        for good and counted); False to retry it."""
        stats = self.stats
        try:
            response = await client.post(self.url, content=orjson.dumps(batch))
        except httpx.HTTPError as exc:
            stats.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.info("receipts not posted; will retry", url=self.url, error=stats.last_error)
            return False
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
                stats.mismatches += int(body.get("mismatches", 0))
                stats.unknown += len(body.get("unknown", ()))
            except (ValueError, TypeError, AttributeError):
                log.warning("unexpected answer to POST /receipts", url=self.url, body=response.text)
            stats.posted += len(batch)
            stats.batches += 1
            return True
        detail = response.text[:500]
        stats.last_error = f"HTTP {status}: {detail}"
        if status in _RETRY_STATUSES:
            log.info("receipts not accepted yet; will retry", url=self.url, status=status)
            return False
        stats.rejected += len(batch)
        if status in _AUTH_STATUSES:
            self._refused = stats.last_error
            stats.rejected += len(self._buffer)
            self._buffer.clear()
            log.error(
                "the admin API refused the receipt token; no more receipts will be posted",
                url=self.url,
                status=status,
                detail=detail,
            )
        else:
            log.error(
                "the admin API refused a batch of receipts; dropped",
                url=self.url,
                status=status,
                count=len(batch),
                detail=detail,
            )
        return True
