"""The drift report a person reads: the verdict first, then Evidently's per-column details.

Evidently's own page opens on the first column's chart, so a reader scrolled through every
column to learn whether anything drifted. Here the summary is made of Evidently's own widgets
(counters, red/green insights, a table) and rendered by Evidently's page template in front of
the per-column widgets, so the page looks like Evidently's preset report and holds no HTML,
CSS or JavaScript of ours.

Per-column distributions are shown in percent of rows by default, so windows of different
sizes compare at a glance. Evidently 0.7.23 has no option for that (``ValueDrift`` renders
with a fixed ``Options()`` and its charts open on counts), so ``_percent_by_default`` switches
each chart's "abs"/"perc" toggle to "perc" before the page is rendered.
"""

from __future__ import annotations

from pathlib import Path

from evidently.core.metric_types import render_widgets
from evidently.legacy.model.widget import BaseWidgetInfo, Insight
from evidently.legacy.renderers.html_widgets import (
    CounterData,
    counter,
    group_widget,
    header_text,
    table_data,
)

from monitoring.drift import ColumnDrift, DriftResult
from monitoring.runs import mark_page

VERDICTS = {"drift": "DRIFT DETECTED", "no_drift": "No drift"}
CRITICAL_MARK = "★ critical"


def ranked(columns: tuple[ColumnDrift, ...] | list[ColumnDrift]) -> list[ColumnDrift]:
    """Drifted columns first, then by score, highest first: the order a reader should look in."""
    return sorted(columns, key=lambda c: (not c.drifted, -c.score, c.column))


def _severity(bad: bool) -> str:
    return "error" if bad else "success"


def _prediction_text(prediction: ColumnDrift | None) -> tuple[str, str]:
    if prediction is None:
        return "info", "not computed: the reference or the current rows have no churn_probability scores."
    state = "drifted" if prediction.drifted else "not drifted"
    return _severity(prediction.drifted), (
        f"{prediction.column}: {prediction.method} score {prediction.score:.4f} "
        f"against threshold {prediction.threshold:g}, {state}."
    )


def _why(
    verdict: str, drift_share: float, share_limit: float, critical_drifted: list[str], prediction: ColumnDrift | None
) -> str:
    """The verdict with its reasons, so a reader need not reconstruct the rule from the numbers."""
    share_over = drift_share >= share_limit
    if verdict == "no_drift":
        predicted = "prediction drift not computed" if prediction is None else "the prediction did not drift"
        return f"No drift: the drift share is below its threshold, no critical column drifted, {predicted}."
    reasons = [
        *(["the drift share is at or above its threshold"] if share_over else []),
        *([f"critical columns drifted ({', '.join(critical_drifted)})"] if critical_drifted else []),
        *(["the prediction drifted"] if prediction is not None and prediction.drifted else []),
    ]
    return f"DRIFT DETECTED: {'; '.join(reasons)}." if reasons else "DRIFT DETECTED."


def _summary(
    *,
    model_name: str,
    model_version: int,
    verdict: str,
    drift_share: float,
    share_limit: float,
    critical_drifted: list[str],
    result: DriftResult,
    reference_rows: int,
    current_rows: int,
    created_at: str,
    window: str,
) -> list[BaseWidgetInfo]:
    columns = ranked(result.columns)
    n_drifted = sum(c.drifted for c in columns)
    critical = sorted(c.column for c in columns if c.critical)
    share_text = (
        f"{n_drifted} of {len(columns)} feature columns drifted ({drift_share:.1%}), threshold {share_limit:.1%}: "
        + ("at or above it." if drift_share >= share_limit else "below it.")
    )
    if critical_drifted:
        critical_text = f"drifted: {', '.join(critical_drifted)} (critical columns: {', '.join(critical)})."
    elif critical:
        critical_text = f"none drifted (critical columns: {', '.join(critical)})."
    else:
        critical_text = "none configured."
    prediction = result.prediction
    prediction_severity, prediction_text = _prediction_text(prediction)
    headline = counter(
        counters=[
            CounterData(
                f"{current_rows:,} current rows against {reference_rows:,} reference rows, {created_at}",
                f"{VERDICTS[verdict]}: {model_name} v{model_version}",
            )
        ]
    )
    headline.insights = [
        Insight(
            title="Verdict",
            severity=_severity(verdict == "drift"),
            text=_why(verdict, drift_share, share_limit, critical_drifted, prediction),
        ),
        Insight(title="Drift share", severity=_severity(drift_share >= share_limit), text=share_text),
        Insight(title="Critical columns", severity=_severity(bool(critical_drifted)), text=critical_text),
        Insight(title="Prediction drift", severity=prediction_severity, text=prediction_text),
        # After a rollback a version's latest rows can be months old, and a window past the limit
        # is a sample: the headline's row count says neither.
        *([Insight(title="Current rows", severity="info", text=window)] if window else []),
    ]
    counters = counter(
        counters=[
            CounterData.int("Feature columns", len(columns)),
            CounterData.int("Drifted columns", n_drifted),
            CounterData(f"Drift share (threshold {share_limit:.1%})", f"{drift_share:.1%}"),  # 15.8 % is no 16 %
            CounterData(
                "Prediction drift score" + (f" (threshold {prediction.threshold:g})" if prediction else ""),
                f"{prediction.score:.4f}" if prediction else "not computed",
            ),
        ]
    )
    table = table_data(
        title="Feature columns, drifted first, then by drift score",
        column_names=["Column", "Method", "Score", "Threshold", "Drifted", "Critical"],
        data=[
            [
                c.column,
                c.method,
                f"{c.score:.4f}",
                f"{c.threshold:g}",
                "yes" if c.drifted else "no",
                CRITICAL_MARK if c.critical else "",
            ]
            for c in columns
        ],
    )
    return [headline, counters, table]


