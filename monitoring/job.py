"""The drift job: reference from the registered model's own run, current rows from the
inference log or a file, our own quality checks, Evidently drift, a verdict, and a record
of it all as an MLflow run in the monitoring experiment.

Exit codes: 0 no drift, 1 drift, 2 data-quality failure, 3 setup problem (no model, no
reference, no current rows, registry unreachable).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import sqlalchemy as sa

from churn_platform import data, loading, registry
from churn_platform.errors import (
    ChurnPlatformError,
    DataError,
    DataSourceError,
    DataValidationError,
    NotFoundError,
)
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import Settings
from churn_platform.training import REFERENCE_ARTIFACT
from monitoring import drift, quality

log = logging.getLogger(__name__)

NO_DRIFT, DRIFT, DATA_QUALITY, SETUP = 0, 1, 2, 3


class SetupProblem(ChurnPlatformError):
    """Nothing to compare: no model, no reference, no current rows, or no registry."""

    exit_code = SETUP


@dataclass
class MonitorOptions:
    alias: str = registry.PRODUCTION_ALIAS
    version: int | None = None
    current: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    rows: int | None = None
    all_versions: bool = False
    output_dir: Path | None = None
    inference_log_url: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    critical: set[str] | None = None
    drift_share: float | None = None
    alert_webhook: str | None = None
    seed: int = 0


def parse_thresholds(text: str) -> dict[str, float]:
    """``'tenure=0.05,contract=0.08'`` → ``{'tenure': 0.05, 'contract': 0.08}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in FEATURE_NAMES:
            raise DataError(
                f"bad column threshold {part!r}: want feature=number, features: {list(FEATURE_NAMES)}"
            )
        try:
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise DataError(f"bad column threshold {part!r}: {value!r} is not a number") from exc
    return out


def parse_columns(text: str) -> set[str]:
    names = {p.strip() for p in text.split(",") if p.strip()}
    unknown = names - set(FEATURE_NAMES)
    if unknown:
        raise DataError(f"unknown critical columns {sorted(unknown)}; features: {list(FEATURE_NAMES)}")
    return names


# --------------------------------------------------------------------------- sources


def load_reference(client: mlflow.MlflowClient, name: str, version: int) -> tuple[pd.DataFrame, str | None]:
    found = registry.get_version(client, name, version)
    if not found.run_id:
        raise SetupProblem(f"{name} v{version} has no training run, so no reference data")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=found.run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp
            )
        except Exception as exc:  # noqa: BLE001 - missing artifact or store: a setup problem
            if registry.is_connection_error(exc):
                raise
            raise SetupProblem(
                f"no reference data in run {found.run_id} of {name} v{version} ({REFERENCE_ARTIFACT}): {exc}"[
                    :400
                ]
            ) from exc
        return pd.read_parquet(path), found.run_id


def current_from_log(url: str, name: str, version: int | None, options: MonitorOptions) -> pd.DataFrame:
    table = sa.table(
        "inference_log", *(sa.column(c) for c in ("id", "scored_at", "model_name", "model_version"))
    )
    query = sa.select(sa.text("*")).select_from(table).where(table.c.model_name == name)
    if version is not None:
        query = query.where(table.c.model_version == version)
    if options.since:
        query = query.where(table.c.scored_at >= options.since)
    if options.until:
        query = query.where(table.c.scored_at < options.until)
    if options.rows:
        query = query.order_by(table.c.id.desc()).limit(options.rows)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except sa.exc.OperationalError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            raise SetupProblem(
                f"the inference log at {engine.url.render_as_string()} has no rows yet"
            ) from exc
        raise SetupProblem(
            f"cannot read the inference log at {engine.url.render_as_string()}: {exc.orig}"
        ) from exc
    except sa.exc.ProgrammingError as exc:  # PostgreSQL: relation does not exist
        raise SetupProblem(f"the inference log at {engine.url.render_as_string()} has no rows yet") from exc
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the job


def _alert(url: str, summary: dict[str, Any]) -> None:
    try:
        response = httpx.post(url, json=summary, timeout=5)
        response.raise_for_status()
        log.info("alert sent to %s", url)
    except httpx.HTTPError as exc:  # one try, no retry storm; the verdict stands
        log.warning("alert to %s failed: %s", url, exc)


