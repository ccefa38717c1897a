"""``churn-platform monitor``: registered by this package (entry point ``churn_platform.commands``)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from churn_platform import job_metrics
from churn_platform.cli import (
    ALIAS,
    COUNT,
    UTC_TIME,
    VERSION,
    Share,
    checked,
    echo_json,
    handles_errors,
    inference_log_option,
    model_name_option,
    settings_for,
    tracking_option,
)
from churn_platform.contract import EXIT_CODES_HELP, PRODUCTION_ALIAS
from churn_platform.settings import (
    checked_features,
    checked_http_url,
    checked_thresholds,
    column_thresholds,
    split_list,
)


def _thresholds(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for value in values:
        try:
            out |= checked_thresholds(column_thresholds(value))
        except ValueError as exc:
            raise click.BadParameter(f"{exc}; want feature=number, e.g. tenure=0.05") from None
    return out


def _critical(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    try:
        return checked_features(split_list(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _before(until: datetime | None, span: timedelta, flag: str) -> datetime:
    """The window's start, ``span`` before ``until`` (default now)."""
    end = until or datetime.now(UTC)
    try:
        return end - span
    except OverflowError:
        raise click.UsageError(f"{flag} reaches before the year 1 from --until {end.date().isoformat()}") from None


def _refuse_alias_beside_version(version: int | None) -> None:
    """``--alias`` has a default, so only one given (typed, or from the environment) conflicts
    with ``--version``; the other was dropped in silence, as ``score`` never does."""
    from click.core import ParameterSource

    if version is not None and click.get_current_context().get_parameter_source("alias") != ParameterSource.DEFAULT:
        raise click.UsageError("give --alias or --version, not both")


