"""``churn-platform retrain`` on the embedded registry: the Telco customers as the API scored
them, their outcomes after a concept change, the performance job's runs as the trigger."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data, outcomes, retraining
from churn_platform.cli import main
from churn_platform.contract import REFERENCE_ARTIFACT, TAG_WINDOW_START
from churn_platform.errors import DataValidationError
from churn_platform.inference_log import COLUMNS, sqlite_time, upgrade
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def cli_json(*args: str) -> tuple[int, dict]:
    """The JSON a command prints (MLflow prints its run links to stdout too: skip to the JSON)."""
    result = CliRunner().invoke(main, [*args, "--json"])
    text = result.stdout
    assert "\n{" in "\n" + text, result.output
    return result.exit_code, json.loads(text[("\n" + text).index("\n{") :])


@pytest.fixture
def scenario(embedded, model_name, telco_csv, tmp_path, monkeypatch):
    """v1 in Production; every Telco customer scored by it yesterday; their outcomes today,
    with month-to-month customers in their first year now doing the opposite."""
    monkeypatch.setenv("CHURN_MODEL_NAME", model_name)
    url = f"sqlite:///{tmp_path}/log.db"
    monkeypatch.setenv("CHURN_INFERENCE_LOG_URL", url)
    get_settings.cache_clear()
    result = train(TrainConfig(data=str(telco_csv), model_name=model_name), get_settings())
    MlflowClient().set_registered_model_alias(model_name, "Production", str(result.version))
    customers = data.load(telco_csv)
    model = mlflow.sklearn.load_model(f"models:/{model_name}/{result.version}")
    scores = model.predict_proba(customers[list(FEATURE_NAMES)])[:, 1]
    at = sqlite_time(datetime.now(UTC) - timedelta(days=1))
    rows = [
        (f"r{i // 100}", i % 100, at, model_name, 1, "production", 0.1, *r, float(s))
        for i, (r, s) in enumerate(zip(customers[["customer_id", *FEATURE_NAMES]].itertuples(index=False), scores,
                                       strict=True))
    ]  # fmt: skip
    engine = sa.create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        marks = ", ".join("?" * len(COLUMNS))
        conn.exec_driver_sql(f"INSERT INTO inference_log ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
    engine.dispose()
    segment = (customers.contract == "Month-to-month") & (customers.tenure < 12)
    churned = customers.churn.astype(bool) ^ segment
    outcomes.ingest(pd.DataFrame({"customer_id": customers.customer_id, "churned": churned.astype(str)}), url,
                    source="test")  # fmt: skip
    return model_name, url, len(customers)


def versions(name: str) -> list[int]:
    return sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'"))


def test_retrain_waits_for_the_trigger_then_trains_a_challenger_that_beats_production(scenario, tmp_path):
    name, url, n = scenario
    # Runs over a pinned version or a window that has ended are investigations, not evidence about
    # Production now: degraded, but not counted.
    until = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    for adhoc in (["--version", "1"], ["--until", until]):
        assert cli("performance", *adhoc, "--output-dir", str(tmp_path / "adhoc"))[0] == 1
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("churn-monitoring").experiment_id])
    assert sorted(r.data.tags.get("adhoc", "") for r in runs) == [f"--until {until}", "--version 1"]
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "0 of the last 0 performance runs of v1 flagged degradation" in output, output
    while datetime.now(UTC).hour == 23 and datetime.now(UTC).minute >= 58:  # both runs on one UTC day
        time.sleep(5)
    for i in range(2):  # two degraded performance runs, recorded in churn-monitoring
        assert cli("performance", "--output-dir", str(tmp_path / f"perf{i}"))[0] == 1
    # Both today: the second (an operator's, after the alert) judged the same window again.
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "1 of the last 1 performance runs of v1 flagged degradation" in output, output
    code, declined = cli_json("retrain", "--if", "performance")  # the runs counted, for a dashboard too
    assert code == 1 and [r["verdict"] for r in declined["decision"]["runs"]] == ["degraded"], declined
    assert declined["error"] == declined["decision"]["reason"] and not declined["decision"]["retrain"]
    client = MlflowClient()
    monitoring = client.get_experiment_by_name("churn-monitoring").experiment_id
    today = next(r for r in client.search_runs([monitoring], "tags.verdict = 'degraded'") if "adhoc" not in r.data.tags)
    yesterday = int((datetime.now(UTC) - timedelta(days=1)).timestamp() * 1000)
    client.set_terminated(client.create_run(monitoring, start_time=yesterday, tags=today.data.tags).info.run_id)
    assert versions(name) == [1]
    code, output = cli("retrain", "--if", "performance", "--rollout", "canary")
    assert code == 2 and "--rollout canary needs --percent" in output and versions(name) == [1]

    code, result = cli_json("retrain", "--if", "performance")
    assert code == 0, result
    assert result["decision"]["reason"].startswith("2 of the last 2 performance runs of v1 flagged degradation")
    assert result["version"] == 2 and versions(name) == [1, 2]
    ids = pd.read_sql("SELECT customer_id FROM inference_log", sa.create_engine(url)).customer_id
    assert result["recent_rows"] == n and result["gate_rows"] == retraining.in_gate_slice(ids, 0.25).sum()
    assert 0.2 * n < result["gate_rows"] < 0.3 * n  # the default --gate-share, a quarter of the customers
    gate = result["gate"]
    assert gate["passed"] and gate["candidate_roc_auc"] > gate["production_roc_auc"], gate
    assert str(client.get_model_version_by_alias(name, "Challenger").version) == "2"
    assert str(client.get_model_version_by_alias(name, "Production").version) == "1"  # never moved by a retrain
    tags = client.get_model_version(name, "2").tags
    assert tags[retraining.TAG_TRIGGER].startswith("performance: 2 of the last 2")
    # Had the registry dropped between registering v2 and making it Challenger (exit 3), its run
    # would not have finished: the Job's retry trains again, where it declined ("0 of the last 0").
    client.set_terminated(result["run_id"], "FAILED")
    v2 = client.get_model_version(name, "2")
    assert retraining._answered(client, v2, 1, 2)  # noqa: SLF001 - killed after the alias: it answered
    client.delete_registered_model_alias(name, "Challenger")
    retry = retraining.decide(client, get_settings(), 1, "performance", 3, 2)
    assert retry.retrain and retry.reason.startswith("2 of the last 2 performance runs of v1 flagged"), retry
    client.set_terminated(result["run_id"], "FINISHED")
    assert not retraining.decide(client, get_settings(), 1, "performance", 3, 2).retrain
    client.set_registered_model_alias(name, "Challenger", "2")
    assert tags[retraining.TAG_RECENT_ROWS] == str(n) and tags[retraining.TAG_WINDOW].startswith("start..")
    run = client.get_run(result["run_id"])
    assert run.data.params["model_type"] == "logistic"  # Production's parameters
    # Not the synthetic generator's n_rows and drift nor a validation_size: `data` and the tags say what it was.
    assert not {"n_rows", "drift", "validation_size"} & set(run.data.params), run.data.params
    assert run.data.params["data"] == "inference log + outcomes since the start"
    # The reference artifact is the training part: the drift monitor compares against it.
    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path=REFERENCE_ARTIFACT)
    reference = pd.read_parquet(path)
    assert len(reference) == n - result["gate_rows"]
    # The next run's 30 days are mostly the same evidence: v2 awaits a decision, and a daily
    # retrain replaced it as Challenger mid-evaluation.
    assert cli("performance", "--output-dir", str(tmp_path / "perf-after"))[0] == 1
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "the Challenger, v2 (a retrain, newer than Production v1), awaits a decision" in output
    registered = datetime.fromtimestamp(client.get_model_version(name, "2").creation_timestamp / 1000, UTC)
    assert datetime.fromisoformat(cli_json("retrain", "--if", "performance")[1]["decision"]["held_since"]) == registered
    # Once Production moves (by the CLI or in the UI), v2's gate was against another Production: judged.
    held = client.get_model_version_by_alias(name, "Challenger")
    assert retraining._undecided_retrain(client, name, 1, held) == 2  # noqa: SLF001
    assert retraining._undecided_retrain(client, name, 0, held) is None  # noqa: SLF001
    # Under evaluation in a rollout, still; once the rollout is stopped (declined), a trigger may
    # retrain again, and the runs the last retrain answered still do not count.
    assert cli("rollout", "start", "--mode", "shadow", "--version", "2", "--reason", "eval")[0] == 0
    assert "awaits a decision" in cli("retrain", "--if", "performance")[1]
    assert cli("rollout", "stop", "--reason", "worse on the shadow")[0] == 0
    # Started again, it is under evaluation again: the earlier stop did not decide it.
    assert cli("rollout", "start", "--mode", "canary", "--percent", "10", "--version", "2", "--reason", "again")[0] == 0
    assert "awaits a decision" in cli("retrain", "--if", "performance")[1]
    assert cli("rollout", "stop", "--reason", "worse on the canary too")[0] == 0
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "1 of the last 1 performance runs of v1 since the last retrain" in output, output
    assert versions(name) == [1, 2]
    # The loop's last step. After a concept change every model scores lower on recent rows: v2's
    # own figure is below v1's older one, and promote refused the version that beat v1 like for
    # like. It judges on the rows training scored both on, while v1 still holds Production.
    assert float(tags["roc_auc"]) < float(client.get_model_version(name, "1").tags["roc_auc"]) - 0.005
    code, promoted = cli_json("promote", "--version", "2")
    assert code == 0 and promoted["gate"]["compared_on"].endswith("(both scored when v2 was trained)"), promoted
    # A canary someone is running is theirs to stop: `retrain --rollout` ended it without a word.
    assert cli("rollout", "start", "--mode", "canary", "--percent", "20", "--version", "1", "--reason", "eval")[0] == 0
    code, again = cli_json("retrain", "--rollout", "canary", "--percent", "30")
    assert code == 0 and again["challenger"] and again["rollout"] is None, again
    assert again["rollout_not_started"].startswith("a canary of v1 is running (started by "), again
    hint = f"rollout start --mode canary --percent 30 --version {again['version']}` replaces it"
    assert again["rollout_not_started"].endswith(hint), again
    assert cli_json("rollout", "status")[1]["challenger_version"] == 1
    # No outcome since: the same rows and parameters would register the same model as a new version.
    code, output = cli("retrain")
    assert code == 1 and f"the training data and parameters are the same as v{again['version']}'s, the last " \
        "retrain against Production v2: it would be the same model" in output, output
    assert versions(name) == [1, 2, again["version"]]
    # The Challenger alias moved off the canary's version without a word; a trigger waits for its end.
    code, output = cli("retrain", "--gate-share", "0.3")  # other gate rows: another model
    assert code == 0 and "  rollout: a canary of v1 is running (started by " in output, output
    assert "and goes on serving v1; `churn-platform rollout start --mode canary --percent 20 --version" in output
    client.delete_registered_model_alias(name, "Challenger")  # so the new retrain awaits no decision
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "a canary of v1 beside Production v2 is under way: end it first" in output, output
    # Since when: a forgotten rollout holds the loop with a normal answer (ChurnRetrainHeld reads it).
    code, held = cli_json("retrain", "--if", "performance")
    started = datetime.fromisoformat(cli_json("rollout", "status")[1]["started_at"])
    assert code == 1 and datetime.fromisoformat(held["decision"]["held_since"]) == started, held


def test_a_retrain_promoted_then_rolled_back_in_the_ui_no_longer_awaits_a_decision(scenario):
    """The UI leaves the Challenger alias where it was: every retrain after said "v2 awaits a
    decision" (exit 1), a decision that had been made, until someone deleted the alias."""
    name, _, _ = scenario
    code, result = cli_json("retrain")
    assert code == 0 and result["challenger"], result
    assert "awaits a decision" in cli("retrain", "--if", "performance")[1]
    client = MlflowClient()
    for version in ("2", "1"):  # promoted in the UI, then rolled back there; a command noticed each
        client.set_registered_model_alias(name, "Production", version)
        assert cli("status")[0] == 0
    if client.get_experiment_by_name("churn-monitoring") is None:  # no verdict yet, in an experiment that is there
        client.create_experiment("churn-monitoring")
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "0 of the last 0 performance runs of v1 since the last retrain" in output, output


