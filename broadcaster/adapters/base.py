"""The lifecycle every adapter shares: ``start``, ``send``, ``close``, ``health``.

The broadcaster gives each adapter its own ordered lane (see
:mod:`broadcaster.lanes`), so one adapter's failure or slowness never cancels
or stalls another's send.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from ..events import EventRecord

__all__ = ["Adapter", "AdapterHealth"]


#: The shape of an adapter's ``extra``: each adapter documents its own
#: (a ``TypedDict``); an adapter known only as an :class:`Adapter` gives a mapping.
ExtraT = TypeVar("ExtraT", bound=Mapping[str, object], covariant=True)


def _no_extra() -> Any:
    # Any: a field of a generic type cannot have a typed default. Only an
    # adapter with no figures of its own leaves ``extra`` empty.
    return {}


@dataclass(frozen=True, slots=True)
class AdapterHealth(Generic[ExtraT]):
    """A point-in-time view of an adapter, for ``/health`` and logs:
    ``extra`` holds the adapter's own figures (``AdapterHealth[WebSocketHealth]``
    from a :class:`~broadcaster.adapters.WebSocketAdapter`, for instance)."""

    name: str
    connected: bool
    detail: str = ""
    extra: ExtraT = field(default_factory=_no_extra)


class Adapter(ABC):
    """One delivery path.

    Contract for implementers:

    * ``send(batch)`` delivers ``batch`` (in sequence order) and returns once
      the far side acknowledged it; it raises an
      :class:`~broadcaster.exceptions.AdapterError` subclass otherwise, and
      translates third-party errors into that tree. A quota refusal is an
      :class:`~broadcaster.exceptions.AdapterRefused`: ``AdapterThrottled``
      (send the whole batch again after its pause) or ``EventsRefused`` (the
      events it names can never be delivered here; the rest were).
    * Calls to ``send`` may overlap: the lane keeps several batches in flight
      so acknowledgements pipeline. An adapter must put batches on the wire in
      the order their ``send`` calls *began* (take an ``asyncio.Lock`` — FIFO —
      before the first await that writes).
    * ``start`` connects or binds; ``close`` releases everything and is
      idempotent; ``health`` never blocks.
    """

    #: The routing name (``websocket``, ``realtime``).
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Connect or bind. Raises ``AdapterUnavailable`` if it cannot."""

    @abstractmethod
    async def send(self, batch: Sequence[EventRecord]) -> None:
        """Deliver ``batch``; return once acknowledged. See the class doc."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and tasks. Safe to call twice."""

    @abstractmethod
    def health(self) -> AdapterHealth[Mapping[str, object]]:
        """Current state, without I/O."""

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
