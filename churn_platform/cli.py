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
    for noisy in ("botocore", "urllib3", "alembic"):
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


if __name__ == "__main__":  # pragma: no cover
    main()
