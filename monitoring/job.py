"""The drift job: reference from the registered model's own run, current rows from the
inference log or a file, our own quality checks, Evidently drift, a verdict, and a record
of it all as an MLflow run in the monitoring experiment.

Exit codes (``ExitCode``): 0 no drift, 1 drift, 2 nothing to compare (no model, reference
or rows in the window) or bad usage, 3 registry or inference log unreachable, 4 the
current data failed the quality checks.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import mlflow
import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from churn_platform import data, inference_log, job_metrics, loading, registry
from churn_platform.contract import (
    ARM,
    INFERENCE_LOG_TABLE,
    MODEL_NAME,
    MODEL_VERSION,
    PROBABILITY,
    PRODUCTION_ALIAS,
    REFERENCE_ARTIFACT,
    SCORED_AT,
    TAG_ADHOC,
    TAG_WINDOW_START,
    ExitCode,
)
from churn_platform.errors import DataSourceError, DataValidationError, NotFoundError, StorageUnreachable
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import Settings
from monitoring import drift, quality, report
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

Verdict = Literal["no_drift", "drift", "data_quality_failure"]
EXIT_CODES: dict[str, ExitCode] = {
    "no_drift": ExitCode.OK,
    "drift": ExitCode.REFUSED,
    "data_quality_failure": ExitCode.DATA_QUALITY,
}


class NothingToCompare(NotFoundError):
    """No model, no reference, or no usable rows in the window: no verdict is possible."""


@dataclass(frozen=True)
class MonitorOptions:
    """One run's choices; anything left None comes from the settings."""

    alias: str = PRODUCTION_ALIAS
    version: int | None = None
    current: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    rows: int | None = None
    all_versions: bool = False
    output_dir: Path | None = None
    inference_log_url: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    critical: list[str] | None = None
    drift_share: float | None = None
    alert_webhook: str | None = None
    seed: int = 0

    @property
    def adhoc(self) -> str | None:
        """Why this run does not judge Production's latest traffic (``TAG_ADHOC``), or None."""
        return job_metrics.adhoc(self.alias, self.version, self.until, current=self.current,
                                 all_versions=self.all_versions)  # fmt: skip


class Window(BaseModel):
    """Where the current rows came from."""

    model_config = ConfigDict(frozen=True)

    source: str
    since: str | None = None
    until: str | None = None
    rows: int | None = None
    versions: Literal["all"] | list[int] | None = None
    rows_read: int
    sampled: dict[str, int] | None = None
    #: Where prediction drift's scores came from: the log, a file's own (``score --with-features``), or re-scoring.
    scores: str | None = None
    #: When the log's rows read were scored, first and last (UTC): with no window given, the
    #: latest rows of a version are months old after a rollback, and "no drift" read as current.
    scored_from: str | None = None
    scored_to: str | None = None


    def describe(self) -> str:
        """One line for the report: where the rows came from, when they were scored, whether
        they are a sample and whose scores prediction drift compared."""
        where = "the inference log" if self.source == "inference_log" else self.source
        parts = [f"{self.rows_read:,} rows read from {where}"]
        if self.scored_from:
            parts.append(f"scored {self.scored_from} .. {self.scored_to}")
        if self.sampled:
            parts.append(f"a seeded sample of {self.sampled['rows']:,} of {self.sampled['of']:,} "
                         f"(seed {self.sampled['seed']})")  # fmt: skip
        if self.scores:
            parts.append(f"scores {self.scores}")
        return "; ".join(parts) + "."


