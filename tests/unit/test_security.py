"""Secrets never leak: a known secret value is absent from logs, responses and metrics."""

from __future__ import annotations

import httpx
import pytest

from tests.services import start_api, wait_ready

SECRET_KEY = "sk-known-secret-4f7c2a9e"
DB_PASSWORD = "pw-known-secret-81d3"


@pytest.fixture(params=["text", "json"])
def api(request, registry_uri, tmp_path, monkeypatch):
    env = {
        "CHURN_LOG_FORMAT": request.param,
        "CHURN_ACCESS_LOG": "true",  # every request's line, for the secrets to be looked for in
        "MLFLOW_TRACKING_URI": registry_uri,
        "CHURN_ADMIN_API_KEY": SECRET_KEY,
        # An inference-log database that refuses us: its URL (with password) must not leak either.
        "CHURN_INFERENCE_LOG_URL": f"postgresql+psycopg2://churn:{DB_PASSWORD}@127.0.0.1:1/none",
        "CHURN_INFERENCE_LOG_FLUSH_S": "0.2",
    }
    import os

    proc, base = start_api(os.environ | env, tmp_path)
    wait_ready(base)
    yield proc, base
    proc.stop()


def test_no_secret_in_logs_bodies_or_metrics(api, telco_csv):
    proc, base = api
    bodies = []
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.post("/admin/reload").status_code == 401
        for wrong in ("nope", SECRET_KEY[:-1], SECRET_KEY + "x"):
            response = client.post("/admin/reload", headers={"X-API-Key": wrong})
            assert response.status_code == 403
            bodies.append(response.text)
        response = client.post("/admin/reload?wait=true", headers={"X-API-Key": SECRET_KEY})
        assert response.status_code == 200
        bodies.append(response.text)
        bodies.append(client.post("/predict", content=b"{broken").text)
        bodies.append(client.post("/predict/single", json={"tenure": SECRET_KEY}).text)
        row = {"gender": "Male", "senior_citizen": 0, "partner": "No", "dependents": "No", "tenure": 3,
               "phone_service": "Yes", "multiple_lines": "No", "internet_service": "DSL", "online_security": "No",
               "online_backup": "No", "device_protection": "No", "tech_support": "No", "streaming_tv": "No",
               "streaming_movies": "No", "contract": "Month-to-month", "paperless_billing": "Yes",
               "payment_method": "Mailed check", "monthly_charges": 50.0, "total_charges": 150.0}  # fmt: skip
        assert client.post("/predict/single", json=row).status_code == 200  # the log DB is down: still 200
        for path in ("/", "/model", "/metrics", "/ready", "/openapi.json"):
            bodies.append(client.get(path).text)
        import time

        # The writer spools the row, tries the database, then says it is spooling: wait for both.
        deadline = time.monotonic() + 30
        awaited = ("churn_inference_log_rows_spooled_total 1.0", "churn_inference_log_live 0.0")
        while not all(m in (metrics := client.get("/metrics").text) for m in awaited):
            assert time.monotonic() < deadline, "the row was never spooled, or the log still says live"
            time.sleep(0.2)
    proc.stop()
    log = proc.log_tail(10_000_000)
    assert "/admin/reload" in log  # the access lines are there to be searched
    assert "inference log database unavailable" in log  # and the writer's error, which had the URL to leak
    for text in [*bodies, metrics, log]:
        assert SECRET_KEY not in text
        assert DB_PASSWORD not in text
