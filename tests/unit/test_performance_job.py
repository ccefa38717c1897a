"""``churn-platform performance`` on the embedded registry and a SQLite log written by hand:
verdicts, the minimum of labelled rows, and every way of having nothing (or nonsense) to judge."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from churn_platform import outcomes
from churn_platform.cli import main
from churn_platform.inference_log import sqlite_time, upgrade
from churn_platform.settings import get_settings
from tests.unit.conftest import registry_copy
from tests.unit.test_outcomes import insert_log


def fill(url: str, n: int, scores: np.ndarray, labels: np.ndarray | None, labelled: int | None = None) -> None:
    """``n`` predictions of churn v1 a day ago, and outcomes for the first ``labelled`` customers."""
    engine = sa.create_engine(url)
    upgrade(engine)
    at = datetime.now(UTC) - timedelta(days=1)
    rows = [{"request_id": f"r{i}", "row_index": 0, "scored_at": sqlite_time(at), "model_name": "churn",
             "model_version": 1, "arm": "production", "customer_id": f"c{i}", "churn_probability": float(s)}
            for i, s in enumerate(scores[:n])]  # fmt: skip
    insert_log(engine, rows)
    if labels is not None:
        k = labelled or n
        truth = pd.DataFrame({"customer_id": [f"c{i}" for i in range(k)], "churned": labels[:k].astype(int)})
        outcomes.ingest(truth.astype(str), url, source="test")
    engine.dispose()


def performance(registry_uri: str, url: str, tmp_path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["performance", "--tracking-uri", registry_uri, "--inference-log-url", url,
                                       "--output-dir", str(tmp_path / "out"), *extra])  # fmt: skip
    return result.exit_code, result.output


@pytest.fixture
def calibrated():
    rng = np.random.default_rng(4)
    scores = rng.beta(0.5, 1.2, 2000)  # spread like a good model: CBPE near the baseline (0.84)
    return scores, rng.uniform(size=2000) < scores


def test_labels_that_follow_the_scores_are_ok_and_reversed_ones_degraded(registry_uri, tmp_path, calibrated):
    from mlflow import MlflowClient

    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/ok.db"
    fill(url, 2000, scores, labels)
    code, output = performance(registry_uri, url, tmp_path, "--json", "--last-days", "2")
    summary = json.loads(output[output.index("{") :])
    assert code == 0 and summary["verdict"] == "ok" and summary["rows_matched"] == 2000
    assert abs(summary["realized"]["roc_auc"] - summary["estimated"]["roc_auc"]) < 0.03
    assert summary["unlabelled_predictions"] == 0 and summary["unmatched_outcomes"] == 0
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "summary.json").exists()
    # Where its evidence starts: after a retrain the gate refused, only runs judging newer evidence count.
    tags = MlflowClient(registry_uri).get_run(summary["mlflow_run_id"]).data.tags
    assert tags["window.start"] == summary["window"]["since"] and summary["window"]["since"] > "2026", tags

    flipped = f"sqlite:///{tmp_path}/flipped.db"
    fill(flipped, 2000, scores, ~labels)
    code, output = performance(registry_uri, flipped, tmp_path)
    assert code == 1 and "degraded" in output and "roc_auc: realized" in output


def test_with_a_maturity_a_no_the_day_after_a_score_judges_nothing(registry_uri, tmp_path, calibrated, monkeypatch):
    """A "no" observed a day after a score says little of a churn within the horizon: read as
    final, windows that end before the churns are recorded called a sound model degraded."""
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/log.db"
    fill(url, 2000, scores, labels)  # scored a day ago, outcomes observed now
    monkeypatch.setenv("CHURN_OUTCOME_MATURITY_DAYS", "30")
    get_settings.cache_clear()
    try:
        code, output = performance(registry_uri, url, tmp_path, "--json", "--last-days", "2")
    finally:
        get_settings.cache_clear()
    summary = json.loads(output[output.index("{") :])
    assert summary["rows_matched"] == int(labels.sum()) and summary["window"]["maturity_days"] == 30, summary
    assert summary["unlabelled_predictions"] == 2000 - int(labels.sum())
    report = html.unescape((tmp_path / "out" / "report.html").read_text())
    assert "a 'no' only a prediction made at least 30 days before it" in report


def test_a_healthy_model_on_few_churners_is_rarely_called_degraded_and_a_broken_one_is():
    """On 200 labelled rows with 5 churners, a model whose true ROC AUC is its baseline (0.84)
    measured below baseline - 0.05 in about a quarter of the runs: each one paged and counted
    for retraining. The drop must now be more than chance, and a real one still is."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    from churn_platform.performance_metrics import Estimated, Realized
    from monitoring.performance import judge

    rng = np.random.default_rng(7)

    def degraded_share(true_auc: float, churned: int, rows: int = 200, runs: int = 400) -> float:
        shift = np.sqrt(2) * norm.ppf(true_auc)  # two normal score distributions this far apart
        labels = np.r_[np.ones(churned), np.zeros(rows - churned)]
        flagged = 0
        for _ in range(runs):
            auc = roc_auc_score(labels, np.r_[rng.normal(shift, 1, churned), rng.normal(0, 1, rows - churned)])
            real = Realized(rows=rows, positives=churned, roc_auc=auc)
            flagged += bool(judge(real, Estimated(rows=0), {"roc_auc": 0.84}, 200, 0.05))
        return flagged / runs

    assert degraded_share(0.84, churned=5) < 0.05  # was 0.27
    assert degraded_share(0.84, churned=50) < 0.05  # was 0.08
    assert degraded_share(0.65, churned=50) > 0.95  # a real drop, on enough churners, is still caught


