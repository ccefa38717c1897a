"""Training on the embedded default (SQLite registry, local artifacts)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data, registry
from churn_platform.cli import main
from churn_platform.contract import (
    GLOBAL_IMPORTANCE_ARTIFACT,
    GLOBAL_IMPORTANCE_PLOT,
    TAG_IMPORTANCE_UNAVAILABLE,
    VALIDATION_METRICS,
)
from churn_platform.schema import FEATURE_NAMES, LABEL_COLUMN
from churn_platform.settings import get_settings
from churn_platform.training import REFERENCE_ARTIFACT, TrainConfig, train
from tests.services import REPO, free_port


def _registered_versions(uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_model_versions(f"name='{name}'")


@pytest.mark.parametrize("model_type", ["logistic", "hist_gradient_boosting"])
def test_training_registers_a_loadable_version(embedded, model_name, model_type):
    result = train(TrainConfig(n_rows=1500, model_type=model_type, model_name=model_name), get_settings())
    client = MlflowClient()
    version = client.get_model_version(model_name, str(result.version))
    assert version.status == "READY"
    assert {"data_digest", "training_rows", "roc_auc", "decision_threshold", "model_type"} <= set(version.tags)
    assert version.tags["model_type"] == model_type
    # churn-platform's own commit, though the command runs in another folder (embedded: a tmp folder).
    here = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO)
    assert version.tags["git_commit"] == here.stdout.strip()
    run = client.get_run(result.run_id)
    for metric in VALIDATION_METRICS:  # the performance job's baseline
        assert metric in run.data.metrics
    assert run.data.metrics["roc_auc"] > 0.7
    # First version: no champion, so the gate passes unchecked, and there is nothing to challenge.
    assert result.gate.passed and not result.gate.checked
    assert registry.CHALLENGER_ALIAS not in client.get_registered_model(model_name).aliases
    assert version.tags["training_data"] == "synthetic(seed=42)"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "reference")}
    assert REFERENCE_ARTIFACT in artifacts
    explained = {a.path for a in client.list_artifacts(result.run_id, "explanations")}
    assert explained == {GLOBAL_IMPORTANCE_ARTIFACT, GLOBAL_IMPORTANCE_PLOT}
    importance = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/{GLOBAL_IMPORTANCE_ARTIFACT}"))
    assert importance["method"] == {"logistic": "linear", "hist_gradient_boosting": "tree_shap"}[model_type]
    assert sorted(f["feature"] for f in importance["features"]) == sorted(FEATURE_NAMES)
    values = [f["mean_abs_contribution"] for f in importance["features"]]
    assert values == sorted(values, reverse=True) and values[0] > 0
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{result.version}")
    frame = data.generate(20, seed=99)
    proba = np.asarray(model.predict(frame[list(FEATURE_NAMES)]))
    assert proba.shape == (20, 2) and ((proba >= 0) & (proba <= 1)).all()


def test_an_explainer_that_breaks_costs_the_global_importance_not_the_run(embedded, model_name, monkeypatch):
    """Serving treats explanations as optional; training failed the whole run (exit 70, nothing
    registered) when shap could not explain the model."""
    from churn_platform import explanation

    def broken(*args, **kwargs):
        raise explanation.ExplanationUnavailable("shap cannot explain HistGradientBoostingClassifier: numba")

    monkeypatch.setattr(explanation, "Explainer", broken)
    result = train(TrainConfig(n_rows=500, model_name=model_name), get_settings())
    client = MlflowClient()
    assert client.get_model_version(model_name, str(result.version)).status == "READY"
    run = client.get_run(result.run_id)
    assert "shap cannot explain" in run.data.tags[TAG_IMPORTANCE_UNAVAILABLE]
    assert not client.list_artifacts(result.run_id, "explanations")


def test_reference_artifact_holds_the_training_rows(embedded, model_name, caplog):
    with caplog.at_level("WARNING", logger="churn_platform.training"):
        result = train(TrainConfig(n_rows=600, model_name=model_name), get_settings())
    # 450 training rows: the monitor will refuse them as a reference; said now, not at its first run
    assert "training on 450 rows: the drift monitor needs at least 1000" in caplog.text
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=REFERENCE_ARTIFACT)
    reference = pd.read_parquet(path)
    frame = data.generate(600, seed=42)
    train_rows, _ = data.split(frame, 0.25, 42)
    pd.testing.assert_frame_equal(reference[list(FEATURE_NAMES)], train_rows[list(FEATURE_NAMES)])
    # The labels, and scores of those rows by models that did not learn them: the prediction-drift
    # reference. Not the model's own: it scores rows it learned more confidently than new customers.
    assert reference["churn"].tolist() == train_rows["churn"].tolist()
    model = mlflow.sklearn.load_model(f"models:/{model_name}/{result.version}")
    scores = model.predict_proba(train_rows[list(FEATURE_NAMES)])[:, 1]
    oof = reference["churn_probability"]
    assert oof.between(0, 1).all() and not np.allclose(oof, scores)
    assert np.corrcoef(oof, scores)[0, 1] > 0.8  # the same model's ranking, near enough


def test_an_overfit_version_fed_its_own_held_out_customers_is_no_prediction_drift(embedded, model_name, telco_csv,
                                                                                 tmp_path):  # fmt: skip
    """Its reference held its own scores of its training rows, more confident than on anyone
    new: this version, fed its held-out Telco customers (no drift by construction), measured a
    prediction distance of 0.10 and was called drifted (exit 1: a retrain trigger)."""
    from churn_platform.training import VALIDATION_ARTIFACT

    config = TrainConfig(data=str(telco_csv), model_name=model_name, model_type="hist_gradient_boosting",
                         max_depth=6, max_iter=300, learning_rate=0.1, validation_size=0.3)  # 1,000 held out
    result = train(config, get_settings())
    held_out = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=VALIDATION_ARTIFACT)
    out = tmp_path / "drift"
    monitored = CliRunner().invoke(main, ["monitor", "--model-name", model_name, "--version", str(result.version),
                                          "--current", held_out, "--output-dir", str(out)])  # fmt: skip
    assert monitored.exit_code == 0, monitored.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prediction_drift"]["score"] < 0.07, summary["prediction_drift"]


def test_an_allowed_value_no_training_row_has_is_warned_of(embedded, model_name, telco_csv, tmp_path, caplog):
    """The encoder learns its columns from the rows: a file of one segment (no customer paying
    by mailed check) trained a model that scores such customers as if they had no payment method."""
    raw = data.read_table(telco_csv)
    segment = tmp_path / "segment.csv"
    raw[raw["payment_method"] != "Mailed check"].to_csv(segment, index=False)
    with caplog.at_level("WARNING", logger="churn_platform.training"):
        train(TrainConfig(data=str(segment), model_name=model_name), get_settings())
    assert "no training row has payment_method ['Mailed check']: the model learns no weight for it" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="churn_platform.training"):
        train(TrainConfig(data=str(telco_csv), model_name=model_name), get_settings())
    assert "no training row has" not in caplog.text  # every value is in the real customers


def test_real_data_reaches_the_target_auc(embedded, model_name, telco_csv):
    started = time.perf_counter()
    result = train(TrainConfig(data=str(telco_csv), model_name=model_name), get_settings())
    elapsed = time.perf_counter() - started
    print(f"telco default training: roc_auc={result.metrics['roc_auc']:.4f} in {elapsed:.1f}s")
    assert result.metrics["roc_auc"] >= 0.84


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_with_no_production_train_says_no_challenger_was_set(embedded, model_name):
    """It printed "passed -> Challenger" for a version that got no alias."""
    said = _cli("train", "--n-rows", "300", "--model-name", model_name)
    assert "gate: passed, no Challenger (promote it by number): no version holds Production" in said.output
    answer = json.loads(_cli("train", "--n-rows", "300", "--model-name", model_name, "--json").stdout)
    assert (answer["challenger"], answer["gate"]["passed"], answer["gate"]["checked"]) == (False, True, False)


def test_a_synthetic_model_never_replaces_one_trained_on_customers(embedded, model_name, telco_csv):
    """`train` without --data trains on synthetic customers and validates on them too: it beat a
    Production trained on the Telco data on those rows, took Challenger, and `promote` moved
    Production to it without --force."""
    settings = get_settings()
    real = train(TrainConfig(data=str(telco_csv), model_name=model_name), settings)
    client = MlflowClient()
    assert client.get_model_version(model_name, str(real.version)).tags["training_data"] == telco_csv.as_uri()
    assert _cli("promote", "--version", str(real.version), "--model-name", model_name).exit_code == 0
    fake = train(TrainConfig(n_rows=1500, model_name=model_name), settings)
    assert not fake.gate.passed and "trained on synthetic customers" in fake.gate.reason
    assert set(client.get_registered_model(model_name).aliases) == {"Production"}  # no Challenger
    refused = _cli("promote", "--version", str(fake.version), "--model-name", model_name)
    assert refused.exit_code == 1 and "trained on synthetic customers" in refused.output
    assert _cli("promote", "--version", str(fake.version), "--model-name", model_name, "--force").exit_code == 0
    # Synthetic over synthetic is compared as before (the demo, the quick start).
    again = train(TrainConfig(n_rows=1500, seed=7, model_name=model_name), settings)
    assert again.gate.checked and "trained on synthetic" not in again.gate.reason


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda f: f.drop(columns=["contract"]), "missing required columns: ['contract']"),
        (
            lambda f: f.assign(tenure=["x"] + list(f.tenure[1:])),
            "column 'tenure': 1 non-numeric values, row 1: 'x'",
        ),
        (
            lambda f: f.assign(internetservice=["Satellite"] + list(f.internetservice[1:])),
            "allowed values: ['DSL', 'Fiber optic', 'No']",
        ),
    ],
)
def test_bad_data_fails_with_one_message_and_registers_nothing(
    embedded, model_name, telco_csv, tmp_path, mutate, expected
):
    frame = mutate(pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(300))
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    result = _cli("train", "--data", str(path), "--model-name", model_name)
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert _registered_versions(embedded, model_name) == []


def test_missing_file_and_empty_file(embedded, model_name, tmp_path):
    result = _cli("train", "--data", str(tmp_path / "absent.csv"), "--model-name", model_name)
    assert result.exit_code == 2 and "data file not found" in result.output
    (tmp_path / "empty.csv").write_text("")
    result = _cli("train", "--data", str(tmp_path / "empty.csv"), "--model-name", model_name)
    assert result.exit_code == 2 and "data file is empty" in result.output
    assert _registered_versions(embedded, model_name) == []


def test_a_data_file_with_a_colon_in_its_name_registers_a_version(embedded, model_name, telco_csv, tmp_path):
    """MLflow reads ``customers:`` in a relative path as a URI scheme; the file is still a local file."""
    path = tmp_path / "customers:v2.csv"  # `embedded` runs the test in tmp_path
    pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(600).to_csv(path, index=False)
    result = _cli("train", "--data", "customers:v2.csv", "--model-name", model_name)
    assert result.exit_code == 0, result.output
    registered = _registered_versions(embedded, model_name)
    assert [int(v.version) for v in registered] == [1]
    run = MlflowClient().get_run(registered[0].run_id)
    sources = {json.loads(d.dataset.source)["uri"] for d in run.inputs.dataset_inputs}
    assert sources == {path.resolve().as_uri()}


def test_unreachable_tracking_server_fails_fast(embedded, model_name):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    result = _cli("train", "--n-rows", "200", "--tracking-uri", dead, "--model-name", model_name)
    assert result.exit_code == 3
    assert f"MLflow tracking server at {dead} is unreachable" in result.output
    assert time.perf_counter() - started < 30


def test_an_s3_artifact_store_that_does_not_answer_is_exit_3(embedded, model_name, setenv):
    """An experiment whose artifact root is s3:// uploads through boto3 from this process: its
    EndpointConnectionError was a traceback and exit 70, where README promises 3 (retry)."""
    MlflowClient().create_experiment("s3-artifacts", artifact_location="s3://bucket/artifacts")
    setenv(MLFLOW_EXPERIMENT_NAME="s3-artifacts", MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:9",
           AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_MAX_ATTEMPTS="1")  # fmt: skip
    result = _cli("train", "--n-rows", "200", "--model-name", model_name)
    assert result.exit_code == 3, result.output
    assert "artifact store at http://127.0.0.1:9 is unreachable" in result.output and "Traceback" not in result.output
    assert MlflowClient().search_registered_models() == []  # nothing registered


def test_a_version_validated_on_too_few_rows_is_no_challenger_and_promote_refuses_it(embedded, model_name):
    """A version trained on 80 customers beat Production on its 20 validation rows, became the
    Challenger and was promoted without --force, though worse on Production's own held-out rows."""
    assert train(TrainConfig(n_rows=1500, model_name=model_name), get_settings()).gate.passed
    MlflowClient().set_registered_model_alias(model_name, "Production", "1")
    small = train(TrainConfig(n_rows=200, seed=3, model_name=model_name), get_settings())  # 50 validation rows
    assert not small.gate.passed and "50 validation rows (" in small.gate.reason
    assert "are too few to judge against Production v1 (at least 100, 20 of each class)" in small.gate.reason
    assert "Challenger" not in MlflowClient().get_registered_model(model_name).aliases
    refused = CliRunner().invoke(main, ["promote", "--version", "2", "--model-name", model_name, "--reason", "t"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output, refused.output
    assert "50 validation rows are too few to judge against Production v1" in refused.output
    # Figures an earlier release recorded on those 50 rows, a win against today's Production: refused all the same.
    MlflowClient().set_model_version_tag(model_name, "2", "gate_figures", json.dumps(
        {"production_version": 1, "candidate": 0.95, "production": 0.93, "compared_on": "this run's validation rows"}
    ))  # fmt: skip
    refused = CliRunner().invoke(main, ["promote", "--version", "2", "--model-name", model_name, "--reason", "t"])
    assert refused.exit_code != 0 and "50 validation rows are too few" in refused.output, refused.output
    forced = CliRunner().invoke(main, ["promote", "--version", "2", "--model-name", model_name, "--reason", "t",
                                       "--force"])  # fmt: skip
    assert forced.exit_code == 0, forced.output
    assert MlflowClient().get_registered_model(model_name).aliases["Production"] == 2


def test_a_production_the_gate_cannot_load_for_a_store_away_is_exit_3_and_registers_nothing(
    embedded, model_name, setenv
):
    """An object store that does not answer is no verdict: the version was registered "could not
    score Production" with exit 0, and a scheduled retrain reported it as a gate refusal."""
    client = MlflowClient()
    client.create_registered_model(model_name)
    client.create_model_version(model_name, "s3://bucket/models/m-1")
    client.set_registered_model_alias(model_name, "Production", "1")
    setenv(MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
           AWS_MAX_ATTEMPTS="1")  # fmt: skip
    result = _cli("train", "--n-rows", "600", "--model-name", model_name)  # enough validation rows to judge on
    assert result.exit_code == 3, result.output
    assert "could not load Production v1 to gate this run (nothing registered)" in result.output
    assert "Traceback" not in result.output
    assert [int(v.version) for v in _registered_versions(embedded, model_name)] == [1]


def test_a_launchers_run_missing_from_the_store_is_a_usage_error_before_the_fit(embedded, model_name, setenv,
                                                                                 tmp_path, monkeypatch):  # fmt: skip
    """`mlflow run ../project` with MLFLOW_TRACKING_URI=sqlite:///mlflow.db: the launcher made its
    run in the folder it started from, the training opened the project folder's file: the fit
    ran, then "Run ... not found" was exit 70, and an empty registry was left there."""
    monkeypatch.chdir(tmp_path)
    setenv(MLFLOW_TRACKING_URI="sqlite:///mlflow.db", MLFLOW_RUN_ID="0123456789abcdef0123456789abcdef")
    result = _cli("train", "--n-rows", "600", "--model-name", model_name)
    assert result.exit_code == 2, result.output
    assert "MLFLOW_RUN_ID=0123456789abcdef0123456789abcdef, the run `mlflow run` made, is not in the tracking " \
           "store sqlite:///mlflow.db; a relative sqlite:/// MLFLOW_TRACKING_URI opens a file" in result.output


def test_a_deleted_or_unknown_experiment_is_a_usage_error_before_the_fit(embedded, model_name, setenv, monkeypatch):
    """MLflow refused the run only at start_run, after the fit: exit 70 and a "bug" traceback."""
    client = MlflowClient()
    client.delete_experiment(client.create_experiment("old-tuning"))
    setenv(MLFLOW_EXPERIMENT_NAME="old-tuning")
    result = _cli("train", "--n-rows", "200", "--model-name", model_name)
    assert result.exit_code == 2, result.output
    assert "MLflow experiment 'old-tuning' (id " in result.output and "is deleted: restore it" in result.output
    assert "MLFLOW_EXPERIMENT_NAME" in result.output
    # Set but empty (compose's ${VAR} with VAR unset): MLflow tried to create an experiment named ''.
    setenv(MLFLOW_EXPERIMENT_NAME=" ")
    result = _cli("train", "--n-rows", "200", "--model-name", model_name)
    assert result.exit_code == 2 and "MLFLOW_EXPERIMENT_NAME is set but empty" in result.output, result.output
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    setenv(MLFLOW_EXPERIMENT_ID="4242")
    result = _cli("train", "--n-rows", "200", "--model-name", model_name)
    assert result.exit_code == 2 and "MLFLOW_EXPERIMENT_ID=4242: no such MLflow experiment" in result.output
    # Both set, naming two experiments: MLflow refused the run at start_run, after the fit (exit 70).
    setenv(MLFLOW_EXPERIMENT_NAME="tuning", MLFLOW_EXPERIMENT_ID="0")
    tuning = client.create_experiment("tuning")
    result = _cli("train", "--n-rows", "200", "--model-name", model_name)
    assert result.exit_code == 2, result.output
    assert f"MLFLOW_EXPERIMENT_NAME=tuning is experiment {tuning}, but MLFLOW_EXPERIMENT_ID=0" in result.output
    assert _registered_versions(embedded, model_name) == []


def test_the_gate_leaves_out_the_rows_production_was_trained_on(embedded, model_name, telco_csv):
    """The same boosting configuration with another seed: three quarters of its validation rows
    were Production's training rows, Production scored 0.02 above it there and the gate refused
    a version whose own figure was as good."""
    settings = get_settings()
    config = dict(data=str(telco_csv), model_name=model_name, model_type="hist_gradient_boosting")
    first = train(TrainConfig(**config), settings)
    assert _cli("promote", "--version", str(first.version), "--model-name", model_name).exit_code == 0
    second = train(TrainConfig(**config, seed=7), settings)
    verdict = second.gate
    assert verdict.checked and verdict.passed, verdict.reason
    left_out = re.search(r"less the (\d+) Production v1 was trained on", verdict.compared_on)
    assert left_out and 600 < int(left_out[1]) < 983, verdict.compared_on  # about 3/4 of the 983
    assert abs(verdict.production - verdict.candidate) < 0.01, verdict  # like for like: no 0.02 head start
    # The same seed and split: only the few validation rows identical to a training row (features and
    # label: the same customer as far as a model can tell) are left out.
    third = train(TrainConfig(**config), settings)
    assert int(re.search(r"less the (\d+) ", third.gate.compared_on)[1]) < 10, third.gate.compared_on
    # Production trained on 95 % of the file: the few rows it never saw are too few to judge on alone.
    wide = train(TrainConfig(**config, validation_size=0.05), settings)
    assert _cli("promote", "--version", str(wide.version), "--model-name", model_name, "--force").exit_code == 0
    fourth = train(TrainConfig(**config, seed=7), settings)
    assert "Production v4's training rows, kept:" in fourth.gate.compared_on, fourth.gate.compared_on
    # Its training rows gone from its run (deleted from the store): the verdict says none were left out.
    run = MlflowClient().get_run(wide.run_id)
    (Path(run.info.artifact_uri.removeprefix("file://")) / REFERENCE_ARTIFACT).unlink()
    fifth = train(TrainConfig(**config, seed=7), settings)
    assert "none left out: Production v4's run kept no readable" in fifth.gate.compared_on, fifth.gate.compared_on


def test_a_customer_production_learned_from_counts_as_seen_whatever_the_outcome_now(embedded, model_name, telco_csv):
    """A retrain's gate rows carry today's outcomes: matched on features and label, the
    customers whose outcome had changed stayed in (Production, having learned the old one, got
    them wrong), the others went, and Production was judged on a slice of its own mistakes."""
    from churn_platform.training import _trained_on

    first = train(TrainConfig(data=str(telco_csv), model_name=model_name), get_settings())
    production = MlflowClient().get_model_version(model_name, str(first.version))
    seen = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=production.run_id,
                                                               artifact_path=REFERENCE_ARTIFACT))  # fmt: skip
    today = seen.head(300).copy()
    today[LABEL_COLUMN] = 1 - today[LABEL_COLUMN]  # every outcome changed since
    unseen = data.generate(50, seed=9)
    marks = _trained_on(production, pd.concat([today, unseen], ignore_index=True))
    assert marks is not None and marks[:300].all() and not marks[300:].any()
