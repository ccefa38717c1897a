"""``POST /predict`` and ``POST /predict/single``: parse, hand to the predictor, encode;
``POST /predict/by-id`` and ``GET /predict/{customer_id}``: the same with the features read
from the feature store's online store."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ValidationError

from churn_platform import tracing
from churn_platform.contract import FEATURES_AS_OF, MODEL_NAME, MODEL_VERSION
from churn_platform.schema import FEATURE_NAMES
from serving import openapi
from serving.deps import FeaturesDep, KnownQuery, PredictorDep, ServedModel, SettingsDep
from serving.errors import (
    MAX_ERRORS_LISTED,
    BatchTooLarge,
    CountedValidationError,
    CrossSiteRequest,
    UnknownCustomer,
    invalid_json,
)
from serving.schemas import (
    ID_DESCRIPTION,
    BatchRequest,
    BatchResponse,
    ByIdRequest,
    ByIdResponse,
    Customer,
    CustomerId,
    Prediction,
    Problem,
    Record,
    TooManyCustomers,
    UnknownFields,
    customers_from_json,
    listed_in,
    parsed,
    refuse_unknown,
    schema_problem,
)

router = APIRouter(
    tags=["predictions"],
    dependencies=[KnownQuery],
    responses={409: {"model": Problem, "description": "explain=true, but the served version cannot explain"}},
)
_encode = msgspec.json.Encoder().encode

Explain = Annotated[
    bool, Query(description="Add an `explanation` to each prediction: why the customer got their score.")
]
TopK = Annotated[
    int,
    Query(ge=1, le=len(FEATURE_NAMES),
          description="How many of the largest contributions each explanation lists (with explain=true)."),
]  # fmt: skip


async def _explanation(request: Request, explain: Explain = False, top_k: TopK = 5) -> int | None:
    """How many contributions each prediction's explanation lists; None: no explanation. A
    ``top_k`` without ``explain`` was ignored, a 200 without what was asked for (the batch CLI
    refuses ``--top-k`` without ``--explain`` too). Async: a plain function would run in the
    thread pool, a hop on every prediction's hot path."""
    if not explain and "top_k" in request.query_params:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "top_k"), "input": top_k,
                                       "msg": "top_k goes with explain=true: without it nothing is explained"}])
    return top_k if explain else None


Explanation = Annotated[int | None, Depends(_explanation)]


async def _customers(request: Request, model: type[BaseModel], max_customers: int | None = None) -> list[Record]:
    """The customers in the raw body; errors go to the same 422 handler as FastAPI's own."""
    try:
        body = await request.body()
        # A byte-order mark (PowerShell, Notepad) is no JSON, but /predict/by-id and /outcomes
        # (Python's parser) skip it: the same body was a 422 here only.
        body = body.removeprefix(b"\xef\xbb\xbf")
        if body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body[:4]:
            body = _as_utf8(body)
        with tracing.span("decode", {"http.request.body.size": len(body)}):
            return customers_from_json(body, model, max_customers)
    except TooManyCustomers as exc:
        raise BatchTooLarge(f"{exc.count} customers in one request; the limit is {max_customers}") from None
    except UnknownFields as exc:
        raise exc.as_422() from None
    except ValidationError as exc:
        errors = exc.errors(include_url=False)[:MAX_ERRORS_LISTED]
        raise CountedValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors], exc.error_count()) from None


def _as_utf8(body: bytes) -> bytes:
    """A UTF-16 or UTF-32 body (PowerShell 5 writes UTF-16) in UTF-8: /outcomes and
    /predict/by-id (Python's parser, which detects them as RFC 8259 says) took it, here it was
    a 422 "expected value at line 1 column 1"."""
    try:
        return body.decode(json.detect_encoding(body)).encode()
    except UnicodeError as exc:
        raise invalid_json(exc) from None


def _json(content: Any) -> Response:
    with tracing.span("encode"):
        return Response(_encode(content), media_type="application/json")


@router.post("/predict", response_model=BatchResponse, openapi_extra=openapi.body(BatchRequest))
async def predict(request: Request, predictor: PredictorDep, model: ServedModel, top_k: Explanation) -> Response:
    """Score 1 to CHURN_MAX_BATCH_SIZE customers."""
    customers = await _customers(request, BatchRequest, predictor.max_batch_size)
    scored = predictor.predict(customers, model, top_k=top_k)
    return _json({"predictions": scored.predictions, MODEL_VERSION: model.version, MODEL_NAME: model.name})


