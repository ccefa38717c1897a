"""``POST /admin/reload``: swap in the version Production points at now (admin key)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from serving.deps import ADMIN_RESPONSES, AdminKey, HolderDep, KnownQuery
from serving.errors import ShuttingDown
from serving.schemas import Problem

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey, KnownQuery], responses=ADMIN_RESPONSES)
_OUTCOME = {"previous_version": 1, "state": "ready", "message": "serving churn v2", "version": 2, "rollout": "off"}


@router.post("/reload", status_code=202, responses={
    200: {"description": "wait=true: the version Production points at now serves",
          "content": {"application/json": {"example": _OUTCOME}}},
    409: {"description": "wait=true: it could not be loaded or verified; the version before keeps serving",
          "content": {"application/json": {"example": {
              **_OUTCOME, "state": "verification_failed", "version": 1,
              "message": "churn v2: fast scorer differs from sklearn by ..."}}}},
    503: {"model": Problem, "description": "wait=true: the process stopped before the reload finished"},
})  # fmt: skip
async def reload(
    holder: HolderDep, wait: Annotated[bool, Query(description="Wait for the outcome.")] = False
) -> JSONResponse:
    """Load the version Production points at now, verify it, then swap it in."""
    before = holder.current.version if holder.current else None
    if not wait:
        holder.queue_reload()
        return JSONResponse(status_code=202, content={"previous_version": before, "state": "reloading"})
    try:
        # Shielded: one waiter cancelled must not cancel the load the others share.
        attempt = await asyncio.shield(asyncio.wrap_future(holder.queue_reload()))
    except asyncio.CancelledError:
        # uvicorn's graceful shutdown ended first (a registry that hangs): it cancels what still
        # runs and would answer a plain-text 500. The load goes on until the process ends.
        raise ShuttingDown(
            "the API stopped before the reload finished; its outcome is unknown: GET /model on a "
            "running replica, or reload again", detail={"previous_version": before, "state": "shutting_down"},
        ) from None
    # The rollout too: right after `rollout start` this answer is how a script knows the
    # Challenger serves, or why not (its failure never stops Production: still 200).
    return JSONResponse(
        status_code=200 if attempt.state == "ready" else 409,
        content={"previous_version": before, "state": attempt.state, "message": attempt.reason,
                 "version": holder.current.version if holder.current else None, "rollout": holder.rollout_status},
    )  # fmt: skip
