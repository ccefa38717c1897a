"""``POST /outcomes``: what customers actually did, from a CRM or billing system (admin key).

The same validation as ``churn-platform outcomes ingest``. By default the request is atomic:
any bad row is a 422 naming each row, field and problem, and nothing is written;
``?strict=false`` writes the good rows and lists the bad ones in a 200 response.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from churn_platform import outcomes
from churn_platform.contract import CHURNED, OBSERVED_AT
from churn_platform.errors import ChurnPlatformError, StorageUnreachable
from churn_platform.schema import ID_COLUMN
from serving import openapi
from serving.deps import ADMIN_RESPONSES, AdminKey, KnownQuery, SettingsDep
from serving.errors import (
    MAX_ERRORS_LISTED,
    BadOutcomes,
    BatchTooLarge,
    StoreUnavailable,
    invalid_json,
    validation_message,
)
from serving.schemas import MAX_OUTCOMES, Outcome, OutcomesRequest, UnknownFields, listed_in, refuse_unknown

router = APIRouter(tags=["outcomes"], dependencies=[AdminKey, KnownQuery], responses=ADMIN_RESPONSES)


class OutcomesResponse(BaseModel):
    rows: int
    written: dict[str, int] | None
    rejected: int
    #: Outcomes sent without observed_at, dated now: sending them again adds them again.
    dated_now: int
    rejects: list[dict]


_FIELDS, _OUTCOME_FIELDS = frozenset(OutcomesRequest.model_fields), frozenset(Outcome.model_fields)


async def _outcomes(request: Request) -> OutcomesRequest:
    """The body, read once the admin key has passed: FastAPI parses a declared body before
    any dependency runs, so a caller without the key could make the API parse 4 MB, and a
    malformed body without a key was told 422, not 401. 413 past the limit before each
    outcome is validated."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise invalid_json(exc) from None
    if (count := listed_in(parsed, "outcomes")) > MAX_OUTCOMES:
        raise BatchTooLarge(f"{count:,} outcomes in one request; the limit is {MAX_OUTCOMES:,}")
    items = parsed.get("outcomes") if isinstance(parsed, dict) else None
    try:
        refuse_unknown([((), parsed, _FIELDS), *((("outcomes", i), item, _OUTCOME_FIELDS)
                                                 for i, item in enumerate(items if isinstance(items, list) else ()))])
    except UnknownFields as exc:
        raise exc.as_422() from None
    try:
        return OutcomesRequest.model_validate(parsed, from_attributes=True)  # FastAPI's mode: its wording
    except ValidationError as exc:
        errors = _one_per_field(exc.errors(include_url=False))
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


#: The tags pydantic puts after a field for each member of its union (``churned``: bool | int | str).
_UNION_MEMBERS = frozenset({"bool", "int", "str"})


def _one_per_field(errors: list[Any]) -> list[Any]:
    """A ``churned`` of 0.5 was three errors whose ``loc`` ended in ``bool``, ``int`` and ``str``,
    not in the field: one error at the field, saying what a label may be."""
    out, seen = [], set()
    for error in errors:
        loc = tuple(error["loc"])
        if len(loc) > 1 and loc[-1] in _UNION_MEMBERS and loc[-2] == CHURNED:
            if loc[:-1] in seen:
                continue
            seen.add(loc[:-1])
            error = {**error, "loc": loc[:-1], "type": "churned_type",
                     "msg": "Input should be Yes/No, 1/0, true/false or a JSON boolean"}  # fmt: skip
        out.append(error)
    return out


@router.post("/outcomes", response_model=OutcomesResponse, openapi_extra=openapi.body(OutcomesRequest))
async def post_outcomes(
    request: Request,
    settings: SettingsDep,
    strict: Annotated[bool, Query(description="Write nothing when any row is bad (422).")] = True,
) -> dict:
    """Record outcomes. A customer and observed_at already stored takes the new label; within
    one request, two different labels for them are both invalid (the same label twice is one)."""
    body = await _outcomes(request)
    return await run_in_threadpool(_record, body, settings.inference_log_url, strict)


def _record(body: OutcomesRequest, url: str, strict: bool) -> dict:
    """Blocking (the database): run in the thread pool."""
    frame = pd.DataFrame(
        [{ID_COLUMN: o.customer_id, CHURNED: None if o.churned is None else str(o.churned),
          OBSERVED_AT: o.observed_at} for o in body.outcomes],
        columns=[ID_COLUMN, CHURNED, OBSERVED_AT],
    )  # fmt: skip
    try:
        result = outcomes.ingest(frame, url, source="api", strict=strict)
    except StorageUnreachable as exc:
        raise StoreUnavailable(f"outcomes not recorded: {exc}; send them again later") from exc
    except ChurnPlatformError as exc:  # the database refused these values: nothing was written
        raise BadOutcomes(f"outcomes not recorded: {exc}") from exc
    if strict and result.written is None:
        rejects = result.checked.rejects
        # As every 422: the first hundred listed, the first five named (10,000 bad rows answered 1 MB).
        listed = [
            {
                "loc": ["body", "outcomes", int(r.row) - 1, r.reason.split(":", 1)[0]],
                "msg": r.reason.split(": ", 1)[-1],
                "row": int(r.row),
            }
            for r in rejects.head(MAX_ERRORS_LISTED).itertuples()
        ]  # fmt: skip
        raise BadOutcomes(f"{len(rejects)} of {result.checked.rows} outcomes are invalid; nothing was written: "
                          f"{validation_message(listed, len(rejects))}", detail=listed)  # fmt: skip
    return result.to_json()
