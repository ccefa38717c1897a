"""Logs as a collector reads them: JSON lines from a real uvicorn process, each request's line
with its id (the caller's X-Request-ID kept, returned and stored in the inference log)."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
import sqlalchemy as sa

from churn_platform import data
from tests.services import start_api, wait_ready


@pytest.fixture
def api(registry_uri, tmp_path):
    log_db = tmp_path / "log.db"
    env = os.environ | {"MLFLOW_TRACKING_URI": registry_uri, "CHURN_LOG_FORMAT": "json", "CHURN_ACCESS_LOG": "true",
                        "CHURN_INFERENCE_LOG_URL": f"sqlite:///{log_db}", "CHURN_INFERENCE_LOG_FLUSH_S": "0.2",
                        "CHURN_INFERENCE_LOG_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
    proc, base = start_api(env, tmp_path)
    wait_ready(base)
    yield proc, base, log_db
    proc.stop()


def test_json_lines_carry_the_request_id_the_caller_sent_and_the_log_stores_it(api, telco_csv):
    proc, base, log_db = api
    customer = data.to_records(data.load(telco_csv).drop(columns=["churn"]).head(1))[0]
    with httpx.Client(base_url=base, timeout=30) as client:
        sent = client.post("/predict/single", json=customer, headers={"X-Request-ID": "crm-7f3a.42"})
        again = client.post("/predict/single", json=customer, headers={"X-Request-ID": "crm-7f3a.42"})  # reused
        odd = client.post("/predict/single", json=customer, headers={"X-Request-ID": "not a token; drop table"})
        long = client.post("/predict/single", json=customer, headers={"X-Request-ID": "k" * 128})
        bad = client.post("/predict/single", json={"tenure": "x"})
    assert sent.status_code == again.status_code == odd.status_code == 200 and bad.status_code == 422
    assert sent.headers["x-request-id"] == again.headers["x-request-id"] == "crm-7f3a.42"
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])  # replaced, not echoed
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    assert long.status_code == 200 and long.headers["x-request-id"] == "k" * 128
    proc.stop()  # flushes the inference log

    lines = [json.loads(line) for line in proc.log_tail(10_000_000).splitlines() if line.strip()]  # all JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    mine = [line for line in lines if line.get("request_id") == "crm-7f3a.42"]
    assert len(mine) == 2, mine
    assert mine[0]["route"] == "/predict/single" and mine[0]["status"] == 200 and mine[0]["duration_ms"] > 0
    assert mine[0]["model_version"] == 1 and mine[0]["arm"] == "production"
    refused = next(line for line in lines if line.get("request_id") == bad.headers["x-request-id"])
    assert refused["status"] == 422 and "model_version" not in refused  # nothing was scored

    with sa.create_engine(f"sqlite:///{log_db}").connect() as conn:
        ids = conn.execute(sa.text("SELECT request_id FROM inference_log ORDER BY scored_at")).scalars().all()
    assert len(ids) == 4  # the reused id lost nothing: each request's rows are kept apart
    assert re.fullmatch(r"crm-7f3a\.42/[0-9a-f]{16}", ids[0]) and re.fullmatch(r"crm-7f3a\.42/[0-9a-f]{16}", ids[1])
    assert ids[0] != ids[1]
    # Each line names its request's key in the log: the reused id alone could not tell them apart.
    assert sorted(line["log_key"] for line in mine) == sorted(ids[:2])
    assert ids[2] == odd.headers["x-request-id"]
    # A long id is cut to fit the column (64, PostgreSQL enforces it) with room for "~shadow".
    assert ids[3].startswith("k" * 40 + "/") and len(ids[3]) + len("~shadow") == 64


def test_a_path_in_a_log_line_is_as_sent_so_it_cannot_forge_a_line():
    from serving.errors import logged_path

    assert logged_path({"raw_path": b"/predict/x%0Aforged", "path": "/predict/x\nforged"}) == "/predict/x%0Aforged"
    assert logged_path({"path": "/predict/x\nforged"}) == "/predict/x%0Aforged"


def test_an_unexpected_error_is_a_500_with_the_request_id_in_the_response_and_the_log(
    registry_uri, tmp_path, telco_csv, monkeypatch, json_lines
):  # fmt: skip
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.predictor import Predictor
    from tests.unit.test_api import make_settings, wait_ready

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    customer = data.to_records(data.load(telco_csv).drop(columns=["churn"]).head(1))[0]
    page = "https://app.example"
    with TestClient(create_app(make_settings(registry_uri, tmp_path, cors_origins=[page]))) as client:
        wait_ready(client)
        monkeypatch.setattr(Predictor, "predict", broken)  # a fault injected: no route fails on purpose
        response = client.post("/predict/single", json=customer, headers={"X-Request-ID": "crm-500", "Origin": page})
    assert response.status_code == 500 and response.headers["x-request-id"] == "crm-500"
    # With the CORS headers: without them a page saw a network error, not the id to quote.
    assert response.headers["access-control-allow-origin"] == page
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    assert "internal error; see the server log" in response.text
    error = next(line for line in json_lines() if line["message"].startswith("unexpected error"))
    assert error["request_id"] == "crm-500" and error["level"] == "ERROR"
    assert "RuntimeError: a bug" in error["exception"]


@pytest.mark.parametrize("mlflow_first", [False, True])
def test_mlflow_and_sqlalchemy_lines_are_json_too(mlflow_first):
    """``import mlflow`` gives its loggers a text handler of its own: in JSON format, whether
    mlflow was imported before the logs were set up or after, its lines are JSON like ours."""
    import subprocess
    import sys

    script = "\n".join([
        "import logging",
        "import mlflow" if mlflow_first else "",
        "from churn_platform import logs",
        "logs.configure(logging.INFO, 'json')",
        "import mlflow",
        "for name in ('churn_platform.x', 'mlflow.pyfunc', 'alembic.runtime', 'sqlalchemy.engine.Engine'):",
        "    logging.getLogger(name).warning('from %s', name)",
        "import warnings",
        "warnings.warn('a library says so')",  # was raw text among the JSON: jq stopped there
    ])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_CONFIGURE_LOGGING"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines()]  # any text line fails here
    assert [line["logger"] for line in lines] == ["churn_platform.x", "mlflow.pyfunc", "alembic.runtime",
                                                  "sqlalchemy.engine.Engine", "py.warnings"]  # fmt: skip
    assert "a library says so" in lines[-1]["message"]


def test_a_request_cancelled_unanswered_is_not_counted_as_a_500():
    """uvicorn cancels what still runs at the end of its graceful shutdown: nothing was sent, yet
    the request counted (and logged, and traced) as a 500, feeding ChurnApi5xxRate."""
    import asyncio

    from serving.metrics import Metrics
    from serving.middleware import RequestMetrics

    async def cancelled(scope, receive, send):
        raise asyncio.CancelledError

    metrics = Metrics()
    middleware = RequestMetrics(cancelled, metrics=metrics, paths=frozenset({"/predict"}))
    scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict", "headers": []}
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(middleware(scope, None, None))
    counted = {s.labels["status"]: s.value for s in metrics.requests.collect()[0].samples if s.name.endswith("_total")}
    assert counted == {"499": 1.0}
