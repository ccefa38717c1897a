"""The performance job: how good a model version really is, from what customers did.

Feature drift misses concept drift (the same profile starts behaving differently), so this
job measures quality directly: *realized* metrics on outcomes joined to the predictions
they judge (``churn_platform.outcomes``' one join rule), *estimated* metrics (CBPE) over
the window's predictions, available before their labels arrive, and the version's own
validation metrics as the *baseline*. The join and the aggregation run in SQL, so a window of millions of
predictions costs the job memory for its outcomes and a score histogram, not for the log.

Exit codes (``ExitCode``): 0 ok, 1 degraded, 2 nothing to judge (no model, no predictions
in the window) or bad usage, 3 registry or database unreachable, 4 bad data in the log.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from churn_platform import job_metrics, loading, outcomes, registry
from churn_platform.contract import (
    CHURNED,
    GATE_METRIC,
    INFERENCE_LOG_TABLE,
    MODEL_NAME,
    MODEL_VERSION,
    PROBABILITY,
    PRODUCTION_ALIAS,
    SCORED_AT,
    TAG_ADHOC,
    TAG_THRESHOLD,
    TAG_WINDOW_START,
    VALIDATION_METRICS,
    ExitCode,
)
from churn_platform.errors import DataValidationError, NotFoundError
from churn_platform.inference_log import BadLogData, make_engine, missing_file, no_table, read_failure
from churn_platform.performance_metrics import DayFigures, Estimated, Realized, by_day, estimated, realized
from churn_platform.settings import Settings
from monitoring.runs import (
    alert_webhook,
    alerting_if_unrecorded,
    clear_verdict,
    live_experiment,
    record_run,
    report_folder,
    run_folder,
    send_alert,
)

log = logging.getLogger(__name__)

Verdict = Literal["ok", "degraded", "not_judged"]
#: Score histogram resolution for the estimate: ties at 1e-4 change an AUC by far less than that.
_SCORE_DECIMALS = 4


class NothingToJudge(NotFoundError):
    """No model, or no predictions by it in the window: no verdict is possible."""


@dataclass(frozen=True)
class PerformanceOptions:
    """One run's choices; anything left None comes from the settings."""

    alias: str = PRODUCTION_ALIAS
    version: int | None = None
    #: Window: outcomes observed in it are realized, predictions made in it are estimated.
    since: datetime | None = None
    until: datetime | None = None
    inference_log_url: str | None = None
    output_dir: Path | None = None
    alert_webhook: str | None = None

    @property
    def adhoc(self) -> str | None:
        """Why this run does not judge Production's latest traffic (``TAG_ADHOC``), or None."""
        return job_metrics.adhoc(self.alias, self.version, self.until)


class PerformanceWindow(BaseModel):
    model_config = ConfigDict(frozen=True)

    since: str | None
    until: str
    horizon_days: int
    #: A "no" judged only predictions made at least this many days before it (0: any).
    maturity_days: int = 0


class PerformanceSummary(BaseModel):
    """What the job found; ``to_json`` is ``summary.json``."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: int
    created_at: str
    window: PerformanceWindow
    #: Outcomes in the window joined to a prediction of this version.
    rows_matched: int
    #: Outcomes in the window that judge no prediction of this version: none within the horizon
    #: (or none old enough for a "no"), another outcome judged it, or a "no" before a churn.
    unmatched_outcomes: int
    #: Predictions of this version made in the window, and those no outcome judged (yet).
    predictions: int
    unlabelled_predictions: int
    decision_threshold: float
    realized: Realized
    estimated: Estimated
    baseline: dict[str, float]
    degraded: bool
    reasons: list[str]
    by_day: list[DayFigures]
    min_rows: int
    tolerance: float
    report_html: str | None = None
    output_dir: str | None = None
    mlflow_run_id: str | None = None
    #: Why no verdict could be given (no baseline, too few rows on both sides); None: judged.
    not_judged: str | None = None
    #: Why this run does not judge Production's latest traffic (``TAG_ADHOC``); None: it does.
    adhoc: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.not_judged:
            return "not_judged"
        return "degraded" if self.degraded else "ok"

    @property
    def exit_code(self) -> ExitCode:
        if self.not_judged:
            return ExitCode.USAGE  # nothing to judge, as with no predictions at all: never a silent "ok"
        return ExitCode.REFUSED if self.degraded else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: a figure that is no number is ``null`` (``NaN`` in summary.json is
        refused by JSON parsers other than Python's)."""
        return json.loads(self.model_dump_json()) | {"verdict": self.verdict}


# --------------------------------------------------------------------------- reading


