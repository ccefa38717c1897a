"""The drift reference read from an S3 store that answers "later" (503 SlowDown): an outage
to retry (exit 3), not a run without reference data (exit 2); a damaged one is exit 2."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

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
