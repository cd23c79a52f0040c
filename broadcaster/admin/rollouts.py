"""``/rollouts``: progressive rollouts (docs/rollouts.md) over the admin API.

``POST /rollouts`` starts one (scope ``operator``); ``GET /rollouts`` and
``GET /rollouts/{id}`` show them (``read``); ``POST
/rollouts/{id}/pause|resume|abort`` are an operator's moves. A second
rollout of a category that has one running or paused, or a move its state
does not allow, is 409 naming the rollout; an unknown id 404; a plan the
service cannot run 422 naming the field. Routes of the app's own router
(the access guard finds them by name).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from ..events import Category
from ..exceptions import RolloutConflict
from ..rollout.manager import Rollouts
from ..rollout.plan import MAX_STEPS, Gates, steps_problem
from ..rollout.view import describe
from ..store.base import RolloutRow
from .guard import token_of

__all__ = ["GatesIn", "RolloutIn", "add_rollout_routes", "conflict"]

_MAX_ID: Final = 2**63 - 1
#: The longest hold a step may ask for: a week.
MAX_HOLD_S: Final = 7 * 24 * 3600.0

# Declared for the OpenAPI document only: AccessGuard checks the token.
_bearer = HTTPBearer(auto_error=False, description="a token of BROADCASTER_ADMIN_TOKEN / _TOKENS")


class GatesIn(BaseModel):
    """A rollout's health gates: a value above its bound fails the gate."""

    model_config = ConfigDict(extra="forbid")

    #: Mismatched ÷ judged events of the stage on the new adapter.
    max_mismatch_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    #: Events of the stage missing on the new adapter.
    max_missing: int = Field(default=0, ge=0, le=_MAX_ID, strict=True)
    #: Times the new adapter's breaker opened during the stage.
    max_breaker_trips: int = Field(default=0, ge=0, le=_MAX_ID, strict=True)
    #: Publish-to-receive p99 on the new adapter, as its probe sees it
    #: (null: not gated).
    max_realtime_p99_ms: int | None = Field(default=None, ge=1, le=3_600_000, strict=True)

    def gates(self) -> Gates:
        return Gates(
            self.max_mismatch_rate,
            self.max_missing,
            self.max_breaker_trips,
            self.max_realtime_p99_ms,
        )


class RolloutIn(BaseModel):
    """Body of ``POST /rollouts``."""

    model_config = ConfigDict(extra="forbid")

    category: Category
    #: Percentages of the category dual-written to the new adapter, rising.
    steps: list[Annotated[int, Field(strict=True)]] = Field(min_length=1, max_length=MAX_STEPS)
    #: How long each step must hold clean before the next.
    hold_s: float = Field(default=600.0, ge=0, le=MAX_HOLD_S, allow_inf_nan=False)
    gates: GatesIn = Field(default_factory=GatesIn)
    #: After the last step (100) holds clean: the category on the new adapter only.
    cutover: StrictBool = False

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: list[int]) -> list[int]:
        problem = steps_problem(steps, cutover=False)
        if problem is not None:
            raise ValueError(problem)
        return steps

    @field_validator("cutover")
    @classmethod
    def _after_all(cls, cutover: bool, info: ValidationInfo) -> bool:
        steps = info.data.get("steps")
        if cutover and steps is not None and steps[-1] != 100:
            raise ValueError("a cutover needs a last step of 100")
        return cutover


def conflict(exc: RolloutConflict) -> JSONResponse:
    """409 for a rollout move the stored state does not allow."""
    return JSONResponse({"detail": str(exc), "rollout_id": exc.rollout_id}, status_code=409)


def _rollouts(request: Request) -> Rollouts:
    rollouts: Rollouts = request.app.state.rollouts
    return rollouts


def _actor(request: Request, _: Annotated[object, Depends(_bearer)]) -> str:
    return token_of(request.scope).name


Actor = Annotated[str, Depends(_actor)]
RolloutId = Annotated[int, Path(ge=1, le=_MAX_ID)]


