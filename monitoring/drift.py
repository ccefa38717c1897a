"""Per-column drift with Evidently 0.7, on the schema's feature columns only.

Methods are fixed rather than auto-selected (Evidently switches between p-value tests
and distances at 1,000 rows, which would change the meaning of a threshold with the
window size): normed Wasserstein distance for numbers, Jensen-Shannon distance for
categories and flags. A column drifted when its distance is at or above its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report, Run
from evidently.metrics import ValueDrift

from churn_platform.contract import PROBABILITY
from churn_platform.schema import ENUMERATED_FEATURES, FEATURES

PREDICTION = PROBABILITY
NUMERIC_METHOD, CATEGORY_METHOD = "wasserstein", "jensenshannon"
#: Numeric features compared as numbers; integer flags with allowed values compare as categories.
NUMERIC = [f.name for f in FEATURES if f.name not in ENUMERATED_FEATURES]
CATEGORICAL = list(ENUMERATED_FEATURES)


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool
    critical: bool = False


@dataclass(frozen=True)
class DriftResult:
    """The numbers for the verdict, plus Evidently's run so the report can reuse its widgets."""

    columns: tuple[ColumnDrift, ...]
    prediction: ColumnDrift | None
    snapshot: Run


def _as_compared(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = frame.loc[:, columns].copy()
    for name in CATEGORICAL:
        if name in out.columns:
            out[name] = out[name].astype(str)
    return out


def compute(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: dict[str, float],
    default_threshold: float,
    critical: set[str],
) -> DriftResult:
    """Feature drift per column, and prediction drift when both sides have scores.

    No HTML here: the report needs the verdict, which the caller decides (see ``monitoring.report``).
    """
    columns = [f.name for f in FEATURES]
    with_prediction = PREDICTION in reference.columns and PREDICTION in current.columns
    compared = columns + ([PREDICTION] if with_prediction else [])
    numeric = [c for c in NUMERIC] + ([PREDICTION] if with_prediction else [])
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=CATEGORICAL)
    metrics = []
    for column in compared:
        method = NUMERIC_METHOD if column in numeric else CATEGORY_METHOD
        metrics.append(ValueDrift(column=column, method=method, threshold=thresholds.get(column, default_threshold)))
    snapshot = Report(metrics).run(
        current_data=Dataset.from_pandas(_as_compared(current, compared), data_definition=definition),
        reference_data=Dataset.from_pandas(_as_compared(reference, compared), data_definition=definition),
    )
    results: list[ColumnDrift] = []
    for metric in snapshot.dict()["metrics"]:
        config: dict[str, Any] = metric["config"]
        column, threshold = config["column"], float(config["threshold"])
        score = float(metric["value"])
        results.append(ColumnDrift(column, config["method"], score, threshold, score >= threshold, column in critical))
    prediction = next((r for r in results if r.column == PREDICTION), None)
    return DriftResult(tuple(r for r in results if r.column != PREDICTION), prediction, snapshot)