@router.post("/predict/single", response_model=Prediction, openapi_extra=openapi.body(Customer))
async def predict_single(request: Request, predictor: PredictorDep, model: ServedModel, top_k: Explanation) -> Response:
    """Score one customer."""
    customers = await _customers(request, Customer)
    return _json(predictor.predict(customers, model, top_k=top_k).predictions[0])


_UNKNOWN = "unknown customer id: the online store holds no features for it"
#: The POST routes beside ``/predict/{customer_id}``.
_POST_ROUTES = ("single", "by-id")
ById = {404: {"model": Problem, "description": "No feature store is set up here (the message says how to set one up)"},
        503: {"model": Problem, "description": "The feature store is opening, or cannot be read now"}}


def _stale(as_of: float, max_age_days: float, now: float) -> str | None:
    """Why a customer's features are too old to score (``CHURN_FEATURES_MAX_AGE_DAYS``): one
    dropped from the daily export keeps its last snapshot online for good."""
    if not max_age_days or now - as_of <= max_age_days * 86_400:
        return None
    return (f"its latest snapshot is from {_when(as_of)}, older than CHURN_FEATURES_MAX_AGE_DAYS "
            f"({max_age_days:g} days): ingest a fresh one and materialize (`churn-platform features refresh`)")


def _when(as_of: float) -> str:
    return f"{datetime.fromtimestamp(as_of, UTC):%Y-%m-%dT%H:%M:%SZ}"


def _incomplete(found: dict[str, Any]) -> str | None:
    """Why a stored customer cannot be scored: features the online store has no value for
    (a feature added since its last snapshot), which /predict would refuse with a 422."""
    if None not in found.values():  # one C-level scan: the common case costs nothing
        return None
    missing = [name for name in FEATURE_NAMES if found.get(name) is None]
    return (f"the online store holds no value of {missing} for it: ingest a fresh snapshot and materialize "
            "(`churn-platform features refresh`)")  # fmt: skip


def _refused(found: dict[str, Any]) -> str | None:
    """Why a stored customer's features cannot be scored: a value the schema refuses (one an
    earlier release ingested), which /predict would answer with a 422; scored, an unknown
    category counted as none of them."""
    if (problem := schema_problem(found)) is None:
        return None
    return (f"the online store holds a value the schema refuses for it ({problem[:200]}): ingest a fresh snapshot "
            "and materialize (`churn-platform features refresh`)")  # fmt: skip


async def _few_enough_ids(request: Request, predictor: PredictorDep) -> None:
    """413 past the batch limit, and a 422 past ``MAX_ERRORS_LISTED`` unknown fields, before
    FastAPI validates the body (a dependency runs first)."""
    body = await parsed(request)
    if (count := listed_in(body, "customer_ids")) > predictor.max_batch_size:
        raise BatchTooLarge(f"{count} customer ids in one request; the limit is {predictor.max_batch_size}")
    try:
        refuse_unknown([((), body, _BY_ID_FIELDS)])
    except UnknownFields as exc:
        raise exc.as_422() from None


_BY_ID_FIELDS = frozenset(ByIdRequest.model_fields)


@router.post("/predict/by-id", response_model=ByIdResponse, responses=ById, dependencies=[Depends(_few_enough_ids)])
async def predict_by_id(
    body: ByIdRequest, predictor: PredictorDep, model: ServedModel, features: FeaturesDep, top_k: Explanation,
) -> Response:  # fmt: skip
    """Score 1 to CHURN_MAX_BATCH_SIZE customers by id, with their latest features from the
    online store; an id it does not hold gets an entry in `errors` instead."""
    ids = body.customer_ids
    if top_k is not None:
        predictor.check_explainable(model)  # even when no id is found
    found = await features.lookup(ids)
    customers, places, errors, as_of = [], [], [], []
    max_age, now = features.settings.features_max_age_days, time.time()
    for place, (customer_id, features_of) in enumerate(zip(ids, found, strict=True)):
        if features_of is None:
            why = _UNKNOWN
        else:
            at = features_of.pop(FEATURES_AS_OF)
            why = _incomplete(features_of) or _refused(features_of) or _stale(at, max_age, now)
        if why is None:
            customers.append(features_of)
            places.append(place)
            as_of.append(_when(at))
        else:
            errors.append({"customer_id": customer_id, "message": why})
    scored = []
    if customers:  # logged under their places among the ids sent, as /predict logs a place in its batch
        answer = predictor.predict(customers, model, top_k=top_k, places=places)
        scored = [{**prediction, FEATURES_AS_OF: at} for prediction, at in zip(answer.predictions, as_of, strict=True)]
    return _json({"predictions": scored, "errors": errors, MODEL_VERSION: model.version, MODEL_NAME: model.name})


