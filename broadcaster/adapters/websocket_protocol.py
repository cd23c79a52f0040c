"""What the WebSocket fan-out speaks and keeps per connection: its path,
query parameters (categories, since, access token), close codes, the text
frames it writes, and the record of each subscriber.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.http11 import Request

from ..events import Category, EventRecord
from ..security import GRANTS, Permission, TokenSet

__all__ = [
    "ACCESS_TOKEN_PARAMETER",
    "AHEAD_CLOSE_CODE",
    "EVENTS_PATH",
    "PRUNED_CLOSE_CODE",
    "REPLAY_PAGE",
    "SINCE_PARAMETER",
    "SLOW_CLOSE_CODE",
    "SLOW_CLOSE_REASON",
    "ReplaySource",
    "SubscriberInfo",
    "parse_categories",
    "parse_since",
    "text_frames",
]

#: The one path the fan-out serves.
EVENTS_PATH: Final = "/events"

#: The query parameter that carries a subscriber's token where no header can.
ACCESS_TOKEN_PARAMETER: Final = "access_token"

#: Close code and reason sent to a subscriber that cannot keep up (RFC 6455 1013,
#: "try again later": the client may reconnect and catch up via reconciliation).
SLOW_CLOSE_CODE: Final = CloseCode.TRY_AGAIN_LATER
SLOW_CLOSE_REASON: Final = "subscriber too slow"

#: The query parameter of resume: replay stored events after this sequence id.
SINCE_PARAMETER: Final = "since"

#: Close code when events after ``since`` were pruned: the reason names the
#: oldest sequence id still stored ("Gone", as HTTP 410).
PRUNED_CLOSE_CODE: Final = 4410

#: Close code when ``since`` is beyond every id this store has handed out: the
#: cursor comes from another store (or one that was reset), and resuming from
#: it would silently skip every event up to it.
AHEAD_CLOSE_CODE: Final = 4416

#: Events read from the store per replay page.
REPLAY_PAGE: Final = 1000

# The largest sequence id a store can hold (a signed 64-bit integer).
_MAX_SEQUENCE_ID: Final = 2**63 - 1
_DIGITS: Final = re.compile(r"[0-9]+")

# Subscribers only send control frames (pongs, close); anything bigger is abuse.
_MAX_INCOMING_BYTES: Final = 64 * 1024


def parse_categories(raw: str | None) -> frozenset[Category] | None:
    """Parse a ``categories`` filter value: comma-separated, case-insensitive.

    ``None`` (no filter) returns ``None``, meaning every category. Raises
    :class:`ValueError` naming the offending value for an unknown category or
    an empty list.
    """
    if raw is None:
        return None
    names = [part.strip().upper() for part in raw.split(",") if part.strip()]
    if not names:
        raise ValueError("categories is empty; omit it to receive every category")
    selected: set[Category] = set()
    for name in names:
        try:
            selected.add(Category(name))
        except ValueError:
            raise ValueError(
                f"unknown category {name!r}; expected a comma-separated list of "
                f"{', '.join(Category)}"
            ) from None
    return frozenset(selected)


def parse_since(raw: str) -> int:
    """Parse a ``since`` value: a whole number from 0 to 2**63 - 1, in ASCII
    digits. Raises :class:`ValueError` naming the value otherwise."""
    if not _DIGITS.fullmatch(raw):
        raise ValueError(f"since must be a whole number >= 0 (a sequence id), not {raw!r}")
    value = int(raw)
    if value > _MAX_SEQUENCE_ID:
        raise ValueError(f"since {raw} is larger than any sequence id (at most {_MAX_SEQUENCE_ID})")
    return value


def _request_from_path(path: str) -> tuple[frozenset[Category] | None, int | None]:
    """The category filter and ``since`` of a request path;
    ``ValueError``/``LookupError`` if bad."""
    parts = urlsplit(path)
    if parts.path != EVENTS_PATH:
        raise LookupError(f"no such path {parts.path!r}; the event stream is at {EVENTS_PATH}")
    values: list[str] = []
    since: int | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == ACCESS_TOKEN_PARAMETER:
            continue  # checked by authentication, before the filter
        if name == SINCE_PARAMETER:
            if since is not None:
                raise ValueError("since given more than once")
            since = parse_since(value)
            continue
        if name != "categories":
            # Strict on purpose: a typo such as ?category=CRITICAL must not
            # silently subscribe to every category.
            raise ValueError(
                f"unknown query parameter {name!r}; only 'categories', '{SINCE_PARAMETER}'"
                f" (and '{ACCESS_TOKEN_PARAMETER}') are supported"
            )
        values.append(value)
    return (parse_categories(",".join(values)) if values else None), since


def _describe(categories: frozenset[Category] | None) -> tuple[str, ...] | None:
    return None if categories is None else tuple(sorted(c.value for c in categories))


def _presented_token(request: Request) -> str | None:
    """The token a handshake presents: the ``Authorization: Bearer`` header if
    there is one, else the ``access_token`` query parameter. None when there
    is none, or more than one (which of them would count is ambiguous)."""
    headers = request.headers.get_all("Authorization")
    if headers:
        if len(headers) != 1:
            return None
        scheme, _, value = headers[0].strip().partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None
    values = [
        value
        for name, value in parse_qsl(urlsplit(request.path).query, keep_blank_values=True)
        if name == ACCESS_TOKEN_PARAMETER
    ]
    return (values[0] or None) if len(values) == 1 else None


def _can_subscribe(tokens: TokenSet) -> bool:
    """Whether any token of ``tokens`` has a scope that allows subscribing."""
    return any(
        tokens.first(scope) is not None
        for scope, granted in GRANTS.items()
        if Permission.CONSUME in granted
    )


class ReplaySource(Protocol):
    """Where resume reads history from: what :class:`~broadcaster.store.base.Store`
    offers (see its methods of the same names)."""

    async def read_events(
        self,
        *,
        after: int,
        limit: int,
        categories: Collection[Category] | None = None,
        adapter: str | None = None,
    ) -> list[EventRecord]: ...

    async def first_sequence_id(self) -> int: ...

    async def pruned_through(self) -> int: ...

    async def last_sequence_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SubscriberInfo:
    """A snapshot of one connected subscriber (for health, admin and tests)."""

    remote: str
    categories: tuple[str, ...] | None
    frames_sent: int
    connected_at: float
    #: The name of the token it presented (None when none was required).
    token: str | None = None
    #: The ``since`` it resumed from (None: it did not ask to).
    since: int | None = None
    #: Whether it is still being sent stored events (live ones wait meanwhile).
    replaying: bool = False


class _Subscriber:
    """Per-connection state kept by the adapter."""

    __slots__ = (
        "abort_handle",
        "categories",
        "connected_at",
        "frames_sent",
        "held",
        "held_bytes",
        "remote",
        "seam",
        "since",
        "token",
    )

    def __init__(
        self,
        remote: str,
        categories: frozenset[Category] | None,
        token: str | None,
        since: int | None = None,
    ) -> None:
        self.remote = remote
        self.categories = categories
        self.token = token
        self.frames_sent = 0
        self.connected_at = time.time()
        self.abort_handle: asyncio.TimerHandle | None = None
        self.since = since
        # While replaying: the live records for this connection, sent once
        # the replay has caught up (None: live). Their wire bytes count
        # against max_buffer_bytes like an unsent backlog.
        self.held: list[EventRecord] | None = [] if since is not None else None
        self.held_bytes = 0
        # After replay: the highest sequence id replayed. Ids in (since, seam]
        # were sent from the store; a live copy of one (a backfill, a repair)
        # would be a duplicate for this connection.
        self.seam = 0

    def info(self) -> SubscriberInfo:
        return SubscriberInfo(
            self.remote,
            _describe(self.categories),
            self.frames_sent,
            self.connected_at,
            self.token,
            self.since,
            self.held is not None,
        )

    def replayed(self, sequence_id: int) -> bool:
        """Whether ``sequence_id`` was sent to this connection by its replay."""
        return self.since is not None and self.since < sequence_id <= self.seam


def _remote(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


_HEADER_7: Final = struct.Struct("!BB").pack
_HEADER_16: Final = struct.Struct("!BBH").pack
_HEADER_64: Final = struct.Struct("!BBQ").pack


def text_frames(payloads: Sequence[bytes]) -> tuple[bytes, int]:
    """``payloads`` (UTF-8 text) as consecutive unmasked, final text frames
    (RFC 6455 5.2: what a server sends with no extension), and their count.

    The same bytes as websockets' ``ServerProtocol.send_text`` of each payload
    with compression off (this server never negotiates it), at a fraction of
    the cost; built once per batch and written to every matching connection.
    """
    parts: list[bytes] = []
    for payload in payloads:
        n = len(payload)
        if n < 126:
            parts.append(_HEADER_7(0x81, n))
        elif n < 65536:
            parts.append(_HEADER_16(0x81, 126, n))
        else:
            parts.append(_HEADER_64(0x81, 127, n))
        parts.append(payload)
    return b"".join(parts), len(payloads)
