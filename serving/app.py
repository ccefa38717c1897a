"""The prediction API: a thin FastAPI layer over the model holder and the inference log.

No `from __future__ import annotations` here: FastAPI must see the dependency aliases
defined inside `create_app` as real objects, not strings.
"""

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churn_platform import registry
from churn_platform.loading import LoadedModel
from churn_platform.schema import FEATURE_NAMES, ID_COLUMN
from churn_platform.settings import Settings, get_settings
from serving.holder import ModelHolder
from serving.inference_log import InferenceLog
from serving.metrics import Metrics
from serving.schemas import BatchRequest, BatchResponse, Customer, Prediction, Problem, customers_from_json

log = logging.getLogger(__name__)


def _problem(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"message": message, "detail": detail if detail is not None else message}
    )


class BodyLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = _problem(413, f"request body is larger than {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big(scope, receive, send)
        seen, exceeded = 0, False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # hand the app an empty end of body and answer 413 ourselves
                exceeded = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: Message) -> None:
            if not exceeded:
                await send(message)

        await self.app(scope, limited, guarded)
        if exceeded:
            await too_big(scope, receive, send)


class RequestMetrics:
    """Count requests and time them per route template (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing connects until it starts (lifespan)."""
    settings = settings or get_settings()
    metrics = Metrics()
    holder = ModelHolder(
        settings,
        on_loaded=lambda m: (
            metrics.set_model(m.name, m.version, m.scorer_kind),
            metrics.reloads.labels("loaded").inc(),
        ),
        on_failed=lambda a: metrics.reloads.labels(a.state).inc(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inference_log = InferenceLog(
            settings.inference_log_url,
            batch_rows=settings.inference_log_batch_rows,
            flush_s=settings.inference_log_flush_s,
            queue_rows=settings.inference_log_queue_rows,
            on_written=metrics.log_written.inc,
            on_dropped=metrics.log_dropped.inc,
        )
        inference_log.start()
        app.state.inference_log = inference_log
        holder.start()
        yield
        holder.stop()
        inference_log.close()
        log.info(
            "inference log flushed: %d rows written, %d dropped", inference_log.written, inference_log.dropped
        )

    app = FastAPI(
        title="churn-platform prediction API",
        version="1",
        description="Churn probabilities from the registry's `Production` model version.",
        lifespan=lifespan,
        responses={413: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
    )
    app.state.settings, app.state.holder, app.state.metrics = settings, holder, metrics
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return _problem(422, _validation_message(errors), errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _problem(500, "internal error; see the server log")

    def serving_model() -> LoadedModel:
        model = holder.current
        if model is None:
            raise HTTPException(503, f"no model is being served yet: {holder.last.reason}")
        return model

    ServingModel = Annotated[LoadedModel, Depends(serving_model)]

    def require_admin(
        x_api_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        expected = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
        if not expected:
            raise HTTPException(403, "admin endpoints are disabled: set CHURN_ADMIN_API_KEY")
        given = x_api_key or (
            authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        )
        if not given:
            raise HTTPException(401, "missing API key: send it in the X-API-Key header")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(403, "wrong API key")

    medium_from, high_from = settings.risk_medium_from, settings.risk_high_from
    bands = ("low", "medium", "high")

    def score(model: LoadedModel, records: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
        probabilities = np.clip(model.scorer.score(records), 0.0, 1.0)
        band_index = np.searchsorted([medium_from, high_from], probabilities, side="right")
        for index, count in zip(*np.unique(band_index, return_counts=True), strict=True):
            metrics.predictions.labels(bands[index]).inc(int(count))
        metrics.rows_scored.inc(len(records))
        request.app.state.inference_log.append(
            uuid.uuid4().hex, model.name, model.version, records, probabilities
        )
        threshold, version = model.decision_threshold, model.version
        return [
            {"customer_id": r.get(ID_COLUMN), "churn_probability": p, "will_churn": p >= threshold,
             "risk": bands[b], "model_version": version}
            for r, p, b in zip(records, probabilities.tolist(), band_index.tolist(), strict=True)
        ]  # fmt: skip

    async def parse(request: Request, model: type[BaseModel]) -> list[dict[str, Any]]:
        """The customers in the raw body, validated without FastAPI's dict round trip (several
        times faster for large batches); errors go to the same 422 handler."""
        try:
            return customers_from_json(await request.body(), model)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None

    def body_schema(model: type[BaseModel]) -> dict[str, Any]:
        return {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                },
            }
        }

    @app.get("/", tags=["service"])
    def root() -> dict[str, Any]:
        model = holder.current
        return {
            "service": "churn-platform prediction API",
            "model": settings.model_name,
            "model_version": model.version if model else None,
            "links": {k: f"/{k}" for k in ("health", "ready", "model", "metrics", "docs", "predict")},
        }

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], responses={503: {"model": Problem}})
    def ready() -> Any:
        """Readiness: 200 only when a verified model serves."""
        model = holder.current
        if model is None:
            return JSONResponse(
                status_code=503,
                content={
                    "status": holder.last.state,
                    "message": holder.last.reason,
                    "detail": holder.last.reason,
                },
            )
        return {"status": "ready", "model": model.name, "version": model.version}

    @app.post(
        "/predict",
        response_model=BatchResponse,
        tags=["predictions"],
        openapi_extra=body_schema(BatchRequest),
    )
    async def predict(request: Request, model: ServingModel) -> Response:
        """Score 1 to CHURN_MAX_BATCH_SIZE customers."""
        customers = await parse(request, BatchRequest)
        if len(customers) > settings.max_batch_size:
            raise HTTPException(
                413, f"{len(customers)} customers in one request; the limit is {settings.max_batch_size}"
            )
        predictions = score(model, customers, request)
        content = {"predictions": predictions, "model_version": model.version, "model_name": model.name}
        return Response(msgspec.json.encode(content), media_type="application/json")

    @app.post(
        "/predict/single",
        response_model=Prediction,
        tags=["predictions"],
        openapi_extra=body_schema(Customer),
    )
    async def predict_single(request: Request, model: ServingModel) -> Response:
        """Score one customer."""
        customers = await parse(request, Customer)
        return Response(msgspec.json.encode(score(model, customers, request)[0]), media_type="application/json")

    @app.get("/model", tags=["service"])
    def model_info() -> dict[str, Any]:
        """What is served, where it came from, and how the latest (re)load went."""
        model = holder.current
        last = {"state": holder.last.state, "reason": holder.last.reason, "at": holder.last.at}
        if model is None:
            return {"model": settings.model_name, "version": None, "last_load": last}
        return {
            "model": model.name,
            "version": model.version,
            "alias": registry.PRODUCTION_ALIAS,
            "run_id": model.run_id,
            "loaded_at": model.loaded_at,
            "scorer": model.scorer_kind,
            "verified": {"rows": model.verified_rows, "max_abs_difference": model.max_abs_difference},
            "decision_threshold": model.decision_threshold,
            "risk_bands": {"medium_from": settings.risk_medium_from, "high_from": settings.risk_high_from},
            "input_schema": model.input_schema or [{"name": n} for n in FEATURE_NAMES],
            "metrics": model.metrics,
            "last_load": last,
        }

    @app.get("/metrics", tags=["service"], response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(require_admin)], status_code=202)
    def reload(wait: Annotated[bool, Query(description="Wait for the outcome.")] = False) -> JSONResponse:
        """Load the version Production points at now, verify it, then swap it in."""
        before = holder.current.version if holder.current else None
        if wait:
            attempt = holder.load_production()
            status = 200 if attempt.state == "ready" else 409
            return JSONResponse(
                status_code=status,
                content={"previous_version": before, "state": attempt.state, "message": attempt.reason,
                         "version": holder.current.version if holder.current else None},
            )  # fmt: skip
        holder.reload_in_background()
        return JSONResponse(status_code=202, content={"previous_version": before, "state": "reloading"})

    def openapi() -> dict[str, Any]:
        # The request bodies are validated from raw JSON, so list their schemas ourselves.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _, defs = models_json_schema(
                [(BatchRequest, "validation"), (Customer, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