def test_after_a_rollback_the_runs_of_an_earlier_time_it_served_do_not_count(scenario):
    """Two degraded runs 40 days old, from before v2 replaced v1: rolled back to v1, the next
    scheduled retrain counted them and retrained on the day v1 came back."""
    name, _, _ = scenario
    client = MlflowClient()
    monitoring = client.create_experiment("churn-monitoring")
    tags = {"job": "performance", "model_name": name, "model_version": "1", "verdict": "degraded"}
    for days in (41, 40):
        start = int((datetime.now(UTC) - timedelta(days=days)).timestamp() * 1000)
        client.set_terminated(client.create_run(monitoring, start_time=start, tags=tags).info.run_id)
    assert retraining.decide(client, get_settings(), 1, "performance", 3, 2).retrain  # v1 serving then
    train(TrainConfig(n_rows=800, model_name=name), get_settings())
    assert cli("promote", "--version", "2", "--force")[0] == 0
    assert cli("rollback")[0] == 0
    code, output = cli("retrain", "--if", "performance")
    assert code == 1 and "0 of the last 0 performance runs of v1 since it became Production again (rollback at " \
        in output, output
    client.set_terminated(client.create_run(monitoring, tags=tags).info.run_id)  # judged since it came back
    decision = retraining.decide(client, get_settings(), 1, "performance", 3, 2)
    assert not decision.retrain and decision.reason.startswith("1 of the last 1 performance runs of v1 since"), decision


