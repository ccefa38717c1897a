"""The domain object behind the prediction routes: validated customers in, predictions out.

It holds what a prediction needs (the served model, the risk bands, the batch limit, the
metrics and the inference log), so routes only parse and encode. While a rollout runs it
also routes customers to the Challenger (canary) or scores them with it too (shadow).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from churn_platform import explanation, logs, tracing
from churn_platform.contract import (
    ARM_SEPARATOR,
    EXPLANATION,
    MODEL_VERSION,
    PROBABILITY,
    RISK,
    RISK_BANDS,
    WILL_CHURN,
)
from churn_platform.data import stable_bucket
from churn_platform.loading import LoadedModel
from churn_platform.schema import ID_COLUMN
from churn_platform.settings import Settings
from serving.errors import BatchTooLarge, NoModelServed, NotExplainable
from serving.holder import ActiveRollout, ModelHolder
from serving.inference_log import InferenceLog
from serving.metrics import Metrics
from serving.schemas import Record, customer_ids

log = logging.getLogger(__name__)

#: A Challenger that fails every request is logged (with its traceback) once per this many
#: seconds: at full traffic, a line per request flooded the log. The metric counts each.
CHALLENGER_FAILURE_LOG_S = 60.0


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
        self._failure_logged_at = -CHALLENGER_FAILURE_LOG_S

    @property
    def model(self) -> LoadedModel:
        """The model serving now, or ``NoModelServed`` saying why there is none."""
        model = self.holder.current
        if model is None:
            raise NoModelServed(f"no model is being served yet: {self.holder.last.reason}")
        return model

    def predict(
        self, customers: Sequence[Record], model: LoadedModel | None = None, *, top_k: int | None = None,
        places: Sequence[int] | None = None,
    ) -> Scored:  # fmt: skip
        """Score customers (validated against the schema) with ``model`` (default: the
        one serving now), or beside it with the rollout's Challenger, and log every row.
        With ``top_k``, each prediction carries its explanation's ``top_k`` largest contributions.
        ``places``: the customers' places in the request, when it held others (ids not found)."""
        model = model or self.model
        if len(customers) > self.max_batch_size:
            raise BatchTooLarge(f"{len(customers)} customers in one request; the limit is {self.max_batch_size}")
        active = self.holder.rollout  # read once: the check and the routing see the same rollout
        if top_k is not None:
            _check_explainable(model, active)
        # The request's id from the middleware (the caller's X-Request-ID, made unique), so the log's
        # rows, the response header and the log lines name the same request.
        request_id = logs.current("log_key") or uuid.uuid4().hex
        challenger = _challenger(active, model)
        if challenger is not None and active.state.mode == "shadow":  # the Challenger's score is only logged
            # Production's rows first: when the log's queue has room for one arm only, it keeps them.
            predictions = self._record(self._arm(model, customers, request_id, "production", top_k, places))
            try:
                self._record(self._arm(challenger, customers, f"{request_id}{ARM_SEPARATOR}shadow", "shadow",
                                       positions=places, answer=False))  # fmt: skip
            except Exception:  # noqa: BLE001 - the caller was answered by Production; a shadow never fails it
                self._challenger_failed("shadow", challenger, "answered by Production")
            return Scored(model, predictions)
        to_challenger = None if challenger is None else canary(customers, active.state.percent or 0, challenger.version)
        if to_challenger is None or not to_challenger.any():  # Production alone
            return Scored(model, self._record(self._arm(model, customers, request_id, "production", top_k, places)))

        def arm(chosen: np.ndarray, scoring: LoadedModel, name: str, rid: str) -> _Arm | None:
            positions = np.flatnonzero(chosen).tolist()
            if not positions:
                return None
            logged = [places[i] for i in positions] if places is not None else positions
            return self._arm(scoring, [customers[i] for i in positions], rid, name, top_k, logged, at=positions)

        # The Challenger's customers first: if it fails, Production scores them with its own,
        # once, and the request never fails for the Challenger. Both arms are counted and logged
        # only once both scored (Production's first, as in shadow): a request that fails logs nothing.
        try:
            tried = arm(to_challenger, challenger, "canary", f"{request_id}{ARM_SEPARATOR}canary")
        except Exception:  # noqa: BLE001 - counted and logged; Production answers
            self._challenger_failed("canary", challenger, "its customers answered by Production")
            to_challenger[:], tried = False, None
        predictions: list[dict[str, Any]] = [{}] * len(customers)
        for done in (arm(~to_challenger, model, "production", request_id), tried):
            if done is not None:
                for i, prediction in zip(done.at, self._record(done), strict=True):
                    predictions[i] = prediction
        return Scored(model, predictions)

    def _challenger_failed(self, arm: str, challenger: LoadedModel, outcome: str) -> None:
        """Count a Challenger's failure to score (inside ``except``); log it, with its traceback, at
        most once per ``CHALLENGER_FAILURE_LOG_S``."""
        self.metrics.challenger_errors.labels(arm).inc()
        now = time.monotonic()
        if now - self._failure_logged_at >= CHALLENGER_FAILURE_LOG_S:
            self._failure_logged_at = now
            log.exception("%s scoring by v%s failed; %s (logged once a minute at most: "
                          "churn_challenger_errors_total counts each)", arm, challenger.version, outcome)  # fmt: skip

    def check_explainable(self, model: LoadedModel | None = None) -> None:
        """``NotExplainable`` unless every model that may answer can explain: ``model`` (default:
        the one serving now) and a canary's Challenger. Checked before routing and before any
        lookup, so whether a request can be explained never depends on its ids."""
        _check_explainable(model or self.model, self.holder.rollout)

    def _arm(
        self, model: LoadedModel, customers: Sequence[Record], request_id: str, arm: str, top_k: int | None = None,
        positions: Sequence[int] | None = None, *, answer: bool = True, at: Sequence[int] = (),
    ) -> _Arm:  # fmt: skip
        """Score (and explain) one arm's customers and build their answers (with ``answer``);
        nothing counted or logged yet (``_record``). ``positions``: their places in the request,
        when only some of it, as logged; ``at``: where their answers go."""
        started = time.perf_counter()
        attributes = {"churn.model_version": model.version, "churn.arm": arm, "churn.rows": len(customers)}
        with tracing.span("score", attributes):
            explained = model.explainer.explain(customers) if top_k is not None and model.explainer else None
            raw = explained.probabilities if explained else model.scorer.score(customers)
        if not np.isfinite(raw).all():  # never answered, nor logged as a score (the table refuses NULL)
            raise ValueError(f"{model.name} v{model.version} scored a customer as {raw[~np.isfinite(raw)][0]}")
        probabilities = np.clip(raw, 0.0, 1.0)
        seconds = time.perf_counter() - started
        bands = np.searchsorted(self._band_edges, probabilities, side="right")
        predictions: list[dict[str, Any]] | None = None
        if answer:
            predictions = answers(customers, probabilities, bands, model.decision_threshold, model.version)
            if explained is not None and top_k is not None:
                for prediction, explained_one in zip(
                    predictions, explanation.top(explained, customers, top_k), strict=True
                ):
                    prediction[EXPLANATION] = explained_one
        return _Arm(model, customers, request_id, arm, probabilities, bands, seconds, positions, predictions, at)

    def _record(self, done: _Arm) -> list[dict[str, Any]]:
        """Count and log one scored arm; its answers (empty for a shadow)."""
        model, arm, version = done.model, done.arm, str(done.model.version)
        self.metrics.model_requests.labels(version, arm).inc()
        self.metrics.scoring_time.labels(version, arm).observe(done.seconds)
        for index, count in zip(*np.unique(done.bands, return_counts=True), strict=True):
            self.metrics.predictions.labels(RISK_BANDS[index], version, arm).inc(int(count))
        with tracing.span("inference_log.append", {"churn.rows": len(done.customers)}):
            self.inference_log.append(
                done.request_id, model.name, model.version, done.customers, done.probabilities, arm=arm,
                scoring_ms=round(done.seconds * 1000, 4), positions=done.positions,
            )  # fmt: skip
        if done.predictions is None:
            return []
        self.metrics.rows_scored.inc(len(done.customers))
        if arm == "canary":  # each field keeps one type: model_version is Production's, when it answered
            answered = logs.current("arm")
            logs.bind(challenger_version=model.version, arm=f"{answered}+{arm}" if answered else arm)
        else:
            logs.bind(model_version=model.version, arm=arm)
        return done.predictions


