"""What every monitoring job does with its verdict: record it in the monitoring experiment and
alert. Kept apart from the drift job so the performance job does not import Evidently."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow

from churn_platform import registry
from churn_platform.errors import DataSourceError, SettingsError

log = logging.getLogger(__name__)


def alert_webhook(given: str | None, adhoc: str | None, team: str | None) -> str | None:
    """Where a failing verdict is POSTed: the run's own ``--alert-webhook``, else the team's
    (``CHURN_MONITOR_ALERT_WEBHOOK``), which hears of Production only, never of an investigation."""
    return given or (None if adhoc else team)


def live_experiment(client: mlflow.MlflowClient, experiment: str) -> str | None:
    """The monitoring experiment's id (None: yet to be made, or launched by ``mlflow run``),
    asked before the work: a deleted one is a usage error naming the setting, not a traceback
    once the verdict is in. A launcher's run in another experiment is refused: the verdict
    went there, where neither ``retrain --if`` nor the UI's history looks for it."""
    if run_id := os.environ.get("MLFLOW_RUN_ID"):
        launched_in = client.get_experiment(registry.launched_run(client, run_id).info.experiment_id).name
        if launched_in != experiment:
            raise SettingsError(f"this MLflow run is in experiment {launched_in!r}, but verdicts belong in "
                                f"{experiment!r} (CHURN_MONITOR_EXPERIMENT), where `retrain --if` and the history "
                                f"look: launch with `mlflow run ... --experiment-name {experiment}`")  # fmt: skip
    return registry.live_experiment(client, experiment, "CHURN_MONITOR_EXPERIMENT")


#: In each report page's head: a reused ``--output-dir`` replaces only a page a run wrote.
GENERATOR = '<meta name="generator" content="churn-platform monitoring">'
_VERDICT_FILES = ("summary.json", "report.html")
_SUMMARY_KEYS = frozenset({"model_name", "model_version", "created_at"})  # both jobs' summary.json


def mark_page(page: str) -> str:
    """``page`` with ``GENERATOR`` first in its head."""
    return page.replace("<head>", f"<head>{GENERATOR}", 1)


def foreign_verdict(folder: Path) -> str | None:
    """Which ``summary.json`` or ``report.html`` in ``folder`` no monitoring run wrote (None:
    none). A run replaces both; a user's own file of that name would be lost. A summary is
    ours by its keys, a page by ``GENERATOR`` or by our summary beside it (pages of releases
    before the mark). An empty file is free; a pipe is never opened (it would block)."""
    summary, page = folder / "summary.json", folder / "report.html"
    filled: set[Path] = set()
    for path in (summary, page):
        try:
            mode, size = (found := path.stat()).st_mode, found.st_size
        except FileNotFoundError:
            continue
        except OSError as exc:  # a path too long, a name in a folder this user may not enter
            return f"{path}: {exc.strerror or exc}"
        if not stat.S_ISREG(mode):
            return f"{path} is not a regular file"
        if size:
            filled.add(path)
    ours_summary = summary in filled and _holds(summary, _is_our_summary)
    if summary in filled and not ours_summary:
        return "it holds a summary.json that no monitoring run wrote"
    if page in filled and not (ours_summary or _holds(page, lambda text: GENERATOR in text, 4096)):
        return "it holds a report.html that no monitoring run wrote"
    return None


def _holds(path: Path, test: Callable[[str], bool], limit: int = 16 << 20) -> bool:
    """Whether the first ``limit`` bytes of ``path``, as text, pass ``test`` (False: unreadable)."""
    try:
        with path.open("rb") as file:
            return test(file.read(limit).decode("utf-8", errors="replace"))
    except OSError:
        return False


def _is_our_summary(text: str) -> bool:
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    return isinstance(parsed, dict) and _SUMMARY_KEYS <= parsed.keys()


