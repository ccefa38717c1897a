"""``POST /predict`` and ``POST /predict/single``: parse, hand to the predictor, encode."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from churn_platform.contract import MODEL_NAME, MODEL_VERSION
from serving import openapi
from serving.deps import PredictorDep, ServedModel
from serving.schemas import BatchRequest, BatchResponse, Customer, Prediction, customers_from_json

router = APIRouter(tags=["predictions"])
_encode = msgspec.json.Encoder().encode


async def _customers(request: Request, model: type[BaseModel]) -> list[dict[str, Any]]:
    """The customers in the raw body; errors go to the same 422 handler as FastAPI's own."""
    try:
        return customers_from_json(await request.body(), model)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def _json(content: Any) -> Response:
    return Response(_encode(content), media_type="application/json")


@router.post("/predict", response_model=BatchResponse, openapi_extra=openapi.body(BatchRequest))
async def predict(request: Request, predictor: PredictorDep, model: ServedModel) -> Response:
    """Score 1 to CHURN_MAX_BATCH_SIZE customers."""
    scored = predictor.predict(await _customers(request, BatchRequest), model)
    return _json({"predictions": scored.predictions, MODEL_VERSION: model.version, MODEL_NAME: model.name})


@router.post("/predict/single", response_model=Prediction, openapi_extra=openapi.body(Customer))
async def predict_single(request: Request, predictor: PredictorDep, model: ServedModel) -> Response:
    """Score one customer."""
    return _json(predictor.predict(await _customers(request, Customer), model).predictions[0])
