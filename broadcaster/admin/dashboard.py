"""``/dashboard``: the live page over the admin API.

A single HTML page (shipped with the package) that asks for a token, keeps
it in the browser and calls the API (health, stats, flags, rollouts): the
flow from producer to reconciler at a glance. Served with a
Content-Security-Policy that admits only its own inline script and style.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

__all__ = ["add_dashboard_route"]


def add_dashboard_route(app: FastAPI) -> None:
    """Add ``GET /dashboard`` (not in the OpenAPI document) to ``app``."""
    page = resources.files("broadcaster.admin").joinpath("dashboard.html").read_text()
    page_headers = {
        "Content-Security-Policy": _dashboard_csp(page),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        """The live page; it asks for the token and keeps it in the browser."""
        return HTMLResponse(page, headers=page_headers)


_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _dashboard_csp(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script
    and style (by hash) and calls back to this origin, nothing else."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, text in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    scripts = " ".join(hashes["script"]) or "'none'"
    styles = " ".join(hashes["style"]) or "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {scripts}",
            f"style-src {styles}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
