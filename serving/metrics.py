"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).

With several uvicorn workers (``serve --workers N``) each worker counts in files under
``PROMETHEUS_MULTIPROC_DIR`` (``serve`` sets it) and ``/metrics``, whichever worker answers,
adds them all up: otherwise each scrape read one worker's counters, which then seemed to jump
back and forth. The gauges say how workers combine (``multiprocess_mode``).
"""

from __future__ import annotations

import glob
import os
import time
from typing import TYPE_CHECKING, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

if TYPE_CHECKING:
    from churn_platform.loading import LoadedModel
    from serving.holder import Attempt

#: Holder states that are not the outcome of a load.
_NOT_OUTCOMES = ("starting", "loading", "ready")


class Metrics:
    """The API's metrics; also the model holder's ``LoadListener`` and the log's ``LogListener``."""

    def __init__(self) -> None:
        if folder := multiprocess_dir():
            forget_dead_workers(folder)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "churn_api_requests", "HTTP requests by endpoint and status.", ["endpoint", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "churn_api_request_seconds", "Request latency by endpoint.", ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )  # fmt: skip
        self.predictions = Counter(
            "churn_predictions", "Customers scored, by risk band, model version and rollout arm.",
            ["risk", "model_version", "arm"], registry=self.registry,
        )  # fmt: skip
        self.model_requests = Counter(
            "churn_model_requests", "Requests scored, by model version and rollout arm (a canary batch split "
            "between the models counts once for each).", ["model_version", "arm"], registry=self.registry,
        )  # fmt: skip
        self.scoring_time = Histogram(
            "churn_model_scoring_seconds", "Time the model took to score a request's customers, by model version "
            "and rollout arm.", ["model_version", "arm"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )  # fmt: skip
        self.rows_scored = Counter("churn_rows_scored", "Customers scored.", registry=self.registry)
        self.model_info = Gauge(
            "churn_model_info", "The model version being served (1; with several workers, 0 for one served before).",
            ["model_name", "version", "scorer"], multiprocess_mode="livemax",
            registry=self.registry,
        )  # fmt: skip
        # Several workers: ready only when every one is (any of them may take a request).
        self.model_ready = Gauge("churn_model_ready", "1 when a verified model serves.", multiprocess_mode="livemin",
                                 registry=self.registry)  # fmt: skip
        self.log_rows = {
            "written": Counter("churn_inference_log_rows_written", "Rows committed to the inference log.",
                               registry=self.registry),
            "dropped": Counter("churn_inference_log_rows_dropped",
                               "Rows lost to the inference log (memory queue or spool full, refused by the database).",
                               registry=self.registry),
            "spooled": Counter("churn_inference_log_rows_spooled", "Rows safe in the writer's disk spool.",
                               registry=self.registry),
            "replayed": Counter("churn_inference_log_rows_replayed",
                                "Rows committed from a spool an earlier process left.", registry=self.registry),
        }  # fmt: skip
        self.spool_bytes = Gauge(
            "churn_inference_log_spool_bytes", "Bytes in the inference log's disk spool.", multiprocess_mode="livesum",
            registry=self.registry,
        )  # fmt: skip
        self.log_live = Gauge(
            "churn_inference_log_live", "1 while the log database takes rows, 0 while they only spool.",
            multiprocess_mode="livemin", registry=self.registry,
        )  # fmt: skip
        self.torn_frames = Gauge(
            "churn_inference_log_torn_frames",
            "Spool frames skipped: torn (power loss, SIGKILL mid-write) or failing their checksum.",
            multiprocess_mode="livesum", registry=self.registry,
        )  # fmt: skip
        # What the alert reads: the count alone cannot tell a restart that found as many torn
        # frames as the process before it from one that found none.
        self.last_skipped_frame = Gauge(
            "churn_inference_log_last_skipped_frame_timestamp_seconds",
            "When this pod's writer last skipped a spool frame (0: not since the API started).",
            multiprocess_mode="livemax", registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter("churn_model_reloads", "Model loads by outcome.", ["outcome"], registry=self.registry)
        self.registry_unreachable_since = Gauge(
            "churn_registry_unreachable_since_timestamp_seconds", "When this replica's loads began to fail to reach "
            "MLflow or its artifact store, none answered since (0: the last one got through).",
            multiprocess_mode="livemax", registry=self.registry,
        )  # fmt: skip
        self._unreachable_since = 0.0
        self.challenger_errors = Counter(
            "churn_challenger_errors", "Requests the rollout's Challenger failed to score, by arm (shadow: Production "
            "answered alone; canary: Production answered its customers).", ["arm"], registry=self.registry,
        )  # fmt: skip
        for arm in ("shadow", "canary"):
            self.challenger_errors.labels(arm)
        # Every outcome from 0: a series that first appears at 1 has no increase() for the alerts
        # to see, so a failure that happened once would never page.
        from serving.holder import State  # here: the holder imports MLflow, which /metrics alone need not

        for outcome in ("loaded", *(s for s in get_args(State) if s not in _NOT_OUTCOMES)):
            self.reloads.labels(outcome)

    def model_loaded(self, model: LoadedModel) -> None:
        if multiprocess_dir():  # a series stays in the worker's file: 0 says "no longer served" (rules read == 1)
            for labels in list(self.model_info._metrics):  # noqa: SLF001 - the children set so far
                self.model_info.labels(*labels).set(0)
        else:
            self.model_info.clear()
        self.model_info.labels(model_name=model.name, version=str(model.version), scorer=model.scorer_kind).set(1)
        self.model_ready.set(1)
        self.reloads.labels("loaded").inc()

    def load_failed(self, attempt: Attempt) -> None:
        self.reloads.labels(attempt.state).inc()
        if attempt.state == "registry_unreachable" and not self._unreachable_since:  # the first of a streak
            self._unreachable_since = time.time()
            self.registry_unreachable_since.set(self._unreachable_since)

    def registry_answered(self) -> None:
        if self._unreachable_since:
            self._unreachable_since = 0.0
            self.registry_unreachable_since.set(0)

    def log_rows_counted(self, outcome: str, rows: int) -> None:
        self.log_rows[outcome].inc(rows)

    def log_spool(self, spool_bytes: int, live: bool, torn_frames: int, last_skipped_at: float) -> None:
        self.spool_bytes.set(spool_bytes)
        self.log_live.set(1 if live else 0)
        self.torn_frames.set(torn_frames)
        self.last_skipped_frame.set(last_skipped_at)

    def render(self) -> bytes:
        if multiprocess_dir():
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)

    @staticmethod
    def process_ended() -> None:
        """A worker stops: its live gauges (ready, spool, model info) leave the sums."""
        if multiprocess_dir():
            multiprocess.mark_process_dead(os.getpid())


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of workers that ended without shutting down (SIGKILL, out of
    memory): uvicorn starts another, and the dead one's ``ready 0`` would hold the minimum at 0."""
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        named = path.rsplit("_", 1)[1].removesuffix(".db")
        if not named.isdigit():  # not prometheus_client's
            continue
        pid = int(named)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, another user's
            pass


def multiprocess_dir() -> str | None:
    """Where the workers' metrics meet, when this process counts there (the choice is
    prometheus_client's, made when it was imported)."""
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
