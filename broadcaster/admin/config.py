"""``/config`` and ``/audit``: the effective configuration, the runtime
routing flags an operator changes, and the audit of those changes.

The flags decide where the producer's events go (which adapters' lanes, at
what share); a change takes effect for the next published event, is
persisted in the store and audited with the token's name.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Query
from pydantic import ValidationError

from ..core import Broadcaster
from ..exceptions import RolloutConflict
from ..flags import CategoryPatch, OverrideChange
from ..rollout.manager import Rollouts
from .common import MAX_ID, Actor, audit_dict, category_of, unprocessable
from .rollouts import conflict

__all__ = ["add_config_routes"]


def add_config_routes(app: FastAPI, b: Broadcaster, rollouts: Rollouts) -> None:
    """Add ``GET /config``, ``PATCH /config/categories/{category}``,
    ``PUT /config/override`` and ``GET /audit`` to ``app``; a category under
    one of ``rollouts`` is not changed by hand."""

    @app.get("/config")
    async def get_config(actor: Actor) -> dict[str, Any]:
        """The effective configuration: settings (secrets masked) with the
        runtime flags in force."""
        flags = b.flags.snapshot()
        data = b.settings.effective()
        data["dual_write_global_override"] = flags["override"]
        for cat, values in flags["categories"].items():
            data["categories"][cat].update(values)
        return {"settings": data, "flags": flags}

    @app.patch("/config/categories/{category}")
    async def patch_category(
        actor: Actor,
        category: Annotated[str, Path(description="CRITICAL, PERFORMANCE, …")],
        patch: Annotated[CategoryPatch, Body()],
    ) -> Any:
        """Change a category's ``enabled``, ``percentage``, ``adapters`` and/or
        ``cutover`` (its adapters other than the primary only: needs it
        enabled at 100). Takes effect for the next published event; audited.
        409 while a rollout of the category is running or paused: it owns
        the category's flags until it ends."""
        cat = category_of(category)
        active = await rollouts.active_for(cat)
        if active is not None:
            return conflict(
                RolloutConflict(
                    f"{cat.value} is under rollout {active.id} ({active.state}): abort it, or let"
                    " it end, before changing its flags by hand",
                    rollout_id=active.id,
                )
            )
        try:
            entry = await b.flags.patch_category(
                cat, patch, actor=actor, path=f"PATCH /config/categories/{cat.value}"
            )
        except ValidationError as exc:
            errors = exc.errors()
            # A check of the category as a whole is the cutover's.
            field = ".".join(str(p) for p in errors[0]["loc"]) or "cutover"
            return unprocessable(field, errors[0]["msg"])
        except ValueError as exc:
            return unprocessable("cutover", str(exc))
        return {"category": cat.value, "flags": b.flags.category(cat), "audit": audit_dict(entry)}

    @app.put("/config/override")
    async def put_override(
        actor: Actor, change: Annotated[OverrideChange, Body()]
    ) -> dict[str, Any]:
        """Set the global override: one adapter, ``"all"``, or null to clear."""
        entry = await b.flags.set_override(change, actor=actor, path="PUT /config/override")
        return {"override": change.override, "audit": audit_dict(entry)}

    @app.get("/audit")
    async def audit(
        actor: Actor,
        after: Annotated[
            int, Query(ge=0, le=MAX_ID, description="return entries with id > after")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Configuration changes, oldest first; page with ``after=<next>``."""
        entries = await b.store.audit_log(after=after, limit=limit)
        return {
            "entries": [audit_dict(e) for e in entries],
            "next": entries[-1].id if len(entries) == limit else None,
        }