def _percent_by_default(widget: BaseWidgetInfo) -> BaseWidgetInfo:
    """A copy of ``widget`` whose count/percent histograms open on percent, "perc" pressed.

    Why: the product wants relative histograms by default, and Evidently 0.7.23 cannot be asked
    for them. ``plot_distr_with_perc_button`` puts both the count and the percent traces in
    the figure, counts visible, with one "abs"/"perc" updatemenu whose buttons each carry their
    state: ``[{"visible": [...]}, {"yaxis": {"title": ...}}]``. This applies the "perc" button's
    state to the figure and marks that button active, so "abs" still switches back to counts.

    A figure not shaped exactly like that (another chart, another Evidently version) is left
    as it is. It works on a copy because Evidently hands out the widgets cached in its run.
    """
    widget = widget.copy(deep=True)
    for graph in (widget, *(tab.widget for tab in widget.tabs)):
        match graph.params:
            case {"data": list(traces), "layout": {"yaxis": dict(yaxis), "updatemenus": [dict(menu)]}}:
                buttons = menu.get("buttons")
            case _:
                continue
        match buttons:
            case [
                {"label": "abs", "args": [{"visible": list(counts_on)}, {"yaxis": {"title": str()}}]},
                {"label": "perc", "args": [{"visible": list(percent_on)}, {"yaxis": {"title": str(title)}}]},
            ] if (
                len(traces) == len(counts_on) == len(percent_on)
                and all(isinstance(trace, dict) for trace in traces)
                and all(isinstance(on, bool) for on in counts_on + percent_on)
                and percent_on == [not on for on in counts_on]
            ):
                for trace, on in zip(traces, percent_on, strict=True):
                    trace["visible"] = on
                old_title = yaxis.get("title")
                yaxis["title"] = {**(old_title if isinstance(old_title, dict) else {}), "text": title}
                menu["active"] = 1
    return widget


def _details(result: DriftResult) -> list[BaseWidgetInfo]:
    """Evidently's own per-column widgets, in the table's order with the prediction first."""
    model = result.snapshot.to_snapshot_model()
    by_column: dict[str, list[BaseWidgetInfo]] = {}
    for metric_id in model.top_level_metrics:
        metric = model.metric_results[metric_id]
        by_column[metric.to_dict()["config"]["column"]] = [_percent_by_default(w) for w in metric.get_widgets()]
    order = ([result.prediction.column] if result.prediction else []) + [c.column for c in ranked(result.columns)]
    order += [name for name in by_column if name not in order]
    return [widget for name in order for widget in by_column.get(name, [])]


def write_html(
    path: Path,
    *,
    model_name: str,
    model_version: int,
    verdict: str,
    drift_share: float,
    share_limit: float,
    critical_drifted: list[str],
    result: DriftResult,
    reference_rows: int,
    current_rows: int,
    created_at: str,
    window: str = "",
) -> None:
    """Write the report: our summary widgets, then Evidently's per-column ones, one Evidently page.

    ``verdict`` is the job's ("drift" or "no_drift"); it is passed in rather than recomputed so
    the page can never disagree with the summary JSON and the exit code.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {sorted(VERDICTS)}, not {verdict!r}")
    summary = _summary(
        model_name=model_name,
        model_version=model_version,
        verdict=verdict,
        drift_share=drift_share,
        share_limit=share_limit,
        critical_drifted=critical_drifted,
        result=result,
        reference_rows=reference_rows,
        current_rows=current_rows,
        created_at=created_at,
        window=window,
    )
    details_header = header_text(
        label="Per-column details, in the table's order (prediction first). "
        "Distributions show percent of rows: click 'abs' on a chart for counts."
    )
    tests = result.snapshot.to_snapshot_model().tests_widgets
    page = render_widgets(
        [
            group_widget(title="", widgets=summary),
            group_widget(title="", widgets=[details_header, *_details(result)]),
            *tests,
        ]
    )
    path.write_text(mark_page(page), encoding="utf-8")
