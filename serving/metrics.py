"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from churn_platform.loading import LoadedModel
    from serving.holder import Attempt


class Metrics:
    """The API's metrics; also the model holder's ``LoadListener``."""

    def __init__(self) -> None:
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
            "churn_predictions", "Customers scored, by risk band.", ["risk"], registry=self.registry
        )
        self.rows_scored = Counter("churn_rows_scored", "Customers scored.", registry=self.registry)
        self.model_info = Gauge(
            "churn_model_info", "The model version being served (value 1).",
            ["model_name", "version", "scorer"],
            registry=self.registry,
        )  # fmt: skip
        self.model_ready = Gauge("churn_model_ready", "1 when a verified model serves.", registry=self.registry)
        self.log_written = Counter(
            "churn_inference_log_rows_written", "Rows written to the inference log.", registry=self.registry
        )
        self.log_dropped = Counter(
            "churn_inference_log_rows_dropped",
            "Rows not written to the inference log (database down or queue full).",
            registry=self.registry,
        )
        self.reloads = Counter("churn_model_reloads", "Model loads by outcome.", ["outcome"], registry=self.registry)

    def model_loaded(self, model: LoadedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(model_name=model.name, version=str(model.version), scorer=model.scorer_kind).set(1)
        self.model_ready.set(1)
        self.reloads.labels("loaded").inc()

    def load_failed(self, attempt: Attempt) -> None:
        self.reloads.labels(attempt.state).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