def test_a_retrain_the_gate_refused_waits_for_evidence_that_starts_after_it(scenario, telco_csv, tmp_path):
    """Refused, it answered the runs before it, and two daily performance runs later (judging
    mostly the same 30 days) a retrain learned from the same outcomes and was refused again:
    a version every other day, each with the same data digest."""
    name, _, _ = scenario
    # A base dataset that says the opposite of every outcome, twice over: the candidate loses.
    raw = pd.read_csv(telco_csv)
    inverted = raw.assign(churn=raw.churn.map({"Yes": "No", "No": "Yes"}))
    base = tmp_path / "inverted.csv"
    pd.concat([inverted.assign(customerid=f"{k}-" + raw.customerid) for k in "ab"]).to_csv(base, index=False)
    client = MlflowClient()
    monitoring = client.create_experiment("churn-monitoring")
    now = datetime.now(UTC)

    def degraded(day: int, starts: datetime | None) -> None:
        """A daily performance run that flagged Production, its evidence starting at ``starts``."""
        tags = {"job": "performance", "model_name": name, "model_version": "1", "verdict": "degraded"}
        tags |= {TAG_WINDOW_START: starts.isoformat()} if starts else {}
        start = int((now + timedelta(days=day)).timestamp() * 1000)
        client.set_terminated(client.create_run(monitoring, start_time=start, tags=tags).info.run_id)

    degraded(-2, now - timedelta(days=32))
    degraded(-1, now - timedelta(days=31))
    result = retraining.retrain(get_settings(), trigger="performance", base=str(base))
    assert result.version == 2 and not result.challenger and not result.gate["passed"], result.gate
    degraded(1, now - timedelta(days=29))  # the next two days' runs: mostly the same outcomes
    degraded(2, now - timedelta(days=28))
    code, output = cli("retrain", "--if", "performance")
    assert code == 1, output
    assert ("0 of the last 0 performance runs of v1 whose evidence starts after v2, the retrain the gate refused "
            "at ") in output and "`churn-platform retrain --if always` trains now" in output, output  # fmt: skip
    assert versions(name) == [1, 2]
    # Another model type was never refused: v2 holds only a retrain trained as it was.
    boosting = {"model_type": "hist_gradient_boosting"}
    other = retraining.decide(client, get_settings(), 1, "performance", 3, 2, parameters=boosting)
    assert other.retrain and other.refused_version is None, other
    assert other.reason.startswith("2 of the last 2 performance runs of v1 since the last retrain flagged"), other
    degraded(3, None)  # an earlier release's run says nothing of its window: counted as it was
    decision = retraining.decide(client, get_settings(), 1, "performance", 3, 2)
    assert "1 of the last 1 performance runs" in decision.reason, decision
    degraded(4, now + timedelta(hours=1))  # evidence the refused retrain never saw
    decision = retraining.decide(client, get_settings(), 1, "performance", 3, 2)
    assert decision.retrain and decision.reason.startswith("2 of the last 2 performance runs of v1 whose"), decision
    # No outcome came in since: the same training data, refused before training, nothing registered.
    with pytest.raises(retraining.NotRetrained, match="the training data is the same as v2's, which the gate refused"):
        retraining.retrain(get_settings(), trigger="performance", base=str(base))
    assert versions(name) == [1, 2]
    # A Production that moved since is judged afresh: the refusal was against another version.
    assert "whose evidence" not in retraining.decide(client, get_settings(), 2, "performance", 3, 2).reason


