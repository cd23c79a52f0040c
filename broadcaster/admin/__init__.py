"""Admin REST API (SPEC 8) and its embedded uvicorn server."""

from .app import MAX_BATCH, EventIn, collect_stats, create_app, generate_token, parse_tokens
from .server import AdminServer

__all__ = [
    "MAX_BATCH",
    "AdminServer",
    "EventIn",
    "collect_stats",
    "create_app",
    "generate_token",
    "parse_tokens",
]
