"""Predictions by customer id through a real uvicorn process, with the feature store's
registry, offline source and online store on PostgreSQL and the model on the full stack."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data, feature_store
from churn_platform.cli import main
from churn_platform.schema import FEATURE_NAMES, ID_COLUMN
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.services import postgres_database, start_api, wait_ready

pytestmark = pytest.mark.integration


def _cli(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output


def test_by_id_scores_the_latest_snapshot_logs_its_features_and_survives_a_broken_store(
    stack_env, model_name, telco_csv, tmp_path, monkeypatch
):
    settings = get_settings()
    result = train(TrainConfig(data=str(telco_csv), model_name=model_name), settings)
    MlflowClient(stack_env.tracking_uri).set_registered_model_alias(model_name, "Production", str(result.version))
    raw = data.read_table(telco_csv).drop(columns=["churn"])
    raw = raw[raw["total_charges"].str.strip() != ""].head(200).reset_index(drop=True)
    later = raw.copy()
    later["tenure"] = (later["tenure"].astype(int) + 12).astype(str)
    later.loc[::2, "contract"] = "One year"
    raw.to_csv(tmp_path / "first.csv", index=False)
    later.to_csv(tmp_path / "second.csv", index=False)
    ids = raw[ID_COLUMN].tolist()
    with postgres_database() as store_url, postgres_database() as log_url:
        # A server outside UTC: Feast writes its times naive into a timestamptz, read in this zone.
        with sa.create_engine(store_url).begin() as db:
            db.exec_driver_sql(f"ALTER DATABASE \"{store_url.rsplit('/', 1)[1]}\" SET timezone = 'Europe/Berlin'")
        monkeypatch.setenv("CHURN_FEATURE_STORE_URL", store_url)
        get_settings.cache_clear()
        _cli("features", "apply")
        _cli("features", "ingest", str(tmp_path / "first.csv"), "--as-of", "2026-01-01")
        _cli("features", "ingest", str(tmp_path / "second.csv"), "--as-of", "2026-06-01")
        _cli("features", "materialize")
        env = stack_env.env | {
            "CHURN_MODEL_NAME": model_name, "CHURN_FEATURE_STORE_URL": store_url,
            "CHURN_INFERENCE_LOG_URL": log_url, "CHURN_INFERENCE_LOG_FLUSH_S": "0.2",
        }  # fmt: skip
        api, base = start_api(env, tmp_path)
        try:
            wait_ready(base)
            deadline = time.monotonic() + 90
            while (state := httpx.get(f"{base}/ready").json()["feature_store"])["state"] != "ok":
                assert time.monotonic() < deadline, state
                time.sleep(0.5)
            expected = data.validate(later, require_label=False)
            records = data.to_records(expected)
            direct = httpx.post(f"{base}/predict", json={"customers": records}, timeout=30).json()["predictions"]
            by_id = httpx.post(f"{base}/predict/by-id", json={"customer_ids": ids}, timeout=30).json()
            assert by_id["errors"] == []
            for got, want in zip(by_id["predictions"], direct, strict=True):
                assert got[ID_COLUMN] == want[ID_COLUMN]
                assert abs(got["churn_probability"] - want["churn_probability"]) <= 1e-9
            assert {got["features_as_of"] for got in by_id["predictions"]} == {"2026-06-01T00:00:00Z"}
            single = httpx.get(f"{base}/predict/{ids[7]}").json()
            assert abs(single["churn_probability"] - direct[7]["churn_probability"]) <= 1e-9
            assert single["features_as_of"] == "2026-06-01T00:00:00Z"
            assert httpx.get(f"{base}/predict/not-a-customer").status_code == 404
            # PostgreSQL cannot hold a NUL: the id is refused by name before any store is read.
            refused = httpx.get(f"{base}/predict/a%00b")
            assert refused.status_code == 422 and "control character" in refused.json()["message"]

            # The log holds the features that were used: the second snapshot's, for every id scored by id.
            engine = sa.create_engine(log_url)
            deadline = time.monotonic() + 60
            logged = pd.DataFrame()
            while True:
                try:
                    with engine.connect() as conn:
                        logged = pd.read_sql(
                            sa.text(f"SELECT customer_id, {', '.join(FEATURE_NAMES)} FROM inference_log"), conn
                        )
                except sa.exc.ProgrammingError:  # the writer creates the table with its first rows
                    pass
                if len(logged) >= 2 * len(ids) + 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            engine.dispose()
            assert len(logged) == 2 * len(ids) + 1
            row = logged[logged[ID_COLUMN] == ids[7]].iloc[-1]
            assert row["tenure"] == int(later.loc[7, "tenure"]) and row["contract"] == later.loc[7, "contract"]

            # The store's connections cut, as a database restart cuts them: reads reconnect, none fails.
            # A feature the store holds no value of (one added since the customer's last snapshot):
            # an entry in errors, as /predict would refuse it, never a null score and a "high" band.
            online_table = f"{feature_store.PROJECT}_{feature_store.FEATURE_VIEW}"
            serialization = feature_store.open_store(get_settings()).config.entity_key_serialization_version
            engine = sa.create_engine(store_url)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DELETE FROM {online_table} WHERE entity_key = :key AND feature_name = 'tenure'"),
                             {"key": feature_store._entity_key(ids[9], serialization)})  # fmt: skip
            engine.dispose()
            partial = httpx.post(f"{base}/predict/by-id", json={"customer_ids": [ids[8], ids[9]]}, timeout=30).json()
            assert [p[ID_COLUMN] for p in partial["predictions"]] == [ids[8]]
            assert [e[ID_COLUMN] for e in partial["errors"]] == [ids[9]]
            assert "no value of ['tenure']" in partial["errors"][0]["message"]
            alone = httpx.get(f"{base}/predict/{ids[9]}")
            assert alone.status_code == 404 and "no value of ['tenure']" in alone.json()["message"]

            engine = sa.create_engine(store_url)
            with engine.begin() as conn:
                cut = conn.exec_driver_sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).scalar()
            engine.dispose()
            assert cut >= 1
            for customer_id in ids[:5]:
                assert httpx.get(f"{base}/predict/{customer_id}").status_code == 200

            # A broken online store: by-id answers 503 naming it; /predict and /ready are unaffected.
            online_table = f"{feature_store.PROJECT}_{feature_store.FEATURE_VIEW}"
            engine = sa.create_engine(store_url)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {online_table} RENAME TO moved_away")
            engine.dispose()
            broken = httpx.get(f"{base}/predict/{ids[0]}")
            assert broken.status_code == 503 and "feature store unavailable" in broken.json()["message"]
            assert httpx.post(f"{base}/predict", json={"customers": records[:3]}).status_code == 200
            ready = httpx.get(f"{base}/ready")
            assert ready.status_code == 200 and ready.json()["feature_store"]["state"] == "unavailable"
        finally:
            api.stop()
            get_settings.cache_clear()
