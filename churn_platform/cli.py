"""The ``churn-platform`` command line.

Exit codes are the same for every command: 0 done, 1 refused by a gate, 2 bad usage,
bad input or not found, 3 registry or storage unreachable.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from churn_platform.errors import ChurnPlatformError
from churn_platform.settings import Settings, get_settings
from churn_platform.training_config import TrainConfig


def _settings(tracking_uri: str | None, model_name: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if tracking_uri:
        overrides["tracking_uri"] = tracking_uri
    if model_name:
        overrides["model_name"] = model_name
    return get_settings().model_copy(update=overrides)


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a platform error as one readable line and exit with its code, no traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ChurnPlatformError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


tracking_option = click.option(
    "--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train, promote, serve and monitor churn models in an MLflow Model Registry."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option(
    "--data",
    default=TrainConfig.data,
    show_default=True,
    help="CSV/Parquet path or s3:// URI; 'synthetic' generates customers.",
)
@click.option(
    "--n-rows",
    type=int,
    default=TrainConfig.n_rows,
    show_default=True,
    help="Customers to generate when --data is synthetic.",
)
@click.option(
    "--model-type",
    type=click.Choice(["logistic", "hist_gradient_boosting"]),
    default=TrainConfig.model_type,
    show_default=True,
)
@click.option(
    "--c",
    "c",
    type=float,
    default=TrainConfig.c,
    show_default=True,
    help="Inverse regularisation strength (logistic).",
)
@click.option(
    "--learning-rate",
    type=float,
    default=TrainConfig.learning_rate,
    show_default=True,
    help="Boosting learning rate (hist_gradient_boosting).",
)
@click.option(
    "--max-iter",
    type=int,
    default=TrainConfig.max_iter,
    show_default=True,
    help="Boosting iterations (hist_gradient_boosting).",
)
@click.option(
    "--max-depth",
    type=int,
    default=TrainConfig.max_depth,
    show_default=True,
    help="Tree depth (hist_gradient_boosting).",
)
@click.option("--validation-size", type=float, default=TrainConfig.validation_size, show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--model-name", default=None, help="Registered model name (default: churn).")
@click.option(
    "--decision-threshold",
    type=float,
    default=None,
    help="Churn probability threshold (default: CHURN_DECISION_THRESHOLD or 0.5).",
)
@tracking_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def train(tracking_uri: str | None, model_name: str | None, as_json: bool, **params: Any) -> None:
    """Train a model and register it as a new version."""
    from churn_platform.training import train as run_training

    settings = _settings(tracking_uri, model_name)
    config = TrainConfig(model_name=settings.model_name, **params)
    result = run_training(config, settings)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "model_name": result.model_name,
                    "version": result.version,
                    "metrics": result.metrics,
                    "gate": result.gate,
                },
                indent=2,
            )
        )
        return
    click.echo(f"registered {result.model_name} version {result.version} (run {result.run_id})")
    click.echo("  " + "  ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    verdict = "passed -> Challenger" if result.gate.get("passed") else "not passed"
    click.echo(f"  gate: {verdict}: {result.gate.get('reason')}")


# --------------------------------------------------------------------------- registry commands


def registry_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Shared options of the registry commands; the wrapped function gets a connected client."""

    @tracking_option
    @click.option("--model-name", default=None, help="Registered model name (default: churn).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @wraps(func)
    def wrapper(tracking_uri: str | None, model_name: str | None, as_json: bool, **kwargs: Any) -> Any:
        from churn_platform import registry

        settings = _settings(tracking_uri, model_name)
        client = registry.connect(settings)
        with registry.translate_errors(settings):
            return func(client=client, settings=settings, as_json=as_json, **kwargs)

    return handles_errors(wrapper)


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "-"


def _fmt_version(info: dict[str, Any] | None) -> str:
    if info is None:
        return "none"
    line = f"v{info['version']}  run {info['run_id']}  {_fmt_metrics(info['metrics'])}"
    line += f"  data {info['data_digest']}"
    if info.get("promoted_at"):
        line += f"\n    promoted {info['promoted_at']} by {info['promoted_by']} via {info['promoted_via']}"
    return line


@main.command()
@registry_command
def status(client: Any, settings: Settings, as_json: bool) -> None:
    """What is in Production and Challenger, with metrics and who promoted it."""
    from churn_platform import promotion

    info = promotion.status(client, settings.model_name)
    if as_json:
        return _echo_json(info)
    click.echo(f"model {info['model']}")
    click.echo(f"  Production: {_fmt_version(info['production'])}")
    click.echo(f"  Challenger: {_fmt_version(info['challenger'])}")


@main.command()
@registry_command
def versions(client: Any, settings: Settings, as_json: bool) -> None:
    """Every version, newest first."""
    from churn_platform import promotion

    rows = promotion.versions(client, settings.model_name)
    if as_json:
        return _echo_json({"model": settings.model_name, "versions": rows})
    click.echo(f"{'version':>7}  {'status':<8} {'aliases':<22} {'created':<25} {'data':<16}  metrics")
    for row in rows:
        click.echo(
            f"{row['version']:>7}  {row['status']:<8} {','.join(row['aliases']) or '-':<22} "
            f"{row['created_at']:<25} {row['data_digest'] or '-':<16}  {_fmt_metrics(row['metrics'])}"
        )


@main.command()
@click.option("--version", "version", type=click.IntRange(min=1), required=True, help="Version to promote.")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, help="Who (default: CHURN_ACTOR or the OS user).")
@click.option("--force", is_flag=True, help="Promote even if the roc_auc gate refuses.")
@registry_command
def promote(
    client: Any, settings: Settings, as_json: bool, version: int, reason: str, actor: str | None, force: bool
) -> None:
    """Move Production to a version, if its validation roc_auc passes the gate."""
    from churn_platform import promotion

    result = promotion.promote(
        client, settings.model_name, version, reason=reason, actor=actor, force=force,
        tolerance=settings.promotion_tolerance,
    )  # fmt: skip
    if as_json:
        return _echo_json(result)
    if not result["changed"]:
        click.echo(result["message"])
        return
    click.echo(f"Production: v{result['from'] or '-'} -> v{result['to']} ({settings.model_name})")


