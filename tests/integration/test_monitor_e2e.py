"""Train, promote, serve real traffic, then monitor it: on the real stack, from the inference log."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data
from churn_platform.cli import main
from churn_platform.contract import ExitCode
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from monitoring.runs import GENERATOR
from tests.services import free_port, postgres_database, start_api, wait_ready

pytestmark = pytest.mark.integration


def rows_of(frame: pd.DataFrame) -> list[dict]:
    return data.to_records(frame.drop(columns=["churn"], errors="ignore"))


def monitor_process(env: dict, *args: str) -> tuple[int, dict, str]:
    """`churn-platform monitor --json` as the CronJob runs it: a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "monitor", "--json", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = json.loads(done.stdout) if done.stdout.strip() else {}  # one document: `| jq` works on it
    return done.returncode, summary, done.stderr


@pytest.fixture
def monitor(cli_in_process):
    """The same command in this process (a process each took ~10 s of the suite's time)."""

    def run(env: dict, *args: str) -> tuple[int, dict, str]:
        ran = cli_in_process(env, "monitor", "--json", *args)
        return ran.returncode, json.loads(ran.stdout) if ran.stdout.strip() else {}, ran.stderr

    return run


def test_monitor_verdicts_on_real_traffic(stack_env, model_name, telco_csv, tmp_path, monitor):
    settings = get_settings()
    train(TrainConfig(data=str(telco_csv), model_name=model_name), settings)
    assert CliRunner().invoke(main, ["promote", "--model-name", model_name, "--version", "1"]).exit_code == 0
    _, unseen = data.split(data.load(telco_csv), 0.25, 42)  # the validation rows: never trained on
    drifted = data.generate(1500, seed=5, drift=True)
    with postgres_database() as log_url:
        # The 983 validation rows are the normal window, under the default 1,000 rows (seeded: the
        # verdict is the same on every run).
        env = stack_env.env | {"CHURN_MODEL_NAME": model_name, "CHURN_INFERENCE_LOG_URL": log_url,
                               "CHURN_INFERENCE_LOG_FLUSH_S": "0.2", "CHURN_MONITOR_MIN_ROWS": "900"}  # fmt: skip
        api, base = start_api(env, tmp_path)
        try:
            wait_ready(base)
            for chunk in range(0, len(unseen), 500):
                r = httpx.post(f"{base}/predict", json={"customers": rows_of(unseen.iloc[chunk : chunk + 500])})
                assert r.status_code == 200
        finally:
            api.stop()  # flushes the log
        code, summary, err = monitor_process(env, "--output-dir", str(tmp_path / "normal"))
        assert code == 0, (err[-2000:], summary.get("drifted_columns"))
        assert summary["current_rows"] == len(unseen) and summary["model_version"] == 1
        assert summary["dataset_drift"] is False and summary["drifted_columns"] == []
        assert summary["prediction_drift"]["drifted"] is False
        assert (tmp_path / "normal" / "report.html").stat().st_size > 10_000

        api, base = start_api(env, tmp_path)
        try:
            wait_ready(base)
            r = httpx.post(f"{base}/predict", json={"customers": rows_of(drifted.head(1000))})
            assert r.status_code == 200
        finally:
            api.stop()
        window = ("--last-hours", "1", "--rows", "1000")
        code, summary, err = monitor(env, *window, "--output-dir", str(tmp_path / "drifted"))
        assert code == 1, err[-2000:]
        assert summary["window"]["since"] is not None and summary["window"]["rows"] == 1000
        # No window: the latest CHURN_MONITOR_MAX_ROWS rows (here the drifted ones), not a sample of all history.
        code, latest, err = monitor(env | {"CHURN_MONITOR_MAX_ROWS": "1000"}, "--output-dir", str(tmp_path / "latest"))
        assert code == 1 and latest["window"]["rows"] == 1000 and latest["window"]["sampled"] is None, err[-2000:]
        assert latest["drifted_columns"] == summary["drifted_columns"]
        # ... and says when they were scored: after a rollback the latest rows can be months old.
        scored = [datetime.fromisoformat(latest["window"][k]) for k in ("scored_from", "scored_to")]
        assert datetime.now(UTC) - timedelta(minutes=15) < scored[0] <= scored[1] <= datetime.now(UTC), scored
        assert {"tenure", "contract", "monthly_charges", "total_charges"} <= set(summary["drifted_columns"])
        assert summary["dataset_drift"] is True and summary["current_rows"] == 1000
        saved = json.loads((tmp_path / "drifted" / "summary.json").read_text())
        for key in ("model_name", "model_version", "reference_rows", "current_rows", "drift_share",
                    "dataset_drift", "drifted_columns", "columns", "data_quality", "window"):  # fmt: skip
            assert key in saved
        assert saved["columns"]["tenure"]["method"] and saved["columns"]["tenure"]["threshold"] == 0.1

    corrupt = data.generate(300, seed=8).drop(columns=["contract"]).astype({"tenure": object})
    corrupt.loc[:4, "tenure"] = "twelve"
    corrupt.to_csv(tmp_path / "corrupt.csv", index=False)
    code, summary, err = monitor(env, "--current", str(tmp_path / "corrupt.csv"), "--output-dir", str(tmp_path / "bad"))
    assert code == ExitCode.DATA_QUALITY == 4 and "Traceback" not in err
    details = " ".join(f["detail"] for f in summary["data_quality"]["findings"])
    assert "missing feature columns: ['contract']" in details and "'tenure' should be numeric" in details

    client = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    experiment = client.get_experiment_by_name("churn-monitoring")
    runs = client.search_runs([experiment.experiment_id], f"tags.model_name = '{model_name}'")
    assert sorted(r.data.tags["verdict"] for r in runs) == ["data_quality_failure", "drift", "drift", "no_drift"]
    assert all(r.info.status == "FINISHED" for r in runs)
    drift_run = next(r for r in runs if r.data.tags["verdict"] == "drift")
    assert drift_run.data.metrics["n_drifted_columns"] >= 4 and "drift_score.tenure" in drift_run.data.metrics
    assert {a.path for a in client.list_artifacts(drift_run.info.run_id)} == {"report.html", "summary.json"}


