"""A real uvicorn process serving from the PostgreSQL + S3 registry, logging to PostgreSQL."""

from __future__ import annotations

import threading
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from churn_platform import data
from churn_platform.cli import main
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.services import postgres_database, start_api, wait_ready

pytestmark = pytest.mark.integration
KEY = "e2e-admin-key-93c"


def rows_of(frame: pd.DataFrame) -> list[dict]:
    return data.to_records(frame.drop(columns=["churn"]))


def test_serving_follows_the_registry(stack_env, model_name, telco_csv, tmp_path):
    settings = get_settings()
    train(TrainConfig(data=str(telco_csv), model_name=model_name), settings)
    with postgres_database() as log_url:
        env = stack_env.env | {
            "CHURN_MODEL_NAME": model_name, "CHURN_ADMIN_API_KEY": KEY, "CHURN_INFERENCE_LOG_URL": log_url,
            "CHURN_INFERENCE_LOG_FLUSH_S": "0.2", "CHURN_STARTUP_BACKOFF_MAX_S": "1",
        }  # fmt: skip
        api, base = start_api(env, tmp_path)
        try:
            deadline = time.monotonic() + 30  # the first look at the registry, on a busy machine
            while (response := httpx.get(f"{base}/ready")).json()["status"] == "starting":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert response.status_code == 503 and response.json()["status"] == "alias_missing"

            assert CliRunner().invoke(main, ["promote", "--model-name", model_name, "--version", "1"]).exit_code == 0
            wait_ready(base)

            real = data.load(telco_csv).sample(500, random_state=1)
            rows = rows_of(real)
            body = httpx.post(f"{base}/predict", json={"customers": rows}, timeout=30).json()
            assert body["model_version"] == 1
            got = np.array([p["churn_probability"] for p in body["predictions"]])
            mlflow.set_tracking_uri(stack_env.tracking_uri)
            registered = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
            expected = np.asarray(registered.predict(real[list(FEATURE_NAMES)]))[:, 1]
            assert np.max(np.abs(got - expected)) <= 1e-6
            # Explanations through a real server: each adds up to its score (model on S3, run on PostgreSQL).
            explained = httpx.post(f"{base}/predict?explain=true&top_k=19", json={"customers": rows}, timeout=30)
            assert explained.status_code == 200 and len(explained.json()["predictions"]) == len(rows), explained.text
            for p in explained.json()["predictions"]:
                total = p["explanation"]["base"] + sum(c["contribution"] for c in p["explanation"]["contributions"])
                assert abs(total - np.log(p["churn_probability"] / (1 - p["churn_probability"]))) <= 1e-6
            assert httpx.get(f"{base}/model").json()["explanations"]["global_importance"][0]["feature"]

            train(TrainConfig(n_rows=3000, model_name=model_name, seed=9), settings)
            assert (
                CliRunner().invoke(main, ["promote", "--model-name", model_name, "--version", "2", "--force"]).exit_code
                == 0
            )

            # Traffic during the swap: every request must succeed, on v1 or v2.
            versions_seen: list[int] = []
            failures: list[str] = []
            stop = threading.Event()

            def traffic() -> None:
                with httpx.Client(base_url=base, timeout=10) as client:
                    while not stop.is_set():
                        try:
                            r = client.post("/predict/single", json=rows[len(versions_seen) % len(rows)])
                            if r.status_code != 200:
                                failures.append(f"{r.status_code} {r.text[:200]}")
                            else:
                                versions_seen.append(r.json()["model_version"])
                        except httpx.HTTPError as exc:
                            failures.append(repr(exc))

            workers = [threading.Thread(target=traffic) for _ in range(4)]
            for w in workers:
                w.start()
            time.sleep(0.5)
            reload = httpx.post(f"{base}/admin/reload?wait=true", headers={"X-API-Key": KEY}, timeout=120)
            time.sleep(0.5)
            stop.set()
            for w in workers:
                w.join()
            assert reload.status_code == 200 and reload.json()["version"] == 2, reload.text
            assert failures == []
            assert 1 in versions_seen and versions_seen[-1] == 2
            assert httpx.get(f"{base}/model").json()["version"] == 2
            sent = 2 * 500 + len(versions_seen)  # the batch, explained and not, and the traffic
        finally:
            api.stop()  # SIGTERM: graceful shutdown flushes the inference log
        assert api.proc.returncode == 0, (api.proc.returncode, api.log_tail())
        engine = sa.create_engine(log_url)
        with engine.connect() as conn:
            counts = dict(
                conn.execute(sa.text("SELECT model_version, count(*) FROM inference_log GROUP BY 1")).fetchall()
            )
            duplicates = conn.execute(
                sa.text(
                    "SELECT count(*) FROM (SELECT request_id, row_index FROM inference_log"
                    " GROUP BY 1, 2 HAVING count(*) > 1) d"
                )
            ).scalar()
        engine.dispose()
        assert sum(counts.values()) == sent and set(counts) == {1, 2}
        assert duplicates == 0
