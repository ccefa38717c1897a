"""`mlflow run . -e train` against the real stack: PostgreSQL registry, S3 artifacts."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from churn_platform import data
from churn_platform.schema import FEATURE_NAMES
from churn_platform.training import REFERENCE_ARTIFACT, VALIDATION_ARTIFACT
from tests.services import BIN, REPO

pytestmark = pytest.mark.integration


def _mlflow_run(stack, *params: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "train", "--env-manager", "local"]
    for param in params:
        cmd += ["-P", param]
    return subprocess.run(cmd, env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mlflow_run_registers_a_version_with_everything_monitoring_needs(stack_env, telco_csv, model_name):
    done = _mlflow_run(stack_env, f"data={telco_csv}", f"model_name={model_name}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    assert [v.version for v in versions] == ["1"]
    version = client.get_model_version(model_name, "1")
    assert version.status == "READY"
    assert version.tags["training_rows"] == "3930" and len(version.tags["data_digest"]) == 16
    run = client.get_run(version.run_id)
    assert run.data.metrics["roc_auc"] >= 0.84
    assert {"pr_auc", "log_loss", "brier", "accuracy", "precision", "recall", "f1"} <= set(run.data.metrics)
    assert run.data.tags.get("mlflow.project.entryPoint") == "train"
    # The launcher logs the default, empty threshold as '': the run's tag says which one applied.
    assert run.data.params["decision_threshold"] == "''" and run.data.tags["decision_threshold"] == "0.5"
    assert version.tags["training_data"] == telco_csv.as_uri()
    # The artifacts went to the S3-compatible store, through the server.
    keys = [o["Key"] for o in stack_env.s3().list_objects_v2(Bucket=stack_env.bucket)["Contents"]]
    assert any(k.endswith("reference/reference.parquet") for k in keys)

    mlflow.set_tracking_uri(stack_env.tracking_uri)
    mlflow.set_registry_uri(stack_env.tracking_uri)
    reference = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=REFERENCE_ARTIFACT)
    )
    train_rows, valid_rows = data.split(data.load(telco_csv), 0.25, 42)
    pd.testing.assert_frame_equal(reference[list(FEATURE_NAMES)], train_rows[list(FEATURE_NAMES)])
    validation = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=VALIDATION_ARTIFACT)
    )
    assert len(validation) == len(valid_rows)

    model = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
    proba = np.asarray(model.predict(valid_rows[list(FEATURE_NAMES)]))[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba, validation["churn_probability"], atol=1e-9)


def test_training_from_an_s3_uri_and_a_missing_bucket(stack_env, telco_csv, model_name):
    stack_env.s3().upload_file(str(telco_csv), stack_env.bucket, "data/telco.csv")
    cli = [sys.executable, "-m", "churn_platform.cli", "train", "--model-name", model_name]
    ok = subprocess.run(
        [*cli, "--data", f"s3://{stack_env.bucket}/data/telco.csv"],
        env=stack_env.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"registered {model_name} version 1" in ok.stdout

    missing = subprocess.run(
        [*cli, "--data", "s3://no-such-bucket/telco.csv"],
        env=stack_env.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    registry = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    assert len(registry.search_model_versions(f"name='{model_name}'")) == 1


def test_mlflow_run_monitor_entry_point_logs_into_the_launched_run(stack_env, model_name, tmp_path):
    from churn_platform.settings import get_settings
    from churn_platform.training import TrainConfig, train

    # 1,050 training rows: a smaller reference is never judged (CHURN_MONITOR_MIN_ROWS).
    train(TrainConfig(n_rows=1400, model_name=model_name), get_settings())
    registry = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    registry.set_registered_model_alias(model_name, "Production", "1")
    data.generate(1000, seed=2).to_csv(tmp_path / "current.csv", index=False)
    cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "monitor", "--env-manager", "local",
           "--experiment-name", "churn-monitoring", "-P", f"current={tmp_path / 'current.csv'}",
           "-P", f"output_dir={tmp_path / 'out'}", "-P", f"model_name={model_name}"]  # fmt: skip
    done = subprocess.run(cmd, env=stack_env.env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "summary.json").exists()
    client = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    experiment = client.get_experiment_by_name("churn-monitoring")
    runs = client.search_runs([experiment.experiment_id], f"tags.model_name = '{model_name}'")
    assert len(runs) == 1 and runs[0].data.tags["mlflow.project.entryPoint"] == "monitor"
    assert runs[0].data.tags["verdict"] == "no_drift" and runs[0].info.status == "FINISHED"


def test_mlflow_run_score_entry_point_records_which_version_scored_and_the_counts(stack_env, model_name, tmp_path):
    """The launched run's parameters said `alias: ""` (Production) and nothing more: which
    model scored the file, once the alias had moved on, was nowhere."""
    from churn_platform.settings import get_settings
    from churn_platform.training import TrainConfig, train

    train(TrainConfig(n_rows=600, model_name=model_name), get_settings())
    registry = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    registry.set_registered_model_alias(model_name, "Production", "1")
    customers = data.generate(200, seed=4)
    customers.loc[7, "tenure"] = -3  # one row the schema rejects
    cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "score", "--env-manager", "local",
           "-P", f"input={tmp_path / 'in.csv'}", "-P", f"output={tmp_path / 'scores.parquet'}",
           "-P", f"model_name={model_name}"]  # fmt: skip
    # A run that failed said why only in the launcher's output: its run says so too.
    done = subprocess.run(cmd, env=stack_env.env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (tmp_path / "scores.parquet").exists()
    [failed] = registry.search_runs(["0"], f"tags.error LIKE '%{tmp_path}%'")
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith("exit 2: error: "), failed.data.tags
    customers.to_csv(tmp_path / "in.csv", index=False)
    done = subprocess.run(cmd, env=stack_env.env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "199 of 200 rows scored" in done.stdout + done.stderr, done.stderr[-3000:]
    assert len(pd.read_parquet(tmp_path / "scores.parquet")) == 199
    runs = registry.search_runs(["0"], f"tags.model_name = '{model_name}'")  # the training run too
    [run] = [run for run in runs if run.data.tags.get("mlflow.project.entryPoint") == "score"]
    assert run.data.tags["model_version"] == "1"
    assert {k: run.data.metrics[k] for k in ("rows", "rows_scored", "rows_rejected")} == \
        {"rows": 200, "rows_scored": 199, "rows_rejected": 1}
