"""The batch jobs' results as Prometheus metrics, pushed to a Pushgateway.

A CronJob is gone before Prometheus could scrape it, so monitor, performance, retrain,
score and the feature store's refresh push what they found (drift share, ROC AUC, rows)
and how they ended (exit code, duration, last run and last success times) when
``CHURN_PUSHGATEWAY_URL`` is set. The
alerts in deploy/observability/prometheus/rules.yml read these. Pushing is best effort: a
gateway that is down is logged and never changes a job's result or exit code.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import partial, wraps
from typing import Any

import click

from churn_platform.contract import PRODUCTION_ALIAS, ExitCode

log = logging.getLogger(__name__)

#: Exit codes of a job that reached a verdict (ok, or drift / degraded / rejected rows / declined).
_VERDICTS = (ExitCode.OK, ExitCode.REFUSED)
#: The results the running job has recorded: metric name -> (value, extra labels).
_results: ContextVar[list[tuple[str, float, dict[str, str]]] | None] = ContextVar("job_results", default=None)
#: Why the running job pushes nothing (``not_pushed``), or None.
_unpushed: ContextVar[str | None] = ContextVar("job_unpushed", default=None)

#: Every result metric a job may record, with its help text (one place for names and meanings).
RESULTS = {
    "churn_monitor_drift_share": "Share of feature columns that drifted in the last monitor run.",
    "churn_monitor_dataset_drift": "1 when the last monitor run found dataset drift.",
    "churn_monitor_prediction_drift": "1 when the last monitor run found the predictions' distribution drifted (a "
    "drift verdict on its own).",
    "churn_monitor_drifted_columns": "Feature columns that drifted in the last monitor run.",
    "churn_monitor_rows": "Current rows the last monitor run compared.",
    "churn_performance_roc_auc": "ROC AUC of the last performance run, realized (labels) or estimated (CBPE).",
    "churn_performance_degraded": "1 when the last performance run found the model degraded.",
    "churn_performance_labelled_rows": "Predictions with an outcome in the last performance run.",
    "churn_retrain_registered_version": "Version the last retrain registered (0: none; the gate may have refused "
    "it as Challenger).",
    "churn_job_rows": "Rows the last run handled, by outcome.",
    "churn_retrain_held_since_timestamp_seconds": "When what held the last retrain run began (an undecided "
    "Challenger's registration, a rollout's start; 0: nothing held it).",
    "churn_features_snapshot_timestamp_seconds": "Newest snapshot time among the rows the last features run "
    "loaded (with --as-of modified: when the export was written).",
}


#: Each job's figures, NaN until its run records them: a run that fails (exit 2, 3, 70) has
#: none, and the gateway kept the last run's beside its exit code (a dashboard read them as
#: current). The drift and degradation alerts also require the exit code that goes with it.
FIGURES: dict[str, tuple[tuple[str, dict[str, str]], ...]] = {
    "monitor": (("churn_monitor_rows", {}), ("churn_monitor_drift_share", {}), ("churn_monitor_dataset_drift", {}),
                ("churn_monitor_drifted_columns", {}), ("churn_monitor_prediction_drift", {})),
    "performance": (("churn_performance_roc_auc", {"kind": "realized"}),
                    ("churn_performance_roc_auc", {"kind": "estimated"}), ("churn_performance_degraded", {}),
                    ("churn_performance_labelled_rows", {})),
    "score": (("churn_job_rows", {"outcome": "scored"}), ("churn_job_rows", {"outcome": "rejected"})),
    "retrain": (("churn_retrain_held_since_timestamp_seconds", {}),),
}  # fmt: skip


def record(name: str, value: float | bool | None, **labels: str) -> None:
    """Note one result of the running job (ignored outside ``pushes``). None, this run has no
    such figure, pushes NaN: skipped, the gateway went on showing the last run's (a realized
    ROC AUC from before the outcomes stopped coming) as this one's."""
    results = _results.get()
    if results is None:
        return
    if name not in RESULTS:
        raise KeyError(f"unknown job metric {name!r}")
    results.append((name, math.nan if value is None else float(value), labels))


def adhoc(alias: str, version: int | None, until: datetime | None = None, **others: object) -> str | None:
    """The options that keep a run from judging Production's latest traffic, as the user typed
    them (``TAG_ADHOC``, ``not_pushed``'s reason); None for the scheduled kind of run."""
    given = [f"--alias {alias}" if alias.lower() != PRODUCTION_ALIAS.lower() else "",  # the UI's `production` too
             f"--version {version}" if version else "",
             f"--until {until:%Y-%m-%d %H:%M:%S}" if until else ""]  # fmt: skip
    given += [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in others.items() if v]
    return ", ".join(g for g in given if g) or None


def not_pushed(reason: str) -> None:
    """Keep the running job's metrics off the Pushgateway: its group holds the scheduled run's
    view of Production, which the alerts read, and a run over a file or another version must
    neither raise nor clear them, nor stand in for a broken CronJob's last success."""
    _unpushed.set(reason)


