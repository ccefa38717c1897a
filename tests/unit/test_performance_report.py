"""The performance HTML report opens with the verdict, escapes every text, and still renders without labels."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from churn_platform.performance_metrics import by_day, estimated, realized
from monitoring.performance import PerformanceSummary, PerformanceWindow
from monitoring.performance_report import write_html
from monitoring.runs import foreign_verdict

THRESHOLD = 0.5
PREDICTIONS = 5_000
IMAGE = '<img src="data:image/png;base64,'
REASONS = [
    "roc_auc: realized 0.6290 on 2000 labelled rows is below the baseline 0.8400 minus 0.02",
    "<script>alert('x')</script> & a reason with markup",
]


def window(seed: int = 7, matched: int = 2_000) -> tuple[np.ndarray, pd.DataFrame]:
    """All scores of the window, and the first ``matched`` of them over 5 days with labels that
    follow them less closely than at training (concept drift)."""
    rng = np.random.default_rng(seed)
    scores = rng.beta(2, 5, size=PREDICTIONS)
    p = scores[:matched]
    labels = rng.random(matched) < 0.5 * p + 0.5 * rng.beta(2, 5, size=matched)
    scored_at = pd.Timestamp("2025-06-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 5 * 86_400, matched), unit="s")
    return scores, pd.DataFrame({"scored_at": scored_at, "churned": labels.astype(int), "p": p})


def summary(scores: np.ndarray, matched: pd.DataFrame, degraded: bool) -> PerformanceSummary:
    labels, p = matched["churned"].to_numpy(), matched["p"].to_numpy()
    return PerformanceSummary(
        model_name="churn<&>",
        model_version=3,
        created_at="2025-06-06T12:00:00+00:00",
        # The end is the job's "now", to the microsecond.
        window=PerformanceWindow(since="2025-06-01T00:00:00+00:00", until="2025-06-06T00:00:00.483043+00:00",
                                 horizon_days=30),
        rows_matched=len(matched),
        unmatched_outcomes=37,
        predictions=len(scores),
        unlabelled_predictions=len(scores) - len(matched),
        decision_threshold=THRESHOLD,
        realized=realized(labels, p, THRESHOLD),
        estimated=estimated(scores, THRESHOLD),
        baseline={"roc_auc": 0.84, "pr_auc": 0.66, "f1": 0.61, "log_loss": 0.41},
        degraded=degraded,
        reasons=REASONS if degraded else [],
        by_day=by_day(matched, "scored_at", "churned", "p"),
        min_rows=500,
        tolerance=0.02,
        report_html="report.html",
        output_dir=".",
        mlflow_run_id="abc123",
    )


def render(path: Path, scores: np.ndarray, matched: pd.DataFrame, degraded: bool = True) -> str:
    labels, p = matched["churned"].to_numpy(dtype=bool), matched["p"].to_numpy(dtype=float)
    write_html(path, summary(scores, matched, degraded), labels, p)
    return path.read_text(encoding="utf-8")


def test_report_opens_with_the_verdict_and_has_three_charts(tmp_path):
    page = render(tmp_path / "report.html", *window())
    assert page.index("DEGRADED") < page.index("<img")
    assert page.count(IMAGE) == 3
    for reason in REASONS:
        assert f"<li>{html.escape(reason)}</li>" in page
    assert "<script" not in page and "churn&lt;&amp;&gt; v3" in page
    assert "window 2025-06-01 00:00:00 UTC → 2025-06-06 00:00:00 UTC" in page  # to the second, both ends
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert "no labels yet" not in page
    assert page.startswith("<!DOCTYPE html>") and foreign_verdict(tmp_path) is None  # a reused folder replaces it


def test_ok_report_is_green_and_lists_no_reasons(tmp_path):
    page = render(tmp_path / "report.html", *window(), degraded=False)
    assert '<div class="banner ok"><h1>OK</h1>' in page
    assert "DEGRADED" not in page and "<li>" not in page.split("</div>")[0]


def test_report_without_labels_shows_notes_instead_of_charts(tmp_path):
    scores, _ = window()
    page = render(tmp_path / "report.html", scores, window(matched=0)[1])
    assert page.index("DEGRADED") < page.index("ROC curve: no labelled rows yet.")
    assert IMAGE not in page
    assert page.count('<p class="note">') == 3
    # 37 outcomes came in and matched none: said, not "no labels yet".
    assert "none of the 37 outcomes observed in the window matched a prediction of v" in page


def test_a_figure_on_too_few_rows_says_so_and_is_not_flagged(tmp_path):
    """50 recent predictions all near 0.3: their CBPE estimate fell below the floor, shown in
    red under an OK banner that said neither figure was below it, with no word of why."""
    scores, matched = window()
    few = np.random.default_rng(3).normal(0.3, 0.01, size=50)
    page = render(tmp_path / "report.html", few, matched, degraded=False)
    hint = "<small>fewer than 500 predictions: not used for the verdict</small></td>"
    cell = page[page.rindex("<td", 0, page.index(hint)) : page.index(hint)]
    estimate = summary(few, matched, False).estimated
    assert estimate.roc_auc is not None and estimate.roc_auc < 0.82  # below the floor, yet
    assert cell.startswith('<td class="num">') and f"{estimate.roc_auc:.3f}" in cell, cell


def test_the_by_day_chart_labels_each_day_once_whatever_the_window():
    """One day of predictions drew an axis over five years, every tick "Jan 01"; two days drew
    3-hour ticks, each "Dec 04": the chart could not say which day broke."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from churn_platform.performance_metrics import DayFigures
    from monitoring.performance_report import day_figure

    scores, matched = window()
    base = summary(scores, matched, degraded=False)
    month = [f"2026-11-{d:02d}" for d in range(1, 31)]
    for days, expected in ((["2026-12-05"], ["Dec 05"]), (["2026-12-04", "2026-12-05"], ["Dec 04", "Dec 05"]),
                           (month, None)):  # fmt: skip
        s = base.model_copy(update={"by_day": [DayFigures(day=d, rows=20, roc_auc=0.7) for d in days]})
        figure = day_figure(s)
        FigureCanvasAgg(figure).draw()
        labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
        assert len(labels) == len(set(labels)) <= 10, labels
        if expected:
            assert labels == expected
        else:  # a tick every few days of the month, from its first
            assert labels[0] == "Nov 01" and all(label.startswith("Nov") for label in labels)
