"""What a person or an orchestrator asks the service: ``/``, ``/health``, ``/ready``, ``/model``, ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from churn_platform.contract import MODEL_VERSION, PRODUCTION_ALIAS
from churn_platform.loading import LoadedModel
from churn_platform.schema import FEATURE_NAMES
from serving.deps import HolderDep, KnownQuery, MetricsDep, SettingsDep
from serving.schemas import Problem

router = APIRouter(tags=["service"])


def _head_too(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Answer HEAD on ``path`` as GET (uvicorn sends no body): uptime checkers that send it took
    the 405 for "down". Kept out of the OpenAPI document, where it repeated GET's operation id."""

    def add(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        return endpoint

    return add


@_head_too("/")
@router.get("/")
async def root(holder: HolderDep, settings: SettingsDep) -> dict[str, Any]:
    model = holder.current
    return {
        "service": "churn-platform prediction API",
        "model": settings.model_name,
        MODEL_VERSION: model.version if model else None,
        "links": {k: f"/{k}" for k in ("health", "ready", "model", "metrics", "docs", "predict")},
    }


# The probes' routes are async, and so are /model (it reads state in memory) and /metrics
# (rendered on a thread of its own): a plain def waits for a thread of the pool that blocking
# routes share (POST /outcomes against a database that is gone; reloads with ?wait=true did
# too before they waited on a thread of the holder's), and the kubelet restarted a pod whose
# predictions still worked, or Prometheus' scrape timed out (up == 0, a gap in every graph)
# just during a registry incident.
@_head_too("/health")
@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process is up."""
    return {"status": "ok"}


@_head_too("/ready")
@router.get("/ready", responses={503: {"model": Problem}})
async def ready(holder: HolderDep, request: Request) -> Any:
    """Readiness: 200 only when a verified model serves. The feature store's state is shown,
    not required: predictions with features in the body never depend on it."""
    model = holder.current
    features = getattr(request.app.state, "features", None)
    store = features.status() if features is not None else None
    if model is None:
        last = holder.last
        return JSONResponse(
            status_code=503,
            content={"status": last.state, "message": last.reason, "detail": last.reason, "feature_store": store},
        )
    return {"status": "ready", "model": model.name, "version": model.version, "feature_store": store}


@_head_too("/model")
@router.get("/model", dependencies=[KnownQuery])  # `/model?version=2` answered for the version served
async def model_info(holder: HolderDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """What is served, where it came from, how the latest (re)load went, and whether the
    inference log is live or spooling to disk."""
    model = holder.current
    last = {"state": holder.last.state, "reason": holder.last.reason, "at": holder.last.at}
    inference_log = getattr(request.app.state, "inference_log", None)
    log_state = inference_log.state() if inference_log is not None else None
    active = holder.rollout
    rollout = {
        "status": holder.rollout_status,
        "mode": active.state.mode if active else "off",
        "percent": active.state.percent if active else None,
        "challenger_version": active.model.version if active else None,
        "challenger": _described(active.model) if active else None,
        "started_by": active.state.started_by if active else None,
        "started_at": active.state.started_at if active else None,
        "reason": active.state.reason if active else None,
    }
    if model is None:
        return {"model": settings.model_name, "version": None, "last_load": last, "inference_log": log_state,
                "rollout": rollout}  # fmt: skip
    return {
        "model": model.name,
        "alias": PRODUCTION_ALIAS,
        **_described(model),
        "risk_bands": {"medium_from": settings.risk_medium_from, "high_from": settings.risk_high_from},
        "input_schema": model.input_schema or [{"name": n} for n in FEATURE_NAMES],
        "metrics": model.metrics,
        "last_load": last,
        "inference_log": log_state,
        "rollout": rollout,
    }


@router.get("/metrics", response_class=Response)
async def prometheus(metrics: MetricsDep, request: Request) -> Response:
    # On a thread of its own (one scrape at a time), not the pool's: with several workers
    # rendering merges every worker's files, which on the event loop stalled the predictions.
    state = request.app.state
    if getattr(state, "metrics_limiter", None) is None:  # made in the app's event loop, on the first scrape
        state.metrics_limiter = anyio.CapacityLimiter(1)
    body = await anyio.to_thread.run_sync(metrics.render, limiter=state.metrics_limiter)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _described(model: LoadedModel) -> dict[str, Any]:
    """What a served model is and how it was verified (Production and a rollout's Challenger alike)."""
    return {
        "version": model.version,
        "run_id": model.run_id,
        "loaded_at": model.loaded_at,
        "scorer": model.scorer_kind,
        "verified": {"rows": model.verified_rows, "max_abs_difference": model.max_abs_difference},
        "decision_threshold": model.decision_threshold,
        "explanations": model.explanations,
    }
