"""The prediction API: wiring only. Routes live in ``serving/routes``, the work in
``serving/predictor.py``, errors and their statuses in ``serving/errors.py``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from churn_platform import logs, tracing
from churn_platform.settings import Settings, get_settings
from serving import openapi
from serving.errors import EXCEPTION_HANDLERS
from serving.features import FeatureSource
from serving.holder import ModelHolder
from serving.inference_log import InferenceLog
from serving.metrics import Metrics
from serving.middleware import BodyLimit, JsonOnly, RequestMetrics, ServerErrors
from serving.predictor import Predictor
from serving.routes import admin, outcomes, predictions, service
from serving.schemas import Problem

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start an inference-log writer and the model loader; on shutdown, flush and stop.

    Each start of the app gets its own log (a writer process cannot be restarted).
    """
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    inference_log = InferenceLog(
        settings.inference_log_url,
        spool_dir=Path(settings.inference_log_spool_dir),
        spool_max_bytes=settings.inference_log_spool_max_bytes,
        batch_rows=settings.inference_log_batch_rows,
        flush_s=settings.inference_log_flush_s,
        queue_rows=settings.inference_log_queue_rows,
        log_format=settings.log_format,
        listener=metrics,
    )
    inference_log.start()
    app.state.inference_log = inference_log
    app.state.predictor = Predictor(settings, app.state.holder, inference_log, metrics)
    app.state.features = FeatureSource(settings)
    app.state.holder.start()
    app.state.features.start()
    yield
    app.state.holder.stop()
    try:
        await app.state.features.aclose()
    finally:  # the log's rows matter more than the feature store's connections
        inference_log.close()
        log.info("inference log closed: %s", inference_log.state())
        tracing.shutdown()  # sends the spans still batched
        metrics.process_ended()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing connects until it starts (lifespan)."""
    settings = settings or get_settings()
    logs.configure(log_format=settings.log_format)  # uvicorn's worker processes start unconfigured
    if not tracing.enabled():
        tracing.setup("churn-api")  # only when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set
    metrics = Metrics()
    app = FastAPI(
        title="churn-platform prediction API",
        version="1",
        description="Churn probabilities from the registry's `Production` model version.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        responses={413: {"model": Problem}, 415: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.holder = ModelHolder(settings, listener=metrics)
    modules = (service, predictions, outcomes, admin)
    for module in modules:
        app.include_router(module.router)
    openapi.install(app)
    # Added innermost first: a request meets RequestMetrics, CORS, ServerErrors, BodyLimit,
    # JsonOnly, then a route.
    app.add_middleware(JsonOnly)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ServerErrors)
    if settings.cors_origins:
        app.add_middleware(  # a page's script may read the request id it quotes in a support ticket
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    # Every route without a parameter (/predict, not /{id}), and FastAPI's own pages (/docs, /openapi.json)
    paths = frozenset(r.path for m in modules for r in m.router.routes if "{" not in r.path) | {
        url for url in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if url
    }
    app.add_middleware(RequestMetrics, metrics=metrics, access_log=settings.access_log, paths=paths)
    return app
