"""The lifecycle every adapter shares: ``start``, ``send``, ``close``, ``health``.

The broadcaster gives each adapter its own ordered lane (see
:mod:`broadcaster.lanes`), so one adapter's failure or slowness never cancels
or stalls another's send.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from ..events import EventRecord

__all__ = ["Adapter", "AdapterHealth"]


@dataclass(frozen=True, slots=True)
class AdapterHealth:
    """A point-in-time view of an adapter, for ``/health`` and logs."""

    name: str
    connected: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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
    def health(self) -> AdapterHealth:
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
