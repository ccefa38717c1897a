"""The batch jobs push their results to a real Pushgateway (Debian's prometheus-pushgateway,
installed by scripts/ensure-prometheus.sh), and a gateway that is down changes nothing."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from churn_platform import data
from churn_platform.cli import main
from churn_platform.inference_log import COLUMNS, sqlite_time, upgrade
from churn_platform.processes import free_port
from churn_platform.schema import FEATURE_NAMES, ID_COLUMN
from churn_platform.settings import get_settings
from tests.services import http_server, start_process, wait_http
from tests.unit.conftest import registry_copy


@pytest.fixture
def gateway(tmp_path):
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:  # never a skip: CI must prove the push
        pytest.fail("prometheus-pushgateway missing: run scripts/ensure-prometheus.sh (make test does)")
    port = free_port()
    # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: every test's
    # gateway then started with what earlier tests (and runs) had pushed.
    process = start_process("pushgateway", [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                            tmp_path)  # fmt: skip
    try:
        wait_http(process, f"http://127.0.0.1:{port}/-/ready", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def pushed(url: str) -> dict[tuple[str, frozenset], float]:
    """The gateway's samples of our jobs: (name, labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("churn_")}  # fmt: skip


def value(samples: dict, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def log_rows(url: str, customers: pd.DataFrame, version: int = 1) -> None:
    """``customers`` as Production (``version``) scored them an hour ago, in the inference log."""
    at = sqlite_time(datetime.now(UTC) - timedelta(hours=1))
    rows = [(f"r{i // 100}", i % 100, at, "churn", version, "production", 0.1, *r, 0.5)
            for i, r in enumerate(customers[[ID_COLUMN, *FEATURE_NAMES]].itertuples(index=False))]  # fmt: skip
    engine = sa.create_engine(url)
    upgrade(engine)
    marks = ", ".join("?" * len(COLUMNS))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO inference_log ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
    engine.dispose()


def scheduled_jobs(registry_uri: str, tmp_path, monkeypatch, gateway: str) -> tuple[str, str]:
    """A copy of the session's registry (the jobs record runs: it stays as it was) and an
    inference log, the jobs pushing to ``gateway``: their URIs."""
    uri = registry_copy(registry_uri, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", gateway)
    monkeypatch.setenv("CHURN_INFERENCE_LOG_URL", log_url := f"sqlite:///{tmp_path}/log.db")
    get_settings.cache_clear()
    return uri, log_url


def test_monitor_and_score_push_their_results_and_a_failure_keeps_the_last_success(
    registry_uri, telco_csv, tmp_path, monkeypatch, gateway, caplog, webhook
):  # fmt: skip
    uri, log_url = scheduled_jobs(registry_uri, tmp_path, monkeypatch, gateway)
    hook, posted = webhook
    monkeypatch.setenv("CHURN_MONITOR_ALERT_WEBHOOK", hook)
    get_settings.cache_clear()
    log_rows(log_url, data.generate(1500, seed=7, drift=True))

    # The CronJob's run: Production's latest traffic.
    monitor = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--last-hours", "24",
                                        "--output-dir", str(tmp_path / "report")])  # fmt: skip
    assert monitor.exit_code == 1, monitor.output  # drift
    # The page says which rows it judged (after a rollback a version's latest can be months old).
    page = (tmp_path / "report" / "report.html").read_text()
    assert re.search(r"1,500 rows read from the inference log; scored 20\d\d-\S+ \.\. 20\d\d-\S+; scores logged", page)
    samples = pushed(gateway)
    job = {"job": "monitor", "model_name": "churn"}
    assert value(samples, "churn_monitor_dataset_drift", **job) == 1
    assert value(samples, "churn_monitor_drift_share", **job) >= 0.15
    assert value(samples, "churn_monitor_drifted_columns", **job) >= 1
    assert value(samples, "churn_monitor_prediction_drift", **job) == 1  # every logged score 0.5, unlike training's
    assert value(samples, "churn_monitor_rows", **job) == 1500
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    tags = MlflowClient(uri).get_run(summary["mlflow_run_id"]).data.tags
    assert tags["window.start"] == summary["window"]["scored_from"] > "2026", tags  # its first row's time
    assert value(samples, "churn_job_exit_code", **job) == 1
    assert value(samples, "churn_job_duration_seconds", **job) > 0
    assert value(samples, "churn_job_last_success_timestamp_seconds", **job) == value(
        samples, "churn_job_last_run_timestamp_seconds", **job
    )
    assert [p["verdict"] for p in posted] == ["drift"] and posted[0]["adhoc"] is None  # the team hears of it
    # A run over a file (or another version, or an old window) neither clears the drift alert nor
    # stands in for the CronJob's last success: it pushes nothing, and says so.
    clean = tmp_path / "clean.csv"
    data.generate(1500, seed=8).drop(columns=["churn"]).to_csv(clean, index=False)
    caplog.set_level(logging.INFO, logger="churn_platform.job_metrics")
    # Nor does one whose options are wrong (exit 2): its exit code would clear the drift alert.
    for adhoc in (["--current", str(clean)], ["--version", "1"], ["--current", str(clean), "--since", "2026-01-01"]):
        run = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, *adhoc, "--output-dir", str(tmp_path / "r")])
        assert run.exit_code in (0, 1, 2) and "Traceback" not in run.output, run.output
        assert pushed(gateway) == samples, adhoc
    run = CliRunner().invoke(main, ["performance", "--tracking-uri", uri, "--version", "1", "--since", "2026-01-01",
                                    "--last-days", "3"])  # fmt: skip
    assert run.exit_code == 2 and "not both" in run.output, run.output
    assert not [labels for _, labels in pushed(gateway) if ("job", "performance") in labels]
    assert "monitor's metrics are not pushed (--current " in caplog.text
    assert len(posted) == 1  # nor did the team's webhook hear of the investigations (--version 1 drifted)
    run = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--version", "1", "--alert-webhook", hook,
                                    "--output-dir", str(tmp_path / "r")])  # fmt: skip
    assert run.exit_code == 1 and posted[-1]["adhoc"] == "--version 1", run.output  # unless it was told to

    customers = data.load(telco_csv).drop(columns=["churn"]).head(300).astype(str)
    customers.loc[7, "tenure"] = "seven"
    customers.to_csv(tmp_path / "customers.csv", index=False)
    args = ["score", "--tracking-uri", uri, "--no-progress", "--output", str(tmp_path / "scores.parquet")]
    scored = CliRunner().invoke(main, [*args, "--input", str(tmp_path / "customers.csv")])
    assert scored.exit_code == 1, scored.output  # one rejected row
    samples = pushed(gateway)
    job = {"job": "score", "model_name": "churn"}
    assert value(samples, "churn_job_rows", outcome="scored", **job) == 299
    assert value(samples, "churn_job_rows", outcome="rejected", **job) == 1
    succeeded = value(samples, "churn_job_last_success_timestamp_seconds", **job)

    for other in (["--version", "1"], ["--alias", "Challenger"]):  # another model than the schedule's: not pushed
        run = CliRunner().invoke(main, [*args, "--input", str(tmp_path / "missing.csv"), *other])
        assert run.exit_code == 2 and pushed(gateway) == samples, (other, run.output)
    failed = CliRunner().invoke(main, [*args, "--input", str(tmp_path / "missing.csv")])
    assert failed.exit_code == 2, failed.output
    samples = pushed(gateway)
    assert value(samples, "churn_job_exit_code", **job) == 2  # what ChurnBatchScoringFailed fires on
    assert value(samples, "churn_job_last_run_timestamp_seconds", **job) > succeeded
    assert value(samples, "churn_job_last_success_timestamp_seconds", **job) == succeeded  # kept
    assert math.isnan(value(samples, "churn_job_rows", outcome="scored", **job))  # not last week's 299
    assert value(samples, "churn_monitor_dataset_drift", job="monitor", model_name="churn") == 1  # other jobs kept