class DataQuality(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    findings: list[quality.Finding]


class Thresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    drift_share: float
    column_default: float
    columns: dict[str, float]
    critical_columns: list[str]


class MonitorSummary(BaseModel):
    """The job's result: written as summary.json, printed by ``--json``, posted to the webhook."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: int
    model_run_id: str | None
    created_at: str
    reference_rows: int
    #: ``{rows, of, seed}`` when the reference was past CHURN_MONITOR_MAX_ROWS and sampled; None: whole.
    reference_sampled: dict[str, int] | None = None
    current_rows: int
    window: Window
    data_quality: DataQuality
    thresholds: Thresholds
    verdict: Verdict
    dataset_drift: bool | None = None
    drift_share: float | None = None
    drifted_columns: list[str] = []
    critical_drifted: list[str] = []
    columns: dict[str, drift.ColumnDrift] = {}
    prediction_drift: drift.ColumnDrift | None = None
    report_html: str | None = None
    output_dir: str
    mlflow_run_id: str | None = None
    #: Why this run does not judge Production's latest traffic (``TAG_ADHOC``); None: it does.
    adhoc: str | None = None

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: a figure that is no number is ``null``, never ``NaN``."""
        return json.loads(self.model_dump_json())


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ReferenceRows:
    """The version's training rows to compare with: typed as the current rows are, and a
    seeded sample past ``CHURN_MONITOR_MAX_ROWS`` (read batch by batch: a version trained on a
    million customers, read whole, exceeded the job's memory)."""

    frame: pd.DataFrame
    run_id: str | None
    held: int
    drawn: int  # before rows missing a value are dropped, as the current rows' are
    seed: int

    @property
    def sampled(self) -> dict[str, int] | None:
        return None if self.drawn >= self.held else {"rows": len(self.frame), "of": self.held, "seed": self.seed}


def _described(sampled: dict[str, int] | None) -> str:
    if not sampled:
        return ""
    return f" Reference: a seeded sample of {sampled['rows']:,} of {sampled['of']:,} training rows."


def load_reference(
    client: mlflow.MlflowClient, name: str, version: int, settings: Settings, seed: int = 0
) -> ReferenceRows:
    found = registry.get_version(client, name, version)
    if not found.run_id:
        raise NothingToCompare(f"{name} v{version} has no training run, so no reference data")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=found.run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp
            )
        except Exception as exc:  # noqa: BLE001 - missing artifact or store
            if loading.unreachable(exc) and isinstance(exc, mlflow.MlflowException):
                raise  # through the tracking server: translate_errors names it
            if why := registry.served_artifacts(exc):
                raise NothingToCompare(f"cannot read the reference data of {name} v{version}: {why}") from exc
            # Read from the object store directly, MLflow says only "failed to download": ask the
            # store itself, so that a store that is down is exit 3, not "no reference data".
            if unreachable := loading.store_unreachable(client, found.run_id, exc):
                raise StorageUnreachable(
                    f"cannot read the reference data of {name} v{version} (run {found.run_id}): "
                    f"the artifact store is unreachable: {unreachable}"[:400]
                ) from exc
            raise NothingToCompare(
                f"no reference data in run {found.run_id} of {name} v{version} ({REFERENCE_ARTIFACT}): {exc}"[:400]
            ) from exc
        try:
            held = loading.Reference(Path(path))
            columns = [*FEATURE_NAMES, *([PROBABILITY] if PROBABILITY in held.columns else [])]
            frame = held.sample(settings.monitor_max_rows, seed=seed, columns=columns)
        except loading.ReferenceIncomplete as exc:
            # A version trained under an older schema (or an odd reference file) lacks a feature:
            # the comparison failed with a KeyError, exit 70 "a bug".
            raise NothingToCompare(
                f"the reference data of {name} v{version} (run {found.run_id}) lacks the features {exc.missing}: "
                "it was trained on another schema; monitor a version trained on this one"
            ) from None
        except (OSError, ValueError, loading.ReferenceUnreadable) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise NothingToCompare(f"the reference data of {name} v{version} (run {found.run_id}, "
                                   f"{REFERENCE_ARTIFACT}) is unreadable: {exc}"[:400]) from None  # fmt: skip
    # Typed as the current rows are: a reference written by hand or by another tool (flags as
    # 0.0/1.0, charges as text) drifted on every such column, or failed with a traceback.
    if frame.empty:  # "trained on only 0 rows" below, not the checks' "the current window has no rows"
        return ReferenceRows(frame, found.run_id, 0, 0, seed)
    typed, findings = quality.check(frame, settings.monitor_max_missing_share)
    if failures := [f.detail for f in findings if f.failure]:
        raise NothingToCompare(
            f"the reference data of {name} v{version} (run {found.run_id}) fails the data checks: "
            f"{'; '.join(failures)}"[:600] + "; retrain the version, or monitor another"
        )
    return ReferenceRows(typed, found.run_id, len(held), len(frame), seed)


#: An even, seeded sample in SQL: ``(id mod P) * A mod P`` with P prime and A/P near the golden
#: ratio's conjugate spreads consecutive ids over [0, P) like a Weyl sequence, so the ids under a
#: cutoff are spread evenly over the window and never fall in step with a client's batch size,
#: as ``id mod k`` would (batches each sorted by segment would give one segment). Fits in 64 bits.
_SPREAD_P = 2_147_483_647
_SPREAD_A = 1_327_217_885


def _spread(ids: sa.ColumnElement[int], seed: int) -> sa.ColumnElement[int]:
    offset = seed * _SPREAD_A % _SPREAD_P  # far apart for nearby seeds: another seed, another sample
    return ((ids % _SPREAD_P) * _SPREAD_A + offset) % _SPREAD_P


