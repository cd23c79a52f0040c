"""Admin REST API (docs/rest-api.md) and its embedded uvicorn server."""

from .app import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_BATCH,
    EventIn,
    collect_stats,
    create_app,
    generate_token,
)
from .server import AdminServer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BATCH",
    "AdminServer",
    "EventIn",
    "collect_stats",
    "create_app",
    "generate_token",
]