@main.command()
@click.option("--to", "to", type=click.IntRange(min=1), default=None, help="An earlier Production version.")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, help="Who (default: CHURN_ACTOR or the OS user).")
@registry_command
def rollback(client: Any, settings: Settings, as_json: bool, to: int | None, reason: str, actor: str | None) -> None:
    """Move Production back to the version that held it before the current one."""
    from churn_platform import promotion

    result = promotion.rollback(client, settings.model_name, to=to, reason=reason, actor=actor)
    if as_json:
        return _echo_json(result)
    click.echo(f"Production rolled back: v{result['from']} -> v{result['to']} ({settings.model_name})")


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show the K newest events.")
@registry_command
def history(client: Any, settings: Settings, as_json: bool, limit: int | None) -> None:
    """Promotion and rollback events, newest first."""
    from churn_platform import promotion

    events = promotion.history(client, settings.model_name, limit)
    if as_json:
        return _echo_json({"model": settings.model_name, "events": events})
    if not events:
        click.echo(f"no promotions of {settings.model_name} recorded")
    for e in events:
        moved = f"v{e['from'] or '-'} -> v{e['to'] or '-'}"
        why = f"  {e['reason']}" if e["reason"] else ""
        click.echo(f"{e['at']}  {e['action']:<8} {moved:<12} by {e['actor']} via {e['via']}{why}")


@main.command()
@click.option("--host", default=None, help="Bind address (default: CHURN_API_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: CHURN_API_PORT or 8000).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="uvicorn worker processes.")
@click.option("--access-log", is_flag=True, help="Log every request (costs throughput).")
@handles_errors
def serve(host: str | None, port: int | None, workers: int, access_log: bool) -> None:
    """Run the prediction API with uvicorn (model from MLFLOW_TRACKING_URI's Production alias)."""
    import signal

    import uvicorn

    settings = get_settings()
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is done.
    # A completed graceful stop is a success: exit 0, as Kubernetes and systemd expect.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        timeout_graceful_shutdown=20,
        access_log=access_log,
        log_level="info",
    )