def test_after_a_refusal_a_window_that_never_starts_later_counts_a_month_on():
    """Over all time or from a fixed --since (the MLproject's default; compose's, before), a run's
    window never starts after the refused retrain: one refusal ended triggered retraining."""
    from types import SimpleNamespace

    refused = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)

    def run(window: str | None, days_later: float):
        tags = {TAG_WINDOW_START: window} if window else {}
        return SimpleNamespace(data=SimpleNamespace(tags=tags),
                               info=SimpleNamespace(start_time=refused + int(days_later * 86_400_000)))  # fmt: skip

    assert not retraining._judges_after(run("1970-01-01T00:00:00+00:00", 29.9), refused)  # noqa: SLF001
    assert retraining._judges_after(run("1970-01-01T00:00:00+00:00", 30), refused)  # noqa: SLF001
    assert retraining._judges_after(run("2026-11-02T00:00:00", 1), refused)  # noqa: SLF001 - naive: UTC
    assert not retraining._judges_after(run("2026-10-31T23:00:00+00:00", 1), refused)  # noqa: SLF001
    assert retraining._judges_after(run(None, 1), refused)  # noqa: SLF001 - an earlier release's run


def test_a_base_dataset_never_brings_back_the_gate_customers(scenario, telco_csv, tmp_path):
    name, url, n = scenario
    # The threshold Production serves with is its version's tag (`mlflow run` logs the run's
    # parameter empty; a user may change the tag in the UI): the retrain keeps it.
    MlflowClient().set_model_version_tag(name, "1", "decision_threshold", "0.33")
    # The customer file the log's customers come from, older labels, and 300 customers the log lacks.
    older = pd.read_csv(telco_csv)
    others = older.head(300).assign(customerid=[f"B-{i:04d}" for i in range(300)])
    pd.concat([older, others]).to_csv(tmp_path / "base.csv", index=False)
    code, result = cli_json("retrain", "--base", str(tmp_path / "base.csv"))
    assert code == 0, result
    # Only those: a recent customer's base row (gate or training side) is an older label of them.
    # Each training customer was trained on twice, once with the label the retrain was to replace.
    assert result["base_rows"] == 300 and result["recent_rows"] == n
    assert MlflowClient().get_model_version(name, "2").tags["decision_threshold"] == "0.33"
    # Its datasets say where the rows came from (they were a made-up file:// path).
    inputs = MlflowClient().get_run(result["run_id"]).inputs.dataset_inputs
    sources = {json.loads(i.dataset.source)["tags"]["inference_log"] for i in inputs}
    assert sources == {url} and {i.dataset.source_type for i in inputs} == {"code"}
    unkeyed = tmp_path / "unkeyed.csv"
    pd.read_csv(telco_csv).drop(columns=["customerid"]).to_csv(unkeyed, index=False)
    code, output = cli("retrain", "--base", str(unkeyed))
    assert code == 2 and "--base needs a customer_id column" in output
    assert versions(name) == [1, 2]


