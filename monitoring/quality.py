"""Data-quality checks on the current window, run before Evidently (which crashes on
missing columns, type changes and empty columns, or silently compares nonsense)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from churn_platform import data, inference_log
from churn_platform.contract import PROBABILITY, RISK, WILL_CHURN
from churn_platform.data import is_blank
from churn_platform.schema import FEATURES, ID_COLUMN, LABEL_COLUMN, normalise_columns

#: Columns the inference log or a file may carry beside the features without comment.
KNOWN_EXTRA = {ID_COLUMN, LABEL_COLUMN, "id", WILL_CHURN, RISK, *inference_log.COLUMNS}


@dataclass
class Finding:
    check: str
    column: str | None
    detail: str
    failure: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(frame: pd.DataFrame, max_missing_share: float) -> tuple[pd.DataFrame, list[Finding]]:
    """Typed feature frame (rows with missing values dropped) and the findings.

    Any finding with ``failure=True`` means the window must not be compared.
    """
    frame = frame.copy()
    frame.columns = normalise_columns([str(c) for c in frame.columns])
    findings: list[Finding] = []
    missing = [f.name for f in FEATURES if f.name not in frame.columns]
    if missing:
        findings.append(Finding("missing_columns", None, f"missing feature columns: {missing}", True))
    extra = sorted(set(frame.columns) - {f.name for f in FEATURES} - KNOWN_EXTRA)
    if extra:
        findings.append(Finding("extra_columns", None, f"columns not in the schema, ignored: {extra}", False))
    if frame.empty:
        findings.append(Finding("empty", None, "the current window has no rows", True))
    out = pd.DataFrame(index=frame.index)
    tenure = pd.to_numeric(frame["tenure"], errors="coerce") if "tenure" in frame.columns else None
    for feature in FEATURES:
        if feature.name not in frame.columns or frame.empty:
            continue
        raw = frame[feature.name]
        blank = is_blank(raw)
        if feature.name == "total_charges" and tenure is not None:  # as training reads it (10 % new
            first = data.first_month(blank, tenure)  # customers in a window once failed it as missing)
            raw, blank = raw.mask(first, "0"), blank & ~first
        if blank.all():
            findings.append(Finding("empty_column", feature.name, f"column {feature.name!r} has no values", True))
            continue
        _missing_values(feature.name, blank, max_missing_share, findings)
        if feature.kind == "category":
            values = raw.astype(str).str.strip()
            unknown = ~blank & ~values.isin([str(a) for a in feature.allowed])
            if unknown.any():
                seen = sorted(values[unknown].unique())[:5]
                findings.append(Finding(
                    "unknown_categories", feature.name,
                    f"column {feature.name!r}: unknown categories {seen} in {int(unknown.sum())} rows; "
                    f"allowed: {list(feature.allowed)}", True,
                ))  # fmt: skip
            out[feature.name] = values.where(~blank)
        else:
            numbers = pd.to_numeric(raw.where(~blank), errors="coerce")
            bad = ~blank & numbers.isna()
            if bad.any():
                examples = list(raw[bad].astype(str).unique()[:3])
                findings.append(Finding(
                    "type_change", feature.name,
                    f"column {feature.name!r} should be numeric; {int(bad.sum())} values are not, "
                    f"e.g. {examples}", True,
                ))  # fmt: skip
            # Values the schema refuses at training and serving (a negative tenure, inf) would be
            # compared as data here, or crash the scoring of a file.
            infinite = numbers.isin([float("inf"), float("-inf")])
            outside = infinite.copy()
            if feature.minimum is not None:
                outside |= numbers < feature.minimum
            if feature.maximum is not None:
                outside |= numbers > feature.maximum
            if feature.kind == "integer":  # as data.split_rejects refuses them: 12.5 months, a flag of 2
                fractional, not_allowed = data.integer_violations(feature, numbers)
                outside |= fractional | not_allowed
            if outside.any():
                examples = list(raw[outside].astype(str).unique()[:3])
                limits = f"from {feature.minimum:g}" if feature.minimum is not None else "finite"
                limits += f" to {feature.maximum}" if feature.maximum is not None else ""
                limits += ", whole numbers" if feature.kind == "integer" else ""
                limits = f"one of {list(feature.allowed)}" if feature.allowed is not None else limits
                findings.append(Finding(
                    "out_of_range", feature.name,
                    f"column {feature.name!r}: {int(outside.sum())} values outside the schema's range ({limits}), "
                    f"e.g. {examples}", True,
                ))  # fmt: skip
            out[feature.name] = numbers
            if feature.allowed is not None:  # an integer flag: compared as a category
                out[feature.name] = numbers.mask(infinite).map(lambda v: None if pd.isna(v) else str(int(v)))
    if PROBABILITY in frame.columns:
        out[PROBABILITY] = _scores(frame[PROBABILITY], max_missing_share, findings)
    if any(f.failure for f in findings):
        return out, findings
    kept = out.dropna(subset=[c for c in (*(f.name for f in FEATURES), PROBABILITY) if c in out.columns])
    # Each column's share may be under the limit while together they drop far more rows.
    dropped = 1 - len(kept) / max(len(out), 1)
    if dropped > max_missing_share:
        findings.append(Finding(
            "missing_values", None,
            f"{dropped:.1%} of rows miss a value in some column (limit {max_missing_share:.1%}): "
            "what is left may not be the population", True,
        ))  # fmt: skip
        return out, findings
    return kept, findings


def _scores(raw: pd.Series, max_missing_share: float, findings: list[Finding]) -> pd.Series:
    """A file's own scores (``score --with-features`` writes them), which prediction drift
    compares with the training scores: percentages or text would be called drift."""
    blank = is_blank(raw)
    scores = pd.to_numeric(raw.where(~blank), errors="coerce")
    bad = ~blank & ~scores.between(0, 1)
    if bad.any():
        examples = list(raw[bad].astype(str).unique()[:3])
        findings.append(Finding(
            "out_of_range", PROBABILITY,
            f"column {PROBABILITY!r}: {int(bad.sum())} values are not probabilities from 0 to 1, e.g. {examples}", True,
        ))  # fmt: skip
    _missing_values(PROBABILITY, blank, max_missing_share, findings)
    return scores


def _missing_values(column: str, blank: pd.Series, max_missing_share: float, findings: list[Finding]) -> None:
    """A column's blanks: past the limit a failure, under it rows dropped and noted."""
    share = float(blank.mean())
    if share > max_missing_share:
        findings.append(Finding(
            "missing_values", column,
            f"column {column!r}: {share:.1%} missing values (limit {max_missing_share:.1%})", True,
        ))  # fmt: skip
    elif share:
        findings.append(Finding(
            "missing_values", column, f"column {column!r}: {share:.1%} missing values, rows dropped", False
        ))
