"""Realized and estimated (CBPE) model quality: equal to sklearn where they should be, and
honest about what estimation without labels can and cannot see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from churn_platform import data
from churn_platform.model import build_pipeline, features
from churn_platform.performance_metrics import by_day, estimated, realized
from churn_platform.schema import LABEL_COLUMN

THRESHOLD = 0.5


def calibrated(n: int, seed: int, kind: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n) if kind == "uniform" else rng.beta(2, 5, size=n)
    return (rng.random(n) < p).astype(int), p


# --------------------------------------------------------------------------- realized


def test_realized_equals_sklearn():
    y, p = calibrated(5_000, seed=1)
    got = realized(y, p, THRESHOLD)
    predicted = p >= THRESHOLD
    assert got.rows == 5_000 and got.positives == y.sum()
    assert got.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got.roc_auc < got.roc_auc_upper_bound < got.roc_auc + 0.02  # 5,000 rows: a standard error under 0.01
    assert got.pr_auc == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert got.precision == pytest.approx(precision_score(y, predicted), abs=1e-12)
    assert got.recall == pytest.approx(recall_score(y, predicted), abs=1e-12)
    assert got.f1 == pytest.approx(f1_score(y, predicted), abs=1e-12)
    assert got.brier == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    # Beside training's validation figures (the report showed "–" for them on 1,000 outcomes).
    assert got.accuracy == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert got.log_loss == pytest.approx(log_loss(y, p), abs=1e-12)
    assert sum(b.rows for b in got.calibration) == 5_000
    # On two rows the normal approximation's bound reached 1.32, logged as an AUC's figure.
    assert realized(np.array([0, 1]), np.array([0.3, 0.3]), THRESHOLD).roc_auc_upper_bound == 1.0
    # Calibrated scores: each bin's churn rate is close to its mean score.
    assert all(abs(b.observed_rate - b.mean_score) < 0.05 for b in got.calibration)


def test_top_decile_precision_and_calibration_bins_by_hand():
    # 15 rows: the top 10 % is ceil(1.5) = 2 rows, scores 0.95 (churned) and 0.9 (stayed).
    p = np.array([0.9, 0.1, 0.2, 0.95, 0.3, 0.05, 0.15, 0.25, 0.35, 0.12, 0.22, 0.32, 0.02, 0.11, 0.04])
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert realized(y, p, THRESHOLD).precision_top_10pct == 0.5

    # At least one row: of 5 rows the top one decides.
    assert realized(np.array([1, 0, 0, 0, 0]), np.array([0.8, 0.1, 0.2, 0.3, 0.4]), THRESHOLD).precision_top_10pct == 1

    # Equal-width bins, empty ones left out; a score of 1.0 belongs to the last bin.
    bins = realized(np.array([1, 0, 1, 1]), np.array([0.05, 0.08, 0.95, 1.0]), THRESHOLD).calibration
    assert [(b.lower, b.upper, b.rows, b.observed_rate) for b in bins] == [(0.0, 0.1, 2, 0.5), (0.9, 1.0, 2, 1.0)]
    assert bins[1].mean_score == pytest.approx(0.975)


def test_one_class_and_empty_input_do_not_raise():
    one_class = realized(np.zeros(50, dtype=bool), np.linspace(0, 1, 50), THRESHOLD)
    assert one_class.rows == 50 and one_class.positives == 0
    assert one_class.roc_auc is None and one_class.pr_auc is None
    assert one_class.precision == 0 and one_class.brier is not None  # some were predicted to churn
    # Nobody churned: recall is undefined, not 0.0 (a model that missed every churner); with
    # nothing predicted to churn either, so are precision and F1.
    assert one_class.recall is None and one_class.f1 == 0
    calm = realized(np.zeros(4, dtype=bool), np.array([0.1, 0.2, 0.05, 0.3]), THRESHOLD)
    assert (calm.precision, calm.recall, calm.f1) == (None, None, None)
    low = estimated(np.array([0.2, 0.3]), THRESHOLD)  # half a churner expected, none predicted
    assert (low.precision, low.recall, low.f1) == (None, 0.0, 0.0)

    empty = realized(np.array([]), np.array([]), THRESHOLD)
    assert empty.rows == 0 and empty.roc_auc is None and empty.brier is None and empty.calibration == []
    assert estimated(np.array([]), THRESHOLD).rows == 0
    assert estimated(np.array([]), THRESHOLD).roc_auc is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="probabilities"):
        realized(np.array([0, 1]), np.array([0.2, 1.5]), THRESHOLD)
    with pytest.raises(ValueError, match="0/1"):
        realized(np.array([0, 2]), np.array([0.2, 0.5]), THRESHOLD)
    with pytest.raises(ValueError, match="length"):
        realized(np.array([0, 1, 1]), np.array([0.2, 0.5]), THRESHOLD)


# --------------------------------------------------------------------------- estimated (CBPE)


@pytest.mark.parametrize("kind", ["uniform", "beta"])
def test_estimate_matches_realized_on_calibrated_scores(kind):
    y, p = calibrated(20_000, seed=11, kind=kind)
    truth, guess = realized(y, p, THRESHOLD), estimated(p, THRESHOLD)
    assert abs(guess.roc_auc - truth.roc_auc) < 0.01
    assert abs(guess.precision - truth.precision) < 0.02
    assert abs(guess.recall - truth.recall) < 0.02
    assert abs(guess.f1 - truth.f1) < 0.02
    assert guess.expected_positives == pytest.approx(y.sum(), rel=0.03)


@pytest.mark.parametrize("ties", [False, True])
def test_estimated_auc_is_the_mean_auc_over_label_draws(ties):
    """Brute force: draw labels from the scores 2,000 times; the mean realized AUC is the estimate."""
    rng = np.random.default_rng(5)
    p = rng.uniform(size=200)
    if ties:
        p = np.round(p, 1)
    draws = rng.random((2_000, p.size)) < p
    draws = draws[(draws.sum(axis=1) > 0) & (draws.sum(axis=1) < p.size)]
    # Mann-Whitney with mid-ranks is sklearn's AUC (checked on the first draws), vectorised over draws.
    ranks = rankdata(p)
    positives = draws.sum(axis=1)
    aucs = (draws @ ranks - positives * (positives + 1) / 2) / (positives * (p.size - positives))
    assert aucs[:5] == pytest.approx([roc_auc_score(d, p) for d in draws[:5]], abs=1e-12)
    assert abs(estimated(p, THRESHOLD).roc_auc - aucs.mean()) < 0.005


def test_estimate_ignores_row_order_with_tied_scores():
    p = np.repeat([0.2, 0.5, 0.8], 100)
    shuffled = np.random.default_rng(0).permutation(p)
    assert estimated(p, THRESHOLD) == estimated(shuffled, THRESHOLD)
    # Three distinct scores: the expected ROC curve has three steps, hand-computed.
    # Pairs (higher, lower): 0.8*0.5 + 0.8*0.8 + 0.5*0.8 over P*N, plus half of the tied pairs.
    positive, negative = 100 * np.array([0.8, 0.5, 0.2]), 100 * np.array([0.2, 0.5, 0.8])
    wins = positive[0] * (negative[1] + negative[2]) + positive[1] * negative[2]
    ties = (positive * negative).sum() / 2
    assert estimated(p, THRESHOLD).roc_auc == pytest.approx((wins + ties) / (positive.sum() * negative.sum()))


def test_an_estimate_from_a_histogram_is_the_estimate_from_its_rows():
    """The performance job reads the scores as (score, count) from the database: a month of
    predictions must not become one float each in memory, and the figures must not change."""
    rng = np.random.default_rng(3)
    scores = np.round(rng.beta(2, 5, 5_000), 4)
    distinct, counts = np.unique(scores, return_counts=True)
    shuffled = rng.permutation(len(distinct))  # the database returns them in no order
    from_rows, from_histogram = estimated(scores, THRESHOLD), estimated(distinct[shuffled], THRESHOLD, counts[shuffled])
    assert from_histogram.rows == from_rows.rows == 5_000
    for field in ("roc_auc", "precision", "recall", "f1", "accuracy", "expected_positives"):
        assert getattr(from_histogram, field) == pytest.approx(getattr(from_rows, field), rel=1e-12), field
    with pytest.raises(ValueError, match="one non-negative number per score"):
        estimated(distinct, THRESHOLD, counts[:-1])


def test_estimate_follows_covariate_shift_but_not_concept_drift():
    y, p = calibrated(20_000, seed=3)
    before = estimated(p, THRESHOLD)

    # Covariate shift: the customers move to where the model is unsure (scores near 0.5), still
    # calibrated. Quality really drops and the estimate sees it.
    rng = np.random.default_rng(4)
    unsure = rng.beta(6, 6, size=20_000)
    shifted_truth = realized((rng.random(unsure.size) < unsure).astype(int), unsure, THRESHOLD)
    shifted_guess = estimated(unsure, THRESHOLD)
    assert shifted_truth.roc_auc < before.roc_auc - 0.1
    assert abs(shifted_guess.roc_auc - shifted_truth.roc_auc) < 0.01

    # Concept drift: a third of the customers now do the opposite of what they used to. The scores
    # do not change, so neither does the estimate; only the labels show the damage.
    flipped = y.copy()
    segment = rng.random(y.size) < 1 / 3
    flipped[segment] = 1 - flipped[segment]
    truth = realized(flipped, p, THRESHOLD)
    assert truth.roc_auc < before.roc_auc - 0.05
    assert estimated(p, THRESHOLD).roc_auc > truth.roc_auc + 0.05  # the estimate misses it, as documented


def test_estimate_on_the_telco_model(telco_csv):
    """A logistic pipeline like the one we train: its validation scores are calibrated enough."""
    train, valid = data.split(data.load(telco_csv))
    model = build_pipeline("logistic").fit(features(train), train[LABEL_COLUMN])
    p = model.predict_proba(features(valid))[:, 1]
    truth, guess = realized(valid[LABEL_COLUMN].to_numpy(), p, THRESHOLD), estimated(p, THRESHOLD)
    assert abs(guess.roc_auc - truth.roc_auc) < 0.03
    assert guess.expected_positives == pytest.approx(truth.positives, rel=0.1)


# --------------------------------------------------------------------------- by day


def test_by_day_groups_on_utc_calendar_days():
    frame = pd.DataFrame(
        {
            "scored_at": [
                "2024-03-02T10:00:00+00:00",
                "2024-03-01T23:30:00-02:00",  # 01:30 UTC on 2 March
                "2024-03-02T12:00:00Z",
                "2024-03-01T08:00:00Z",
                "2024-03-01T09:00:00Z",
            ],
            "churn": [0, 1, 1, 0, 0],
            "probability": [0.3, 0.6, 0.2, 0.1, 0.7],
        }
    )
    days = by_day(frame, "scored_at", "churn", "probability")
    assert [(d.day, d.rows) for d in days] == [("2024-03-01", 2), ("2024-03-02", 3)]
    assert days[0].roc_auc is None  # no churner that day
    assert days[1].roc_auc == pytest.approx(roc_auc_score([0, 1, 1], [0.3, 0.6, 0.2]))
    assert by_day(frame.iloc[:0], "scored_at", "churn", "probability") == []
