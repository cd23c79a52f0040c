"""The WebSocket subscriber's URLs: the category filter, the resume cursor
(``?since=``), a token masked for logs, and what a refused handshake says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.exceptions import InvalidStatus

from ..exceptions import AdapterRejected

__all__ = ["ADAPTER", "redact_url", "resume_url", "subscription_url"]

ADAPTER: Final = "websocket"


def subscription_url(url: str, categories: Sequence[str] | None) -> str:
    """``url`` with ``?categories=A,B`` set (upper-cased); unchanged for ``None``.
    Other query parameters (``access_token``) are kept.

    The server validates the names: an unknown one is refused with HTTP 400.
    """
    if not categories:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "categories"]
    selected = ",".join(c.strip().upper() for c in categories)
    query = urlencode([*kept, ("categories", selected)], safe=",")
    return urlunsplit(parts._replace(query=query))


def resume_url(url: str, since: int | None) -> str:
    """``url`` with ``?since=<since>`` set (replacing one it had); without it
    for ``None``. Other query parameters are kept."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "since"]
    if since is not None:
        kept.append(("since", str(since)))
    return urlunsplit(parts._replace(query=urlencode(kept, safe=",")))


def _since_of(url: str) -> int | None:
    """The ``since`` a URL asks for, if any (the server judges its form)."""
    values = [v for k, v in parse_qsl(urlsplit(url).query) if k == "since"]
    return int(values[-1]) if values and values[-1].isascii() and values[-1].isdigit() else None


def redact_url(url: str) -> str:
    """``url`` with the value of an ``access_token`` query parameter masked,
    for logs and messages."""
    parts = urlsplit(url)
    if "access_token" not in parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    shown = [(k, "********" if k == "access_token" else v) for k, v in pairs]
    return urlunsplit(parts._replace(query=urlencode(shown, safe=",*")))


def _rejection(url: str, exc: InvalidStatus) -> AdapterRejected:
    body = bytes(exc.response.body or b"").decode("utf-8", "replace").strip()
    return AdapterRejected(
        ADAPTER, f"{url} refused the subscription: HTTP {exc.response.status_code}: {body}"
    )