@main.command()
@click.option("--alias", default="Production", show_default=True, help="Alias whose version is monitored.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="Monitor this version instead.")
@click.option(
    "--current",
    default=None,
    help="Current data (CSV/Parquet path or s3:// URI) instead of the inference log.",
)
@click.option("--since", type=click.DateTime(), default=None, help="Inference-log window start (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Inference-log window end (UTC).")
@click.option("--rows", type=click.IntRange(min=1), default=None, help="The last N inference-log rows.")
@click.option("--all-versions", is_flag=True, help="Use rows scored by any version, not only the monitored one.")
@click.option("--inference-log-url", default=None, help="Inference-log database (default: CHURN_INFERENCE_LOG_URL).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where report.html and summary.json go (default: reports/drift/<UTC time>/).",
)
@click.option(
    "--drift-share",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Share of drifted columns that means drift (default: CHURN_MONITOR_DRIFT_SHARE).",
)
@click.option("--column-threshold", "column_thresholds", multiple=True, help="Per-column override, e.g. tenure=0.05.")
@click.option("--critical", default=None, help="Comma-separated columns whose drift alone means drift.")
@click.option("--alert-webhook", default=None, help="POST the summary here on drift or data-quality failure.")
@tracking_option
@click.option("--model-name", default=None, help="Registered model name (default: churn).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary JSON.")
@handles_errors
def monitor(tracking_uri: str | None, model_name: str | None, as_json: bool, **params: Any) -> None:
    """Compare current data with the model's training data; exit 0 no drift, 1 drift,
    2 data-quality failure, 3 setup problem."""
    from datetime import UTC
    from pathlib import Path

    from monitoring.job import MonitorOptions, parse_columns, parse_thresholds, run

    settings = _settings(tracking_uri, model_name)
    thresholds: dict[str, float] = {}
    for item in params.pop("column_thresholds"):
        thresholds |= parse_thresholds(item)
    critical = params.pop("critical")
    for key in ("since", "until"):
        if params[key] is not None and params[key].tzinfo is None:
            params[key] = params[key].replace(tzinfo=UTC)
    if params["output_dir"]:
        params["output_dir"] = Path(params["output_dir"])
    options = MonitorOptions(
        thresholds=thresholds, critical=parse_columns(critical) if critical is not None else None, **params
    )
    summary, code = run(options, settings)
    if as_json:
        _echo_json(summary)
    else:
        verdict = summary["verdict"].replace("_", " ")
        rows = f"reference {summary['reference_rows']} rows, current {summary['current_rows']} rows"
        click.echo(f"{settings.model_name} v{summary['model_version']}: {verdict}  ({rows})")
        if summary.get("drift_share") is not None:
            limit = summary["thresholds"]["drift_share"]
            drifted = summary["drifted_columns"] or "none"
            click.echo(f"  drifted columns: {drifted} (share {summary['drift_share']:.2f}, limit {limit})")
            if summary.get("prediction_drift"):
                p = summary["prediction_drift"]
                click.echo(f"  prediction drift: score {p['score']:.3f} (threshold {p['threshold']})"
                           f"{' DRIFTED' if p['drifted'] else ''}")  # fmt: skip
        for finding in summary["data_quality"]["findings"]:
            click.echo(f"  {'FAIL' if finding['failure'] else 'note'}: {finding['detail']}")
        click.echo(f"  report: {summary['report_html'] or '-'}  (summary.json in {summary['output_dir']})")
    sys.exit(code)


@main.command()
@click.option("--data", default="synthetic", show_default=True, help="Training data ('synthetic' or a CSV/Parquet).")
@click.option("--n-rows", type=click.IntRange(min=200), default=5000, show_default=True, help="Synthetic customers.")
@click.option("--traffic", type=click.IntRange(min=100), default=1000, show_default=True, help="Customers per window.")
@click.option("--folder", type=click.Path(file_okay=False), default="demo", show_default=True,
              help="Working folder (wiped first; git-ignored).")  # fmt: skip
@click.option("--keep-running", is_flag=True, help="Leave the MLflow UI and the API up afterwards.")
@handles_errors
def demo(data: str, n_rows: int, traffic: int, folder: str, keep_running: bool) -> None:
    """Run the whole platform end to end on the embedded default (no services needed)."""
    from pathlib import Path

    from churn_platform.demo import run_demo

    run_demo(Path(folder), data, n_rows, traffic, keep_running)


if __name__ == "__main__":  # pragma: no cover
    main()
