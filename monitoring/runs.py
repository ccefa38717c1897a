"""What every monitoring job does with its verdict: record it in the monitoring experiment and
alert. Kept apart from the drift job so the performance job does not import Evidently."""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
import mlflow

log = logging.getLogger(__name__)


def send_alert(url: str, payload: dict[str, Any]) -> None:
    """POST the summary once; a failure is logged and never changes the job's result."""
    try:
        response = httpx.post(url, json=payload, timeout=5)
        response.raise_for_status()
        log.info("alert sent to %s", url)
    except httpx.HTTPError as exc:  # one try, no retry storm; the verdict stands
        log.warning("alert to %s failed: %s", url, exc)


def monitoring_experiment(name: str) -> str | None:
    """The monitoring experiment's id (created when missing), or None under ``mlflow run``,
    whose launcher already made the run. Passed to ``start_run`` rather than set with
    ``set_experiment``, which would leave it active for the rest of the process."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return None
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)
