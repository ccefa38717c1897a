"""The drift reference read from an S3 store that answers "later" (503 SlowDown): an outage
to retry (exit 3), not a run without reference data (exit 2); a damaged one is exit 2."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import numpy as np
import pandas as pd
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data
from churn_platform.cli import main
from tests.services import http_server

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")  # fmt: skip


class Throttled(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(SLOW_DOWN)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(SLOW_DOWN)

    do_GET = do_HEAD = do_PUT = do_POST = _answer  # noqa: N815 - http.server's naming

    def log_message(self, *args):
        pass


def test_a_throttled_reference_store_is_an_outage_not_missing_reference_data(embedded, tmp_path, setenv):
    client = MlflowClient(embedded, embedded)  # not a registry URI another test left set
    experiment = client.create_experiment("trained-on-s3", artifact_location="s3://models/trained")
    run = client.create_run(experiment)  # a training run whose artifacts (the reference) are on S3
    client.create_registered_model("churn")
    client.create_model_version("churn", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    data.generate(1200, seed=3).drop(columns=["churn"]).to_csv(tmp_path / "current.csv", index=False)
    with http_server(Throttled) as store:
        setenv(MLFLOW_S3_ENDPOINT_URL=store, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_MAX_ATTEMPTS="1")  # fmt: skip
        args = ["--version", "1", "--current", str(tmp_path / "current.csv"), "--output-dir", str(tmp_path / "r")]
        result = CliRunner().invoke(main, ["monitor", "--tracking-uri", embedded, *args])
    assert result.exit_code == 3, result.output
    assert "the artifact store is unreachable" in result.output and "no reference data" not in result.output


def test_a_damaged_reference_is_named_exit_2_not_a_traceback(embedded, tmp_path):
    """pyarrow's "magic bytes not found" was exit 70, "a bug", retried by the CronJob for ever."""
    client = MlflowClient(embedded, embedded)
    experiment = client.create_experiment("damaged", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    (tmp_path / "reference.parquet").write_bytes(b"not a parquet file")
    client.log_artifact(run.info.run_id, str(tmp_path / "reference.parquet"), artifact_path="reference")
    client.create_registered_model("churn")
    client.create_model_version("churn", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    data.generate(1200, seed=3).drop(columns=["churn"]).to_csv(tmp_path / "current.csv", index=False)
    args = ["--version", "1", "--current", str(tmp_path / "current.csv"), "--output-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(main, ["monitor", "--tracking-uri", embedded, *args])
    assert result.exit_code == 2, result.output
    assert "the reference data of churn v1" in result.output and "is unreadable" in result.output
    assert "Traceback" not in result.output


def _version_with_reference(client: MlflowClient, folder, reference: pd.DataFrame) -> None:
    experiment = client.create_experiment("by-hand", artifact_location=str(folder / "artifacts"))
    run = client.create_run(experiment)
    reference.to_parquet(folder / "reference.parquet", index=False, row_group_size=1000)
    client.log_artifact(run.info.run_id, str(folder / "reference.parquet"), artifact_path="reference")
    client.create_registered_model("churn")
    client.create_model_version("churn", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


def _scored(rows: int, seed: int) -> pd.DataFrame:
    """Rows with their scores, as `score --with-features` writes them: nothing to load to score them."""
    frame = data.generate(rows, seed=seed).drop(columns=["customer_id", "churn"])
    scores = np.random.default_rng(seed).uniform(0, 1, rows)
    return frame.assign(churn_probability=scores)


def _monitor(embedded: str, tmp_path, *options: str):
    current = _scored(3000, seed=2).assign(model_name="churn", model_version=1)
    current.to_csv(tmp_path / "current.csv", index=False)
    args = ["--version", "1", "--current", str(tmp_path / "current.csv"), "--output-dir", str(tmp_path / "r")]
    return CliRunner().invoke(main, ["monitor", "--tracking-uri", embedded, *args, *options])


def test_a_reference_typed_otherwise_is_compared_as_the_current_rows_are(embedded, tmp_path):
    """Flags stored as 0.0/1.0 were compared as the categories "0.0" and "1.0" with the current
    rows' "0" and "1" (drift on every flag); charges stored as text failed in Evidently."""
    reference = _scored(3000, seed=1)
    for flag in ("senior_citizen",):
        reference[flag] = reference[flag].astype("float64")
    reference["total_charges"] = reference["total_charges"].map(lambda v: f"{v:.2f}")
    _version_with_reference(MlflowClient(embedded, embedded), tmp_path, reference)
    result = _monitor(embedded, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["verdict"] == "no_drift" and summary["drifted_columns"] == []
    assert summary["reference_rows"] == 3000 and summary["reference_sampled"] is None


def test_a_reference_past_the_row_limit_is_sampled_and_said(embedded, tmp_path, setenv):
    _version_with_reference(MlflowClient(embedded, embedded), tmp_path, _scored(6000, seed=1))
    setenv(CHURN_MONITOR_MAX_ROWS="2500")
    result = _monitor(embedded, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["reference_rows"] == 2500
    assert summary["reference_sampled"] == {"rows": 2500, "of": 6000, "seed": 0}
    page = (tmp_path / "r" / "report.html").read_text()
    assert "a seeded sample of 2,500 of 6,000 training rows" in page
    text = _monitor(embedded, tmp_path)
    assert "reference 2500 rows sampled of 6000" in text.output, text.output


def test_a_reference_the_schema_refuses_is_named_exit_2(embedded, tmp_path):
    reference = _scored(3000, seed=1)
    reference.loc[:4, "tenure"] = -3
    _version_with_reference(MlflowClient(embedded, embedded), tmp_path, reference)
    result = _monitor(embedded, tmp_path)
    assert result.exit_code == 2, result.output
    assert "the reference data of churn v1" in result.output and "fails the data checks" in result.output
    assert "'tenure'" in result.output and "Traceback" not in result.output


def test_an_empty_reference_says_the_version_was_trained_on_no_rows(embedded, tmp_path):
    """Not the current rows' check "the current window has no rows" said of the reference."""
    _version_with_reference(MlflowClient(embedded, embedded), tmp_path, _scored(50, seed=1).iloc[:0])
    result = _monitor(embedded, tmp_path)
    assert result.exit_code == 2 and "v1 was trained on only 0 rows" in result.output, result.output
    assert "current window" not in result.output