@dataclass(frozen=True)
class _Arm:
    """One arm of a request, scored and answered, not yet counted or logged."""

    model: LoadedModel
    customers: Sequence[Record]
    request_id: str
    arm: str
    probabilities: np.ndarray
    bands: np.ndarray
    seconds: float
    positions: Sequence[int] | None
    predictions: list[dict[str, Any]] | None
    at: Sequence[int]


def answers(
    customers: Sequence[Record], probabilities: np.ndarray, bands: np.ndarray, threshold: float, version: int
) -> list[dict[str, Any]]:
    """Each customer's prediction as the API answers it (``bands``: indexes into RISK_BANDS)."""
    return [
        {ID_COLUMN: i, PROBABILITY: p, WILL_CHURN: p >= threshold, RISK: RISK_BANDS[b], MODEL_VERSION: version}
        for i, p, b in zip(customer_ids(customers), probabilities.tolist(), bands.tolist(), strict=True)
    ]  # fmt: skip


def _challenger(active: ActiveRollout | None, model: LoadedModel) -> LoadedModel | None:
    """The rollout's Challenger, when it runs beside ``model``: not beside another Production
    (a replica that could not load the new one, or a request that began before a swap)."""
    if active is None or active.model.version == model.version or active.state.production_version != model.version:
        return None
    return active.model


