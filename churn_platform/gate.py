"""The promotion gate: one comparison, used by training (to set ``Challenger``) and by
``promote`` (to move ``Production``). The callers differ only in the figures they pass."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from churn_platform.contract import GATE_METRIC, TAG_GATE_FIGURES, TAG_TRAINING_DATA


class GateVerdict(BaseModel):
    """Whether a candidate may replace Production, and on what evidence."""

    model_config = ConfigDict(frozen=True)

    #: False when there was nothing to compare with (no Production, or a figure missing).
    checked: bool
    passed: bool
    metric: str = GATE_METRIC
    candidate: float | None = Field(None, serialization_alias=f"candidate_{GATE_METRIC}")
    production: float | None = Field(None, serialization_alias=f"production_{GATE_METRIC}")
    production_version: int | None = None
    tolerance: float
    #: Which data the two figures come from, in words.
    compared_on: str
    reason: str


def compare(
    candidate: float | None,
    production: float | None,
    *,
    production_version: int | None,
    tolerance: float,
    compared_on: str,
) -> GateVerdict:
    """Pass when the candidate's metric is at most ``tolerance`` below Production's.

    No Production, or a figure that is missing, passes unchecked: a first model must be
    promotable, and a version registered outside training may lack the metric.
    """
    if production_version is None:
        return GateVerdict(checked=False, passed=True, candidate=candidate, tolerance=tolerance,
                           compared_on=compared_on, reason="no version holds Production")  # fmt: skip
    if candidate is None or production is None:
        return GateVerdict(
            checked=False, passed=True, candidate=candidate, production=production,
            production_version=production_version, tolerance=tolerance, compared_on=compared_on,
            reason=f"no {GATE_METRIC} to compare with Production v{production_version}; not checked",
        )  # fmt: skip
    if math.isnan(candidate) or math.isnan(production):
        return GateVerdict(
            checked=False, passed=False, candidate=candidate, production=production,
            production_version=production_version, tolerance=tolerance, compared_on=compared_on,
            reason=f"{GATE_METRIC} is not a number (candidate {candidate}, Production v{production_version} "
                   f"{production}): nothing to compare on",
        )  # fmt: skip
    passed = candidate >= production - tolerance
    if candidate >= production:
        relation = "at least as good as"
    elif passed:
        relation = f"within the tolerance ({tolerance}) of"
    else:
        relation = f"worse by more than the tolerance ({tolerance}) than"
    return GateVerdict(
        checked=True, passed=passed, candidate=candidate, production=production,
        production_version=production_version, tolerance=tolerance, compared_on=compared_on,
        reason=f"{GATE_METRIC} {candidate:.4f} is {relation} Production v{production_version} {production:.4f} "
               f"on {compared_on}",
    )  # fmt: skip


#: Fewest rows, and of each class, a verdict against Production is drawn from. On 20
#: validation rows a version trained on 80 customers "beat" Production (0.947 to 0.933) and was
#: promoted; on Production's own 983 held-out rows it scored 0.825 to 0.841. An AUC's noise on
#: 100 rows with 20 of a class is about 0.05: still above the tolerance, but no longer a coin.
LEAST_GATE_ROWS = 100
LEAST_GATE_CLASS = 20


def by_class(labels: Any) -> dict[int, int]:
    """Rows of each label (0 stayed, 1 churned) among ``labels`` (an array or a Series)."""
    values = np.asarray(labels).astype(int)
    return {0: int((values == 0).sum()), 1: int((values == 1).sum())}


def judgeable(rows: int, classes: dict[int, int] | None) -> bool:
    """Whether ``rows`` (``classes``: ``by_class``'s counts, when known) are enough for a verdict."""
    return rows >= LEAST_GATE_ROWS and (classes is None or min(classes.values()) >= LEAST_GATE_CLASS)


def too_few(rows: int, classes: dict[int, int] | None, production_version: int, *, tolerance: float,
            compared_on: str) -> GateVerdict | None:  # fmt: skip
    """A failed verdict when ``rows`` are too few to judge a candidate against Production on
    (``judgeable``); else None."""
    if judgeable(rows, classes):
        return None
    counted = f" ({classes[1]} churned, {classes[0]} stayed)" if classes is not None else ""
    return GateVerdict(
        checked=False, passed=False, production_version=production_version, tolerance=tolerance,
        compared_on=compared_on,
        reason=f"{rows} validation rows{counted} are too few to judge against Production v{production_version} "
               f"(at least {LEAST_GATE_ROWS}, {LEAST_GATE_CLASS} of each class): train on more customers or a "
               "larger validation_size, or promote with --force if that is meant",
    )  # fmt: skip


def unscorable(production_version: int, error: BaseException, *, tolerance: float, compared_on: str) -> GateVerdict:
    """A Production version that cannot be scored fails the gate: never promote blind."""
    return GateVerdict(checked=False, passed=False, production_version=production_version, tolerance=tolerance,
                       compared_on=compared_on,
                       reason=f"could not score Production v{production_version}: {error}"[:300])  # fmt: skip


class RecordedFigures(BaseModel):
    """The two figures training scored on the same rows (tag ``TAG_GATE_FIGURES``): promote
    prefers them while that Production holds, retraining reads whom a retrain was gated against."""

    production_version: int
    candidate: float
    production: float
    compared_on: str = Field(max_length=200)


def figures_tag(verdict: GateVerdict) -> str | None:
    """The tag's value for a verdict that compared two figures; None for one that did not."""
    if not verdict.checked or verdict.candidate is None or verdict.production is None:
        return None
    figures = RecordedFigures(production_version=verdict.production_version, candidate=verdict.candidate,
                              production=verdict.production, compared_on=verdict.compared_on[:200])  # fmt: skip
    return figures.model_dump_json()


def recorded_figures(tags: dict[str, str]) -> RecordedFigures | None:
    """A version's recorded figures; None without the tag, or with one edited by hand."""
    try:
        return RecordedFigures.model_validate_json(tags[TAG_GATE_FIGURES])
    except (KeyError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def trained_on_synthetic(tags: dict[str, str]) -> bool | None:
    """Whether a version learned from generated customers; None for a version that does not say."""
    source = tags.get(TAG_TRAINING_DATA)
    return None if source is None else source.startswith("synthetic")


def synthetic_over_real(
    candidate_tags: dict[str, str], production_tags: dict[str, str], production_version: int, *, tolerance: float,
    compared_on: str,
) -> GateVerdict | None:
    """A failed verdict when a candidate trained on synthetic customers would replace a Production
    trained on real ones (``train`` without ``--data`` defaults to synthetic); else None.

    Scored on its own synthetic validation rows, such a model beats a real one, and each
    figure the gate compares comes from those rows."""
    if not (trained_on_synthetic(candidate_tags) and trained_on_synthetic(production_tags) is False):
        return None
    return GateVerdict(
        checked=False, passed=False, production_version=production_version, tolerance=tolerance,
        compared_on=compared_on,
        reason=f"trained on synthetic customers, while Production v{production_version} was trained on "
               f"{production_tags[TAG_TRAINING_DATA]}: train with --data, or promote it with --force if that is meant",
    )  # fmt: skip
