"""The producer side: validate, route, seal, append (docs/python-api.md, docs/deploying.md).

One piece of code for every way events enter the store: the all-in-one
:class:`~broadcaster.Broadcaster`, ``POST /events`` (through it), and
:class:`Publisher`, the producer side alone for processes that only publish
(web workers, job workers) while ``broadcaster serve`` delivers.

A :class:`Publisher` binds no port and starts no adapter. ``publish()``
returns once the event is durably in the shared store; the service follows
the store and delivers it (see ``tail.py``). Calls made while a write is in
flight share the next transaction (group commit), so many concurrent
callers cost one commit per round, not one each. With PostgreSQL,
``publish(..., connection=conn)`` writes inside the caller's own open
transaction instead: the transactional outbox.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import structlog

from .checksums import ChecksumAlgorithm
from .events import (
    Category,
    ChecksumInfo,
    EventDraft,
    EventFactory,
    EventRecord,
    SigningKey,
    slots_builder,
)
from .exceptions import (
    BroadcasterClosed,
    ConfigError,
    FlushTimeout,
    InvalidEvent,
    StoreError,
    StoreUnavailable,
)
from .flags import RuntimeFlags
from .logs import use_log_settings
from .routing import RoutingTable
from .settings import Settings, load_settings
from .store import Store, store_from_url

if TYPE_CHECKING:
    import psycopg

__all__ = ["Publisher", "Receipt", "draft_batch"]

log = structlog.get_logger("broadcaster.producer")

Item = tuple[EventDraft, tuple[str, ...]]

_FIELDS: Final = frozenset({"category", "event_type", "payload", "key", "source"})


@dataclass(frozen=True, slots=True)
class Receipt:
    """What ``publish()`` returns once the event is durably stored and routed.

    ``routed_to`` lists the adapters the routing rules chose, in delivery
    order (primary first), including one whose breaker is open.
    """

    sequence_id: int
    event_id: str
    category: Category
    timestamp: str
    checksum_algorithm: ChecksumAlgorithm
    checksum_value: str
    routed_to: tuple[str, ...]

    @property
    def checksum(self) -> ChecksumInfo:
        """The event's checksum (built on access: most callers never look, and
        a pydantic model per published event was a visible share of publish())."""
        # Built by seal() from validated parts: no re-validation needed.
        return ChecksumInfo.model_construct(
            algorithm=self.checksum_algorithm, value=self.checksum_value
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequence_id": self.sequence_id,
            "event_id": self.event_id,
            "category": self.category.value,
            "timestamp": self.timestamp,
            "checksum": {"algorithm": self.checksum_algorithm, "value": self.checksum_value},
            "routed_to": list(self.routed_to),
        }


_ReceiptBuilder: Final = slots_builder(Receipt)


def _signing_key(settings: Settings) -> SigningKey | None:
    """``EVENT_SIGNING_KEY`` as the key every event is signed with (docs/security.md)."""
    secret = settings.event_signing_key
    if secret is None:
        return None
    return SigningKey(settings.event_signing_key_id, secret.get_secret_value())


def receipt_of(record: EventRecord, routed: tuple[str, ...]) -> Receipt:
    # One per published event: filled as a plain object and then made a
    # Receipt (see events.slots_builder): cheaper than the frozen __init__.
    receipt = _ReceiptBuilder()
    receipt.sequence_id = record.sequence_id
    receipt.event_id = record.event_id
    receipt.category = record.category
    receipt.timestamp = record.timestamp
    receipt.checksum_algorithm = record.checksum_algorithm
    receipt.checksum_value = record.checksum
    receipt.routed_to = routed
    receipt.__class__ = Receipt
    result: Receipt = receipt
    return result


def store_error(exc: Exception) -> StoreError:
    """What the callers of a failed write get: a store's own error as it is,
    anything else (a bug in a store) as :class:`StoreUnavailable`."""
    return exc if isinstance(exc, StoreError) else StoreUnavailable(repr(exc))


def event_factory(settings: Settings, clock: Callable[[], float]) -> EventFactory:
    """The factory every producer of ``settings`` drafts events with."""
    return EventFactory(
        clock=clock,
        checksums=settings.checksum_algorithms(),
        max_payload_bytes=settings.event_max_bytes,
        signing_key=_signing_key(settings),
    )


def draft_batch(
    factory: EventFactory, table: RoutingTable, events: Iterable[Mapping[str, Any]]
) -> list[Item]:
    """Validate and route a batch (``publish_many``): each mapping has
    ``category``, ``event_type``, ``payload`` and optionally ``key`` and
    ``source``. One invalid event raises :class:`InvalidEvent` with ``.index``
    saying which; nothing is drafted then."""
    items: list[Item] = []
    for index, spec in enumerate(events):
        try:
            if not isinstance(spec, Mapping):
                raise InvalidEvent("event", f"must be a mapping, not {type(spec).__name__}")
            unknown = set(spec) - _FIELDS
            if unknown:
                raise InvalidEvent(sorted(unknown)[0], "unknown field")
            for required in ("category", "event_type", "payload"):
                if required not in spec:
                    raise InvalidEvent(required, "is required")
            draft = factory.draft(
                spec["category"],
                spec["event_type"],
                spec["payload"],
                key=spec.get("key"),
                source=spec.get("source", "default"),
            )
        except InvalidEvent as exc:
            raise exc.at(index) from None
        items.append((draft, table.route(draft.category, draft.routing_key)))
    return items


class Submission:
    """Events waiting for a shared commit, and the future their caller awaits
    (the group commit of Publisher and Broadcaster)."""

    __slots__ = ("future", "items")

    def __init__(self, items: list[Item], future: asyncio.Future[list[EventRecord]]) -> None:
        self.items = items
        self.future = future


class Publisher:
    """Publish into the shared store from any process (docs/deploying.md)::

        async with Publisher.from_env() as publisher:
            receipt = await publisher.publish("CRITICAL", "order.created", {"order": 42})

    The same ``publish()``, ``publish_many()``, :class:`Receipt` and errors
    as :class:`~broadcaster.Broadcaster` (:class:`InvalidEvent` naming the
    field, :class:`StoreUnavailable`, :class:`BroadcasterClosed`), without a
    port, an adapter or background delivery: a running ``broadcaster serve``
    on the same ``STORE_URL`` delivers. Routing follows the runtime flags the
    service's admin API changes: they are re-read from the store at most
    ``refresh_s`` after a change.

    Backpressure: at most ``max_pending`` events wait for a commit; beyond
    that ``publish()`` waits. It never drops.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = 20_000,
        refresh_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else Settings(_env_file=None)
        self._store = store if store is not None else store_from_url(self.settings.store_url)
        self._factory = event_factory(self.settings, clock)
        self._routing = self.settings.routing_table()
        #: The routing flags, as persisted by the service (read-only here).
        self.flags = RuntimeFlags(self.settings, self._store, self._set_routing)
        self._max_pending = max_pending
        self._refresh_s = refresh_s
        self._monotonic = monotonic
        self._refreshed = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._queue: list[Submission] = []
        self._pending = 0
        self._has_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._space = asyncio.Event()
        self._space.set()
        self._writer: asyncio.Task[None] | None = None
        self._running = False

    @classmethod
    def from_env(cls, env_file: str | None = ".env", **kwargs: Any) -> Publisher:
        """Build from the environment (and ``env_file``). Raises ConfigError.
        Applies ``LOG_LEVEL``/``LOG_FORMAT`` unless the program configured
        structlog itself."""
        settings = load_settings(env_file)
        use_log_settings(settings.log_format, settings.log_level)
        return cls(settings, **kwargs)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (creating its schema if needed) and read the runtime flags."""
        if self._running:
            return
        await self._store.open()
        try:
            await self.flags.load()
        except BaseException:
            await self._store.close()
            raise
        self._refreshed = self._monotonic()
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="publisher-writer"
        )
        self._running = True

    async def close(self, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109 (a bound)
        """Stop accepting events, wait (up to ``timeout`` s) for the writes in
        flight, close the store. Idempotent."""
        if not self._running:
            return
        self._running = False
        try:
            await self.flush(timeout)
        except FlushTimeout as exc:
            log.warning("closing with events not yet stored", pending=exc.pending)
        for task in (self._writer, self._refreshing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._writer = self._refreshing = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(BroadcasterClosed("the publisher closed"))
        self._queue = []
        await self._store.close()

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

    @property
    def running(self) -> bool:
        return self._running

    @property
    def store(self) -> Store:
        return self._store

    @property
    def routing(self) -> RoutingTable:
        """The routing table the next event is routed with."""
        return self._routing

    def _set_routing(self, table: RoutingTable) -> None:
        self._routing = table

    # -- publishing --------------------------------------------------------------

    async def publish(
        self,
        category: str | Category,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        key: str | None = None,
        source: str = "default",
        connection: psycopg.AsyncConnection[Any] | None = None,
    ) -> Receipt:
        """Publish one event; return once it is durably in the store.

        ``connection`` (PostgreSQL stores only): write inside that open
        transaction instead; the event exists, and is delivered, if and only
        if the caller commits it. Raises :class:`InvalidEvent` (nothing
        stored), :class:`StoreUnavailable` (not accepted; safe to retry) or
        :class:`BroadcasterClosed`."""
        self._check_running()
        self._maybe_refresh()
        draft = self._factory.draft(category, event_type, payload, key=key, source=source)
        item = (draft, self._routing.route(draft.category, draft.routing_key))
        records = await self._write([item], connection)
        return receipt_of(records[0], item[1])

    async def publish_many(
        self,
        events: Iterable[Mapping[str, Any]],
        *,
        connection: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[Receipt]:
        """Publish a batch in one transaction (see :func:`draft_batch` for the
        mappings); one invalid event raises :class:`InvalidEvent` with
        ``.index`` and none is stored."""
        self._check_running()
        self._maybe_refresh()
        items = draft_batch(self._factory, self._routing, events)
        if not items:
            return []
        records = await self._write(items, connection)
        return [receipt_of(rec, routed) for rec, (_, routed) in zip(records, items, strict=True)]

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (the public API's signature)
        """Wait until every event handed to ``publish()`` so far is durably
        stored (or its call failed). Raises :class:`FlushTimeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            raise FlushTimeout(self._pending, timeout or 0.0) from None

    def _check_running(self) -> None:
        if not self._running:
            raise BroadcasterClosed("the publisher is not running (use 'async with' or start())")

    async def _write(
        self, items: list[Item], connection: psycopg.AsyncConnection[Any] | None
    ) -> list[EventRecord]:
        if connection is not None:
            append_in = getattr(self._store, "append_in", None)
            if append_in is None:
                raise InvalidEvent(
                    "connection", "writing in the caller's transaction needs a postgresql:// store"
                )
            records: list[EventRecord] = await append_in(connection, items)
            return records
        while self._pending >= self._max_pending:
            self._space.clear()
            await self._space.wait()
            self._check_running()
        future: asyncio.Future[list[EventRecord]] = asyncio.get_running_loop().create_future()
        self._queue.append(Submission(items, future))
        self._pending += len(items)
        self._idle.clear()
        self._has_work.set()
        return await future

    async def _write_loop(self) -> None:
        # One transaction for everything queued since the last one: callers
        # arriving during a commit share the next (group commit).
        while True:
            if not self._queue:
                self._idle.set()
                self._has_work.clear()
                await self._has_work.wait()
                continue
            batch, self._queue = self._queue, []
            items = [item for pending in batch for item in pending.items]
            outcome: list[EventRecord] | StoreError
            try:
                outcome = await self._store.append(items)
            except Exception as exc:
                outcome = store_error(exc)
                log.error("publish failed: store unavailable", error=str(exc), count=len(items))
            self._pending -= len(items)
            if self._pending < self._max_pending:
                self._space.set()
            start = 0
            for pending in batch:
                end = start + len(pending.items)
                if not pending.future.done():
                    if isinstance(outcome, StoreError):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome[start:end])
                start = end

    def _maybe_refresh(self) -> None:
        """Re-read the runtime flags in the background once ``refresh_s`` has
        passed: the call in hand routes with the table it has."""
        if self._refreshing is not None or self._monotonic() - self._refreshed < self._refresh_s:
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.flags.load(quiet=True)
        except (StoreError, ConfigError) as exc:
            log.warning("cannot re-read the runtime flags", error=str(exc))
        finally:
            self._refreshed = self._monotonic()
            self._refreshing = None
