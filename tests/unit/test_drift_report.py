"""The drift HTML report opens with the verdict, the share, the prediction and a ranked table."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.metric_results import HistogramData
from evidently.legacy.model.widget import BaseWidgetInfo
from evidently.legacy.options.color_scheme import ColorOptions
from evidently.legacy.renderers.html_widgets import TabData, widget_tabs
from evidently.legacy.utils.visualizations import plot_distr_with_perc_button

from churn_platform import data
from churn_platform.schema import FEATURE_NAMES
from monitoring import drift
from monitoring.report import _percent_by_default, write_html
from monitoring.runs import GENERATOR, foreign_verdict

CRITICAL = {"contract", "tenure"}
SHARE_LIMIT, COLUMN_THRESHOLD = 0.15, 0.1
FIRST_CHART = "Drift in column '"  # the title of each per-column Evidently widget


def _scored(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.assign(churn_probability=np.random.default_rng(seed).random(len(frame)))


def _report(tmp_path: Path, reference: pd.DataFrame, current: pd.DataFrame) -> tuple[str, drift.DriftResult]:
    """What the job does: compute, decide the verdict, write the page."""
    result = drift.compute(reference, current, {}, COLUMN_THRESHOLD, CRITICAL)
    drifted = [c.column for c in result.columns if c.drifted]
    share = len(drifted) / len(result.columns)
    critical_hit = [c for c in drifted if c in CRITICAL]
    detected = share >= SHARE_LIMIT or bool(critical_hit) or bool(result.prediction and result.prediction.drifted)
    path = tmp_path / "report.html"
    write_html(
        path,
        model_name="churn",
        model_version=3,
        verdict="drift" if detected else "no_drift",
        drift_share=share,
        share_limit=SHARE_LIMIT,
        critical_drifted=critical_hit,
        result=result,
        reference_rows=len(reference),
        current_rows=len(current),
        created_at="2025-06-01T12:00:00+00:00",
    )
    return path.read_text(encoding="utf-8"), result


def _dashboard(page: str) -> str:
    """The page's data, where every text the reader sees lives (Evidently's script renders it)."""
    found = re.search(r"var metric_\w+ = (\{.*\});\n", page)
    assert found, "no Evidently dashboard data in the page"
    return found.group(1)


def _widgets(page: str) -> list[dict]:
    """Every widget in the page's data: groups' children and the widgets inside tabs too."""

    def walk(node: dict):
        yield node
        for child in node.get("widgets", []):
            yield from walk(child)
        for tab in node.get("tabs", []):
            yield from walk(tab["widget"])

    return [w for top in json.loads(_dashboard(page))["widgets"] for w in walk(top)]


def _table(page: str) -> list[list[str]]:
    tables = [w for w in _widgets(page) if w["type"] == "table"]
    assert len(tables) == 1
    assert tables[0]["params"]["header"] == ["Column", "Method", "Score", "Threshold", "Drifted", "Critical"]
    return tables[0]["params"]["data"]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return _scored(data.generate(2000, seed=1), seed=10)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory, reference) -> tuple[str, drift.DriftResult]:
    current = _scored(data.generate(2000, seed=2, drift=True), seed=11)
    return _report(tmp_path_factory.mktemp("drifted"), reference, current)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory, reference) -> tuple[str, drift.DriftResult]:
    current = _scored(data.generate(2000, seed=3), seed=12)
    return _report(tmp_path_factory.mktemp("quiet"), reference, current)


def test_compute_returns_a_frozen_result_with_the_snapshot(drifted):
    _, result = drifted
    assert isinstance(result, drift.DriftResult) and isinstance(result.columns, tuple)
    assert [c.column for c in result.columns] == list(FEATURE_NAMES)
    assert result.prediction is not None and result.prediction.column == drift.PREDICTION
    assert result.snapshot.dict()["metrics"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.columns[0].drifted = True  # type: ignore[misc]


def test_drifted_report_opens_with_verdict_share_and_prediction(drifted):
    page, result = drifted
    dashboard = _dashboard(page)
    first_chart = dashboard.index(FIRST_CHART)
    summary = dashboard[:first_chart]
    assert "DRIFT DETECTED: churn v3" in summary
    assert "4 of 19 feature columns drifted (21.1%), threshold 15.0%: at or above it." in summary
    assert "critical columns drifted (tenure, contract)" in summary
    assert "drifted: tenure, contract (critical columns: contract, tenure)." in summary
    prediction = result.prediction
    assert prediction is not None and not prediction.drifted
    assert f"churn_probability: wasserstein score {prediction.score:.4f} against threshold 0.1, not drifted." in summary
    assert '"severity": "error"' in summary  # shown red
    assert "2,000 current rows against 2,000 reference rows" in summary
    # The verdict is also the first thing in the whole file, not only in the data.
    assert page.index("DRIFT DETECTED") < page.index(FIRST_CHART)


def test_the_page_is_marked_as_a_monitoring_run_s_so_a_reused_folder_replaces_it(drifted, tmp_path):
    page, _ = drifted
    assert page.lstrip().startswith("<!DOCTYPE html>")  # the mark goes in the head: no quirks mode
    (tmp_path / "report.html").write_text(page, encoding="utf-8")
    assert foreign_verdict(tmp_path) is None
    (tmp_path / "report.html").write_text(page.replace(GENERATOR, ""), encoding="utf-8")
    assert foreign_verdict(tmp_path) == "it holds a report.html that no monitoring run wrote"


def test_table_lists_every_feature_drifted_first_by_score_with_critical_marked(drifted):
    page, result = drifted
    rows = _table(page)
    assert sorted(row[0] for row in rows) == sorted(FEATURE_NAMES)
    flags = [row[4] for row in rows]
    assert flags == ["yes"] * 4 + ["no"] * 15
    assert {row[0] for row in rows if row[4] == "yes"} == {"tenure", "contract", "monthly_charges", "total_charges"}
    for group in ("yes", "no"):
        scores = [float(row[2]) for row in rows if row[4] == group]
        assert scores == sorted(scores, reverse=True)
    assert {row[0] for row in rows if "critical" in row[5]} == CRITICAL
    assert {row[3] for row in rows} == {"0.1"}
    by_name = {c.column: c for c in result.columns}
    assert all(row[1] == by_name[row[0]].method for row in rows)
    # The table comes before the first chart.
    dashboard = _dashboard(page)
    assert dashboard.index('"header": ["Column", "Method"') < dashboard.index(FIRST_CHART)


def test_per_column_details_follow_the_table_with_the_prediction_first(drifted):
    page, _ = drifted
    charts = re.findall(r"Drift in column '(\w+)'", _dashboard(page))
    assert charts == [drift.PREDICTION] + [row[0] for row in _table(page)]


def test_per_column_distributions_show_percent_by_default(drifted):
    page, _ = drifted
    figures = [
        tab["widget"]["params"]
        for w in _widgets(page)
        for tab in w.get("tabs", [])
        if tab["title"] == "DATA DISTRIBUTION"
    ]
    assert len(figures) == 1 + len(FEATURE_NAMES)  # the prediction and every feature
    for figure in figures:
        traces, layout = figure["data"], figure["layout"]
        # Percent traces are the ones summing to 100; count traces sum to the 2,000 rows.
        is_percent = [sum(t["y"]) == pytest.approx(100) for t in traces]
        assert is_percent.count(True) == is_percent.count(False) == 2  # current and reference
        assert [t["visible"] for t in traces] == is_percent
        assert layout["yaxis"]["title"]["text"] == "Percent"
        (menu,) = layout["updatemenus"]
        abs_button, perc_button = menu["buttons"]
        assert (abs_button["label"], perc_button["label"]) == ("abs", "perc")
        assert menu["active"] == 1  # "perc" shown pressed
        # "abs" still switches back to counts.
        assert abs_button["args"] == [{"visible": [not p for p in is_percent]}, {"yaxis": {"title": "Count"}}]
    assert "click 'perc'" not in _dashboard(page)


def _histogram_tabs() -> BaseWidgetInfo:
    """A distribution chart drawn the way ValueDrift draws it, as plain JSON, in a tab."""
    figure = plot_distr_with_perc_button(
        hist_curr=HistogramData.from_dict({"a": 3, "b": 1}),
        hist_ref=HistogramData.from_dict({"a": 1, "b": 1}),
        yaxis_name="Count",
        yaxis_name_perc="Percent",
        color_options=ColorOptions(),
        subplots=False,
    )
    chart = BaseWidgetInfo(type="big_graph", title="", size=2, params=figure)
    return widget_tabs(tabs=[TabData("DATA DISTRIBUTION", chart)])


def test_percent_by_default_works_on_a_copy():
    widget = _histogram_tabs()
    before = copy.deepcopy(widget.tabs[0].widget.params)
    flipped = _percent_by_default(widget).tabs[0].widget.params
    assert widget.tabs[0].widget.params == before  # Evidently's cached widget is not touched
    assert [t["visible"] for t in flipped["data"]] == [False, True, False, True]
    assert flipped["layout"]["yaxis"]["title"]["text"] == "Percent"


@pytest.mark.parametrize(
    "reshape",
    [
        lambda f: f["layout"].pop("updatemenus"),
        lambda f: f["layout"]["updatemenus"][0]["buttons"].reverse(),
        lambda f: f["layout"]["updatemenus"][0]["buttons"].append({"label": "log", "args": []}),
        lambda f: f["layout"]["updatemenus"][0]["buttons"][1]["args"][0]["visible"].append(True),
        lambda f: f["layout"]["updatemenus"][0]["buttons"][1]["args"].pop(),
        lambda f: f["data"].pop(),
        lambda f: f.pop("layout"),
    ],
    ids=[
        "no-menu",
        "buttons-swapped",
        "three-buttons",
        "visible-too-long",
        "no-axis-title",
        "trace-missing",
        "no-layout",
    ],
)
def test_a_chart_of_another_shape_is_left_as_it_is(reshape):
    widget = _histogram_tabs()
    reshape(widget.tabs[0].widget.params)
    before = copy.deepcopy(widget.tabs[0].widget.params)
    assert _percent_by_default(widget).tabs[0].widget.params == before


def test_undrifted_report_says_no_drift_first(quiet):
    page, _ = quiet
    dashboard = _dashboard(page)
    summary = dashboard[: dashboard.index(FIRST_CHART)]
    assert "No drift: churn v3" in summary
    assert "0 of 19 feature columns drifted (0.0%), threshold 15.0%: below it." in summary
    assert "none drifted (critical columns: contract, tenure)." in summary
    assert "DRIFT DETECTED" not in dashboard
    assert '"severity": "error"' not in summary  # all green
    assert [row[4] for row in _table(page)] == ["no"] * 19


def test_prediction_drift_not_computed_without_scores(tmp_path, reference):
    current = data.generate(300, seed=4)  # a file without scores
    page, result = _report(tmp_path, reference.drop(columns=[drift.PREDICTION]), current)
    assert result.prediction is None
    dashboard = _dashboard(page)
    assert "Prediction drift" in dashboard and "not computed" in dashboard[: dashboard.index(FIRST_CHART)]
    assert f"Drift in column '{drift.PREDICTION}'" not in dashboard


def test_an_unknown_verdict_is_refused(tmp_path, drifted):
    _, result = drifted
    with pytest.raises(ValueError, match="verdict must be one of"):
        write_html(
            tmp_path / "r.html", model_name="churn", model_version=3, verdict="maybe", drift_share=0.0,
            share_limit=SHARE_LIMIT, critical_drifted=[], result=result, reference_rows=1, current_rows=1,
            created_at="now",
        )  # fmt: skip