def clear_verdict(folder: Path | None) -> None:
    """Remove an earlier run's verdict from a reused ``--output-dir`` first: a run that ends
    with nothing to compare, or unreachable, writes none, and the old one read as current.
    Files no run wrote are refused, not removed (the CLI asks ``foreign_verdict`` first)."""
    if folder is None:
        return
    if problem := foreign_verdict(folder):
        raise SettingsError(f"--output-dir {folder}: {problem}; choose another folder or move it")
    for stale in _VERDICT_FILES:
        with contextlib.suppress(OSError):  # a folder that cannot be written is named when the report is
            (folder / stale).unlink(missing_ok=True)


def writable_folder(folder: Path) -> str | None:
    """Why ``folder`` cannot take a report (None: it can, or can be made): asked before the
    work, so a mistyped ``--output-dir`` is not found out only after it."""
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a folder"
    except OSError as exc:  # a parent this user may not enter, a name too long: not a traceback
        return exc.strerror or str(exc)
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def report_folder(folder: Path) -> Path:
    """``folder``, made if missing; an ``OSError`` here (a read-only disk, /proc) says which."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    return folder


def _unwritable(folder: Path, exc: OSError) -> DataSourceError:
    return DataSourceError(f"cannot write the report into {folder}: {exc.strerror or exc}; choose another --output-dir")


def run_folder(parent: Path, stamp: str) -> Path:
    """A folder of this run's own under ``parent``: ``stamp``, else ``stamp-2``, ``stamp-3``...
    Two runs in one second shared the default one, each overwriting the other's report."""
    report_folder(parent)
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise _unwritable(folder, exc) from None
        return folder
    raise DataSourceError(f"{parent} holds 999 runs' folders for {stamp}: choose another --output-dir")


def send_alert(url: str, payload: dict[str, Any]) -> None:
    """POST the summary once; a failure is logged and never changes the job's result."""
    try:  # only the host is logged: a webhook's path is its secret
        host = httpx.URL(url).host or "?"
    except httpx.InvalidURL:
        host = "?"
    try:
        response = httpx.post(url, json=payload, timeout=5)
        response.raise_for_status()
        log.info("alert sent to %s", host)
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, ImportError, ValueError, OSError) as exc:
        # One try, no retry storm; the verdict stands. Not only httpx's own: a host httpx cannot
        # encode (UnicodeError, IDNAError) or a proxy it cannot use (ImportError, ValueError)
        # turned a drift verdict into exit 70. A bug of ours (a payload it cannot send) still is one.
        status = f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
        log.warning("alert to %s failed: %s", host, status)


@contextlib.contextmanager
def alerting_if_unrecorded(alert: Callable[[], None]) -> Iterator[None]:
    """Around recording a verdict: when MLflow cannot take it (exit 3), ``alert`` first, since
    the verdict is news all the same (each retry of the Job posts it again)."""
    try:
        yield
    except Exception:
        alert()
        raise


def record_run(
    experiment: str, run_name: str, tags: dict[str, str], metrics: dict[str, float], artifacts: list[str]
) -> str:
    """Log a job's verdict as a run in the monitoring experiment, so the UI plots it over time;
    return its id. Under ``mlflow run`` the launcher already made the run (MLFLOW_RUN_ID), in
    the experiment given by --experiment-name: log into it rather than start a second one.
    The experiment goes to ``start_run``, not ``set_experiment``, which would leave it active
    for the rest of the process. The tags go last: a run whose report could not be uploaded
    carries no verdict for ``retrain --if`` to count."""
    launched = bool(os.environ.get("MLFLOW_RUN_ID"))
    client = mlflow.MlflowClient()
    experiment_id = live_experiment(client, experiment)
    if experiment_id is None and not launched:
        try:
            experiment_id = client.create_experiment(experiment)
        except mlflow.MlflowException as exc:  # two first runs at once: the other made it meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or (experiment_id := live_experiment(client, experiment)) \
                    is None:  # fmt: skip
                raise
    with mlflow.start_run(run_name=None if launched else run_name, experiment_id=experiment_id) as active:
        mlflow.log_metrics(metrics)
        for artifact in artifacts:
            mlflow.log_artifact(artifact)
        mlflow.set_tags(tags)
        return active.info.run_id