def current_from_log(
    url: str, name: str, version: int | None, options: MonitorOptions, max_rows: int
) -> tuple[pd.DataFrame, int]:
    """The window's rows, and how many it holds. Past ``max_rows`` the database sends an even,
    seeded sample of about ``max_rows`` of them: a day of busy traffic is tens of millions of
    rows, about 2.5 KB each once read, which no monitor pod's memory holds."""
    table = sa.table(INFERENCE_LOG_TABLE, *(sa.column(c) for c in ("id", SCORED_AT, MODEL_NAME, MODEL_VERSION, ARM)))
    where = [table.c[MODEL_NAME] == name]
    if version is not None:
        where.append(table.c[MODEL_VERSION] == version)
    else:  # every version: a shadow row repeats a customer Production answered (and must not fill --rows)
        where.append(table.c[ARM] != "shadow")
    if options.since:
        where.append(table.c[SCORED_AT] >= options.since)
    if options.until:
        where.append(table.c[SCORED_AT] < options.until)
    if why := inference_log.missing_file(url):
        raise NothingToCompare(why)
    engine = inference_log.make_engine(url)  # a connect timeout: a host that never answers is exit 3 in seconds
    place = engine.url.render_as_string()  # hides the password
    try:
        with engine.connect() as conn:
            if options.rows:  # the latest N: their id range, found through the primary key
                latest = sa.select(table.c.id).where(*where).order_by(table.c.id.desc()).limit(options.rows).subquery()
                first, last, count = conn.execute(
                    sa.select(sa.func.min(latest.c.id), sa.func.max(latest.c.id), sa.func.count()).select_from(latest)
                ).one()
                where.append(table.c.id.between(first, last))
            else:
                count = conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
            if count > max_rows:
                where.append(_spread(table.c.id, options.seed) < _SPREAD_P * max_rows // count)
            result = conn.execute(sa.select(sa.text("*")).select_from(table).where(*where))
            return pd.DataFrame(result.fetchall(), columns=list(result.keys())), count
    except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:  # down, a missing grant, not a database at all
        if inference_log.is_missing_table(exc):
            raise NothingToCompare(inference_log.no_table(place)) from exc
        raise inference_log.read_failure(exc, place) from exc
    finally:
        engine.dispose()


def _stored_scores(raw: pd.DataFrame, source: str, name: str, version: int) -> tuple[pd.DataFrame, dict]:
    """A file of batch scores is monitored with its own scores when the monitored model and
    version made them (it says so in its model_name and model_version columns); a file
    without scores, or with anyone else's, is scored here."""
    if PROBABILITY not in raw.columns:
        return raw, {"source": source, "scores": f"scored here by v{version}"}
    if any(c not in raw.columns for c in FEATURE_NAMES):  # the data checks name them: a data-quality failure
        hint = "unused: the file lacks features; write it with `churn-platform score --with-features`"
        return raw.drop(columns=[PROBABILITY]), {"source": source, "scores": hint}
    made_by: list[str] = []
    if MODEL_VERSION in raw.columns:
        versions = pd.to_numeric(raw[MODEL_VERSION], errors="coerce")
        names = raw[MODEL_NAME].astype(str) if MODEL_NAME in raw.columns else pd.Series(name, index=raw.index)
        pairs = zip(names, versions, strict=True)
        made_by = sorted({f"{n} v{int(v)}" if _whole(v) else "an unknown version" for n, v in pairs})
    if made_by != [f"{name} v{version}"]:
        scores = f"scored here by v{version} (the file's scores are from {', '.join(made_by) or 'an unnamed model'})"
        return raw.drop(columns=[PROBABILITY]), {"source": source, "scores": scores}
    return raw, {"source": source, "scores": "stored in the file"}


def _whole(value: float) -> bool:
    """A version number as a file may hold it (1, 1.0); not NaN, inf or 1.5, read as no version."""
    return math.isfinite(value) and value == int(value)


def _across_versions(raw: pd.DataFrame, version: int) -> tuple[pd.DataFrame, str]:
    """The log's rows by every version as one window (``current_from_log`` leaves shadow rows
    out): when other versions scored some rows, their scores are dropped so that the monitored
    version scores the window (prediction drift compares its own scores with its training
    scores, never another model's)."""
    others = sorted({int(v) for v in pd.to_numeric(raw[MODEL_VERSION], errors="coerce").dropna()} - {version})
    if not others:
        return raw, "logged"
    made_by = ", ".join(f"v{v}" for v in others)
    return raw.drop(columns=[PROBABILITY]), f"scored here by v{version} (the window holds scores by {made_by} too)"


def _read_file(source: str, settings: Settings) -> pd.DataFrame:
    """``--current``, read once the registry answers but before the version is resolved and
    its reference downloaded: a mistyped path is said at once, not after seconds of work."""
    try:
        return data.read_table(source, settings.s3_endpoint_url)
    except DataSourceError as exc:
        raise NothingToCompare(f"no current rows: {exc}") from exc
    except DataValidationError as exc:
        if "no rows" not in str(exc):
            raise
        raise NothingToCompare(f"no current rows: {exc}") from exc


def _current(
    options: MonitorOptions, settings: Settings, name: str, version: int, file: pd.DataFrame | None
) -> tuple[pd.DataFrame, dict, int]:
    """The current rows, where they came from, and how many the source held (the log sends a
    sample of a window past CHURN_MONITOR_MAX_ROWS)."""
    max_rows = settings.monitor_max_rows
    if options.current and file is not None:
        raw, window = _stored_scores(file, options.current, name, version)
        return raw, window, len(raw)
    url = options.inference_log_url or settings.inference_log_url
    if not (options.since or options.rows):
        # No start (nothing, or --until alone): the latest rows, never the version's whole
        # history (a count over all of it, and a recent shift diluted by months of traffic).
        options = replace(options, rows=max_rows)
    raw, in_window = current_from_log(url, name, None if options.all_versions else version, options, max_rows)
    scores = "logged"
    if options.all_versions:
        raw, scores = _across_versions(raw, version)
    if raw.empty:
        raise NothingToCompare(f"no rows in the inference log for {name} v{version} in this window")
    scored = pd.to_datetime(raw[SCORED_AT], utc=True, format="ISO8601")
    window = {
        "scored_from": scored.min().isoformat(),
        "scored_to": scored.max().isoformat(),
        "scores": scores,
        "source": "inference_log",
        "since": options.since.isoformat() if options.since else None,
        "until": options.until.isoformat() if options.until else None,
        "rows": options.rows,
        "versions": "all" if options.all_versions else [version],
    }
    return raw, window, in_window


# --------------------------------------------------------------------------- the job


def _record_run(summary: MonitorSummary, summary_path: Path, stamp: str, experiment: str) -> str:
    """Log the summary (and report) as a run in the monitoring experiment; return its id."""
    name, version = summary.model_name, summary.model_version
    metrics: dict[str, float] = {"current_rows": summary.current_rows, "reference_rows": summary.reference_rows}
    if summary.drift_share is not None:
        metrics |= {"drift_share": summary.drift_share, "n_drifted_columns": len(summary.drifted_columns)}
        metrics |= {f"drift_score.{k}": v.score for k, v in summary.columns.items()}
        if summary.prediction_drift:
            metrics["prediction_drift_score"] = summary.prediction_drift.score
    tags = {"model_name": name, "model_version": str(version), "verdict": summary.verdict,
            "model_run_id": summary.model_run_id or "",
            **({TAG_ADHOC: summary.adhoc} if summary.adhoc else {}),
            **({TAG_WINDOW_START: summary.window.scored_from} if summary.window.scored_from else {})}  # fmt: skip
    artifacts = [*([summary.report_html] if summary.report_html else []), str(summary_path)]
    return record_run(experiment, f"{name}-v{version}-{stamp}", tags, metrics, artifacts)


def run(options: MonitorOptions, settings: Settings) -> MonitorSummary:
    """Run the job and return its summary (``summary.exit_code`` is the command's exit code)."""
    name = settings.model_name
    clear_verdict(options.output_dir)  # first: a run that stops early leaves no old verdict as its own
    client = registry.connect(settings, existing=True)
    with registry.translate_errors(settings):
        live_experiment(client, settings.monitor_experiment)
        file = _read_file(options.current, settings) if options.current else None
        try:
            version = options.version or loading.resolve(client, name, options.alias)
            reference = load_reference(client, name, version, settings, options.seed)
        except NotFoundError as exc:
            raise NothingToCompare(str(exc)) from exc

        raw, window, held = _current(options, settings, name, version, file)
        window["rows_read"] = len(raw)
        held = max(held, len(raw))  # rows logged between the log's count and its read are held too
        # Every row checked, then sampled: a bad value in the rows a file's sample left out passed
        # ("no drift", exit 0) where a smaller file failed the same check.
        current, findings = quality.check(raw, settings.monitor_max_missing_share)
        if len(current) > settings.monitor_max_rows:
            current = current.sample(settings.monitor_max_rows, random_state=options.seed)
        if held > (kept := min(len(raw), settings.monitor_max_rows)):
            window["sampled"] = {"rows": kept, "of": held, "seed": options.seed, "limit": settings.monitor_max_rows}
        quality_passed = not any(f.failure for f in findings)
        if quality_passed and len(current) < settings.monitor_min_rows:
            # A handful of rows "drifts" on every column by chance: refuse to give a verdict.
            raise NothingToCompare(
                f"only {len(current)} usable current rows; at least {settings.monitor_min_rows} are needed "
                "for a meaningful comparison (CHURN_MONITOR_MIN_ROWS)"
            )
        if quality_passed and len(reference.frame) < settings.monitor_min_rows:
            # The same holds on the reference side: a version retrained on a few hundred rows
            # "drifted" on tenure in every window of its own population.
            raise NothingToCompare(
                f"v{version} was trained on only {len(reference.frame)} rows (its drift reference); at least "
                f"{settings.monitor_min_rows} are needed on each side (CHURN_MONITOR_MIN_ROWS): retrain on more rows"
            )
        if quality_passed and PROBABILITY not in current.columns:
            # A file carries no scores: score it with the same version for prediction drift.
            model = loading.load_pipeline(name, version)
            try:
                current[PROBABILITY] = model.predict_proba(current.loc[:, list(FEATURE_NAMES)])[:, 1]
            except ValueError as exc:  # a guard: in-range values the version still cannot score
                detail = f"v{version} cannot score these rows ({str(exc).splitlines()[0]}); look for extreme values"
                findings.append(quality.Finding("unscorable", None, detail, True))
                quality_passed = False

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = (report_folder(options.output_dir) if options.output_dir
                   else run_folder(Path("reports") / "drift", stamp))  # fmt: skip
        critical = options.critical if options.critical is not None else settings.monitor_critical_columns
        thresholds = settings.monitor_column_thresholds | options.thresholds
        share_limit = options.drift_share or settings.monitor_drift_share
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        base: dict[str, Any] = dict(
            model_name=name, model_version=version, model_run_id=reference.run_id, created_at=created_at,
            adhoc=options.adhoc, reference_rows=len(reference.frame), reference_sampled=reference.sampled,
            current_rows=len(current), window=Window(**window),
            data_quality=DataQuality(passed=quality_passed, findings=findings), output_dir=str(out_dir),
            thresholds=Thresholds(drift_share=share_limit, column_default=settings.monitor_column_threshold,
                                  columns=thresholds, critical_columns=sorted(critical)),
        )  # fmt: skip
        if not quality_passed:
            summary = MonitorSummary(**base, verdict="data_quality_failure")  # and no report
        else:
            threshold = settings.monitor_column_threshold
            result = drift.compute(reference.frame, current, thresholds, threshold, set(critical))
            drifted = [c.column for c in result.columns if c.drifted]
            share = len(drifted) / len(result.columns)
            critical_hit = [c for c in drifted if c in critical]
            dataset_drift = share >= share_limit or bool(critical_hit)
            detected = dataset_drift or bool(result.prediction and result.prediction.drifted)
            html = out_dir / "report.html"
            summary = MonitorSummary(
                **base, verdict="drift" if detected else "no_drift", dataset_drift=dataset_drift, drift_share=share,
                drifted_columns=drifted, critical_drifted=critical_hit, columns={c.column: c for c in result.columns},
                prediction_drift=result.prediction, report_html=str(html),
            )  # fmt: skip
            report.write_html(
                html, model_name=name, model_version=version, verdict=summary.verdict, drift_share=share,
                share_limit=share_limit, critical_drifted=critical_hit, result=result,
                reference_rows=len(reference.frame), current_rows=len(current), created_at=created_at,
                window=summary.window.describe() + _described(reference.sampled),
            )  # fmt: skip
        summary_path = out_dir / "summary.json"
        summary_path.write_text(json.dumps(summary.to_json(), indent=2))
        with alerting_if_unrecorded(functools.partial(_alert, summary, options, settings)):
            recorded = _record_run(summary, summary_path, stamp, settings.monitor_experiment)
        summary = summary.model_copy(update={"mlflow_run_id": recorded})
        summary_path.write_text(json.dumps(summary.to_json(), indent=2))
    _alert(summary, options, settings)
    return summary


def _alert(summary: MonitorSummary, options: MonitorOptions, settings: Settings) -> None:
    webhook = alert_webhook(options.alert_webhook, options.adhoc, settings.monitor_alert_webhook)
    if summary.exit_code != ExitCode.OK and webhook:
        send_alert(webhook, summary.to_json())