def run(options: MonitorOptions, settings: Settings) -> tuple[dict[str, Any], int]:
    """Run the job; return the summary and the exit code."""
    name = settings.model_name
    client = registry.connect(settings)
    with registry.translate_errors(settings):
        try:
            version = options.version or loading.resolve(client, name, options.alias)
        except NotFoundError as exc:
            raise SetupProblem(str(exc)) from exc
        try:
            reference, run_id = load_reference(client, name, version)
        except NotFoundError as exc:
            raise SetupProblem(str(exc)) from exc

        window: dict[str, Any]
        if options.current:
            try:
                raw = data.read_table(options.current, settings.s3_endpoint_url)
            except DataSourceError as exc:
                raise SetupProblem(f"no current rows: {exc}") from exc
            except DataValidationError as exc:
                if "no rows" not in str(exc):
                    raise
                raise SetupProblem(f"no current rows: {exc}") from exc
            window = {"source": options.current}
        else:
            url = options.inference_log_url or settings.inference_log_url
            raw = current_from_log(url, name, None if options.all_versions else version, options)
            window = {
                "source": "inference_log",
                "since": options.since.isoformat() if options.since else None,
                "until": options.until.isoformat() if options.until else None,
                "rows": options.rows,
                "versions": "all" if options.all_versions else [version],
            }
            if raw.empty:
                raise SetupProblem(f"no rows in the inference log for {name} v{version} in this window")
        window["rows_read"] = len(raw)
        if len(raw) > settings.monitor_max_rows:
            raw = raw.sample(settings.monitor_max_rows, random_state=options.seed)
            window["sampled"] = {"rows": len(raw), "seed": options.seed, "limit": settings.monitor_max_rows}

        current, findings = quality.check(raw, settings.monitor_max_missing_share)
        if not any(f.failure for f in findings) and len(current) < settings.monitor_min_rows:
            # A handful of rows "drifts" on every column by chance: refuse to give a verdict.
            raise SetupProblem(
                f"only {len(current)} usable current rows; at least {settings.monitor_min_rows} are needed "
                "for a meaningful comparison (CHURN_MONITOR_MIN_ROWS)"
            )
        if not any(f.failure for f in findings) and "churn_probability" not in current.columns:
            # A file carries no scores: score it with the same version for prediction drift.
            model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
            current["churn_probability"] = model.predict_proba(current.loc[:, list(FEATURE_NAMES)])[:, 1]

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = options.output_dir or Path("reports") / "drift" / stamp
        out_dir.mkdir(parents=True, exist_ok=True)
        critical = (
            options.critical
            if options.critical is not None
            else parse_columns(settings.monitor_critical_columns)
        )
        thresholds = parse_thresholds(settings.monitor_column_thresholds) | options.thresholds
        share_limit = options.drift_share or settings.monitor_drift_share
        summary: dict[str, Any] = {
            "model_name": name,
            "model_version": version,
            "model_run_id": run_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reference_rows": len(reference),
            "current_rows": len(current),
            "window": window,
            "data_quality": {
                "passed": not any(f.failure for f in findings),
                "findings": [f.to_json() for f in findings],
            },
            "thresholds": {"drift_share": share_limit, "column_default": settings.monitor_column_threshold,
                           "columns": thresholds, "critical_columns": sorted(critical)},
        }  # fmt: skip
        html = out_dir / "report.html"
        if not summary["data_quality"]["passed"]:
            summary.update(verdict="data_quality_failure", dataset_drift=None, drift_share=None,
                           drifted_columns=[], columns={}, prediction_drift=None)  # fmt: skip
            code = DATA_QUALITY
            html = None
        else:
            columns, prediction = drift.compute(
                reference, current, thresholds, settings.monitor_column_threshold, critical, html
            )
            drifted = [c.column for c in columns if c.drifted]
            share = len(drifted) / len(columns)
            critical_hit = [c for c in drifted if c in critical]
            dataset_drift = share >= share_limit or bool(critical_hit)
            summary.update(
                drift_share=share,
                dataset_drift=dataset_drift,
                drifted_columns=drifted,
                critical_drifted=critical_hit,
                columns={c.column: asdict(c) for c in columns},
                prediction_drift=asdict(prediction) if prediction else None,
            )
            detected = dataset_drift or bool(prediction and prediction.drifted)
            summary["verdict"] = "drift" if detected else "no_drift"
            code = DRIFT if detected else NO_DRIFT
        summary_path = out_dir / "summary.json"
        summary["report_html"] = str(html) if html else None
        summary["output_dir"] = str(out_dir)
        summary_path.write_text(json.dumps(summary, indent=2, default=str))

        # Under `mlflow run -e monitor` the launcher already made the run (MLFLOW_RUN_ID), in the
        # experiment given by --experiment-name: log into it rather than start a second one.
        launched = os.environ.get("MLFLOW_RUN_ID")
        if not launched:
            mlflow.set_experiment(settings.monitor_experiment)
        with mlflow.start_run(run_name=None if launched else f"{name}-v{version}-{stamp}") as active:
            mlflow.set_tags({"model_name": name, "model_version": str(version), "verdict": summary["verdict"],
                             "model_run_id": run_id or ""})  # fmt: skip
            mlflow.log_metrics({"current_rows": len(current), "reference_rows": len(reference)})
            if summary["verdict"] != "data_quality_failure":
                mlflow.log_metrics(
                    {
                        "drift_share": summary["drift_share"],
                        "n_drifted_columns": len(summary["drifted_columns"]),
                    }
                )
                mlflow.log_metrics({f"drift_score.{k}": v["score"] for k, v in summary["columns"].items()})
                if summary["prediction_drift"]:
                    mlflow.log_metric("prediction_drift_score", summary["prediction_drift"]["score"])
                mlflow.log_artifact(str(html))
            mlflow.log_artifact(str(summary_path))
            summary["mlflow_run_id"] = active.info.run_id
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
    if code in (DRIFT, DATA_QUALITY) and (options.alert_webhook or settings.monitor_alert_webhook):
        _alert(options.alert_webhook or settings.monitor_alert_webhook, summary)
    return summary, code