def test_a_gateway_that_is_down_changes_no_result(registry_uri, telco_csv, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", f"http://ops:s3cr3t@127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    data.load(telco_csv).drop(columns=["churn"]).head(100).to_parquet(tmp_path / "c.parquet", index=False)
    args = ["--input", str(tmp_path / "c.parquet"), "--output", str(tmp_path / "s.parquet")]
    result = CliRunner().invoke(main, ["score", "--tracking-uri", registry_uri, "--no-progress", *args])
    assert result.exit_code == 0, result.output
    assert "100 of 100 rows scored" in result.stdout
    assert any("could not push score's metrics to http://ops:***@127.0.0.1:" in r.getMessage() for r in caplog.records)
    assert "s3cr3t" not in caplog.text


def test_the_feature_refresh_pushes_its_rows_and_a_failed_run_keeps_the_last_success(
    telco_csv, tmp_path, monkeypatch, gateway
):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", gateway)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    get_settings.cache_clear()
    export = data.read_table(telco_csv).drop(columns=["churn"]).head(50)
    export.loc[0, "tenure"] = "-3"  # one bad row: the others are loaded, exit 1
    export.to_csv("export.csv", index=False)
    written = time.time() - 3 * 86400  # an export no one wrote again for three days (the ETL stopped)
    os.utime("export.csv", (written, written))
    first = CliRunner().invoke(main, ["features", "refresh", "export.csv", "--as-of", "modified"])
    assert first.exit_code == 1, first.output
    job = {"job": "features"}
    samples = pushed(gateway)
    # What ChurnFeaturesStale reads beside the run's success: the run succeeded, the data is 3 days old
    assert abs(value(samples, "churn_features_snapshot_timestamp_seconds", **job) - written) < 1
    assert value(samples, "churn_job_exit_code", **job) == 1
    assert value(samples, "churn_job_rows", outcome="loaded", **job) == 49
    assert value(samples, "churn_job_rows", outcome="rejected", **job) == 1
    success = value(samples, "churn_job_last_success_timestamp_seconds", **job)  # exit 1 is a verdict

    failed = CliRunner().invoke(main, ["features", "refresh", "missing.csv", "--as-of", "now"])
    assert failed.exit_code == 2, failed.output
    samples = pushed(gateway)
    assert value(samples, "churn_job_exit_code", **job) == 2
    assert value(samples, "churn_job_last_success_timestamp_seconds", **job) == success  # what the alert reads


def test_a_retrain_that_declines_pushes_0_not_the_last_version_registered(registry_uri, tmp_path, monkeypatch,
                                                                          gateway):  # fmt: skip
    """The gateway keeps what a run does not replace: a declining run left the version an old
    run registered, which the dashboard showed as this run's."""
    import sqlalchemy as sa

    from churn_platform import job_metrics
    from churn_platform.inference_log import upgrade

    monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", gateway)
    get_settings.cache_clear()
    assert job_metrics.push("retrain", "churn", 0, 1.0, [("churn_retrain_registered_version", 7.0, {})], finished=1.0)
    log = sa.create_engine(f"sqlite:///{tmp_path}/log.db")
    upgrade(log)  # the API's: a retrain looks for it first, due or not
    log.dispose()
    declined = CliRunner().invoke(main, ["retrain", "--if", "drift", "--tracking-uri", registry_uri,
                                         "--inference-log-url", f"sqlite:///{tmp_path}/log.db"])  # fmt: skip
    assert declined.exit_code == 1, declined.output
    samples = pushed(gateway)
    assert value(samples, "churn_retrain_registered_version", job="retrain", model_name="churn") == 0
    assert value(samples, "churn_job_exit_code", job="retrain", model_name="churn") == 1
    assert value(samples, "churn_retrain_held_since_timestamp_seconds", job="retrain", model_name="churn") == 0


def test_a_gateway_url_with_credentials_pushes_with_basic_auth(monkeypatch):
    """Left in the URL, urllib took user:password@ for part of the host: nothing ever arrived."""
    import base64
    import http.server
    import time

    from churn_platform import job_metrics

    received: list[tuple[str, str | None]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Gateway) as url:
        monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", url.replace("http://", "http://ops:p%40ss@"))
        get_settings.cache_clear()
        try:
            assert job_metrics.push("monitor", "churn", 0, 1.5, [], finished=time.time())
        finally:
            get_settings.cache_clear()
    assert received == [("/metrics/job/monitor/model_name/churn", "Basic " + base64.b64encode(b"ops:p@ss").decode())]


def test_a_gateway_given_as_host_and_port_is_taken_as_http(monkeypatch):
    """prometheus_client takes host:port; the new start-up check must not refuse it."""
    monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", "prometheus-pushgateway.monitoring.svc:9091")
    get_settings.cache_clear()
    try:
        assert get_settings().pushgateway_url == "http://prometheus-pushgateway.monitoring.svc:9091"
    finally:
        get_settings.cache_clear()


def test_a_gateway_token_as_the_url_user_is_never_logged(monkeypatch, caplog):
    """http://token@host sent the token as the user; redacted() masked only a password."""
    monkeypatch.setenv("CHURN_PUSHGATEWAY_URL", f"http://s3cr3t-token@127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    try:
        from churn_platform import job_metrics

        with caplog.at_level(logging.WARNING):
            assert not job_metrics.push("monitor", "churn", 0, 1.0, [], finished=0.0)
    finally:
        get_settings.cache_clear()
    assert "could not push monitor's metrics to http://***@127.0.0.1" in caplog.text
    assert "s3cr3t-token" not in caplog.text


def test_a_run_without_a_figure_replaces_the_last_runs_figure_with_nan(gateway, setenv):
    """Outcomes stopped coming: the performance run had no realized ROC AUC, pushed nothing for
    it, and the gateway (so the dashboard) went on showing the last run's figure as this one's."""
    from churn_platform import job_metrics

    setenv(CHURN_PUSHGATEWAY_URL=gateway)

    @job_metrics.pushes("performance")
    def performance(model_name: str, roc_auc: float | None) -> None:
        job_metrics.record("churn_performance_roc_auc", roc_auc, kind="realized")

    performance(model_name="churn", roc_auc=0.84)
    assert value(pushed(gateway), "churn_performance_roc_auc", kind="realized") == 0.84
    performance(model_name="churn", roc_auc=None)
    assert math.isnan(value(pushed(gateway), "churn_performance_roc_auc", kind="realized"))


def test_a_performance_run_pushes_no_figure_on_too_few_rows_and_no_verdict_when_not_judged(
    registry_uri, tmp_path, monkeypatch, gateway
):  # fmt: skip
    """Before, a run on 50 outcomes pushed their ROC AUC as the realized figure, and a run that
    judged nothing pushed churn_performance_degraded 0: the dashboard's verdict turned green "ok"."""
    from churn_platform import outcomes

    uri, log_url = scheduled_jobs(registry_uri, tmp_path, monkeypatch, gateway)
    scored = data.generate(300, seed=11)
    log_rows(log_url, scored)  # every score 0.5: estimated ROC AUC 0.5, far below the baseline
    truth = pd.DataFrame({ID_COLUMN: scored[ID_COLUMN].head(50), "churned": ["yes", "no"] * 25})
    outcomes.ingest(truth, log_url, source="test")
    job = {"job": "performance", "model_name": "churn"}

    def performance() -> int:
        run = CliRunner().invoke(main, ["performance", "--tracking-uri", uri, "--last-days", "2",
                                        "--output-dir", str(tmp_path / "report")])  # fmt: skip
        assert "Traceback" not in run.output, run.output
        return run.exit_code

    def roc_auc(kind: str) -> float:
        return value(pushed(gateway), "churn_performance_roc_auc", kind=kind, **job)

    try:
        assert performance() == 1  # judged on the 300 predictions; 50 outcomes are too few (200)
        assert value(pushed(gateway), "churn_performance_degraded", **job) == 1
        assert roc_auc("estimated") == 0.5 and math.isnan(roc_auc("realized"))
        monkeypatch.setenv("CHURN_PERFORMANCE_MIN_ROWS", "400")  # now too few on both sides
        get_settings.cache_clear()
        assert performance() == 2
        assert value(pushed(gateway), "churn_job_exit_code", **job) == 2
        assert math.isnan(value(pushed(gateway), "churn_performance_degraded", **job))  # not "ok"
        assert math.isnan(roc_auc("estimated")) and math.isnan(roc_auc("realized"))
        assert value(pushed(gateway), "churn_performance_labelled_rows", **job) == 50
        # A run that fails has no figures at all: not the last run's beside its exit code.
        monkeypatch.setenv("CHURN_INFERENCE_LOG_URL", f"sqlite:///{tmp_path}/moved.db")
        get_settings.cache_clear()
        assert performance() == 2
        assert math.isnan(value(pushed(gateway), "churn_performance_labelled_rows", **job))
    finally:
        get_settings.cache_clear()


def test_production_as_the_mlflow_ui_spells_it_is_the_scheduled_runs_alias():
    """`--alias production` scores Production: its metrics are the schedule's, pushed."""
    from churn_platform import job_metrics

    assert job_metrics.adhoc("production", None) is None
    assert job_metrics.adhoc("Challenger", None) == "--alias Challenger"


def test_without_a_gateway_an_investigation_says_nothing_of_pushing(caplog, tmp_path, monkeypatch):
    """"metrics are not pushed (--version 3: ...)" followed every error line of a run by hand,
    where nothing is ever pushed: no Pushgateway is set."""
    monkeypatch.delenv("CHURN_PUSHGATEWAY_URL", raising=False)
    get_settings.cache_clear()
    caplog.set_level(logging.INFO, logger="churn_platform.job_metrics")
    missing = str(tmp_path / "nope.csv")
    run = CliRunner().invoke(main, ["score", "--version", "3", "--input", missing, "--output", str(tmp_path / "s.csv")])
    assert run.exit_code == 2 and "input not found" in run.output, run.output
    assert "not pushed" not in caplog.text + run.output
