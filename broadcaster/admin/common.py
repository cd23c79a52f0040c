"""What the admin API's route modules share: the authenticated token's name
(the audit's actor), the bound on ids, 422 bodies naming a field, and how an
audit entry reads.

Part of the admin API (docs/rest-api.md), the operators' window on the whole
flow; each resource's routes live in a module of their own.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from ..events import Category, format_timestamp
from ..store.base import AuditEntry
from .guard import token_of

__all__ = ["MAX_ID", "Actor", "audit_dict", "category_of", "unprocessable"]

#: The largest id a store can hold (a signed 64-bit integer): bigger ones in
#: a path or query are 422, not an overflow deeper down.
MAX_ID: Final = 2**63 - 1

# Declared for the OpenAPI document only: AccessGuard checks the token.
_bearer = HTTPBearer(auto_error=False, description="a token of BROADCASTER_ADMIN_TOKEN / _TOKENS")


def _actor(request: Request, _: Annotated[object, Depends(_bearer)]) -> str:
    """The name of the token AccessGuard authenticated (the audit's actor)."""
    return token_of(request.scope).name


#: The authenticated token's name, for handlers that need a token.
Actor = Annotated[str, Depends(_actor)]


def category_of(name: str) -> Category:
    """The category a path names (any case); 404 listing the known ones."""
    try:
        return Category(name.upper())
    except ValueError:
        raise HTTPException(
            404, f"unknown category {name!r}; known: {', '.join(c.value for c in Category)}"
        ) from None


def unprocessable(field: str, message: str) -> JSONResponse:
    """A 422 response naming ``field``."""
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=422)


def audit_dict(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as the API shows it."""
    return {
        "id": entry.id,
        "at": format_timestamp(entry.at_ms),
        "at_ms": entry.at_ms,
        "actor": entry.actor,
        "path": entry.path,
        "before": entry.before,
        "after": entry.after,
    }