def test_a_retrain_while_another_runs_on_a_sqlite_log_registers_nothing(scenario):
    """Only PostgreSQL took a lock: a cron job and a retrain by hand on one machine both
    registered, the later Challenger silently replacing the other."""
    name, url, _ = scenario
    with retraining.exclusive(url, name):  # another process's, as the kernel sees a second open file
        code, output = cli("retrain")
    assert code == 1 and f"another retrain of '{name}' is running: it holds the retrain lock" in output, output
    assert versions(name) == [1]
    code, output = cli("retrain")  # let go with the other: this one trains
    assert code == 0 and versions(name) == [1, 2], output


def test_too_few_labelled_rows_or_no_trigger_register_nothing(scenario, monkeypatch):
    name, _, n = scenario
    monkeypatch.setenv("CHURN_RETRAIN_MIN_ROWS", str(n + 1))
    get_settings.cache_clear()
    code, output = cli("retrain")
    assert code == 1 and f"only {n} labelled customers in the window; at least {n + 1} are needed" in output
    assert "error" not in output and "not retrained: only" in output  # the scheduled job's usual answer
    code, output = cli("retrain", "--since", "2999-01-01")  # it said "ingest more outcomes", exit 1
    assert code == 2 and "--since 2999-01-01T00:00:00+00:00 is not in the past" in output, output
    code, output = cli("retrain", "--if", "drift", "--of", "2", "--at-least", "3")
    assert code == 2 and "--at-least must be between 1 and --of (2)" in output
    # No verdicts because there is no experiment to hold them: said, not "0 of the last 0 runs flagged".
    monkeypatch.setenv("CHURN_MONITOR_EXPERIMENT", f"{name}-verdicts")
    get_settings.cache_clear()
    code, output = cli("retrain", "--if", "drift")
    assert code == 1 and f"experiment '{name}-verdicts' (CHURN_MONITOR_EXPERIMENT) does not exist yet" in output
    deleted = MlflowClient().create_experiment(f"{name}-verdicts")
    MlflowClient().delete_experiment(deleted)
    code, output = cli("retrain", "--if", "performance")
    assert code == 2 and f"experiment '{name}-verdicts' (id {deleted}), where the verdicts" in output, output
    MlflowClient().restore_experiment(deleted)
    # Typos under a trigger read "not retrained" (exit 1) every day, until the day one was due.
    code, output = cli("retrain", "--if", "performance", "--base", "/no/such/base.csv")
    assert code == 2 and "data file not found: /no/such/base.csv" in output, output
    code, output = cli("retrain", "--if", "drift", "--inference-log-url", scenario[1].replace("log.db", "typo.db"))
    assert code == 2 and "no inference log at " in output and "typo.db (no such file)" in output, output
    # The registry's database where the log's belongs, or a log that is down: "not retrained" daily.
    registry_db = f"sqlite:///{MlflowClient().tracking_uri.removeprefix('sqlite:///')}"
    code, output = cli("retrain", "--if", "drift", "--inference-log-url", registry_db)
    assert code == 2 and "no inference_log table" in output, output
    code, output = cli("retrain", "--if", "drift", "--inference-log-url", "postgresql://u:p@127.0.0.1:1/x")
    assert code == 3, output
    other = Path(scenario[1].removeprefix("sqlite:///")).parent / "other.csv"
    other.write_text("a,b\n1,2\n")
    code, output = cli("retrain", "--base", str(other))
    assert code == 2 and f"--base {other}: " in output and "missing required columns" in output, output
    # Enough to train, too few for the drift monitor to ever judge the version on (its reference).
    monkeypatch.setenv("CHURN_RETRAIN_MIN_ROWS", "500")
    monkeypatch.setenv("CHURN_MONITOR_MIN_ROWS", str(n))
    get_settings.cache_clear()
    code, output = cli("retrain")
    assert code == 1 and f"fewer than CHURN_MONITOR_MIN_ROWS ({n}): the drift monitor could never judge" in output
    # Production's threshold tag, edited in the UI, is reused: the error says whose value it is
    # (a traceback for text; "decision_threshold must be between 0 and 1" as if it were an option).
    for edited, why in (("0,3", "'0,3' is not a number"), ("1.5", "decision_threshold must be between 0 and 1")):
        MlflowClient().set_model_version_tag(name, "1", "decision_threshold", edited)
        code, output = cli("retrain")
        assert code == 2, output
        assert f"Production v1's tag decision_threshold='{edited}', which a retrain reuses, is refused ({why}" in output
    MlflowClient().set_model_version_tag(name, "1", "decision_threshold", "0.3")
    # A model type a later release dropped (logged by an earlier one): named, and --model-type replaces it.
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.log_param(run.info.run_id, "model_type", "svm")
    source = client.get_model_version(name, "1").source
    client.create_model_version(name, source, run_id=run.info.run_id, tags={"decision_threshold": "0.3"})
    client.set_registered_model_alias(name, "Production", "2")
    code, output = cli("retrain")
    assert code == 2 and "Production v2's run parameter model_type='svm', which a retrain reuses" in output, output
    code, output = cli("retrain", "--model-type", "logistic")
    assert code == 1 and "fewer than CHURN_MONITOR_MIN_ROWS" in output, output  # past the parameters: not trained
    # Production's training run purged (`mlflow gc`): a traceback, exit 70 "a bug".
    client.create_model_version(name, source, run_id="0" * 32, tags={"decision_threshold": "0.3"})
    client.set_registered_model_alias(name, "Production", "3")
    code, output = cli("retrain")
    assert code == 2 and f"the training run {'0' * 32} of {name} v3 no longer exists (deleted for good)" in output, \
        output
    assert versions(name) == [1, 2, 3]


