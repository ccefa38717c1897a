"""``POST /outcomes``: what customers actually did, from a CRM or billing system (admin key).

The same validation as ``churn-platform outcomes ingest``. By default the request is atomic:
any bad row is a 422 naming each row, field and problem, and nothing is written;
``?strict=false`` writes the good rows and lists the bad ones in a 200 response.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from churn_platform import outcomes
from churn_platform.contract import CHURNED, OBSERVED_AT
from churn_platform.errors import ChurnPlatformError, StorageUnreachable
from churn_platform.schema import ID_COLUMN
from serving.deps import ADMIN_RESPONSES, AdminKey, KnownQuery, SettingsDep
from serving.errors import BadOutcomes, BatchTooLarge, StoreUnavailable
from serving.schemas import UTF8, listed

router = APIRouter(tags=["outcomes"], dependencies=[AdminKey, KnownQuery], responses=ADMIN_RESPONSES)

#: At most this many outcomes per request (a CRM sends them in pages).
MAX_OUTCOMES = 10_000


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str | None, UTF8] = None
    churned: Annotated[bool | int | str | None, UTF8] = Field(None, description="Yes/No, 1/0 or true/false.")
    observed_at: Annotated[str | None, UTF8] = Field(
        None, description="ISO-8601; a time without a zone is UTC; default now."
    )


class OutcomesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"outcomes": [
            {"customer_id": "7590-VHVEG", "churned": "Yes", "observed_at": "2026-11-01T00:00:00Z"}]}]},
    )  # fmt: skip

    outcomes: list[Outcome] = Field(min_length=1, description=f"1 to {MAX_OUTCOMES:,} outcomes.")


class OutcomesResponse(BaseModel):
    rows: int
    written: dict[str, int] | None
    rejected: int
    #: Outcomes sent without observed_at, dated now: sending them again adds them again.
    dated_now: int
    rejects: list[dict]


async def _few_enough_outcomes(request: Request) -> None:
    """413 past the limit before FastAPI validates each outcome (a dependency runs first)."""
    if (count := await listed(request, "outcomes")) > MAX_OUTCOMES:
        raise BatchTooLarge(f"{count:,} outcomes in one request; the limit is {MAX_OUTCOMES:,}")


@router.post("/outcomes", response_model=OutcomesResponse, dependencies=[Depends(_few_enough_outcomes)])
def post_outcomes(
    body: OutcomesRequest,
    settings: SettingsDep,
    strict: Annotated[bool, Query(description="Write nothing when any row is bad (422).")] = True,
) -> dict:
    """Record outcomes. A customer and observed_at already stored takes the new label; within
    one request, two different labels for them are both invalid (the same label twice is one)."""
    frame = pd.DataFrame(
        [{ID_COLUMN: o.customer_id, CHURNED: None if o.churned is None else str(o.churned),
          OBSERVED_AT: o.observed_at} for o in body.outcomes],
        columns=[ID_COLUMN, CHURNED, OBSERVED_AT],
    )  # fmt: skip
    try:
        result = outcomes.ingest(frame, settings.inference_log_url, source="api", strict=strict)
    except StorageUnreachable as exc:
        raise StoreUnavailable(f"outcomes not recorded: {exc}; send them again later") from exc
    except ChurnPlatformError as exc:  # the database refused these values: nothing was written
        raise BadOutcomes(f"outcomes not recorded: {exc}") from exc
    if strict and result.written is None:
        rejects = result.checked.rejects
        raise BadOutcomes(
            f"{len(rejects)} of {result.checked.rows} outcomes are invalid; nothing was written",
            detail=[
                {
                    "loc": ["body", "outcomes", int(r.row) - 1, r.reason.split(":", 1)[0]],
                    "msg": r.reason.split(": ", 1)[-1],
                    "row": int(r.row),
                }
                for r in rejects.itertuples()
            ],  # fmt: skip
        )
    return result.to_json()
