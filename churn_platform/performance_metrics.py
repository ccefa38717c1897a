"""Model quality for binary churn scores: realized (with labels) and estimated (without).

Churn labels arrive weeks after a score is served, so drift reports alone cannot say whether
the model still works. ``estimated`` fills the gap with confidence-based performance estimation
(CBPE, as in NannyML, implemented here in a few lines rather than pulling in nannyml and its
dependency tree). CBPE trusts the scores to be calibrated probabilities: it follows decay caused
by covariate shift (customers move to regions where the model is less sure) but is blind to
concept drift (the same customer now behaves differently), because the scores do not change.
That is what ``realized`` and ``by_day`` are for, once the labels are in.

Pure functions on arrays: no MLflow, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, computed_field
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

CALIBRATION_BINS = 10
TOP_SHARE = 0.1


class CalibrationBin(BaseModel):
    """Scores in ``[lower, upper)`` (the last bin includes 1.0) against how often they churned."""

    model_config = ConfigDict(frozen=True)

    lower: float
    upper: float
    rows: int
    mean_score: float
    observed_rate: float


class Realized(BaseModel):
    """Metrics against the true labels; ranking metrics are None when only one class is present,
    precision when nothing was predicted to churn, recall when nobody churned."""

    model_config = ConfigDict(frozen=True)

    rows: int
    positives: int
    roc_auc: float | None = None
    pr_auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    precision_top_10pct: float | None = None
    brier: float | None = None
    #: As training's validation metrics are: the report showed "–" beside their baseline.
    accuracy: float | None = None
    log_loss: float | None = None
    calibration: list[CalibrationBin] = []

    @computed_field  # derived, yet in summary.json and the run's metrics
    @property
    def roc_auc_upper_bound(self) -> float | None:
        """One-sided 95% upper bound of ``roc_auc`` on these class counts (``auc_upper_bound``)."""
        if self.roc_auc is None:
            return None
        return auc_upper_bound(self.roc_auc, self.positives, self.rows - self.positives)


class Estimated(BaseModel):
    """CBPE estimates: what the metrics would be if the labels followed the scores."""

    model_config = ConfigDict(frozen=True)

    rows: int
    roc_auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    accuracy: float | None = None
    expected_positives: float = 0.0


class DayFigures(BaseModel):
    """Realized ROC AUC of one UTC calendar day (None when the day has one class only)."""

    model_config = ConfigDict(frozen=True)

    day: str
    rows: int
    roc_auc: float | None


def _scores(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float).ravel()
    if not np.all((p >= 0) & (p <= 1)):  # also rejects NaN
        raise ValueError("scores must be probabilities in [0, 1] (no NaN)")
    return p


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y).ravel()
    if y.shape[0] != n:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} != {n}")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("labels must be 0/1 (or bool)")
    return y.astype(int)


#: z of a one-sided 95% bound.
_Z_95 = 1.645


def auc_upper_bound(auc: float, positives: int, negatives: int) -> float:
    """One-sided 95% upper bound of a ROC AUC measured on these class counts (Hanley and
    McNeil's standard error, 1982). On 200 labelled rows with 5 churners a model whose true
    AUC is 0.84 measures below 0.79 one time in four: a measured drop is a degradation only
    when this bound is below the baseline too. At most 1, as an AUC is (on a few rows the
    normal approximation reached 1.32)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    return min(1.0, auc + _Z_95 * math.sqrt(max(variance, 0.0)))


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if np.unique(y).size == 2 else None


def _calibration(y: np.ndarray, p: np.ndarray) -> list[CalibrationBin]:
    index = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    bins = []
    for i in np.unique(index):
        mask = index == i
        bins.append(
            CalibrationBin(
                lower=i / CALIBRATION_BINS,
                upper=(i + 1) / CALIBRATION_BINS,
                rows=int(mask.sum()),
                mean_score=float(p[mask].mean()),
                observed_rate=float(y[mask].mean()),
            )
        )
    return bins


def realized(y: np.ndarray, p: np.ndarray, threshold: float) -> Realized:
    """Ranking, decision (at ``p >= threshold``) and calibration metrics against true labels.

    ``precision_top_10pct`` is the churn rate among the ceil(10 %) highest scores: the share of
    a retention campaign aimed at the riskiest tenth that would reach actual churners.
    """
    p = _scores(p)
    y = _labels(y, p.shape[0])
    n = p.shape[0]
    if n == 0:
        return Realized(rows=0, positives=0)
    both = np.unique(y).size == 2
    predicted, churned = p >= threshold, y == 1
    tp, fp, fn = int((predicted & churned).sum()), int((predicted & ~churned).sum()), int((~predicted & churned).sum())
    top = np.argsort(-p, kind="stable")[: math.ceil(TOP_SHARE * n)]
    return Realized(
        rows=n,
        positives=int(y.sum()),
        roc_auc=_roc_auc(y, p),
        pr_auc=float(average_precision_score(y, p)) if both else None,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        precision_top_10pct=float(y[top].mean()),
        brier=float(brier_score_loss(y, p, pos_label=1)),
        accuracy=float((predicted == churned).mean()),
        log_loss=float(log_loss(y, p, labels=[0, 1])),
        calibration=_calibration(y, p),
    )


def _ratio(numerator: float, denominator: float) -> float | None:
    """None where the figure is undefined (a window of "no" outcomes has no recall): a 0.0 read
    as a model that missed every churner."""
    return float(numerator / denominator) if denominator > 0 else None


def _expected_roc_auc(p: np.ndarray, w: np.ndarray) -> float | None:
    """Trapezoidal AUC of the expected ROC curve, one step per distinct score (``w``: each
    score's row count).

    Each row counts as p expected positives and 1 - p expected negatives. This is the ratio
    of the expected pair counts, so it approaches the expected AUC under y ~ Bernoulli(p) as
    rows grow (within about 0.002 at 200 rows); it is None when no positives or no negatives
    are expected at all.
    """
    positives, negatives = (w * p).sum(), (w * (1 - p)).sum()
    if positives <= 0 or negatives <= 0:
        return None
    order = np.argsort(p, kind="stable")[::-1]
    ordered, weights = p[order], w[order]
    last_of_score = np.r_[ordered[1:] != ordered[:-1], True]
    tpr = np.r_[0.0, np.cumsum(weights * ordered)[last_of_score] / positives]
    fpr = np.r_[0.0, np.cumsum(weights * (1 - ordered))[last_of_score] / negatives]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def estimated(p: np.ndarray, threshold: float, counts: np.ndarray | None = None) -> Estimated:
    """CBPE: metrics from the expected confusion matrix, with no labels at all.

    Each score p is read as the probability that the customer churns, so a row predicted
    positive adds p to the expected true positives and 1 - p to the false positives (and
    likewise for rows below ``threshold``). Only valid for calibrated scores; see the module
    docstring for what it cannot see. ``counts``: how many rows have each score (a histogram
    from the database: memory grows with the distinct scores, not the predictions).
    """
    p = _scores(p)
    w = np.ones_like(p) if counts is None else np.asarray(counts, dtype=float).ravel()
    if w.shape != p.shape or (w < 0).any():
        raise ValueError("counts must be one non-negative number per score")
    n = int(w.sum())
    if n == 0:
        return Estimated(rows=0)
    predicted = p >= threshold
    tp, fp = (w * p)[predicted].sum(), (w * (1 - p))[predicted].sum()
    fn, tn = (w * p)[~predicted].sum(), (w * (1 - p))[~predicted].sum()
    return Estimated(
        rows=n,
        roc_auc=_expected_roc_auc(p, w),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=float((tp + tn) / n),
        expected_positives=float((w * p).sum()),
    )


def by_day(frame: pd.DataFrame, time_column: str, label_column: str, score_column: str) -> list[DayFigures]:
    """Realized ROC AUC per UTC calendar day, oldest first, to see when quality broke.

    Naive timestamps are taken as UTC; aware ones are converted to it.
    """
    if frame.empty:
        return []
    times = pd.to_datetime(frame[time_column], utc=True)
    if times.isna().any():
        raise ValueError(f"column {time_column!r} has missing timestamps")
    days = times.dt.strftime("%Y-%m-%d").to_numpy()
    scores = _scores(frame[score_column].to_numpy())
    labels = _labels(frame[label_column].to_numpy(), scores.shape[0])
    positions = pd.Series(days).groupby(days).indices
    return [
        DayFigures(day=str(day), rows=len(index), roc_auc=_roc_auc(labels[index], scores[index]))
        for day, index in sorted(positions.items())
    ]