def test_a_log_lacking_a_feature_of_this_schema_is_bad_data_not_an_unreachable_database(scenario):
    """It was exit 3 "cannot read the inference log", as if the database were down."""
    name, url, _ = scenario
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE inference_log DROP COLUMN tenure"))
    engine.dispose()
    code, output = cli("retrain")
    assert code == 4, output
    assert "has no column 'tenure': it was written for another schema than this release's" in output
    assert versions(name) == [1]


def test_one_class_in_the_window_cannot_train():
    recent = data.generate(600, seed=1).assign(churn=0).rename(columns={"churn": "churned"})
    recent["observed_at"] = datetime.now(UTC)
    with pytest.raises(retraining.NotRetrained, match="every labelled row in the window has churn=0"):
        retraining.training_set(recent, None, min_rows=500, gate_share=0.25)



def test_a_logged_row_this_schema_refuses_is_named_by_its_customer():
    """"row 3430: 'Weekly'" counted rows of the sorted, de-duplicated frame: no row a user
    could find in the log."""
    recent = data.generate(600, seed=1).rename(columns={"churn": "churned"})
    recent["observed_at"] = datetime.now(UTC)
    recent.loc[42, "contract"] = "Weekly"
    customer = recent.at[42, "customer_id"]
    with pytest.raises(DataValidationError) as refused:
        retraining.training_set(recent, None, min_rows=500, gate_share=0.25)
    assert str(refused.value).startswith("1 of the inference log's rows joined to an outcome do not match")
    assert f"customer {customer!r}: contract: unknown category" in str(refused.value)

