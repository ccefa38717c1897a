"""Why a customer got their score: one additive contribution per feature, in log-odds.

``base + sum(contributions) = logit(churn_probability)`` for every customer, which is what
makes a contribution readable ("a month-to-month contract adds 0.81 to the log-odds").

- Logistic pipeline: exact and cheap. A linear model's SHAP values under feature
  independence are ``coef * (x - training mean)`` per transformed column; the fast
  scorer's own matrix gives ``x``, and the one-hot columns of a feature are summed back
  into it. No sklearn call, a few microseconds per customer.
- Gradient boosting: SHAP's TreeExplainer (exact, path-dependent) on the same matrix,
  summed back the same way. ``shap`` is imported only when such a model is explained (it
  brings numba: about 100 MB that a logistic deployment never pays).

``verify`` checks additivity on real rows when a version loads, as the scorer's parity
is checked; a version whose explanations do not add up still serves, without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logit

from churn_platform.schema import FEATURE_NAMES
from churn_platform.scorer import FastScorer

#: Largest distance of base + sum(contributions) from logit(probability) an explainer may show and
#: still explain (``additivity_error``).
ADDITIVITY_TOLERANCE = 1e-6
#: Rows per chunk when the training means are computed from a large reference set.
CHUNK_ROWS = 50_000

LINEAR, TREE_SHAP = "linear", "tree_shap"


class ExplanationUnavailable(Exception):
    """This version cannot be explained (an unsupported model, or ``shap`` missing)."""


@dataclass(frozen=True)
class Explained:
    """Probabilities and their explanations for a batch of customers."""

    probabilities: np.ndarray  # (n,)
    base: float  # log-odds every explanation starts from
    contributions: np.ndarray  # (n, len(FEATURE_NAMES)), in FEATURE_NAMES order


class Explainer:
    """Scores and explains records in one pass over the fast scorer's matrix."""

    def __init__(self, scorer: FastScorer, background: pd.DataFrame | Iterable[pd.DataFrame]) -> None:
        """``background``: the training features (the linear model's reference point), whole
        or in chunks."""
        if not isinstance(scorer, FastScorer):
            raise ExplanationUnavailable(f"the {type(scorer).__name__} cannot be explained; only the fast scorer")
        self._scorer = scorer
        columns = scorer.column_features
        # Sums a matrix row's column contributions into the schema's features.
        self._to_features = np.zeros((len(columns), len(FEATURE_NAMES)))
        self._to_features[np.arange(len(columns)), [FEATURE_NAMES.index(f) for f in columns]] = 1.0
        if scorer.linear is not None:
            self.method = LINEAR
            coef, intercept = scorer.linear
            mean = training_means(scorer, background)
            # coef * (x - mean), summed into features, as one product and one subtraction.
            self._weights = coef[:, None] * self._to_features
            self._offset = (coef * mean) @ self._to_features
            self.base = float(intercept + mean @ coef)
        else:
            self.method = TREE_SHAP
            self._tree = _tree_explainer(scorer.classifier)
            expected = np.ravel(self._tree.expected_value)
            self.base = float(expected[-1])

    def explain(self, records: Sequence[Any]) -> Explained:
        """Probabilities (exactly the scorer's) and each record's contributions per feature
        (records as ``FastScorer.matrix`` takes them)."""
        return self._explain(self._scorer.matrix(records))

    def explain_frame(self, frame: pd.DataFrame) -> Explained:
        """``explain`` for a validated DataFrame (batch scoring's column path)."""
        return self._explain(self._scorer.frame_matrix(frame))

    def _explain(self, x: np.ndarray) -> Explained:
        probabilities = self._scorer.probabilities(x)
        if self.method == LINEAR:
            return Explained(probabilities, self.base, x @ self._weights - self._offset)
        values = self._tree.shap_values(x, check_additivity=False)
        columns = values[1] if isinstance(values, list) else values
        if columns.ndim == 3:  # (n, columns, classes)
            columns = columns[..., -1]
        return Explained(probabilities, self.base, columns @ self._to_features)


def training_means(scorer: FastScorer, background: pd.DataFrame | Iterable[pd.DataFrame]) -> np.ndarray:
    """Mean of each column of the scorer's matrix over the ``background`` rows, in bounded
    memory: a frame is taken in chunks, chunks as they come (a file read batch by batch)."""
    chunks: Iterable[pd.DataFrame] = background
    if isinstance(background, pd.DataFrame):
        chunks = (background.iloc[at : at + CHUNK_ROWS] for at in range(0, len(background), CHUNK_ROWS))
    total, rows = np.zeros(len(scorer.column_features)), 0
    for chunk in chunks:
        if len(chunk):
            total += scorer.frame_matrix(chunk).sum(axis=0)  # column by column: no dict per row
            rows += len(chunk)
    if not rows:
        raise ExplanationUnavailable("no training rows to take the explanations' reference point from")
    return total / rows