def pushes(job: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a CLI command: its results and ending are pushed when it ends, however it ends.

    The wrapper carries ``pushed_as`` (the job name): the deploy tests check that every
    CronJob whose command pushes can reach the Pushgateway."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _pushed(job, kwargs.get("model_name")):
                return func(*args, **kwargs)

        wrapper.pushed_as = job  # type: ignore[attr-defined]
        return wrapper

    return decorate


@contextmanager
def _pushed(job: str, model_name: str | None) -> Iterator[None]:
    results: list[tuple[str, float, dict[str, str]]] = [(name, math.nan, labels)
                                                        for name, labels in FIGURES.get(job, ())]  # fmt: skip
    token, unpushed = _results.set(results), _unpushed.set(None)
    started = time.time()
    code: int = ExitCode.OK
    try:
        with sigterm_exits():  # a Job's deadline: a failure that is pushed
            yield
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (ExitCode.OK if exc.code is None else ExitCode.USAGE)
        raise
    except click.ClickException as exc:  # a usage error raised inside the command: exit 2, as click exits
        code = exc.exit_code
        raise
    except BaseException:
        code = 70  # an unexpected crash (EX_SOFTWARE): never mistaken for a verdict
        raise
    finally:
        _results.reset(token)
        if reason := _unpushed.get():
            if _gateway() is not None:  # with none set nothing is ever pushed: no news after an error line
                log.info("%s's metrics are not pushed (%s: not the scheduled run's view of Production)", job, reason)
        else:
            push(job, model_name, code, time.time() - started, results, finished=time.time())
        _unpushed.reset(unpushed)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM (a Job's deadline, ``kubectl delete``) raises SystemExit(143) in the block: its
    finally blocks run (an MLflow run ends FAILED, not RUNNING; a job's metrics are pushed),
    and a command that is PID 1 in a container, where the kernel ignores a signal with no
    handler, stops at all (`train` ran on for the 30 s grace, then was killed)."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return
    previous, hook = signal.signal(signal.SIGTERM, _stop), sys.unraisablehook
    sys.unraisablehook = partial(_stop_again, hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python
        sys.unraisablehook = hook


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop_again(hook: Callable[[Any], None], unraisable: Any) -> None:
    """``_stop``'s exit, raised inside a finalizer (a weakref callback, ``__del__``), is one
    Python drops ("Exception ignored in ..."): `train` signalled mid-fit then ran to the end,
    exit 0. The signal is sent again, to be handled once the finalizer has returned."""
    if isinstance(unraisable.exc_value, SystemExit) and unraisable.exc_value.code == 128 + signal.SIGTERM:
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True  # a command that ends first is not stopped by it while shutting down
        again.start()
        return
    hook(unraisable)


def _with_credentials(url: str) -> tuple[str, Callable[..., Callable[[], None]]]:
    """The gateway's URL without ``user:password@``, and a handler sending them as basic auth:
    left in the URL, urllib took them for part of the host and no push ever arrived."""
    from prometheus_client.exposition import basic_auth_handler, default_handler

    from churn_platform.settings import split_userinfo

    bare, user, password = split_userinfo(url)
    if user is None:
        return url, default_handler

    def handler(*args: Any, **kwargs: Any) -> Callable[[], None]:
        return basic_auth_handler(*args, **kwargs, username=user, password=password or "")

    return bare, handler


def _gateway() -> str | None:
    """The Pushgateway's URL; None when none is set (or the settings are bad: the job's own error)."""
    from churn_platform.settings import get_settings

    try:
        return get_settings().pushgateway_url or None
    except Exception:  # noqa: BLE001 - bad settings are the job's own error to report, not this one's
        return None


def push(job: str, model_name: str | None, exit_code: int, duration_s: float,
         results: list[tuple[str, float, dict[str, str]]], *, finished: float) -> bool:  # fmt: skip
    """Push one run's metrics; False (and a warning) when no gateway is set or it refused them."""
    from churn_platform.settings import get_settings, redacted

    if (url := _gateway()) is None:
        return False
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()
    gauge = lambda name, text, labels=(): Gauge(name, text, labels, registry=registry)  # noqa: E731
    gauge("churn_job_last_run_timestamp_seconds", "When the job last ended (Unix time).").set(finished)
    gauge("churn_job_exit_code", "Exit code of the job's last run (README's table: 0 ok, 1 a finding, 2 usage, "
          "3 unreachable, 4 bad data, 70 crashed, 143 stopped).").set(exit_code)  # fmt: skip
    gauge("churn_job_duration_seconds", "Wall time of the job's last run.").set(duration_s)
    if exit_code in _VERDICTS:
        gauge("churn_job_last_success_timestamp_seconds",
              "When the job last reached a verdict (exit 0 or 1).").set(finished)  # fmt: skip
    made: dict[str, Gauge] = {}
    for name, value, labels in results:
        if name not in made:
            made[name] = gauge(name, RESULTS[name], tuple(sorted(labels)))
        (made[name].labels(**labels) if labels else made[name]).set(value)
    try:
        # pushadd (POST) replaces only these metrics: a failed run keeps the last success time.
        gateway, handler = _with_credentials(url)
        pushadd_to_gateway(gateway, job=job, registry=registry, handler=handler,
                           grouping_key={"model_name": model_name or get_settings().model_name}, timeout=5)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - best effort: the job's own result stands
        log.warning("could not push %s's metrics to %s: %s", job, redacted(url), exc)
        return False
    return True