def test_a_customer_scored_and_judged_daily_is_one_training_row_its_latest():
    """Scored daily and exported daily, a stayer gave a near-identical row a day and a churner
    one: 100 customers met a minimum of 500, and stayers outweighed churners 29 to 1."""
    customers = data.generate(500, seed=1).rename(columns={"churn": "churned"})
    customers["churned"] = np.arange(500) < 250
    now = datetime.now(UTC)
    days = [customers.assign(observed_at=now - timedelta(days=d)) for d in range(30)]
    stayers = pd.concat(days)
    recent = pd.concat([stayers[~stayers.churned], days[0][days[0].churned]], ignore_index=True)
    with pytest.raises(retraining.NotRetrained, match="only 500 labelled customers in the window; at least 2000"):
        retraining.training_set(recent, None, min_rows=2000, gate_share=0.25)  # 7,750 rows
    # A stayer who churned today: the latest outcome is the label.
    recent.loc[(recent.customer_id == customers.customer_id[499]) & (recent.observed_at == now), "churned"] = True
    parts = retraining.training_set(recent, None, min_rows=50, gate_share=0.25)
    both = pd.concat([parts.train, parts.gate])
    assert len(both) == both.customer_id.nunique() == 500 and both.churn.sum() == 251


def test_a_gate_slice_too_small_for_a_verdict_is_no_retrain_before_the_fit():
    """The gate draws no verdict from fewer than 100 rows or 20 of a class: such a retrain was
    fitted, registered and refused with no figures recorded, so nothing held the next trigger
    back: a version a day."""
    recent = data.generate(300, seed=1).rename(columns={"churn": "churned"})
    recent["observed_at"] = datetime.now(UTC)
    with pytest.raises(retraining.NotRetrained, match=r"the held-out gate slice has \d+ customers \(\d+ churned\): "
                                                      "the gate judges on at least 100, 20 of each class"):  # fmt: skip
        retraining.training_set(recent, None, min_rows=50, gate_share=0.25)
    assert len(retraining.training_set(recent, None, min_rows=50, gate_share=0.45).gate) >= 100


