"""The monitor's window on a real inference log (PostgreSQL and SQLite): past
CHURN_MONITOR_MAX_ROWS the database sends an even sample, so a day of busy traffic never
has to fit in the monitor's memory."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from churn_platform import inference_log
from churn_platform.settings import Settings
from monitoring.job import MonitorOptions, _current, current_from_log
from tests.services import postgres_database

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 1, tzinfo=UTC)
BATCHES, BATCH = 200, 100
#: Each batch sorted by contract, as a client's nightly export might be: a sample in step with
#: the batch size (every 100th row) would hold one contract only.
CONTRACTS = ["Month-to-month"] * 55 + ["One year"] * 25 + ["Two year"] * 20


@pytest.fixture(params=["postgresql", "sqlite"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    with postgres_database() as url:
        yield url


def fill(url: str) -> None:
    """20,000 rows of v1, a second a batch, then 500 of v2."""
    engine = sa.create_engine(url)
    table = inference_log.table(sa.MetaData())
    table.create(engine)
    rows = [
        {"request_id": f"r{b}", "row_index": i, "scored_at": START + timedelta(seconds=b), "model_name": "m",
         "model_version": 1, "customer_id": f"c{b}-{i}", "contract": CONTRACTS[i], "churn_probability": 0.5}
        for b in range(BATCHES) for i in range(BATCH)
    ]  # fmt: skip
    rows += [{**r, "request_id": f"v2-{r['request_id']}", "model_version": 2} for r in rows[:500]]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()


def test_a_long_window_arrives_as_an_even_sample_of_the_limit(log_url):
    fill(log_url)
    window = MonitorOptions(since=START, until=START + timedelta(days=1))
    sample, held = current_from_log(log_url, "m", 1, window, max_rows=1000)
    assert held == 20_000
    assert 950 <= len(sample) <= 1000 and set(sample["model_version"]) == {1}
    # Spread over the whole window (each tenth of it holds a tenth of the sample) ...
    scored_at = pd.to_datetime(sample["scored_at"], utc=True, format="ISO8601")  # SQLite's come back as text
    tenths = ((scored_at - START).dt.total_seconds() // 20).astype(int)
    assert tenths.value_counts().between(80, 120).all() and tenths.nunique() == 10
    # ... and never in step with the batches: every contract in its share, every row position drawn.
    shares = sample["contract"].value_counts(normalize=True)
    assert shares.round(2).to_dict() == pytest.approx({"Month-to-month": 0.55, "One year": 0.25, "Two year": 0.2},
                                                      abs=0.03)  # fmt: skip
    assert sample["row_index"].nunique() > 90

    again, _ = current_from_log(log_url, "m", 1, window, max_rows=1000)
    other, _ = current_from_log(log_url, "m", 1, MonitorOptions(since=START, seed=7), max_rows=1000)
    assert set(again["id"]) == set(sample["id"])  # seeded: the same window gives the same sample
    assert len(set(other["id"]) & set(sample["id"])) < 0.2 * len(sample)

    # Under the limit, the whole window, as before.
    whole, held = current_from_log(log_url, "m", 2, MonitorOptions(since=START), max_rows=1000)
    assert held == len(whole) == 500


def test_the_latest_rows_past_the_limit_are_sampled_from_those_rows_only(log_url):
    fill(log_url)
    latest, held = current_from_log(log_url, "m", 1, MonitorOptions(rows=5000), max_rows=1000)
    engine = sa.create_engine(log_url)
    with engine.connect() as conn:
        newest = sorted(conn.execute(sa.text("SELECT id FROM inference_log WHERE model_version = 1")).scalars())[-5000:]
    engine.dispose()
    assert held == 5000 and 950 <= len(latest) <= 1000
    assert set(latest["id"]) <= set(newest) and latest["id"].min() - newest[0] < 50

    exact, held = current_from_log(log_url, "m", 1, MonitorOptions(rows=300), max_rows=1000)
    assert held == 300 and sorted(exact["id"]) == newest[-300:]



def test_an_end_alone_judges_the_latest_rows_before_it_not_the_whole_history(log_url):
    """`--until` alone (the docs' way to make a hand-run ad hoc) reads the latest
    CHURN_MONITOR_MAX_ROWS rows before it, as a run without any window reads the latest rows."""
    fill(log_url)
    until = START + timedelta(seconds=150)  # 15,000 rows of v1 before it
    settings = Settings(monitor_min_rows=100, monitor_max_rows=1000, inference_log_url=log_url)
    rows, _, held = _current(MonitorOptions(until=until), settings, "m", 1, None)
    scored_at = pd.to_datetime(rows["scored_at"], utc=True, format="ISO8601")
    assert held == len(rows) == 1000
    assert scored_at.min() == START + timedelta(seconds=140) and scored_at.max() < until