def _report_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Checked when the options are read, not after the work (the folder is made then)."""
    from monitoring.runs import foreign_verdict, writable_folder

    if value is not None and (problem := writable_folder(value)):
        raise click.BadParameter(f"{value}: {problem}", ctx=ctx, param=param)
    if value is not None and value.is_dir() and (problem := foreign_verdict(value)):
        raise click.BadParameter(f"{value}: {problem}; choose another folder or move it", ctx=ctx, param=param)
    return value


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--alias", type=ALIAS, default=PRODUCTION_ALIAS, show_default=True,
              help="Alias whose version is monitored.")
@click.option("--version", "version", type=VERSION, default=None, help="Monitor this version instead.")
@click.option(
    "--current", default=None, help="Current data (CSV/Parquet path or s3:// URI) instead of the inference log."
)
@click.option("--since", type=UTC_TIME, default=None, help="Inference-log window start (UTC, included).")
@click.option("--until", type=UTC_TIME, default=None,
              help="Inference-log window end (UTC, excluded; a date alone is its midnight).")  # fmt: skip
@click.option(
    "--last-hours",
    type=click.IntRange(1, 876_000),
    default=None,
    help="Window of the last N hours before --until (instead of --since); what a schedule wants.",
)
@click.option("--rows", type=COUNT, default=None,
              help="The last N inference-log rows (with no window: the last CHURN_MONITOR_MAX_ROWS).")  # fmt: skip
@click.option("--all-versions", is_flag=True, help="Use rows scored by any version, not only the monitored one.")
@inference_log_option()
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    callback=_report_dir,
    help="Where report.html and summary.json go (default: reports/drift/<UTC time>/).",
)
@click.option(
    "--drift-share",
    type=Share(),
    default=None,
    help="Share of drifted columns that means drift (default: CHURN_MONITOR_DRIFT_SHARE).",
)
@click.option("--column-threshold", "thresholds", multiple=True, callback=_thresholds,
              help="Per-column override, e.g. tenure=0.05 (repeatable; churn_probability: the "
                   "prediction's).")  # fmt: skip
@click.option(
    "--critical", default=None, callback=_critical, help="Comma-separated columns whose drift alone means drift."
)
@click.option("--alert-webhook", default=None, callback=checked(checked_http_url),
              help="POST the summary here on drift or data-quality failure.")  # fmt: skip
@tracking_option
@model_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary JSON.")
@job_metrics.pushes("monitor")
@handles_errors
def monitor(tracking_uri: str | None, model_name: str | None, as_json: bool, **params: Any) -> None:
    """Compare current data with the model's training data; exit 0 no drift, 1 drift."""
    from monitoring.job import MonitorOptions, run

    settings = settings_for(tracking_uri, model_name)
    last_hours = params.pop("last_hours")
    if reason := MonitorOptions(**params).adhoc:  # first: a one-off run's usage error is not pushed either
        job_metrics.not_pushed(reason)
    _refuse_alias_beside_version(params["version"])
    if params["current"]:  # these choose inference-log rows: with a file they would be silently ignored
        log_only = [f"--{k.replace('_', '-')}" for k in ("since", "until", "rows", "all_versions", "inference_log_url")
                    if params[k]]  # fmt: skip
        if last_hours is not None:
            log_only.append("--last-hours")
        if log_only:
            raise click.UsageError(f"{', '.join(log_only)} choose inference-log rows; not with --current")
    if (rows := params["rows"]) is not None and rows < (least := settings.monitor_min_rows):
        raise click.UsageError(f"--rows {rows} is below CHURN_MONITOR_MIN_ROWS ({least}): never judged")
    if last_hours is not None:
        if params["since"] is not None:
            raise click.UsageError("give --since or --last-hours, not both")
        params["since"] = _before(params["until"], timedelta(hours=last_hours), f"--last-hours {last_hours}")
    if params["since"] and params["until"] and params["since"] >= params["until"]:
        raise click.UsageError(f"--since {params['since']:%Y-%m-%d %H:%M:%S} is not before --until "
                               f"{params['until']:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    options = MonitorOptions(**params)
    summary = run(options, settings)
    judged = summary.drift_share is not None  # not on a data-quality failure: NaN, not the last run's figures
    job_metrics.record("churn_monitor_rows", summary.current_rows)
    job_metrics.record("churn_monitor_drift_share", summary.drift_share)
    job_metrics.record("churn_monitor_dataset_drift", summary.dataset_drift if judged else None)
    job_metrics.record("churn_monitor_drifted_columns", len(summary.drifted_columns) if judged else None)
    prediction = summary.prediction_drift  # None when the scores could not be compared: NaN
    job_metrics.record("churn_monitor_prediction_drift", prediction.drifted if judged and prediction else None)
    if as_json:
        echo_json(summary.to_json())
    else:
        verdict = summary.verdict.replace("_", " ")
        reference = f"reference {summary.reference_rows} rows"
        if summary.reference_sampled:
            reference += f" sampled of {summary.reference_sampled['of']}"
        rows = f"{reference}, current {summary.current_rows} rows"
        click.echo(f"{settings.model_name} v{summary.model_version}: {verdict}  ({rows})")
        if summary.window.scored_from:
            click.echo(f"  rows scored {summary.window.scored_from} .. {summary.window.scored_to}")
        if summary.drift_share is not None:
            drifted = ", ".join(summary.drifted_columns) or "none"
            click.echo(f"  drifted columns: {drifted} (share {summary.drift_share:.3f}, "  # 0.158, not 0.16 beside 0.16
                       f"limit {summary.thresholds.drift_share:g})")  # fmt: skip
            if summary.critical_drifted:  # a drift verdict below the share limit: the log says why
                click.echo(f"  critical columns drifted: {', '.join(summary.critical_drifted)} (any one is drift)")
            if summary.prediction_drift:
                p = summary.prediction_drift
                click.echo(f"  prediction drift: score {p.score:.3f} (threshold {p.threshold})"
                           f"{' DRIFTED' if p.drifted else ''}")  # fmt: skip
        for finding in summary.data_quality.findings:
            click.echo(f"  {'FAIL' if finding.failure else 'note'}: {finding.detail}")
        click.echo(f"  report: {summary.report_html or '-'}  (summary.json in {summary.output_dir})")
    sys.exit(summary.exit_code)


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--alias", type=ALIAS, default=PRODUCTION_ALIAS, show_default=True, help="Alias whose version is judged.")
@click.option("--version", "version", type=VERSION, default=None, help="Judge this version instead.")
@click.option(
    "--since",
    type=UTC_TIME,
    default=None,
    help="Window start (UTC): outcomes observed and predictions made from then on (default: all).",
)
@click.option("--until", type=UTC_TIME, default=None,
              help="Window end (UTC, excluded; a date alone is its midnight; default: now).")  # fmt: skip
@click.option(
    "--last-days",
    type=click.IntRange(1, 36500),
    default=None,
    help="Window of the last N days before --until (instead of --since); what a schedule wants.",
)
@inference_log_option("Database of the inference log and outcomes (default: CHURN_INFERENCE_LOG_URL).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    callback=_report_dir,
    help="Where report.html and summary.json go (default: reports/performance/<UTC time>/).",
)
@click.option("--alert-webhook", default=None, callback=checked(checked_http_url),
              help="POST the summary here when the model degraded.")  # fmt: skip
@tracking_option
@model_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary JSON.")
@job_metrics.pushes("performance")
@handles_errors
def performance(tracking_uri: str | None, model_name: str | None, as_json: bool, **params: Any) -> None:
    """Realized quality from outcomes, estimated quality (CBPE) before they arrive, against the
    version's training baseline; exit 0 ok, 1 degraded."""  # fmt: skip
    from monitoring.performance import PerformanceOptions, run, unmatched, within_chance

    settings = settings_for(tracking_uri, model_name)
    last_days = params.pop("last_days")
    if reason := PerformanceOptions(**params).adhoc:  # first: a one-off run's usage error is not pushed either
        job_metrics.not_pushed(reason)
    _refuse_alias_beside_version(params["version"])
    if last_days is not None:
        if params["since"] is not None:
            raise click.UsageError("give --since or --last-days, not both")
        params["since"] = _before(params["until"], timedelta(days=last_days), f"--last-days {last_days}")
    options = PerformanceOptions(**params)
    summary = run(options, settings)
    # A figure on fewer rows than the minimum judges nothing, and a run that judged nothing is
    # neither ok nor degraded: NaN ("no figure", "not judged" on the dashboard), never a value.
    for kind, figures in (("realized", summary.realized), ("estimated", summary.estimated)):
        judging = figures.roc_auc if figures.rows >= summary.min_rows else None
        job_metrics.record("churn_performance_roc_auc", judging, kind=kind)
    job_metrics.record("churn_performance_degraded", None if summary.not_judged else summary.degraded)
    job_metrics.record("churn_performance_labelled_rows", summary.rows_matched)
    if as_json:
        echo_json(summary.to_json())
    else:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        real, est = summary.realized, summary.estimated
        click.echo(
            f"{settings.model_name} v{summary.model_version}: {summary.verdict}  "
            f"({summary.rows_matched} outcomes matched, {summary.predictions} predictions in the window)"
        )
        click.echo(
            f"  roc_auc realized {fmt(real.roc_auc)}  estimated {fmt(est.roc_auc)}  "
            f"baseline {fmt(summary.baseline.get('roc_auc'))}  (degraded below baseline - {summary.tolerance})"
        )
        if summary.not_judged:
            click.echo(f"  not judged: {summary.not_judged}")
        if not summary.not_judged and 0 < real.rows < summary.min_rows:
            click.echo(f"  note: {real.rows} labelled rows, fewer than {summary.min_rows}: realized is not judged")
        elif not summary.not_judged and real.rows and real.roc_auc is None:
            click.echo(f"  note: one class among the {real.rows} labelled rows: realized is not judged")
        if not real.rows and summary.unmatched_outcomes and not summary.not_judged:  # an "ok" hid an id mismatch
            click.echo(f"  note: {unmatched(summary)}: realized is not judged, the verdict is the estimate's")
        base = summary.baseline.get("roc_auc")
        if base is not None and within_chance(real, base, summary.min_rows, summary.tolerance):
            click.echo(f"  note: realized is below baseline - {summary.tolerance}, but within chance on "
                       f"{real.positives} churners (95% upper bound {fmt(real.roc_auc_upper_bound)}): not judged "
                       "degraded")  # fmt: skip
        if not summary.not_judged and 0 < est.rows < summary.min_rows:
            click.echo(f"  note: {est.rows} predictions, fewer than {summary.min_rows}: estimated is not judged")
        for reason in summary.reasons:
            click.echo(f"  {reason}")
        click.echo(f"  report: {summary.report_html}  (summary.json in {summary.output_dir})")
    sys.exit(summary.exit_code)