async def list_rollouts(
    request: Request,
    actor: Actor,
    category: Annotated[Category | None, Query(description="only this category's")] = None,
) -> dict[str, Any]:
    """Every rollout, oldest first (``category``: only that category's), each
    as ``GET /rollouts/{id}`` shows it."""
    rows = await _rollouts(request).all()
    return {
        "rollouts": [
            describe(row) for row in rows if category is None or row.category == category.value
        ]
    }


async def start_rollout(request: Request, actor: Actor, body: Annotated[RolloutIn, Body()]) -> Any:
    """Start a rollout: the category's new-adapter percentage goes to the
    first step now (an audited change, actor ``rollout:<id>``), and on to
    the next each time the step holds clean for ``hold_s``; a failing gate
    rolls it back. 409 when the category has a rollout running or paused."""
    try:
        row = await _rollouts(request).start(
            body.category,
            tuple(body.steps),
            hold_s=body.hold_s,
            gates=body.gates.gates(),
            cutover=body.cutover,
            by=actor,
        )
    except RolloutConflict as exc:
        return conflict(exc)
    except ValueError as exc:
        return JSONResponse(
            {"detail": [{"field": "category", "message": str(exc)}]}, status_code=422
        )
    return JSONResponse(describe(row), status_code=201)


async def get_rollout(request: Request, actor: Actor, rollout_id: RolloutId) -> dict[str, Any]:
    """One rollout: its plan, ``state`` (running, paused, rolled_back,
    aborted, completed), the current ``step`` and its ``percentage``, the
    ``reason`` for its last move, what it waits for (``note``), the hold
    left, and its timeline of moves."""
    row = await _rollouts(request).get(rollout_id)
    if row is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    # Plain: a RolloutView annotation would add its schema to the OpenAPI document.
    return dict(describe(row))


async def _move(
    request: Request,
    rollout_id: int,
    move: Callable[[Rollouts], Callable[..., Awaitable[RolloutRow]]],
    actor: str,
) -> Any:
    try:
        row = await move(_rollouts(request))(rollout_id, by=actor)
    except LookupError:
        raise HTTPException(404, f"no rollout {rollout_id}") from None
    except RolloutConflict as exc:
        return conflict(exc)
    return describe(row)


async def pause_rollout(request: Request, actor: Actor, rollout_id: RolloutId) -> Any:
    """Hold a running rollout at its step (its hold stops counting, its
    gates are not judged) until it is resumed. 409 unless it is running."""
    return await _move(request, rollout_id, lambda r: r.pause, actor)


async def resume_rollout(request: Request, actor: Actor, rollout_id: RolloutId) -> Any:
    """Let a paused rollout run on from its step, with the hold it had. 409
    unless it is paused."""
    return await _move(request, rollout_id, lambda r: r.resume, actor)


async def abort_rollout(request: Request, actor: Actor, rollout_id: RolloutId) -> Any:
    """End a running or paused rollout and restore the category's flags
    from before it began (audited as ``rollout:<id>``). 409 otherwise."""
    return await _move(request, rollout_id, lambda r: r.abort, actor)


def add_rollout_routes(app: FastAPI, rollouts: Rollouts) -> None:
    """Add the ``/rollouts`` routes to ``app`` over ``rollouts``."""
    app.state.rollouts = rollouts
    app.add_api_route("/rollouts", list_rollouts, methods=["GET"], tags=["rollouts"])
    app.add_api_route(
        "/rollouts", start_rollout, methods=["POST"], status_code=201, tags=["rollouts"]
    )
    app.add_api_route("/rollouts/{rollout_id}", get_rollout, methods=["GET"], tags=["rollouts"])
    for handler, verb in (
        (pause_rollout, "pause"),
        (resume_rollout, "resume"),
        (abort_rollout, "abort"),
    ):
        app.add_api_route(
            f"/rollouts/{{rollout_id}}/{verb}", handler, methods=["POST"], tags=["rollouts"]
        )