def test_monitor_exit_codes_follow_the_cli_table(stack_env, model_name, tmp_path, monitor):
    """Nothing to compare is 2 (as a missing model is in every command), unreachable is 3,
    bad usage is 2 and never the data-quality code."""
    env = stack_env.env | {"CHURN_MODEL_NAME": model_name}
    train(TrainConfig(n_rows=600, model_name=f"{model_name}-few"), get_settings())
    assert CliRunner().invoke(main, ["promote", "--model-name", f"{model_name}-few", "--version", "1"]).exit_code == 0
    # 300 rows of the training population: a window that small was called drifted by chance.
    data.generate(300, seed=3).to_csv(tmp_path / "few.csv", index=False)
    code, _, err = monitor(env | {"CHURN_MODEL_NAME": f"{model_name}-few"}, "--current", str(tmp_path / "few.csv"))
    assert code == ExitCode.USAGE and "only 300 usable current rows; at least 1000 are needed" in err
    # Charges of 1e300 would overflow the model's scaling: past the schema's bound, a data-quality verdict.
    data.generate(200, seed=3).assign(monthly_charges=1e300).to_csv(tmp_path / "huge.csv", index=False)
    few = env | {"CHURN_MODEL_NAME": f"{model_name}-few"}
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "report.html").write_text(f"<html><head>{GENERATOR}</head>DRIFT DETECTED (an earlier run's)")
    code, summary, err = monitor(few, "--current", str(tmp_path / "huge.csv"), "--output-dir", str(tmp_path / "huge"))
    assert code == ExitCode.DATA_QUALITY and "Traceback" not in err, err
    assert not (tmp_path / "huge" / "report.html").exists()  # it would contradict this run's summary
    details = " ".join(f["detail"] for f in summary["data_quality"]["findings"])
    assert "'monthly_charges'" in details and "to 1000000000000" in details, details
    # The minimum holds on the reference side too: v1 learned from 450 rows, and 375-row references
    # called a window of their own population drifted. The folder's earlier verdict goes: this run has none.
    data.generate(1200, seed=4).to_csv(tmp_path / "enough.csv", index=False)
    assert (tmp_path / "huge" / "summary.json").exists()
    code, _, err = monitor(few, "--current", str(tmp_path / "enough.csv"), "--output-dir", str(tmp_path / "huge"))
    assert code == ExitCode.USAGE and "v1 was trained on only 450 rows (its drift reference)" in err, err[-1500:]
    assert not (tmp_path / "huge" / "summary.json").exists()
    # Refused before any work.
    def refused(extra: dict[str, str], *args: str) -> tuple[int, str]:
        code, _, err = monitor(env | extra, *args)
        assert "Traceback" not in err, err
        return code, err

    # A deleted monitoring experiment is named before the work, not a traceback once the verdict is in.
    client = MlflowClient()
    client.delete_experiment(client.create_experiment(f"{model_name}-gone"))
    code, err = refused({"CHURN_MONITOR_EXPERIMENT": f"{model_name}-gone"}, "--current", "x.csv")
    assert code == ExitCode.USAGE and f"MLflow experiment '{model_name}-gone'" in err and "is deleted" in err, err
    assert "CHURN_MONITOR_EXPERIMENT" in err
    code, err = refused({}, "--current", str(tmp_path / "few.csv"))
    assert code == ExitCode.USAGE and f"no version of model '{model_name}'" in err
    code, err = refused({}, "--column-threshold", "tenur=0.05")
    assert code == ExitCode.USAGE and "unknown columns ['tenur']" in err and "--column-threshold" in err
    code, err = refused({"CHURN_MONITOR_CRITICAL_COLUMNS": "contract,planet"}, "--current", "x.csv")
    assert code == ExitCode.USAGE and "CHURN_MONITOR_CRITICAL_COLUMNS: unknown columns ['planet']" in err
    code, err = refused({"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}, "--current", "x.csv")
    assert code == ExitCode.UNREACHABLE and "unreachable" in err