#: Where a window without --since starts.
_ALL_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _window(options: PerformanceOptions) -> tuple[datetime, datetime]:
    until = options.until or datetime.now(UTC)
    since = options.since or _ALL_TIME
    if since >= until:  # each bound named as given: "--since 1970-01-01" named an option no one gave
        start = f"--since {since.isoformat()}" if options.since else f"the window's start ({since:%Y-%m-%d})"
        end = f"--until {until.isoformat()}" if options.until else "now"
        raise DataValidationError(f"{start} is not before {end}")
    return since, until


def read(
    url: str, name: str, version: int, since: datetime, until: datetime, horizon_days: int, maturity_days: int = 0
) -> dict[str, Any]:
    """Everything the verdict needs, aggregated in the database: the matched outcomes, the
    score histogram of the window's predictions, and the counts."""
    if why := missing_file(url):
        raise NothingToJudge(why)
    engine = make_engine(url)
    dialect = engine.dialect.name
    window = outcomes.window_params(dialect, since, until)
    params = {"name": name, "version": version, "horizon_days": horizon_days, **window}
    rounded = f"ROUND(CAST({PROBABILITY} AS NUMERIC), {_SCORE_DECIMALS})" if dialect == "postgresql" else (
        f"ROUND({PROBABILITY}, {_SCORE_DECIMALS})"
    )  # fmt: skip
    in_window = (f"FROM {INFERENCE_LOG_TABLE} WHERE {MODEL_NAME} = :name AND {MODEL_VERSION} = :version "
                 f"AND {SCORED_AT} >= :since AND {SCORED_AT} < :until")  # fmt: skip
    where = engine.url.render_as_string()  # hides the password
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(INFERENCE_LOG_TABLE):
            raise NothingToJudge(no_table(where))
        labelled = inspector.has_table(outcomes.OUTCOMES_TABLE)  # no table yet: no labels yet
        # One snapshot for the three queries: an outcomes push or delete between them skewed the
        # counts (unmatched_outcomes below zero). SQLite's reads see one writer's commits anyway.
        snapshot = {"isolation_level": "REPEATABLE READ"} if dialect == "postgresql" else {}
        with engine.connect().execution_options(**snapshot) as conn:
            sql = outcomes.matched_sql(dialect, maturity_days=maturity_days)
            matched = _frame(conn.execute(sa.text(sql), params)) if labelled else (
                pd.DataFrame(columns=[CHURNED, PROBABILITY, SCORED_AT, "log_id"])
            )  # fmt: skip
            histogram = conn.execute(sa.text(f"SELECT {rounded} AS score, count(*) {in_window} GROUP BY 1"),
                                     params).fetchall()  # fmt: skip
            observed = judged = 0
            if labelled:
                observed = conn.execute(sa.text(
                    f"SELECT count(*) FROM {outcomes.OUTCOMES_TABLE} "
                    "WHERE observed_at >= :since AND observed_at < :until"
                ), params).scalar_one()  # fmt: skip
                # The window's predictions that some outcome judged (by scored_at, as the estimate).
                judged = int(((matched[SCORED_AT] >= params["since"]) & (matched[SCORED_AT] < params["until"])).sum())
    except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:  # down, a missing grant, not a database at all
        raise read_failure(exc, where) from exc
    finally:
        engine.dispose()
    scores = np.array([float(r[0]) for r in histogram], dtype=float)
    counts = np.array([int(r[1]) for r in histogram], dtype=np.int64)
    return {"matched": matched, "scores": scores, "counts": counts, "observed": int(observed), "judged": int(judged)}