def _check_explainable(model: LoadedModel, active: ActiveRollout | None) -> None:
    _explainable(model)
    challenger = _challenger(active, model)
    if challenger is not None and active is not None and active.state.mode == "canary":
        _explainable(challenger, canary=True)


def _explainable(model: LoadedModel, canary: bool = False) -> None:
    if model.explainer is None:
        reason = model.explanations.get("reason", "no explainer")
        if not canary:
            raise NotExplainable(f"{model.name} v{model.version} serves without explanations: {reason}")
        # Whether a request is explained never depends on which customers it holds: while the
        # canary runs, no request is (/model -> rollout.challenger.explanations says why).
        raise NotExplainable(f"the canary's Challenger, {model.name} v{model.version}, serves without explanations: "
                             f"{reason}; no request is explained while the canary runs (stop it, or run the rollout "
                             "in shadow)")  # fmt: skip


def canary_bucket(customer_id: str, challenger: int) -> float:
    """A customer's place in [0, 100) for a canary of version ``challenger``: a stable hash of
    both, the same on every replica and after any restart (Python's own ``hash`` is salted per
    process). Each Challenger draws its own customers: hashed by the id alone, the same tenth of
    the customers took every canary, and every new model's mistakes."""
    return stable_bucket(f"canary:{challenger}:{customer_id}") / 100


def canary(customers: Sequence[Record], percent: int, challenger: int) -> np.ndarray:
    """Which customers the Challenger answers: those whose bucket is under ``percent``; a
    customer without an id by a random draw. The id is trimmed first, as the log, the outcomes
    and the feature store trim it: a padded id is the same customer, on the same arm."""
    trimmed = (i.strip() if i else None for i in customer_ids(customers))
    return np.fromiter(
        ((canary_bucket(i, challenger) if i else random.random() * 100) < percent for i in trimmed),
        dtype=bool,
        count=len(customers),
    )
