"""The one promotion gate (pure logic): training and promote both decide through it."""

from __future__ import annotations

from churn_platform import gate
from churn_platform.contract import TAG_GATE_FIGURES


def verdict(candidate, production, version=3):
    return gate.compare(candidate, production, production_version=version, tolerance=0.005, compared_on="rows X")


def test_the_gate_passes_within_the_tolerance_and_says_so():
    assert (
        verdict(0.84, 0.83).passed
        and "at least as good as Production v3 0.8300 on rows X" in verdict(0.84, 0.83).reason
    )
    close = verdict(0.836, 0.840)
    assert close.passed and close.checked and "within the tolerance (0.005)" in close.reason
    worse = verdict(0.83, 0.84)
    assert not worse.passed and "worse by more than the tolerance" in worse.reason


def test_nothing_to_compare_passes_unchecked_and_an_unscorable_production_fails():
    first = gate.compare(0.8, None, production_version=None, tolerance=0.005, compared_on="rows X")
    assert first.passed and not first.checked and first.reason == "no version holds Production"
    missing = verdict(None, 0.84)
    assert missing.passed and not missing.checked and "not checked" in missing.reason
    broken = gate.unscorable(3, RuntimeError("no artifact"), tolerance=0.005, compared_on="rows X")
    assert not broken.passed and "could not score Production v3: no artifact" in broken.reason


def test_recorded_figures_round_trip_and_a_hand_edited_tag_is_ignored():
    tags = {TAG_GATE_FIGURES: gate.figures_tag(verdict(0.84, 0.83, version=1))}
    figures = gate.recorded_figures(tags)
    assert (figures.production_version, figures.candidate, figures.production) == (1, 0.84, 0.83)
    assert gate.figures_tag(gate.compare(0.84, None, production_version=None, tolerance=0.005, compared_on="x")) is None
    for edited in ("", "not json", '{"candidate": 0.9}', '{"production_version": "v1", "candidate": 1, "production": 1,'
                   ' "compared_on": "x"}', "[]"):  # fmt: skip
        assert gate.recorded_figures({TAG_GATE_FIGURES: edited}) is None, edited
    assert gate.recorded_figures({}) is None


def test_too_few_rows_or_too_few_of_a_class_is_no_verdict():
    """On 20 validation rows a version trained on 80 customers "beat" Production and was
    promoted, though worse on Production's own thousand held-out rows."""
    def few(rows, by_class):
        return gate.too_few(rows, by_class, 3, tolerance=0.005, compared_on="rows X")

    assert few(100, {0: 80, 1: 20}) is None and few(983, None) is None
    small = few(20, {0: 13, 1: 7})
    assert not small.passed and not small.checked and gate.figures_tag(small) is None
    assert small.reason.startswith("20 validation rows (7 churned, 13 stayed) are too few to judge against "
                                   "Production v3 (at least 100, 20 of each class)")  # fmt: skip
    assert "--force" in small.reason
    assert not few(500, {0: 481, 1: 19}).passed  # enough rows, too few churners
    assert "99 validation rows are too few" in few(99, None).reason  # promote knows the rows only