def test_a_drop_within_chance_is_ok_and_says_so_in_the_output_and_the_report(registry_uri, tmp_path, calibrated):
    """The report coloured the realized figure red and its banner said nothing was below the
    floor, whatever the verdict's own rule was: the three must agree."""
    scores, _ = calibrated
    labels = np.zeros(len(scores), dtype=bool)
    ranked = np.argsort(scores[:200])
    labels[ranked[[140, 145, 150, 155, 160]]] = True  # 5 churners around the 75th percentile: ROC AUC about 0.75
    url = f"sqlite:///{tmp_path}/few-churners.db"
    fill(url, 2000, scores, labels, labelled=200)
    code, output = performance(registry_uri, url, tmp_path)
    assert code == 0, output
    assert "but within chance on 5 churners (95% upper bound" in output and "not judged degraded" in output
    report = (tmp_path / "out" / "report.html").read_text()
    assert "below the floor, but within chance on 5 churners" in report
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["realized"]["roc_auc"] < summary["baseline"]["roc_auc"] - 0.05
    assert summary["realized"]["roc_auc_upper_bound"] > summary["baseline"]["roc_auc"]


def test_fewer_labelled_rows_than_the_minimum_are_shown_not_judged(registry_uri, tmp_path, calibrated):
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/few.db"
    fill(url, 2000, scores, ~labels, labelled=50)  # 50 reversed labels: bad, but too few to say
    code, output = performance(registry_uri, url, tmp_path)
    assert code == 0, output
    assert "50 labelled rows, fewer than 200: realized is not judged" in output


def test_outcomes_that_match_no_prediction_are_said_in_the_output_and_the_report(registry_uri, tmp_path, calibrated):
    """Ids written another way ("0012" and "12"): every outcome matched nothing, and the run
    said "ok (0 outcomes matched)" on the estimate alone, its report "no labels yet"."""
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/ids.db"
    fill(url, 2000, scores, None)
    truth = pd.DataFrame({"customer_id": [f"C{i}" for i in range(300)], "churned": labels[:300].astype(int)})
    outcomes.ingest(truth.astype(str), url, source="crm")
    code, output = performance(registry_uri, url, tmp_path)
    assert code == 0 and "ok  (0 outcomes matched" in output, output
    assert "note: none of the 300 outcomes observed in the window matched a prediction of v1" in output, output
    page = (tmp_path / "out" / "report.html").read_text()
    assert "none of the 300 outcomes observed in the window matched" in page and "no labels yet" not in page


def test_too_few_rows_on_both_sides_is_not_judged_never_ok(registry_uri, tmp_path, calibrated):
    """120 predictions, 50 of them labelled (reversed): neither figure has the 200 rows the
    verdict needs. Before, that printed "ok" and exited 0, and counted as a healthy run for
    `retrain --if performance`."""
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/quiet.db"
    fill(url, 120, scores, ~labels, labelled=50)
    code, output = performance(registry_uri, url, tmp_path)
    assert code == 2, output
    assert "v1: not_judged" in output, output
    assert ("nothing to judge on: 50 labelled rows, fewer than 200 (CHURN_PERFORMANCE_MIN_ROWS); 120 predictions "
            "in the window, fewer than 200") in output  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"] == "not_judged" and summary["degraded"] is False
    assert "<h1>NOT JUDGED</h1>" in (tmp_path / "out" / "report.html").read_text()


