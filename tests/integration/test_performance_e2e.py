"""Outcomes and model performance on the real stack: mlflow server on PostgreSQL + S3, a real
uvicorn process scoring real customers into a PostgreSQL inference log, outcomes ingested
from files, then ``performance`` and ``monitor`` on the same traffic."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from churn_platform import data, retraining
from churn_platform.cli import main
from churn_platform.processes import free_port
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.services import postgres_database, start_api, start_mlflow, wait_ready

pytestmark = pytest.mark.integration


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_outcomes_judge_the_served_model_and_reveal_a_concept_change(
    stack_env, model_name, telco_csv, tmp_path, cli_in_process
):  # fmt: skip
    settings = get_settings()
    train(TrainConfig(data=str(telco_csv), model_name=model_name), settings)
    assert cli("promote", "--model-name", model_name, "--version", "1", "--force")[0] == 0
    customers = data.load(telco_csv)
    rows = data.to_records(customers.drop(columns=["churn"]))

    with postgres_database() as log_url:
        env = stack_env.env | {"CHURN_MODEL_NAME": model_name, "CHURN_INFERENCE_LOG_URL": log_url,
                               "CHURN_INFERENCE_LOG_FLUSH_S": "0.2"}  # fmt: skip
        api, base = start_api(env, tmp_path)
        try:
            wait_ready(base)
            with httpx.Client(base_url=base, timeout=60) as client:
                for start in range(0, len(rows), 1000):
                    assert client.post("/predict", json={"customers": rows[start : start + 1000]}).status_code == 200
        finally:
            api.stop()  # flushes the log
        engine = sa.create_engine(log_url)
        assert count(engine, "inference_log") == len(rows)

        # The true outcomes, observed after the predictions. Not in the future: the performance
        # window ends now, and a fast machine runs it within a second of the ingest.
        observed = datetime.now(UTC).isoformat()
        truth = pd.DataFrame({"customerID": customers.customer_id,
                              "Churn": customers.churn.map({1: "Yes", 0: "No"}), "observed_at": observed})  # fmt: skip
        truth_csv = tmp_path / "truth.csv"
        truth.to_csv(truth_csv, index=False)
        code, output = cli("outcomes", "ingest", str(truth_csv), "--inference-log-url", log_url)
        assert code == 0, output
        assert cli("outcomes", "ingest", str(truth_csv), "--inference-log-url", log_url)[0] == 0  # again
        assert count(engine, "outcomes") == len(customers)

        def performance(out: str) -> tuple[int, dict]:
            code, output = cli("performance", "--model-name", model_name, "--inference-log-url", log_url,
                               "--output-dir", str(tmp_path / out), "--json")  # fmt: skip
            assert code in (0, 1), output
            return code, json.loads(output[output.index("{") :])

        while datetime.now(UTC).hour == 23 and datetime.now(UTC).minute >= 55:  # retrain counts a run per UTC day
            time.sleep(5)
        code, summary = performance("undrifted")
        assert code == 0 and summary["degraded"] is False, summary["reasons"]
        with engine.connect() as conn:
            joined = pd.read_sql("SELECT l.churn_probability, o.churned FROM inference_log l "
                                 "JOIN outcomes o USING (customer_id)", conn)  # fmt: skip
        expected = roc_auc_score(joined.churned.astype(int), joined.churn_probability)
        assert summary["rows_matched"] == len(customers) == len(joined)
        assert abs(summary["realized"]["roc_auc"] - expected) <= 1e-9
        assert abs(summary["estimated"]["roc_auc"] - summary["realized"]["roc_auc"]) <= 0.03
        assert summary["baseline"]["roc_auc"] > 0.8
        assert (tmp_path / "undrifted" / "report.html").read_text().count("<img") >= 2

        # Concept change: month-to-month customers in their first year now do the opposite.
        changed = truth.copy()
        segment = (customers.contract == "Month-to-month") & (customers.tenure < 12)
        changed.loc[segment, "Churn"] = customers.churn[segment].map({1: "No", 0: "Yes"})
        changed_csv = tmp_path / "changed.csv"
        changed.to_csv(changed_csv, index=False)
        code, output = cli("outcomes", "ingest", str(changed_csv), "--inference-log-url", log_url, "--json")
        assert code == 0 and json.loads(output)["written"]["replaced"] == int(segment.sum()), output
        assert count(engine, "outcomes") == len(customers)

        code, output = cli("monitor", "--model-name", model_name, "--inference-log-url", log_url,
                           "--output-dir", str(tmp_path / "drift"))  # fmt: skip
        assert code == 0, output  # the features did not move: drift monitoring stays quiet

        def retrain(*args: str, env: dict[str, str] | None = None):
            """In this process (a process each took ~10 s of the suite; the demo runs it as one)."""
            return cli_in_process(env or stack_env.env, "retrain", "--model-name", model_name,
                                  "--inference-log-url", log_url, *args)  # fmt: skip

        registry = MlflowClient(tracking_uri=stack_env.tracking_uri, registry_uri=stack_env.tracking_uri)
        versions = lambda: sorted(int(v.version) for v in registry.search_model_versions(f"name='{model_name}'"))  # noqa: E731
        done = retrain("--if", "performance")  # one ok run recorded, none degraded
        assert done.returncode == 1 and "0 of the last 1 performance runs of v1 flagged degradation" in done.stderr
        assert versions() == [1]

        code, summary = performance("changed")
        assert code == 1 and summary["degraded"] is True
        assert any(r.startswith("roc_auc") for r in summary["reasons"]), summary["reasons"]
        assert summary["realized"]["roc_auc"] < expected - 0.05
        assert performance("changed-again")[0] == 1  # degraded again, the same day: one opinion
        done = retrain("--if", "performance")
        assert done.returncode == 1 and "1 of the last 1 performance runs of v1 flagged" in done.stderr, done.stderr
        # Yesterday's scheduled run had flagged it too: two days, two degraded runs.
        monitoring = registry.get_experiment_by_name("churn-monitoring").experiment_id
        changed = next(r for r in registry.search_runs([monitoring], "tags.verdict = 'degraded'")
                       if "adhoc" not in r.data.tags)  # fmt: skip
        yesterday = int((datetime.now(UTC) - timedelta(days=1)).timestamp() * 1000)
        earlier = registry.create_run(monitoring, start_time=yesterday, tags=changed.data.tags)
        registry.set_terminated(earlier.info.run_id)

        done = retrain("--if", "performance", env=stack_env.env | {"CHURN_RETRAIN_MIN_ROWS": "100000"})
        assert done.returncode == 1 and f"only {len(customers)} labelled customers in the window" in done.stderr
        # The object store goes away mid-way (a registry whose artifact store is unreachable): nothing registered.
        dead_s3 = f"http://127.0.0.1:{free_port()}"
        (tmp_path / "broken").mkdir()
        server, broken_uri = start_mlflow(tmp_path / "broken", stack_env.backend_uri,
                                          f"s3://{stack_env.bucket}/artifacts", dead_s3)  # fmt: skip
        try:
            done = retrain("--if", "performance", env=stack_env.env | {"MLFLOW_TRACKING_URI": broken_uri})
        finally:
            server.stop()
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr[-1500:]
        assert versions() == [1]

        # A retrain someone started by hand holds the lock: this one registers nothing, and
        # the next, after it, trains (the lock went with the other session).
        with retraining.exclusive(log_url, model_name):
            done = retrain("--if", "performance")
        assert done.returncode == 1 and f"another retrain of '{model_name}' is running" in done.stderr, done.stderr
        assert versions() == [1]
        done = retrain("--if", "performance", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout[done.stdout.index("\n{") :] if not done.stdout.startswith("{") else done.stdout)
        assert result["version"] == 2 and versions() == [1, 2]
        gate = result["gate"]
        assert gate["passed"] and gate["candidate_roc_auc"] > gate["production_roc_auc"], gate
        assert str(registry.get_model_version_by_alias(model_name, "Challenger").version) == "2"
        assert str(registry.get_model_version_by_alias(model_name, "Production").version) == "1"
        tags = registry.get_model_version(model_name, "2").tags
        assert tags["retrain.trigger"].startswith("performance: 2 of the last 2 performance runs")
        assert "retrain.window" in tags and tags["retrain.recent_rows"] == str(len(customers))

        # A bad file: row numbers and reasons, and with --strict nothing written.
        bad_csv = tmp_path / "bad.csv"
        bad_csv.write_text("customer_id,churned,observed_at\nnew-1,Yes,2026-01-01\n,No,2026-01-01\nnew-2,maybe,\n")
        code, output = cli("outcomes", "ingest", str(bad_csv), "--inference-log-url", log_url, "--strict")
        assert code == 4 and "row 2: customer_id: missing" in output and "row 3: churned: 'maybe'" in output
        assert count(engine, "outcomes") == len(customers)
        assert (tmp_path / "bad.rejects.csv").read_text().count("\n") == 3
        engine.dispose()
    assert np.isfinite(expected)