async def _post_only() -> None:
    raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})


# Before the route below, which a GET on them would match: a wrong method, not an unknown
# customer 'single', nor a 503 while no model is served (that route needs one first).
for _route in _POST_ROUTES:
    router.add_api_route(f"/predict/{_route}", _post_only, methods=["GET"], include_in_schema=False)


async def _without_slash(request: Request) -> RedirectResponse:
    """A POST to ``/predict/`` met the route below first (405, Allow: GET), before Starlette could
    redirect it as it redirects any other trailing slash: redirected here (307 keeps the method
    and the body)."""
    return RedirectResponse(request.url.replace(path=request.url.path.rstrip("/")), status_code=307)


for _route in ("", *(f"{r}/" for r in _POST_ROUTES)):
    router.add_api_route(f"/predict/{_route}", _without_slash, methods=["POST"], include_in_schema=False)


_BY_PATH_404 = ("Unknown customer id, a feature without a value or with one the schema refuses, a snapshot older "
                "than CHURN_FEATURES_MAX_AGE_DAYS, or no feature store set up here (the message says which)")


async def _same_site(request: Request, settings: SettingsDep) -> None:
    """A page of another site made any visitor's browser score and log customers: an
    ``<img src=".../predict/ID">`` or a prefetch is a GET without a CORS preflight, and each
    added a row that monitoring and the performance job read (a cross-site POST needs a
    preflight, or is a 415). Browsers say where a request comes from (Fetch Metadata); a
    link a person follows passes, and a script of an origin in ``CHURN_CORS_ORIGINS``, as do
    curl and services, which send no such header."""
    if request.headers.get("sec-fetch-site") != "cross-site":
        return
    # A person following a link (a wiki's, a CRM's) to look one customer up: a page cannot
    # make a browser do that unseen.
    if request.headers.get("sec-fetch-mode") == "navigate" and request.headers.get("sec-fetch-user") == "?1":
        return
    allowed = settings.cors_origins
    if request.headers.get("sec-fetch-mode") == "cors" and ("*" in allowed or request.headers.get("origin") in allowed):
        return
    raise CrossSiteRequest("a page of another site asked for a prediction (Sec-Fetch-Site: cross-site): refused, "
                           "as it would be logged; allow a page's origin with CHURN_CORS_ORIGINS")  # fmt: skip


# `:path`: an id the store holds may contain a slash (sent as is, or as %2F).
@router.get("/predict/{customer_id:path}", response_model=Prediction, dependencies=[Depends(_same_site)],
            responses={**ById, 403: {"model": Problem, "description": "A cross-site browser request"},
                       404: {"model": Problem, "description": _BY_PATH_404}})  # fmt: skip
async def predict_by_path(
    customer_id: Annotated[CustomerId, Path(description=ID_DESCRIPTION)],
    predictor: PredictorDep, model: ServedModel, features: FeaturesDep, top_k: Explanation,
) -> Response:  # fmt: skip
    """Score one customer by id, with their latest features from the online store."""
    if top_k is not None:
        predictor.check_explainable(model)  # whatever the id, as on /predict/by-id
    (found,) = await features.lookup([customer_id])
    if found is None:
        raise UnknownCustomer(f"{_UNKNOWN}: {customer_id!r}")
    at = found.pop(FEATURES_AS_OF)
    why = _incomplete(found) or _refused(found) or _stale(at, features.settings.features_max_age_days, time.time())
    if why is not None:
        raise UnknownCustomer(f"{customer_id!r}: {why}")
    return _json({**predictor.predict([found], model, top_k=top_k).predictions[0],
                  FEATURES_AS_OF: _when(at)})  # fmt: skip