def _frame(result: sa.CursorResult) -> pd.DataFrame:
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _check_scores(values: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        raise BadLogData(f"{int(bad.sum())} {where} are not probabilities in [0, 1] (e.g. {values[bad][:3].tolist()})")


# --------------------------------------------------------------------------- the job


def _baseline(client: mlflow.MlflowClient, name: str, version: int) -> tuple[dict[str, float], float | None]:
    """The version's validation metrics from its training run, and its decision threshold."""
    model_version = registry.get_version(client, name, version)
    threshold = loading.decision_threshold(model_version.tags.get(TAG_THRESHOLD), None, version)
    if not model_version.run_id:
        return {}, threshold
    try:
        metrics = client.get_run(model_version.run_id).data.metrics
    except mlflow.MlflowException as exc:  # purged (`mlflow gc`): was a traceback, exit 70 "a bug"
        if not registry.is_missing(exc):
            raise
        raise NothingToJudge(f"the training run {model_version.run_id} of {name} v{version} no longer exists "
                             "(deleted for good): there is no baseline to judge it against") from None
    # A run that logged NaN (by hand, another tool) has no baseline: compared with NaN, every
    # figure read as healthy, "ok" where the verdict is not_judged.
    finite = {k: float(metrics[k]) for k in VALIDATION_METRICS if k in metrics and math.isfinite(metrics[k])}
    return finite, threshold


def realized_below(real: Realized, floor: float, min_rows: int, tolerance: float) -> bool:
    """Whether the realized ROC AUC degrades: on enough labelled rows, below the baseline
    (``floor``) minus the tolerance, and with its 95% upper bound below the baseline."""
    if real.roc_auc is None or real.rows < min_rows or real.roc_auc >= floor - tolerance:
        return False
    return real.roc_auc_upper_bound < floor


def estimated_below(est: Estimated, floor: float, min_rows: int, tolerance: float) -> bool:
    """Whether the estimated ROC AUC degrades: on enough predictions, below the baseline
    (``floor``) minus the tolerance (one prediction alone estimates 0.5)."""
    return est.roc_auc is not None and est.rows >= min_rows and est.roc_auc < floor - tolerance


def unmatched(s: PerformanceSummary) -> str:
    """Why outcomes that came in judged nothing, as the CLI and the report say it."""
    return (f"none of the {s.unmatched_outcomes:,} outcomes observed in the window matched a prediction of "
            f"v{s.model_version} (ids written another way, '0012' and '12'? predictions older than the window?)")


def within_chance(real: Realized, floor: float, min_rows: int, tolerance: float) -> bool:
    """Whether the realized ROC AUC is below the baseline minus the tolerance on enough rows,
    but not by more than chance: shown as such, not judged degraded."""
    below_floor = real.roc_auc is not None and real.rows >= min_rows and real.roc_auc < floor - tolerance
    return below_floor and not realized_below(real, floor, min_rows, tolerance)


def judge(
    real: Realized, est: Estimated, baseline: dict[str, float], min_rows: int, tolerance: float
) -> list[str]:
    """Why the version degraded (empty: it did not): realized ROC AUC on enough labelled rows,
    or estimated ROC AUC on enough predictions, below the training baseline minus the tolerance
    (a handful of rows says nothing: one prediction alone estimates 0.5). The realized figure
    must also be below the baseline by more than chance: with few churners among the labelled
    rows its noise alone crossed the tolerance in a quarter of the runs of a healthy model."""
    reasons = []
    floor = baseline.get(GATE_METRIC)
    if floor is None:
        return reasons
    if realized_below(real, floor, min_rows, tolerance):
        reasons.append(f"{GATE_METRIC}: realized {real.roc_auc:.4f} on {real.rows} labelled rows "
                       f"({real.positives} churned) is below the baseline {floor:.4f} minus {tolerance}, "
                       f"and by more than chance (95% upper bound {real.roc_auc_upper_bound:.4f})")  # fmt: skip
    if estimated_below(est, floor, min_rows, tolerance):
        reasons.append(f"estimated_{GATE_METRIC}: {est.roc_auc:.4f} (CBPE over {est.rows} predictions) is below the "
                       f"baseline {floor:.4f} minus {tolerance}")  # fmt: skip
    return reasons


def not_judged(real: Realized, est: Estimated, baseline: dict[str, float], min_rows: int) -> str | None:
    """Why neither figure can judge the version, or None: a run that could not have found a
    degradation must not read as "ok" (nor count as a healthy run for retraining)."""
    if baseline.get(GATE_METRIC) is None:
        return f"the version's training run has no {GATE_METRIC} to compare with (none logged, or not a number)"
    if (real.roc_auc is None or real.rows < min_rows) and (est.roc_auc is None or est.rows < min_rows):
        # Each side's own reason: 2,877 labelled rows of one class read "too few rows".
        return (f"nothing to judge on: {_why_not(real.rows, min_rows, 'labelled rows', 'of one class')}; "
                f"{_why_not(est.rows, min_rows, 'predictions in the window', 'scored 0 or all 1')}")
    return None


def _why_not(rows: int, min_rows: int, what: str, alike: str) -> str:
    """A side's reason for no figure: too few rows, else rows alike (no ROC AUC on them)."""
    if rows < min_rows:
        return f"{rows} {what}, fewer than {min_rows} (CHURN_PERFORMANCE_MIN_ROWS)"
    return f"{rows} {what}, all {alike} (no {GATE_METRIC})"


def _record_run(summary: PerformanceSummary, summary_path: Path, stamp: str, experiment: str) -> str:
    """Log the figures as a run in the monitoring experiment, so the UI plots quality over time."""
    name, version = summary.model_name, summary.model_version
    figures: dict[str, float] = {"rows_matched": summary.rows_matched, "unmatched_outcomes": summary.unmatched_outcomes,
                                 "predictions": summary.predictions}  # fmt: skip
    if not summary.not_judged:  # "degraded: 0" would read as a verdict of ok
        figures["degraded"] = int(summary.degraded)
    for prefix, model in (("realized", summary.realized), ("estimated", summary.estimated)):
        for key, value in model.model_dump().items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value is not None:
                figures[f"{prefix}_{key}"] = float(value)
    tags = {"job": "performance", "model_name": name, "model_version": str(version), "verdict": summary.verdict,
            TAG_WINDOW_START: summary.window.since or _ALL_TIME.isoformat(),
            **({TAG_ADHOC: summary.adhoc} if summary.adhoc else {})}  # fmt: skip
    artifacts = [*([summary.report_html] if summary.report_html else []), str(summary_path)]
    return record_run(experiment, f"performance-{name}-v{version}-{stamp}", tags, figures, artifacts)


def run(options: PerformanceOptions, settings: Settings) -> PerformanceSummary:
    """Run the job and return its summary (``summary.exit_code`` is the command's exit code)."""
    from monitoring import performance_report

    name = settings.model_name
    clear_verdict(options.output_dir)  # first: a run that stops early leaves no old verdict as its own
    since, until = _window(options)
    client = registry.connect(settings, existing=True)
    with registry.translate_errors(settings):
        live_experiment(client, settings.monitor_experiment)
        try:
            version = options.version or loading.resolve(client, name, options.alias)
            baseline, tagged_threshold = _baseline(client, name, version)
        except NotFoundError as exc:
            raise NothingToJudge(str(exc)) from exc
        threshold = tagged_threshold if tagged_threshold is not None else settings.decision_threshold
        url = options.inference_log_url or settings.inference_log_url
        got = read(url, name, version, since, until, settings.outcome_horizon_days, settings.outcome_maturity_days)
        predictions = int(got["counts"].sum())
        matched: pd.DataFrame = got["matched"]
        if predictions == 0 and matched.empty:
            raise NothingToJudge(f"no predictions of {name} v{version} in the window and no outcomes judging any")
        _check_scores(got["scores"], "logged scores")
        labels = matched[CHURNED].astype(bool).to_numpy()
        scores = matched[PROBABILITY].astype(float).to_numpy()
        _check_scores(scores, "matched scores")
        real = realized(labels, scores, threshold)
        est = estimated(got["scores"], threshold, got["counts"])
        matched[SCORED_AT] = pd.to_datetime(matched[SCORED_AT], utc=True, format="ISO8601")
        days = by_day(matched, SCORED_AT, CHURNED, PROBABILITY)
        reasons = judge(real, est, baseline, settings.performance_min_rows, settings.performance_tolerance)

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = (report_folder(options.output_dir) if options.output_dir
                   else run_folder(Path("reports") / "performance", stamp))  # fmt: skip
        html = out_dir / "report.html"
        summary = PerformanceSummary(
            model_name=name, model_version=version, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            adhoc=options.adhoc,
            window=PerformanceWindow(since=options.since.isoformat() if options.since else None,
                                     until=until.isoformat(), horizon_days=settings.outcome_horizon_days,
                                     maturity_days=settings.outcome_maturity_days),
            rows_matched=len(matched), unmatched_outcomes=got["observed"] - len(matched), predictions=predictions,
            unlabelled_predictions=predictions - got["judged"], decision_threshold=threshold, realized=real,
            estimated=est, baseline=baseline, degraded=bool(reasons), reasons=reasons, by_day=days,
            min_rows=settings.performance_min_rows, tolerance=settings.performance_tolerance,
            report_html=str(html), output_dir=str(out_dir),
            not_judged=not_judged(real, est, baseline, settings.performance_min_rows),
        )  # fmt: skip
        performance_report.write_html(html, summary, labels, scores)
        summary_path = out_dir / "summary.json"
        summary_path.write_text(json.dumps(summary.to_json(), indent=2))
        with alerting_if_unrecorded(functools.partial(_alert, summary, options, settings)):
            recorded = _record_run(summary, summary_path, stamp, settings.monitor_experiment)
        summary = summary.model_copy(update={"mlflow_run_id": recorded})
        summary_path.write_text(json.dumps(summary.to_json(), indent=2))
    _alert(summary, options, settings)
    return summary


def _alert(summary: PerformanceSummary, options: PerformanceOptions, settings: Settings) -> None:
    webhook = alert_webhook(options.alert_webhook, options.adhoc, settings.monitor_alert_webhook)
    if summary.degraded and webhook:
        send_alert(webhook, summary.to_json())
