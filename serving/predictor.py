"""The domain object behind the prediction routes: validated customers in, predictions out.

It holds what a prediction needs (the served model, the risk bands, the batch limit, the
metrics and the inference log), so routes only parse and encode. Later rollout modes add
a Challenger here, and explanations, without touching the routes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from churn_platform.contract import MODEL_VERSION, PROBABILITY, RISK, RISK_BANDS, WILL_CHURN
from churn_platform.loading import LoadedModel
from churn_platform.schema import ID_COLUMN
from churn_platform.settings import Settings
from serving.errors import BatchTooLarge, NoModelServed
from serving.holder import ModelHolder
from serving.inference_log import InferenceLog
from serving.metrics import Metrics


@dataclass(frozen=True)
class Scored:
    """One request's predictions and the model version that made them."""

    model: LoadedModel
    predictions: list[dict[str, Any]]


class Predictor:
    def __init__(self, settings: Settings, holder: ModelHolder, inference_log: InferenceLog, metrics: Metrics) -> None:
        self.holder, self.inference_log, self.metrics = holder, inference_log, metrics
        self.max_batch_size = settings.max_batch_size
        self._band_edges = np.array([settings.risk_medium_from, settings.risk_high_from])

    @property
    def model(self) -> LoadedModel:
        """The model serving now, or ``NoModelServed`` saying why there is none."""
        model = self.holder.current
        if model is None:
            raise NoModelServed(f"no model is being served yet: {self.holder.last.reason}")
        return model

    def predict(self, customers: list[dict[str, Any]], model: LoadedModel | None = None) -> Scored:
        """Score customers (dicts validated against the schema) with ``model`` (default: the
        one serving now) and log every row."""
        model = model or self.model
        if len(customers) > self.max_batch_size:
            raise BatchTooLarge(f"{len(customers)} customers in one request; the limit is {self.max_batch_size}")
        probabilities = np.clip(model.scorer.score(customers), 0.0, 1.0)
        bands = np.searchsorted(self._band_edges, probabilities, side="right")
        for index, count in zip(*np.unique(bands, return_counts=True), strict=True):
            self.metrics.predictions.labels(RISK_BANDS[index]).inc(int(count))
        self.metrics.rows_scored.inc(len(customers))
        self.inference_log.append(uuid.uuid4().hex, model.name, model.version, customers, probabilities)
        threshold, version = model.decision_threshold, model.version
        predictions = [
            {ID_COLUMN: c.get(ID_COLUMN), PROBABILITY: p, WILL_CHURN: p >= threshold, RISK: RISK_BANDS[b],
             MODEL_VERSION: version}
            for c, p, b in zip(customers, probabilities.tolist(), bands.tolist(), strict=True)
        ]  # fmt: skip
        return Scored(model, predictions)