def _tree_explainer(classifier: Any) -> Any:
    try:
        import shap  # noqa: PLC0415 - only tree models pay for shap and numba
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ExplanationUnavailable(f"shap is not installed: {exc}") from None
    try:
        return shap.TreeExplainer(classifier, model_output="raw", feature_perturbation="tree_path_dependent")
    except Exception as exc:  # noqa: BLE001 - shap refuses models it does not know in many ways
        raise ExplanationUnavailable(f"shap cannot explain {type(classifier).__name__}: {exc}") from None


def additivity_error(explained: Explained) -> float:
    """Largest distance of base + sum(contributions) from the log-odds the served probability
    stands for: logit(p), give or take 4 units in the last place of p (np.spacing). Near 1 a float64 holds
    log-odds coarsely (an ulp of p is 1e-3 log-odds at 30), and one confident verification row
    (an overfit booster's) made every explanation of its version a 409 though it was exact;
    elsewhere the allowance is under 1e-14."""
    if not len(explained.probabilities):
        return 0.0
    p = explained.probabilities
    explained_logit = explained.base + explained.contributions.sum(axis=1)
    step = 4 * np.spacing(p)
    with np.errstate(divide="ignore"):  # p within 4 ulps of 0 or 1: that side is unbounded
        low, high = logit(np.maximum(p - step, 0.0)), logit(np.minimum(p + step, 1.0))
    return float(np.max(np.maximum(0.0, np.maximum(low - explained_logit, explained_logit - high))))


def verify(explainer: Explainer, frame: pd.DataFrame) -> float:
    """Additivity on real rows; raise ``ExplanationUnavailable`` when it does not hold."""
    error = additivity_error(explainer.explain(frame.loc[:, list(FEATURE_NAMES)].to_dict(orient="records")))
    if not error <= ADDITIVITY_TOLERANCE:
        raise ExplanationUnavailable(
            f"explanations do not add up to the score: max error {error:.3g} > {ADDITIVITY_TOLERANCE} "
            f"on {len(frame)} rows"
        )
    return error


def top(explained: Explained, records: Sequence[Any], top_k: int) -> list[dict[str, Any]]:
    """Each record's explanation as served: the ``top_k`` largest contributions by size
    (``records`` read as ``record[feature]``)."""
    contributions = explained.contributions
    values = contributions.tolist()
    if len(values) < 32:  # a few customers: Python's sort beats NumPy's call overhead
        every = range(contributions.shape[1])
        order = [sorted(every, key=lambda j, row=row: abs(row[j]), reverse=True)[:top_k] for row in values]
    else:
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :top_k].tolist()
    base = explained.base
    return [
        {
            "base": base,
            "contributions": [
                {"feature": FEATURE_NAMES[j], "value": record[FEATURE_NAMES[j]], "contribution": row[j]} for j in chosen
            ],
        }
        for record, row, chosen in zip(records, values, order, strict=True)
    ]


def flat_columns(explained: Explained, frame: pd.DataFrame, top_k: int) -> dict[str, np.ndarray]:
    """``top``'s fields as columns (batch scoring's output): ``explanation_base`` and, for
    i = 1..top_k, ``explanation_<i>_feature``, ``_value`` (as text) and ``_contribution``."""
    contributions = explained.contributions
    n = len(contributions)
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :top_k]
    names = np.array(FEATURE_NAMES, dtype=object)
    values = frame[list(FEATURE_NAMES)].astype(str).to_numpy(dtype=object)
    rows = np.arange(n)
    columns = {"explanation_base": np.full(n, explained.base)}
    for i in range(top_k):
        chosen = order[:, i]
        columns[f"explanation_{i + 1}_feature"] = names[chosen]
        columns[f"explanation_{i + 1}_value"] = values[rows, chosen]
        columns[f"explanation_{i + 1}_contribution"] = contributions[rows, chosen]
    return columns


def global_importance(explained: Explained) -> list[dict[str, Any]]:
    """Mean absolute contribution of each feature over a set of rows, largest first."""
    means = (
        np.abs(explained.contributions).mean(axis=0) if len(explained.contributions) else np.zeros(len(FEATURE_NAMES))
    )
    ranked = sorted(zip(FEATURE_NAMES, means.tolist(), strict=True), key=lambda item: -item[1])
    return [{"feature": name, "mean_abs_contribution": value} for name, value in ranked]
