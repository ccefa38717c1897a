"""The performance report a person reads: the verdict first, then the figures and charts behind it.

One self-contained HTML file (inline CSS, charts as base64 PNGs, no scripts), so it opens from
an MLflow artifact or an e-mail attachment without network access. Every text is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monitoring.performance import estimated_below, realized_below, unmatched, within_chance
from monitoring.runs import mark_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from monitoring.performance import PerformanceSummary

DASH = "–"
BLUE, GREEN, RED = "#0969da", "#1a7f37", "#cf222e"
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;color:#1f2328;max-width:1100px;margin:24px auto;padding:0 16px}
.banner{color:#fff;border-radius:8px;padding:16px 24px;margin-bottom:16px}
.ok{background:#1a7f37}.degraded{background:#cf222e}.not_judged{background:#6e7781}
.banner h1{font-size:44px;margin:0}.banner p,.banner ul{margin:4px 0}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #d0d7de;padding:6px 10px;text-align:left}
th{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.key td{font-size:22px}.key small{display:block;font-size:12px;color:#59636e}.bad{color:#cf222e;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts img{max-width:100%;border:1px solid #d0d7de}
.note{color:#59636e;font-style:italic;flex-basis:100%;margin:2px 0}footer,ol{font-size:13px;color:#59636e}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole > 0 else DASH


def _cell(text: str, hint: str = "", bad: bool = False) -> str:
    small = f"<small>{_e(hint)}</small>" if hint else ""
    return f'<td class="num{" bad" if bad else ""}">{_e(text)}{small}</td>'


def _png(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode("ascii")}" alt="{_e(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _roc_chart(s: PerformanceSummary, labels: np.ndarray, scores: np.ndarray) -> str:
    """The whole trade-off, with the operating point the decision threshold actually uses."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    if labels.size == 0:
        return _note("ROC curve: no labelled rows yet.")
    if np.unique(labels).size < 2:
        return _note(f"ROC curve: all {labels.size} labelled rows are in one class, so there is no curve.")
    y = labels.astype(bool)
    fpr, tpr, _ = roc_curve(y, scores)
    chosen = scores >= s.decision_threshold
    ax = (fig := Figure(figsize=(4.6, 4.2))).subplots()
    ax.plot(fpr, tpr, color=BLUE, label="realized")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.plot(chosen[~y].mean(), chosen[y].mean(), "o", color=RED, label=f"threshold {s.decision_threshold:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"ROC, realized AUC {_num(s.realized.roc_auc)} ({labels.size:,} rows)")
    ax.legend(loc="lower right")
    return _png(fig, "ROC curve of the matched rows")


def _calibration_chart(s: PerformanceSummary) -> str:
    """CBPE is only as good as the calibration, so show it next to the estimate."""
    from matplotlib.figure import Figure

    bins = s.realized.calibration
    if not bins:
        return _note("Calibration: no labelled rows yet.")
    xs, ys, rows = (np.array([getattr(b, f) for b in bins], float) for f in ("mean_score", "observed_rate", "rows"))
    ax = (fig := Figure(figsize=(4.6, 4.2))).subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(xs, ys, color=BLUE, alpha=0.5)
    ax.scatter(xs, ys, s=20 + 280 * rows / rows.max(), color=BLUE, zorder=3, label="score bin (size: rows)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean score in bin", ylabel="observed churn rate")
    ax.set_title("Calibration of the matched rows")
    ax.legend(loc="upper left")
    return _png(fig, "calibration plot")


def _day_chart(s: PerformanceSummary) -> str:
    """When quality broke: realized ROC AUC per prediction day against the degradation floor."""
    fig = day_figure(s)
    if fig is None:
        return _note("ROC AUC by day: no day has labelled rows of both classes yet.")
    return _png(fig, "realized ROC AUC by day")


def day_figure(s: PerformanceSummary) -> Figure | None:
    """The by-day chart (None: no day to show), one tick per day or per few days."""
    from matplotlib.dates import DateFormatter, DayLocator
    from matplotlib.figure import Figure

    days = [d for d in s.by_day if d.roc_auc is not None]
    if not days:
        return None
    x = np.array([d.day for d in days], dtype="datetime64[D]")
    auc, rows = [d.roc_auc for d in days], np.array([d.rows for d in days], dtype=float)
    ax = (fig := Figure(figsize=(7.6, 3.6))).subplots()
    ax.plot(x, auc, color=BLUE, label="realized ROC AUC")
    ax.scatter(x, auc, s=(10 + 120 * rows / rows.max()) * min(1.0, 15 / len(days)), color=BLUE, zorder=3)
    if (base := s.baseline.get("roc_auc")) is not None:
        ax.axhline(base, ls="--", color=GREEN, label=f"baseline {base:.3f}")
        ax.axhline(base - s.tolerance, ls="--", color=RED, label=f"degraded below {base - s.tolerance:.3f}")
    # The days shown, half a day either side, a tick on whole days: matplotlib's own choice
    # spread one day over five years ("Jan 01" on every tick) and two over 3-hour ticks.
    half = np.timedelta64(12, "h")
    ax.set_xlim(x.min() - half, x.max() + half)
    span = int((x.max() - x.min()).astype(int)) + 1
    ax.xaxis.set(major_locator=DayLocator(interval=max(1, -(-span // 8))), major_formatter=DateFormatter("%b %d"))
    skipped = len(s.by_day) - len(days)
    ax.set_xlabel(
        "day the prediction was made (UTC); marker size: labelled rows"
        + (f"; {skipped} one-class day(s) left out" if skipped else "")
    )
    ax.set(ylabel="ROC AUC", title="Realized ROC AUC by day")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _realized_hint(s: PerformanceSummary) -> str:
    r = s.realized
    if r.rows == 0:
        return unmatched(s) if s.unmatched_outcomes else "no labels yet"
    if r.roc_auc is None:
        return f"only one class among {r.rows:,} labelled rows"
    if r.rows < s.min_rows:
        return f"fewer than {s.min_rows:,} labelled rows: not used for the verdict"
    base = s.baseline.get("roc_auc")
    if base is not None and within_chance(r, base, s.min_rows, s.tolerance):
        bound = _num(r.roc_auc_upper_bound)
        return f"below the floor, but within chance on {r.positives:,} churners (95% bound {bound})"
    return ""


def _estimated_hint(s: PerformanceSummary) -> str:
    if s.estimated.rows == 0:
        return "no predictions in the window"
    if s.estimated.roc_auc is None:
        return "every score is 0 or every score is 1"
    return f"fewer than {s.min_rows:,} predictions: not used for the verdict" if s.estimated.rows < s.min_rows else ""


def _when(iso: str) -> str:
    """An ISO time as a person reads it, to the second: the window's end is "now", with its
    microseconds (15:44:55.483043 beside a start of 15:44:24)."""
    return re.sub(r"(:\d\d)\.\d+", r"\1", iso).replace("T", " ").replace("+00:00", " UTC")


def _key_figures(s: PerformanceSummary) -> str:
    r, est, base = s.realized, s.estimated, s.baseline.get("roc_auc")
    floor = None if base is None else base - s.tolerance
    outcomes = s.rows_matched + s.unmatched_outcomes
    heads = ["realized", "estimated (CBPE)", "baseline (training validation)", "rows matched", "predictions",
             "unlabelled predictions", "unmatched outcomes"]  # fmt: skip
    # Red only for a figure the verdict used: one on too few rows is shown, not judged.
    below = [base is not None and realized_below(r, base, s.min_rows, s.tolerance),
             base is not None and estimated_below(est, base, s.min_rows, s.tolerance)]  # fmt: skip
    cells = [
        _cell(_num(r.roc_auc), _realized_hint(s), below[0]),
        _cell(_num(est.roc_auc), _estimated_hint(s), below[1]),
        _cell(_num(base), f"degraded below {floor:.3f}" if floor is not None else "not in the training run"),
        _cell(f"{s.rows_matched:,}", f"{_share(r.positives, r.rows)} churned" if r.rows
              else "no outcome matched" if s.unmatched_outcomes else "no labels yet"),
        _cell(f"{s.predictions:,}", "in the window"),
        _cell(f"{s.unlabelled_predictions:,}", f"{_share(s.unlabelled_predictions, s.predictions)} of predictions"),
        _cell(f"{s.unmatched_outcomes:,}", f"{_share(s.unmatched_outcomes, outcomes)} of outcomes"),
    ]
    groups = '<tr><th colspan="3">ROC AUC</th><th colspan="4">counts</th></tr>'
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    return f'<table class="key">{groups}<tr>{head}</tr><tr>{"".join(cells)}</tr></table>'


def _metrics_table(s: PerformanceSummary) -> str:
    r, est, base = s.realized, s.estimated, s.baseline
    at = f" at score ≥ {s.decision_threshold:g}"
    rows: list[tuple[str, float | None, float | None, str | None]] = [
        ("ROC AUC", r.roc_auc, est.roc_auc, "roc_auc"),
        ("precision" + at, r.precision, est.precision, "precision"),
        ("recall" + at, r.recall, est.recall, "recall"),
        ("F1" + at, r.f1, est.f1, "f1"),
        ("accuracy" + at, r.accuracy, est.accuracy, "accuracy"),
        ("precision in the top 10 % of scores", r.precision_top_10pct, None, None),
        ("PR AUC (average precision)", r.pr_auc, None, "pr_auc"),
        ("Brier score (lower is better)", r.brier, None, "brier"),
        ("log loss (lower is better)", r.log_loss, None, "log_loss"),
    ]
    body = "".join(
        f"<tr><th>{_e(name)}</th>{_cell(_num(real))}{_cell(_num(guess))}{_cell(_num(base.get(key or '')))}</tr>"
        for name, real, guess, key in rows
    )
    rates = (
        f"<tr><th>churn rate</th>{_cell(_share(r.positives, r.rows))}"
        f"{_cell(_share(est.expected_positives, est.rows))}{_cell(DASH)}</tr>"
    )
    head = (
        f"<tr><th>metric</th><th>realized ({r.rows:,} labelled rows)</th>"
        f"<th>estimated, CBPE ({est.rows:,} predictions)</th><th>baseline</th></tr>"
    )
    return f"<table>{head}{body}{rates}</table>"


def write_html(path: Path, summary: PerformanceSummary, labels: np.ndarray, scores: np.ndarray) -> None:
    """Write the report: verdict, key figures, charts, metric table, and what the figures mean."""
    import matplotlib

    matplotlib.use("Agg")
    s, w = summary, summary.window
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=float)
    verdict = s.verdict.replace("_", " ").upper()
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in s.reasons)
    if s.not_judged:
        why = f"<p>{_e(s.not_judged[0].upper() + s.not_judged[1:])}.</p>"
    elif s.degraded:
        why = f"<ul>{reasons}</ul>"
    elif "roc_auc" in s.baseline:
        why = ("<p>Neither the realized ROC AUC (on enough labelled rows, by more than chance) nor the estimated one "
               "(on enough predictions) is below the floor.</p>")
    else:
        why = "<p>No baseline ROC AUC in the training run: nothing to compare with.</p>"
    banner = (
        f'<div class="banner {s.verdict}"><h1>{verdict}</h1>'
        f"<p><b>{_e(s.model_name)} v{s.model_version}</b> · window {_e(_when(w.since or 'start of the log'))} → "
        f"{_e(_when(w.until))} · horizon {w.horizon_days} days</p>{why}</div>"
    )
    notes = [
        f"Realized: metrics on the {s.rows_matched:,} outcomes joined to the prediction they judge; the truth, but "
        "only for customers whose outcome is already in.",
        f"Estimated (CBPE): the metrics expected if each score were the customer's true churn probability, over all "
        f"{s.predictions:,} predictions in the window, labelled or not. It assumes calibrated scores (see the "
        "calibration chart) and cannot see concept drift (the same customers behaving differently), which the "
        "realized metrics reveal once the labels arrive.",
        "Baseline: the version's metrics on its validation split at training time; a dash means the training run did "
        "not record it.",
        f"Join rule: an outcome judges the customer's latest prediction by this version made at most {w.horizon_days} "
        "days before observed_at; of several outcomes after one prediction, the first churn judges it, else the latest "
        "'no' (not churned by then)"
        + (f", and a 'no' only a prediction made at least {w.maturity_days} days before it" if w.maturity_days else "")
        + ". Outcomes that judge no prediction are unmatched; predictions no outcome judged are unlabelled.",
        f"Verdict: degraded when the realized ROC AUC on at least {s.min_rows:,} labelled rows, or the estimated ROC "
        f"AUC on at least {s.min_rows:,} predictions, is below the baseline minus {s.tolerance:g}; the realized one "
        "only when its one-sided 95% upper bound (from the counts of churners and stayers) is below the baseline "
        "too, so that a few churners' noise is not read as a degradation.",
    ]
    charts = "".join([_roc_chart(s, labels, scores), _calibration_chart(s), _day_chart(s)])
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(f'{verdict}: {s.model_name} v{s.model_version} performance')}</title><style>{_CSS}</style>"
        f'</head><body>{banner}{_key_figures(s)}<h2>Charts</h2><div class="charts">{charts}</div>'
        f"<h2>Metrics</h2>{_metrics_table(s)}<h2>Notes</h2><ol>{''.join(f'<li>{_e(n)}</li>' for n in notes)}</ol>"
        f"<footer>Created {_e(_when(s.created_at))}</footer></body></html>"
    )
    path.write_text(mark_page(page), encoding="utf-8")
