"""A monitor run whose MLflow run cannot be recorded (the artifact store away) still tells
the team of its verdict, and leaves no verdict for ``retrain --if drift`` to count."""

from __future__ import annotations

from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data
from churn_platform.cli import main
from churn_platform.processes import free_port
from tests.conftest import mlflow_uris_restored
from tests.unit.conftest import registry_copy


def test_a_drift_verdict_mlflow_cannot_record_still_reaches_the_webhook(registry_uri, tmp_path, setenv, webhook):
    uri = registry_copy(registry_uri, tmp_path)  # the run is recorded: keep the session's registry as it was
    setenv(MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="test",  # nothing listens
           AWS_SECRET_ACCESS_KEY="test", CHURN_MONITOR_EXPERIMENT="monitoring-to-dead-store")  # fmt: skip
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("monitoring-to-dead-store", artifact_location="s3://reports/monitoring")
    drifted = tmp_path / "drifted.csv"
    data.generate(1500, seed=7, drift=True).drop(columns=["churn"]).to_csv(drifted, index=False)
    hook, posted = webhook

    run = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--current", str(drifted), "--alert-webhook",
                                    hook, "--output-dir", str(tmp_path / "report")])  # fmt: skip

    assert run.exit_code == 3 and "Traceback" not in run.output, run.output  # unreachable: retried
    assert [p["verdict"] for p in posted] == ["drift"]  # the team hears of it all the same
    (made,) = client.search_runs([experiment])
    assert "verdict" not in made.data.tags  # nothing for `retrain --if drift` to count


def test_a_launched_run_in_another_experiment_is_refused_before_the_work(registry_uri, tmp_path, setenv):
    """`mlflow run . -e monitor` without --experiment-name: MLflow's run (Default) took the
    verdict, where neither `retrain --if drift` nor the UI's history looks, and nothing said so."""
    uri = registry_copy(registry_uri, tmp_path)  # a run is made: keep the session's registry as it was
    client = MlflowClient(uri, uri)
    launched = client.create_run("0")  # as `mlflow run` makes one in Default
    setenv(MLFLOW_RUN_ID=launched.info.run_id)
    current = tmp_path / "current.csv"
    data.generate(300, seed=7).drop(columns=["churn"]).to_csv(current, index=False)

    run = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--current", str(current), "--output-dir",
                                    str(tmp_path / "report")])  # fmt: skip
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert "this MLflow run is in experiment 'Default', but verdicts belong in 'churn-monitoring'" in run.output
    assert "--experiment-name churn-monitoring" in run.output
    assert client.get_run(launched.info.run_id).data.metrics == {}  # no verdict went there


def test_two_first_runs_at_once_both_record_in_the_experiment_one_of_them_made(embedded, tmp_path, monkeypatch):
    """On a fresh registry both runs found no experiment; the one whose create came second got
    RESOURCE_ALREADY_EXISTS and exited 70 with its verdict computed."""
    import mlflow

    from monitoring import runs

    real = runs.live_experiment
    calls = []

    def none_yet_then_real(client, experiment):  # the other run creates it between look and create
        calls.append(experiment)
        if len(calls) == 1:
            MlflowClient(embedded).create_experiment(experiment)
            return None
        return real(client, experiment)

    monkeypatch.setattr(runs, "live_experiment", none_yet_then_real)
    with mlflow_uris_restored():
        mlflow.set_tracking_uri(embedded)
        run_id = runs.record_run("fresh-monitoring", "drift-now", {"verdict": "no_drift"}, {"drift_share": 0.0}, [])
    client = MlflowClient(embedded)
    assert client.get_run(run_id).info.experiment_id == client.get_experiment_by_name("fresh-monitoring").experiment_id


def test_two_runs_in_one_second_get_folders_of_their_own(tmp_path):
    """The default reports/drift/<second> was shared: each run overwrote the other's report."""
    from monitoring.runs import run_folder

    first, second = (run_folder(tmp_path / "drift", "20261208T004500Z") for _ in range(2))
    assert (first.name, second.name) == ("20261208T004500Z", "20261208T004500Z-2")
    assert first.is_dir() and second.is_dir()