@pytest.mark.parametrize(("share", "side"), [(0.995, "training part"), (0.004, "held-out gate slice")])
def test_a_gate_share_that_leaves_a_side_a_handful_of_rows_is_refused(share, side):
    """--gate-share 0.99 trained on 49 rows and 0.003 gated on 14: both registered, exit 0."""
    recent = data.generate(1000, seed=1).rename(columns={"churn": "churned"})
    recent["observed_at"] = datetime.now(UTC)
    with pytest.raises(retraining.NotRetrained, match=f"the {side} of the recent rows has .* each side needs at "
                                                      "least 5 of each class; .*nearer 0.25"):  # fmt: skip
        retraining.training_set(recent, None, min_rows=500, gate_share=share)
    assert len(retraining.training_set(recent, None, min_rows=500, gate_share=0.25).gate) > 200
    if side == "training part":  # a --base file fills the training part: the model learns from both
        base = data.generate(2000, seed=2).assign(customer_id=lambda f: "base-" + f["customer_id"])
        parts = retraining.training_set(recent, base, min_rows=500, gate_share=share)
        assert parts.base_rows == 2000 and len(parts.train) > 2000


def test_the_gate_slice_is_customer_wise_and_stable():
    ids = pd.Series([f"c{i}" for i in range(10_000)])
    held = retraining.in_gate_slice(ids, 0.25)
    assert 0.23 < held.mean() < 0.27
    assert (retraining.in_gate_slice(ids, 0.25) == held).all()
    recent = pd.DataFrame({"customer_id": ids.repeat(2).to_numpy(), "x": np.arange(20_000)})
    twice = retraining.in_gate_slice(recent.customer_id, 0.25)
    assert recent[twice].customer_id.isin(recent[~twice].customer_id).sum() == 0  # never on both sides


def test_a_run_that_judged_nothing_is_skipped_not_counted_healthy():
    from types import SimpleNamespace

    from churn_platform.retraining import _flagged

    def run(**tags):
        return SimpleNamespace(data=SimpleNamespace(tags=tags))

    assert _flagged(run(job="performance", verdict="degraded"), "performance") is True
    assert _flagged(run(job="performance", verdict="ok"), "performance") is False
    assert _flagged(run(job="performance", verdict="not_judged"), "performance") is None
    assert _flagged(run(verdict="drift"), "drift") is True
    assert _flagged(run(verdict="no_drift"), "drift") is False
    assert _flagged(run(verdict="data_quality_failure"), "drift") is None  # the data was too broken to judge
    assert _flagged(run(job="performance", verdict="degraded"), "drift") is None
    assert _flagged(run(verdict="Drift"), "drift") is None  # edited by hand: no verdict, not a clean one
    assert _flagged(run(job="performance", verdict="Degraded"), "performance") is None
    assert _flagged(run(verdict="no_drift"), "performance") is None


def test_a_model_name_with_an_apostrophe_is_found_by_versions_and_retrain(embedded, tmp_path):
    """MLflow accepts ``o'brien`` as a name; its search filters must quote it, not break on it."""
    name = "o'brien"
    client = MlflowClient()
    client.create_registered_model(name)
    client.create_model_version(name, source=str(tmp_path))
    code, found = cli_json("versions", "--model-name", name)
    assert code == 0 and [v["version"] for v in found["versions"]] == [1]
    settings = get_settings().model_copy(update={"model_name": name})
    experiment = client.create_experiment(settings.monitor_experiment)
    client.create_run(experiment, tags={"model_name": name, "model_version": "1", "verdict": "drift"})
    decision = retraining.decide(client, settings, 1, "drift", of=1, at_least=1)
    assert decision.retrain and len(decision.runs) == 1