def test_labels_all_of_one_class_are_not_judged_for_that_reason_not_for_too_few_rows():
    """A monthly status export before the churners are in: 2,877 labelled rows, all "no". The
    run said "too few rows to judge: 2877 labelled rows ... fewer than 200"."""
    from churn_platform.performance_metrics import estimated, realized
    from monitoring.performance import not_judged

    scores = np.linspace(0.05, 0.95, 2877)
    reason = not_judged(realized(np.zeros(2877), scores, 0.5), estimated(np.array([]), 0.5), {"roc_auc": 0.84}, 200)
    assert reason == ("nothing to judge on: 2877 labelled rows, all of one class (no roc_auc); 0 predictions in the "
                      "window, fewer than 200 (CHURN_PERFORMANCE_MIN_ROWS)")  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        ("none", [], 2, "(no such file): point CHURN_INFERENCE_LOG_URL"),
        # A database without the table: MLflow's, a typo's (it said "has no rows yet": wait for the API).
        ("empty", [], 2, "no inference_log table in sqlite:///"),
        ("log", ["--since", "2020-01-01", "--until", "2020-02-01"], 2, "no predictions of churn v1 in the window"),
        ("log", ["--since", "2026-02-01", "--until", "2026-01-01"], 2, "is not before --until"),
        # Each bound as given: it named "--since 1970-01-01", an option no one gave.
        ("log", ["--until", "1960-01-01"], 2, "the window's start (1970-01-01) is not before --until 1960"),
        ("log", ["--since", "2999-01-01"], 2, "--since 2999-01-01T00:00:00+00:00 is not before now"),
        ("log", ["--version", "99"], 2, "99"),
        ("log", ["--last-days", "30", "--since", "2026-01-01"], 2, "give --since or --last-days, not both"),
        ("nonsense", [], 4, "not probabilities in [0, 1]"),
    ],
)
def test_nothing_or_nonsense_to_judge_is_a_clear_error(registry_uri, tmp_path, calibrated, setup, args, code, message):
    scores, _ = calibrated
    url = f"sqlite:///{tmp_path}/log.db"
    if setup == "empty":
        sa.create_engine(url).connect().close()  # the file, without a table
    elif setup != "none":
        fill(url, 300, np.where(np.arange(2000) == 7, 1.5, scores) if setup == "nonsense" else scores, None)
    got, output = performance(registry_uri, url, tmp_path, *args)
    assert got == code and message in output, output
    assert "Traceback" not in output


def test_a_version_whose_training_run_was_purged_is_nothing_to_judge(registry_uri, tmp_path, calibrated):
    """Its run deleted for good (`mlflow gc`): reading the baseline was a traceback, exit 70 "a bug"."""
    from mlflow import MlflowClient

    uri = registry_copy(registry_uri, tmp_path)
    run_id = MlflowClient(uri, uri).get_model_version("churn", "1").run_id
    # What `mlflow gc` leaves in the store (gc itself would delete the artifacts the copy shares
    # with the session's registry): no such run.
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM runs WHERE run_uuid = :id"), {"id": run_id})
    engine.dispose()
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/log.db"
    fill(url, 300, scores, labels)
    code, output = performance(uri, url, tmp_path)
    assert code == 2 and f"the training run {run_id} of churn v1 no longer exists" in output, output
    assert "Traceback" not in output


def test_a_baseline_logged_as_nan_is_not_judged_and_summary_json_stays_strict(
    registry_uri, tmp_path, calibrated, monkeypatch
):
    """Compared with NaN every figure read as healthy: "ok", exit 0, a healthy run for retraining;
    and summary.json held a bare NaN, which JSON parsers other than Python's refuse."""
    monkeypatch.chdir(tmp_path)  # an experiment the copy lacks keeps its artifacts in ./mlruns: not the checkout's

    from mlflow import MlflowClient

    uri = registry_copy(registry_uri, tmp_path)
    client = MlflowClient(uri, uri)
    client.log_metric(client.get_model_version("churn", "1").run_id, "roc_auc", float("nan"))  # another tool's run
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/log.db"
    fill(url, 2000, scores, ~labels)
    code, output = performance(uri, url, tmp_path)
    assert code == 2 and "v1: not_judged" in output and "no roc_auc to compare with" in output, output

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in summary.json")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["verdict"] == "not_judged" and "roc_auc" not in summary["baseline"]


def test_a_log_table_from_an_earlier_release_says_so_and_what_will_mend_it(registry_uri, tmp_path, calibrated):
    """Before the upgraded API's writer adds the `arm` column, the job cannot join: it was exit 3
    "no such column" on SQLite and a traceback (exit 70) on PostgreSQL."""
    scores, labels = calibrated
    url = f"sqlite:///{tmp_path}/old.db"
    fill(url, 300, scores, labels)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE inference_log DROP COLUMN arm"))
    engine.dispose()
    code, output = performance(registry_uri, url, tmp_path)
    assert code == 3 and "no such column: l.arm: the table is from an earlier release" in output, output
    assert "the upgraded API adds the missing columns when it starts" in output and "Traceback" not in output
