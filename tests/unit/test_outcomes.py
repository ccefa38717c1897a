"""The outcomes store: validation with row numbers, idempotent upserts, the one join rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from churn_platform import outcomes
from churn_platform.cli import main
from churn_platform.errors import DataValidationError
from churn_platform.inference_log import sqlite_time, upgrade

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, dtype="string")


def test_headers_and_labels_are_normalised_like_customer_files():
    checked = outcomes.check(
        frame([
            {"customerID": "a", "Churn": "Yes", "Observed_At": "2026-10-01T08:00:00+02:00"},
            {"customerID": "e", "Churn": "0", "Observed_At": "2026-10-01T08:00:00"},
            {"customerID": "b", "Churn": "no", "Observed_At": "2026-10-01"},
            {"customerID": "c", "Churn": "1", "Observed_At": ""},
            {"customerID": "d", "Churn": "FALSE", "Observed_At": "2026-10-02 10:00:00"},
        ]),
        now=NOW,
    )  # fmt: skip
    assert checked.rejects.empty
    good = checked.good.set_index("customer_id")
    assert good.churned.to_dict() == {"a": True, "b": False, "c": True, "d": False, "e": False}
    assert good.observed_at["a"] == pd.Timestamp("2026-10-01T06:00:00Z")  # converted to UTC
    # Not given a's +02:00, as pandas did when it parsed both in one call: 2 hours off, and another
    # order of the same rows stored another time.
    assert good.observed_at["e"] == pd.Timestamp("2026-10-01T08:00:00Z")
    assert good.observed_at["c"] == pd.Timestamp(NOW)  # blank: now


def test_a_month_or_a_year_alone_names_no_day_and_a_lowercase_z_is_utc():
    """pandas read "2026-11" as the 1st: a monthly export meaning "by the end of November"
    judged the predictions made before November, not those made in it."""
    checked = outcomes.check(frame([
        {"customer_id": "a", "churned": "Yes", "observed_at": "2026-10"},
        {"customer_id": "b", "churned": "No", "observed_at": "2026"},
        {"customer_id": "c", "churned": "No", "observed_at": "2026-10-01T08:00:00z"},
        {"customer_id": "d", "churned": "No", "observed_at": "2026/10"},  # pandas read it as the 1st too
        {"customer_id": "e", "churned": "No", "observed_at": "10/2026"},
    ]), now=NOW)  # fmt: skip
    reasons = dict(zip(checked.rejects.customer_id, checked.rejects.reason, strict=True))
    assert reasons.pop("d").startswith("observed_at: '2026/10' names no day"), reasons
    assert reasons.pop("e").startswith("observed_at: '10/2026' names no day"), reasons
    assert reasons == {"a": "observed_at: '2026-10' names no day (a year or a month alone): give the date the "
                            "outcome was known",
                       "b": "observed_at: '2026' names no day (a year or a month alone): give the date the outcome "
                            "was known"}  # fmt: skip
    assert checked.good.set_index("customer_id").observed_at["c"] == pd.Timestamp("2026-10-01T08:00:00Z")


def test_bad_rows_are_listed_with_row_number_and_reason_and_the_rest_kept():
    checked = outcomes.check(
        frame([
            {"customer_id": "ok", "churned": "yes", "observed_at": "2026-11-01"},
            {"customer_id": "", "churned": "yes", "observed_at": "2026-11-01"},
            {"customer_id": "x", "churned": "maybe", "observed_at": "2026-11-01"},
            {"customer_id": "y", "churned": "no", "observed_at": "yesterday"},
            {"customer_id": "z", "churned": "no", "observed_at": "2027-01-01"},
            {"customer_id": "w", "churned": "no", "observed_at": "now"},  # pandas' word for the upload's time
            {"customer_id": "v", "churned": "no", "observed_at": "2300-01-01"},  # beyond pandas' years
            {"customer_id": "u", "churned": "no", "observed_at": "1066-10-14"},
            {"customer_id": "t", "churned": "no", "observed_at": "1900-01-01"},  # a spreadsheet's "unknown"
            {"customer_id": "s", "churned": "no", "observed_at": "1970-01-01T00:00:00Z"},
        ]),
        now=NOW,
    )  # fmt: skip
    assert list(checked.good.customer_id) == ["ok"]
    reasons = dict(zip(checked.rejects.row, checked.rejects.reason, strict=True))
    assert reasons[2] == "customer_id: missing"
    assert reasons[3] == "churned: 'maybe' is not Yes/No, 1/0 or true/false"
    assert reasons[4] == "observed_at: 'yesterday' is not an ISO-8601 time"
    assert reasons[5].startswith("observed_at: in the future")
    assert reasons[6] == "observed_at: 'now' is not an ISO-8601 time"
    assert reasons[7] == "observed_at: '2300-01-01' is out of range (1970 to now)"
    assert reasons[8] == "observed_at: '1066-10-14' is out of range (1970 to now)"
    assert reasons[9].startswith("observed_at: '1900-01-01' is not after 1970-01-01: a placeholder for an unknown")
    assert reasons[10].startswith("observed_at: '1970-01-01T00:00:00Z' is not after 1970-01-01")  # Unix's "unknown"
    assert list(checked.rejects.columns) == list(outcomes.REJECT_COLUMNS)


def test_a_placeholder_for_a_missing_id_is_no_customer():
    """Stored as customers, "NULL" and "N/A" never matched a prediction (or matched one the API
    logged under the same placeholder) and padded unmatched_outcomes."""
    ids = ["NULL", "N/A", "#N/A", "NaN", "none", "undefined", "<NA>", "Nadia", "null-1"]
    checked = outcomes.check(frame([{"customer_id": i, "churned": "yes"} for i in ids]), now=NOW)
    assert list(checked.good.customer_id) == ["Nadia", "null-1"]
    assert set(checked.rejects.reason) == {"customer_id: a placeholder for a missing id (NULL, N/A, nan...), no "
                                           "customer's"}  # fmt: skip


def test_a_file_with_both_spellings_of_the_label_is_refused_whole():
    both = frame([{"customer_id": "a", "Churn": "Yes", "churned": "No", "observed_at": "2026-11-01"}])
    with pytest.raises(DataValidationError, match="both 'churn' and 'churned' columns"):
        outcomes.check(both, now=NOW)
    # Two spellings of a column beyond the customer schema (an AttributeError, exit 70, while
    # collisions were refused only among the schema's names).
    twice = frame([{"customer_id": "a", "churned": "No", "observed_at": "2026-11-01", "Observed At": "2026-11-01"}])
    # Named as the file spells them (it said "'observed_at' and 'observed_at'").
    with pytest.raises(DataValidationError, match="columns 'observed_at' and 'Observed At' both mean 'observed_at'"):
        outcomes.check(twice, now=NOW)
    twice = frame([{"customer_id": "a", "churned": "No", "Churned": "Yes"}])
    with pytest.raises(DataValidationError, match="columns 'churned' and 'Churned' both mean 'churned'"):
        outcomes.check(twice, now=NOW)


def test_a_file_without_the_label_column_is_refused_whole():
    with pytest.raises(DataValidationError, match=r"missing required columns: \['churned'\]"):
        outcomes.check(frame([{"customer_id": "a", "label": "yes"}]), now=NOW)


def test_a_time_under_another_name_is_refused_not_replaced_by_now():
    """``churn_date`` was ignored and every row dated now: a March churn judged today's scores."""
    rows = [{"customer_id": "a", "churned": "yes", "churn_date": "2026-03-01"}]
    with pytest.raises(DataValidationError, match=r"no observed_at column, and \['churn_date'\] is not read"):
        outcomes.check(frame(rows), now=NOW)
    assert len(outcomes.check(frame([{**rows[0], "observed_at": "2026-03-02"}]), now=NOW).good) == 1
    # as_of, observed, period, month: dated now too (a March churn judging predictions made after it).
    for name in ("Churn Date", "event_time", "updated_at", "CloseDate", "churnDate", "as_of", "asOf", "observed",
                 "period", "Month"):  # fmt: skip
        with pytest.raises(DataValidationError, match="no observed_at column"):
            outcomes.check(frame([{"customer_id": "a", "churned": "yes", name: "2026-03-01"}]), now=NOW)
    others = {"plan": "gold", "sentiment": "ok", "lifetime_value": 1, "is_updated": "y", "at_risk": 1,
              "tenure_months": 3, "offer": "x", "billing_period": "m", "is_month_to_month": 1, "type_of": "a",
              "observed_churn": 1, "last_month_revenue": 2}  # fmt: skip
    assert outcomes.check(frame([{"customer_id": "a", "churned": "yes", **others}]), now=NOW).dated_now == 1
    # Whatever its name, a column of dates is a time (`churn_dt`, `period_end`: stored as today too).
    for name, value in [("churn_dt", "2026-03-02"), ("period_end", "2026-03-31T23:59:59Z"), ("x", " 2026-03-02 ")]:
        with pytest.raises(DataValidationError, match=rf"no observed_at column, and \['{name}'\] is not read"):
            outcomes.check(frame([{"customer_id": "a", "churned": "yes", name: value}]), now=NOW)
    not_times = {"code": "2026", "ref": "2026-03-02-A", "note": "", "version": "1.2.3"}
    assert outcomes.check(frame([{"customer_id": "a", "churned": "yes", **not_times}]), now=NOW).dated_now == 1


def test_outcomes_of_one_source_are_counted_then_deleted_and_the_rest_kept(tmp_path):
    """A wrong file cannot be mended by ingesting a right one (other times are other outcomes)."""
    url = f"sqlite:///{tmp_path}/log.db"
    good = frame([{"customer_id": "a", "churned": "yes", "observed_at": "2026-10-01"}])
    bad = frame([{"customer_id": c, "churned": "no", "observed_at": "2026-09-01"} for c in ("a", "b")])
    outcomes.ingest(good, url, source="crm.csv", now=NOW)
    outcomes.ingest(bad, url, source="crm-bad.csv", now=NOW)
    found = outcomes.delete(url, "crm-bad.csv", apply=False)
    assert (found.rows, found.first, found.last) == (2, "2026-09-01", "2026-09-01")
    assert stored(url) == [("a", 1), ("a", 0), ("b", 0)]  # counted only
    assert outcomes.delete(url, "crm-bad.csv", apply=True).rows == 2
    assert stored(url) == [("a", 1)]
    missing = outcomes.delete(url, "crm-bda.csv", apply=True)
    assert missing.rows == 0 and missing.sources == {"crm.csv": 1}
    result = CliRunner().invoke(main, ["outcomes", "delete", "--source", "crm.csv", "--inference-log-url", url])
    assert result.exit_code == 0 and "1 were last written by 'crm.csv'" in result.output
    assert "nothing deleted: add --yes" in result.output
    typo = CliRunner().invoke(main, ["outcomes", "delete", "--source", "crm.cvs", "--yes", "--inference-log-url", url])
    assert typo.exit_code == 2 and "sources stored: 'crm.csv' (1)" in typo.output
    assert stored(url) == [("a", 1)]
    # Run from another folder (the default log is a relative SQLite file), or pointed at MLflow's
    # database: it was "none were last written by 'crm.csv'; sources stored: none", nothing to undo.
    elsewhere = f"sqlite:///{tmp_path}/elsewhere/log.db"
    nolog = CliRunner().invoke(main, ["outcomes", "delete", "--source", "crm.csv", "--inference-log-url", elsewhere])
    assert nolog.exit_code == 2 and f"no folder {tmp_path}/elsewhere for the SQLite inference log" in nolog.output
    (tmp_path / "elsewhere").mkdir()
    nolog = CliRunner().invoke(main, ["outcomes", "delete", "--source", "crm.csv", "--inference-log-url", elsewhere])
    assert nolog.exit_code == 2 and f"no inference log at {tmp_path}/elsewhere/log.db (no such file)" in nolog.output
    other = tmp_path / "mlflow.db"
    with sa.create_engine(f"sqlite:///{other}").begin() as db:
        db.exec_driver_sql("CREATE TABLE runs (x INTEGER)")
    nolog = CliRunner().invoke(main, ["outcomes", "delete", "--source", "crm.csv", "--inference-log-url",
                                      f"sqlite:///{other}"])  # fmt: skip
    assert nolog.exit_code == 2 and "no inference_log table in sqlite:///" in nolog.output, nolog.output
    # A later file stating the same outcome again (a cumulative export) leaves it the first
    # file's: undoing the later file takes only what it added or changed.
    later = outcomes.ingest(good, url, source="crm-2.csv", now=NOW)
    assert (later.written.inserted, later.written.replaced, later.written.unchanged) == (0, 0, 1)
    assert outcomes.delete(url, "crm-2.csv", apply=True).rows == 0 and stored(url) == [("a", 1)]


def test_one_bad_push_of_many_under_the_same_source_is_undone_alone(tmp_path):
    """Every POST /outcomes is source 'api' (and a daily export may keep one file name):
    deleting by source alone took the CRM's whole history with the bad push."""
    import time
    from datetime import UTC, datetime

    url = f"sqlite:///{tmp_path}/log.db"
    outcomes.ingest(frame([{"customer_id": "a", "churned": "yes", "observed_at": "2026-10-01"}]), url, source="api",
                    now=NOW)  # fmt: skip
    time.sleep(1.05 - time.time() % 1)  # the option takes whole seconds: the next push is in a later one
    pushed = datetime.now(UTC)
    outcomes.ingest(frame([{"customer_id": c, "churned": "no", "observed_at": "2026-10-02"} for c in ("b", "c")]),
                    url, source="api", now=NOW)  # fmt: skip
    args = ["outcomes", "delete", "--source", "api", "--inference-log-url", url,
            "--ingested-since", f"{pushed:%Y-%m-%d %H:%M:%S}"]  # fmt: skip
    dry = CliRunner().invoke(main, args)
    assert f"2 were last written by 'api' from {pushed:%Y-%m-%d %H:%M:%S} (observed 2026-10-02" in dry.output
    assert ", written 20" in dry.output and "nothing deleted" in dry.output, dry.output
    result = CliRunner().invoke(main, [*args, "--yes"])
    assert result.exit_code == 0 and "deleted 2 last written by 'api'" in result.output, result.output
    assert stored(url) == [("a", 1)]
    again = CliRunner().invoke(main, args)  # nothing left in that window: said so, not "none by 'api'"
    said = f"by 'api' from {pushed:%Y-%m-%d %H:%M:%S}; sources stored: 'api' (1)"
    assert again.exit_code == 2 and said in again.output
    backwards = CliRunner().invoke(main, [*args, "--ingested-until", "2020-01-01"])
    assert backwards.exit_code == 2 and "not before --ingested-until" in backwards.output


def test_when_outcomes_were_written_is_said_in_utc_whatever_the_machines_zone(tmp_path):
    """SQLite hands the times back naive; read as local time, 10:00 UTC was printed as 15:00
    'UTC' in New York, and an operator pasting it into --ingested-since missed the push."""
    import os
    import subprocess
    import sys

    script = (f"from churn_platform import outcomes; import pandas as pd; url = 'sqlite:///{tmp_path}/log.db'; "
              "outcomes.ingest(pd.DataFrame([{'customer_id': 'a', 'churned': 'yes', 'observed_at': '2026-10-01'}]),"
              " url, source='x.csv'); print(outcomes.delete(url, 'x.csv', apply=False).written_first)")  # fmt: skip
    before = datetime.now(UTC).replace(microsecond=0)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"TZ": "America/New_York"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    written = datetime.fromisoformat(run.stdout.strip()).replace(tzinfo=UTC)
    assert before <= written <= datetime.now(UTC), (before, written)


def test_ingesting_twice_changes_nothing_and_a_new_label_replaces_the_old(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/log.db")
    first = outcomes.check(frame([{"customer_id": f"c{i}", "churned": "yes" if i % 2 else "no",
                                   "observed_at": "2026-11-01"} for i in range(10)]), now=NOW)  # fmt: skip
    assert outcomes.write(engine, first.good, "crm.csv") == outcomes.Written(10, 0, 0)
    assert outcomes.write(engine, first.good, "crm.csv") == outcomes.Written(0, 0, 10)
    change = outcomes.check(frame([
        {"customer_id": "c0", "churned": "yes", "observed_at": "2026-11-01"},  # was no
        {"customer_id": "c0", "churned": "no", "observed_at": "2026-11-02"},  # a new observation
    ]), now=NOW)  # fmt: skip
    assert outcomes.write(engine, change.good, "fix.csv") == outcomes.Written(1, 1, 0)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT customer_id, churned, source FROM outcomes ORDER BY id")).fetchall()
    assert len(stored) == 11 and tuple(stored[0]) == ("c0", 1, "fix.csv")


def test_two_uploads_at_once_on_sqlite_each_count_only_their_own_rows(tmp_path):
    """Another upload that committed between this one's count and its insert was counted as
    this one's new rows (and its own rows as more than it sent)."""
    import threading

    url = f"sqlite:///{tmp_path}/log.db"
    engine, other_engine = sa.create_engine(url), sa.create_engine(url)
    outcomes.upgrade(engine)

    def upload(who: str, n: int) -> pd.DataFrame:
        rows = [{"customer_id": f"{who}{i}", "churned": "yes", "observed_at": "2026-11-01"} for i in range(n)]
        return outcomes.check(frame(rows), now=NOW).good

    ours, theirs = upload("a", 3), upload("b", 5)
    results: list[outcomes.Written] = []
    other = threading.Thread(target=lambda: results.append(outcomes.write(other_engine, theirs, "b.csv")))

    def the_other_upload_comes_in_now(conn, cursor, statement, *args) -> None:  # between our count and insert
        if statement.lstrip().upper().startswith("INSERT") and not other.is_alive() and not results:
            other.start()
            other.join(2)  # it waits for our write lock, or (before) commits at once

    sa.event.listen(engine, "before_cursor_execute", the_other_upload_comes_in_now)
    assert outcomes.write(engine, ours, "a.csv") == outcomes.Written(3, 0, 0)
    other.join(30)
    assert results == [outcomes.Written(5, 0, 0)]


def insert_log(engine: sa.Engine, rows: list[dict]) -> None:
    """Predictions straight into the log (``log_row``'s)."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO inference_log (request_id, row_index, scored_at, model_name, model_version, arm, "
            "customer_id, churn_probability) VALUES (:request_id, :row_index, :scored_at, :model_name, "
            ":model_version, :arm, :customer_id, :churn_probability)"
        ), rows)  # fmt: skip


def log_row(customer: str, version: int, at: datetime, score: float, row: int) -> dict:
    return {
        "request_id": f"r{row}", "row_index": 0, "scored_at": sqlite_time(at), "model_name": "churn",
        "model_version": version, "arm": "production", "customer_id": customer, "churn_probability": score,
    }  # fmt: skip


def test_an_outcome_judges_the_latest_prediction_of_the_version_within_the_horizon(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/log.db")
    upgrade(engine)
    observed = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [
        log_row("a", 1, observed - timedelta(days=30), 0.2, 1),
        log_row("a", 1, observed - timedelta(days=3), 0.7, 2),  # latest before the outcome: this one
        log_row("a", 1, observed + timedelta(days=1), 0.9, 3),  # after the outcome: never
        log_row("a", 2, observed - timedelta(days=1), 0.5, 4),  # another version
        log_row("b", 1, observed - timedelta(days=91), 0.4, 5),  # beyond a 90-day horizon
    ]
    insert_log(engine, rows)
    checked = outcomes.check(frame([{"customer_id": c, "churned": "yes", "observed_at": observed.isoformat()}
                                    for c in ("a", "b")]
                                   # a second outcome of a, with no prediction between: it judges nothing new
                                   + [{"customer_id": "a", "churned": "no", "observed_at": "2026-11-01T06:00:00Z"}]),
                             now=NOW)  # fmt: skip
    outcomes.write(engine, checked.good, "t")
    params = {"name": "churn", "horizon_days": 90,
              **outcomes.window_params("sqlite", observed - timedelta(days=1), observed + timedelta(days=1))}
    with engine.connect() as conn:
        for version, expected in ((1, [0.7]), (2, [0.5])):
            got = conn.execute(sa.text(outcomes.matched_sql("sqlite")), params | {"version": version}).fetchall()
            assert [r.churn_probability for r in got] == expected


def test_the_horizon_counts_fractions_of_a_second_on_sqlite_as_on_postgresql(tmp_path):
    """SQLite's datetime() cut the horizon's start to the second: a prediction made 90 days and
    0.3 s before an outcome was judged by it on SQLite and not on PostgreSQL."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/log.db")
    upgrade(engine)
    observed = datetime(2026, 6, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    insert_log(engine, [log_row("a", 1, observed - timedelta(days=90, seconds=0.3), 0.2, 1),  # out by 0.3 s
                        log_row("b", 1, observed - timedelta(days=90, milliseconds=-2), 0.6, 2)])  # in by 2 ms
    rows = [{"customer_id": c, "churned": "yes", "observed_at": observed.isoformat()} for c in ("a", "b")]
    outcomes.write(engine, outcomes.check(frame(rows), now=NOW).good, "t")
    params = {"name": "churn", "version": 1, "horizon_days": 90,
              **outcomes.window_params("sqlite", observed - timedelta(days=1), observed + timedelta(days=1))}
    with engine.connect() as conn:
        got = conn.execute(sa.text(outcomes.matched_sql("sqlite")), params).fetchall()
    assert [r.churn_probability for r in got] == [0.6]  # b inside the horizon by 2 ms, a outside by 0.3 s


def test_a_prediction_is_judged_by_its_first_churn_else_its_latest_no(tmp_path):
    """A monthly status export says "no" the day after a score and "yes" a month later: the
    first outcome judged the prediction, a churn the score caught was scored a false alarm, and
    the performance job called a sound model degraded."""
    judge_rule_holds(sa.create_engine(f"sqlite:///{tmp_path}/log.db"))


def judge_rule_holds(engine: sa.Engine) -> None:
    """The judge rule on ``engine`` (SQLite here, PostgreSQL in tests/integration)."""
    dialect = engine.dialect.name
    upgrade(engine)
    scored = datetime(2026, 11, 1, tzinfo=UTC)
    after = datetime(2026, 12, 18, tzinfo=UTC)  # scored again after the churn was on record
    rows = [log_row("c", 1, at, p, n) | ({"scored_at": at} if dialect == "postgresql" else {})
            for at, p, n in ((scored, 0.3, 1), (after, 0.9, 2))]  # fmt: skip
    insert_log(engine, rows)
    checked = outcomes.check(frame([
        {"customer_id": "c", "churned": "no", "observed_at": "2026-11-02T00:00:00Z"},
        {"customer_id": "c", "churned": "no", "observed_at": "2026-11-15T00:00:00Z"},
        {"customer_id": "c", "churned": "yes", "observed_at": "2026-12-15T00:00:00Z"},
        {"customer_id": "c", "churned": "no", "observed_at": "2026-12-20T00:00:00Z"},  # after the churn: no news
        # The next month's export repeats the churn: it judged the score made after it, a churn "caught".
        {"customer_id": "c", "churned": "yes", "observed_at": "2027-01-15T00:00:00Z"},
    ]), now=datetime(2027, 2, 1, tzinfo=UTC))  # fmt: skip
    outcomes.write(engine, checked.good, "t")

    def judged(since: datetime, until: datetime, version: int = 1, maturity: int = 0) -> list[tuple[bool, float, str]]:
        params = {"name": "churn", "version": version, "horizon_days": 90,
                  **outcomes.window_params(dialect, since, until)}  # fmt: skip
        sql = outcomes.matched_sql(dialect, maturity_days=maturity)
        with engine.connect() as conn:
            return sorted((bool(r.churned), r.churn_probability, str(r.observed_at)[:10])
                          for r in conn.execute(sa.text(sql), params))  # fmt: skip

    day = lambda d: datetime.fromisoformat(d).replace(tzinfo=UTC)  # noqa: E731
    assert judged(scored, day("2027-01-01")) == [(True, 0.3, "2026-12-15")]
    # November knew only "not churned yet" (its latest), December the churn; January has nothing new.
    assert judged(day("2026-11-01"), day("2026-12-01")) == [(False, 0.3, "2026-11-15")]
    assert judged(day("2026-12-01"), day("2027-01-01")) == [(True, 0.3, "2026-12-15")]
    assert judged(day("2026-12-16"), day("2027-01-01")) == []  # judged by the churn, before this window
    assert judged(day("2026-12-16"), day("2027-02-01")) == []  # the score after the churn: never judged

    # Scored again before the churn: the churn judges the later score, and the earlier one's
    # "no" judged it a false alarm (the customer left 44 days after it was scored 0.9).
    rows = [log_row("d", 2, at, p, n) | ({"scored_at": at} if dialect == "postgresql" else {})
            for at, p, n in ((day("2026-03-01"), 0.9, 3), (day("2026-03-20"), 0.8, 4))]  # fmt: skip
    insert_log(engine, rows)
    outcomes.write(engine, outcomes.check(frame([
        {"customer_id": "d", "churned": c, "observed_at": f"2026-{d}T00:00:00Z"}
        for c, d in (("no", "03-02"), ("no", "03-31"), ("yes", "04-14"))
    ]), now=datetime(2027, 2, 1, tzinfo=UTC)).good, "t")  # fmt: skip
    assert judged(day("2026-03-01"), day("2026-05-01"), version=2) == [(True, 0.8, "2026-04-14")]
    # A window that ends before the churn knows only "not churned yet", for each score.
    assert judged(day("2026-03-01"), day("2026-04-01"), version=2) == [(False, 0.8, "2026-03-31"),
                                                                        (False, 0.9, "2026-03-02")]  # fmt: skip

    # With a maturity of 30 days, a "no" 1 or 14 days after a score is no label yet: the month
    # before the churn is on record judges nothing (it called the score of a churner a false
    # alarm), and a "no" 30 days after a score (to the second) judges that score alone.
    assert judged(day("2026-11-01"), day("2026-12-01"), maturity=30) == []
    assert judged(day("2026-11-01"), day("2027-01-01"), maturity=30) == [(True, 0.3, "2026-12-15")]
    assert judged(day("2026-03-01"), day("2026-04-01"), version=2, maturity=30) == [(False, 0.9, "2026-03-31")]
    assert judged(day("2026-03-01"), day("2026-04-01"), version=2, maturity=31) == []
    assert judged(day("2026-03-01"), day("2026-05-01"), version=2, maturity=30) == [(True, 0.8, "2026-04-14")]
    engine.dispose()


# ---------------------------------------------------------------- POST /outcomes


@pytest.fixture
def api(registry_uri, tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.unit.test_api import make_settings

    settings = make_settings(registry_uri, tmp_path)
    with TestClient(create_app(settings)) as client:
        client.url = settings.inference_log_url
        yield client


KEY = "test-admin-key-5b1f"


def post(api, outcomes_: list[dict], key: str | None = KEY, **params):
    headers = {"X-API-Key": key} if key else {}
    return api.post("/outcomes", json={"outcomes": outcomes_}, headers=headers, params=params)


def stored(url: str) -> list[tuple]:
    with sa.create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT customer_id, churned FROM outcomes ORDER BY id"))]


def test_the_api_records_outcomes_idempotently_with_the_admin_key(api):
    body = [{"customer_id": "a", "churned": True, "observed_at": "2026-11-01T00:00:00Z"},
            {"customer_id": "b", "churned": "No", "observed_at": "2026-11-01"}]  # fmt: skip
    assert post(api, body, key=None).status_code == 401
    assert post(api, body, key="wrong").status_code == 403
    first = post(api, body)
    assert first.status_code == 200, first.text
    assert first.json()["written"] == {"inserted": 2, "replaced": 0, "unchanged": 0}
    assert post(api, body).json()["written"] == {"inserted": 0, "replaced": 0, "unchanged": 2}
    assert stored(api.url) == [("a", 1), ("b", 0)]


def test_a_bad_outcome_is_a_422_naming_row_and_field_and_nothing_is_written(api):
    body = [{"customer_id": "a", "churned": "yes"}, {"customer_id": "b", "churned": "perhaps"},
            {"churned": "no"}, {"customer_id": "c", "churned": 1, "observed_at": "2999-01-01"}]  # fmt: skip
    response = post(api, body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["message"] == ("3 of 4 outcomes are invalid; nothing was written: outcomes.1.churned: 'perhaps' "
                                  "is not Yes/No, 1/0 or true/false; outcomes.2.customer_id: missing; outcomes.3."
                                  "observed_at: '2999-01-01' is out of range (1970 to now)")  # fmt: skip
    assert [(d["row"], d["loc"][-1]) for d in problem["detail"]] == [(2, "churned"), (3, "customer_id"),
                                                                    (4, "observed_at")]  # fmt: skip
    assert "'perhaps' is not Yes/No" in problem["detail"][0]["msg"]
    with pytest.raises(sa.exc.OperationalError):  # not even the table was created
        stored(api.url)
    partial = post(api, body, strict="false")
    assert partial.status_code == 200 and partial.json()["rejected"] == 3
    assert stored(api.url) == [("a", 1)]
    # A label of the wrong JSON type: one error at the field (three, at "bool", "int" and "str").
    typed = post(api, [{"customer_id": "a", "churned": 0.5}])
    assert typed.status_code == 422 and [d["loc"] for d in typed.json()["detail"]] == [
        ["body", "outcomes", 0, "churned"]], typed.json()  # fmt: skip
    assert typed.json()["message"] == "outcomes.0.churned: Input should be Yes/No, 1/0, true/false or a JSON boolean"
    # Ten thousand bad rows: the first hundred listed, as for every 422 (the answer was 1 MB).
    many = post(api, [{"customer_id": f"z{i}", "churned": "maybe"} for i in range(10_000)])
    assert many.status_code == 422 and len(many.json()["detail"]) == 100
    assert many.json()["message"].endswith("is not Yes/No, 1/0 or true/false (and 9995 more)")


def test_two_labels_for_one_customer_and_time_in_one_request_are_a_422_naming_both_rows(api):
    body = [{"customer_id": "a", "churned": "yes", "observed_at": "2026-11-01"},
            {"customer_id": "a", "churned": "no", "observed_at": "2026-11-01"}]  # fmt: skip
    response = post(api, body)
    assert response.status_code == 422, response.text
    assert [(d["row"], d["loc"][-1]) for d in response.json()["detail"]] == [(1, "churned"), (2, "churned")]
    assert "conflicting labels for one customer_id and observed_at (rows 1, 2)" in response.json()["detail"][0]["msg"]


def test_more_than_ten_thousand_outcomes_is_a_413(api):
    response = post(api, [{"customer_id": f"c{i}", "churned": "no"} for i in range(10_001)])
    assert response.status_code == 413 and "limit is 10,000" in response.json()["message"]
    response = post(api, [1] * 100_000)  # counted before each is validated (a 422 after seconds, was)
    assert response.status_code == 413 and "100,000 outcomes in one request" in response.json()["message"]
    assert post(api, [{"customer_id": "a", "churned": "no", "extra": 1}]).status_code == 422
    # Past a 422's hundred, unknown fields are counted, not each named (350,000: ten seconds of the event loop)
    flood = post(api, [{"customer_id": "a", "churned": "no", **{f"f{i}": 0 for i in range(50_000)}}])
    assert flood.status_code == 422 and flood.json()["message"].endswith("the others were not checked)"), flood.text
    assert flood.json()["detail"][0]["loc"] == ["body", "outcomes", 0, "f0"]


def test_two_labels_for_one_customer_and_time_are_both_rejected_and_a_repeat_is_one():
    checked = outcomes.check(
        frame([
            {"customer_id": "a", "churned": "Yes", "observed_at": "2026-11-01"},
            {"customer_id": "b", "churned": "No", "observed_at": "2026-11-01"},
            {"customer_id": "a", "churned": "No", "observed_at": "2026-11-01T00:00:00Z"},
            {"customer_id": "b", "churned": "0", "observed_at": "2026-11-01"},
        ]),
        now=NOW,
    )  # fmt: skip
    assert list(checked.good.customer_id) == ["b"] and not checked.good.churned.any()
    reasons = dict(zip(checked.rejects.row, checked.rejects.reason, strict=True))
    assert reasons == {r: "churned: conflicting labels for one customer_id and observed_at (rows 1, 3)" for r in (1, 3)}
    assert (checked.rows, checked.repeated) == (4, 1)  # every row read is accounted for


def test_a_repeated_row_is_counted_as_read_and_unchanged(tmp_path):
    rows = [{"customer_id": "a", "churned": "Yes", "observed_at": "2026-11-01"}] * 3
    result = outcomes.ingest(frame(rows), f"sqlite:///{tmp_path}/log.db", source="t")
    summary = result.to_json()
    assert summary["rows"] == 3 and summary["written"] == {"inserted": 1, "replaced": 0, "unchanged": 2}


def test_the_cli_never_writes_rejects_over_the_input_nor_into_a_missing_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from churn_platform.cli import main

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "truth.csv"
    original = "customer_id,churned,observed_at\na,Yes,2026-11-01\nb,maybe,2026-11-01\n"
    source.write_text(original)
    log = f"sqlite:///{tmp_path / 'log.db'}"
    for rejects, message in ((str(source), "names the same file as the input"),
                             ("./truth.csv", "names the same file as the input"),
                             ("missing/r.csv", "output folder does not exist")):  # fmt: skip
        result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--rejects", rejects,
                                           "--inference-log-url", log])  # fmt: skip
        assert result.exit_code == 2 and message in result.output, result.output
        assert source.read_text() == original
    assert not (tmp_path / "log.db").exists()  # refused before anything was stored
    # No log there (a typo, the API's relative default from another folder): stored in a new
    # database nothing reads, with exit 0.
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--inference-log-url", log])
    assert result.exit_code == 2 and f"no inference log at {tmp_path / 'log.db'} (no such file)" in result.output
    assert not (tmp_path / "log.db").exists()
    sa.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}").connect().close()  # a database, not the log
    other = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--inference-log-url",
                                      f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert other.exit_code == 2 and "no inference_log table in sqlite:///" in other.output, other.output
    assert not sa.inspect(sa.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}")).get_table_names()
    upgrade(sa.create_engine(log))  # the API made it
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--inference-log-url", log])
    assert result.exit_code == 4 and "row 2: churned: 'maybe'" in result.output
    assert "a,Yes" not in (tmp_path / "truth.rejects.csv").read_text() and source.read_text() == original
    # The bad row fixed and sent again: the earlier run's rejects file read as this run's.
    source.write_text("customer_id,churned,observed_at\na,Yes,2026-11-01\nb,No,2026-11-01\n")
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--inference-log-url", log])
    assert result.exit_code == 0 and "0 rejected" in result.output, result.output
    assert not (tmp_path / "truth.rejects.csv").exists()
    # A --rejects naming another file (a typo): refused before the run, whatever it would reject.
    precious = tmp_path / "crm-export.csv"
    precious.write_text("customer_id,churned\nz,Yes\n")
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--rejects", str(precious),
                                       "--inference-log-url", log])  # fmt: skip
    assert result.exit_code == 2 and "already holds a file this job did not write" in result.output
    assert precious.read_text() == "customer_id,churned\nz,Yes\n"
    # Nor the inference log itself: it became a CSV of the rejects, and every later run failed.
    stored = (tmp_path / "log.db").read_bytes()
    source.write_text("customer_id,churned,observed_at\nc,Yes,2026-11-01\nd,maybe,2026-11-01\n")
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--rejects", str(tmp_path / "log.db"),
                                       "--inference-log-url", log])  # fmt: skip
    assert result.exit_code == 2 and "is a SQLite database" in result.output, result.output
    assert (tmp_path / "log.db").read_bytes() == stored


def test_a_nul_byte_in_an_id_rejects_the_row_not_cuts_the_id_to_another_customers(tmp_path):
    """pandas' C parser ends a value at a NUL: "A\x00C" was stored as customer "A"."""
    from click.testing import CliRunner

    from churn_platform.cli import main

    source = tmp_path / "truth.csv"
    source.write_bytes(b"customer_id,churned,observed_at\nA,Yes,2026-11-01\nB\x00C,No,2026-11-01\n")
    log = f"sqlite:///{tmp_path / 'log.db'}"
    upgrade(sa.create_engine(log))
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--inference-log-url", log])
    assert result.exit_code == 4 and "row 2: customer_id: contains a control character" in result.output, result.output
    with sa.create_engine(log).connect() as conn:
        assert conn.execute(sa.text("SELECT customer_id FROM outcomes")).scalars().all() == ["A"]


def test_a_first_row_with_a_field_more_than_the_header_is_refused_not_shifted(tmp_path):
    """pandas took the first column for an index and shifted the rest: customers "Yes" and
    "No" were stored, exit 0."""
    from click.testing import CliRunner

    from churn_platform.cli import main

    source = tmp_path / "truth.csv"
    source.write_text("customer_id,churned\nC0001,Yes,No\nC0002,No,Yes\n")
    log = f"sqlite:///{tmp_path / 'log.db'}"
    upgrade(sa.create_engine(log))
    result = CliRunner().invoke(main, ["outcomes", "ingest", str(source), "--inference-log-url", log])
    assert result.exit_code == 2 and "a row has more fields than the header" in result.output, result.output
    engine = sa.create_engine(log)
    if "outcomes" in sa.inspect(engine).get_table_names():
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM outcomes")).scalar() == 0


def test_a_daily_export_with_a_header_and_no_rows_is_nothing_new_not_an_error(tmp_path):
    """A quiet day's CRM export failed the scheduled ingest (exit 2); its header is still checked."""
    from click.testing import CliRunner

    from churn_platform.cli import main

    log = f"sqlite:///{tmp_path / 'log.db'}"
    upgrade(sa.create_engine(log))
    (tmp_path / "quiet.csv").write_text("customer_id,churned,observed_at\n")
    (tmp_path / "typo.csv").write_text("customer_id,churnd\n")
    quiet = CliRunner().invoke(main, ["outcomes", "ingest", str(tmp_path / "quiet.csv"), "--inference-log-url", log])
    assert quiet.exit_code == 0 and "outcomes: 0 rows read, 0 new" in quiet.output, quiet.output
    typo = CliRunner().invoke(main, ["outcomes", "ingest", str(tmp_path / "typo.csv"), "--inference-log-url", log])
    assert typo.exit_code == 2 and "missing required columns: ['churned']" in typo.output, typo.output


def test_a_source_name_too_long_to_store_is_refused_before_anything_is_written(tmp_path):
    """PostgreSQL said "value too long for type character varying(512)", naming nothing; SQLite stored it."""
    from churn_platform.errors import DataValidationError

    url = f"sqlite:///{tmp_path / 'log.db'}"
    upgrade(sa.create_engine(url))
    frame = pd.DataFrame({"customer_id": ["a"], "churned": ["Yes"], "observed_at": ["2026-11-01"]})
    with pytest.raises(DataValidationError, match="the source name is 513 characters long, over 512"):
        outcomes.ingest(frame, url, source="x" * 513)
    assert outcomes.ingest(frame, url, source="x" * 512).written.inserted == 1


def test_integer_labels_with_a_gap_in_parquet_are_read_as_labels(tmp_path):
    """pandas reads an integer column with a null as floats: every label was "1.0" or "0.0",
    and every row of the file was rejected."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from churn_platform import data

    table = pa.table({"customer_id": ["a", "b", "c"], "Churn": pa.array([1, None, 0], pa.int64()),
                      "observed_at": ["2026-11-01"] * 3})  # fmt: skip
    pq.write_table(table, tmp_path / "outcomes.parquet")
    checked = outcomes.check(data.read_table(tmp_path / "outcomes.parquet"), now=NOW)
    assert checked.good[["customer_id", "churned"]].values.tolist() == [["a", True], ["c", False]]
    assert checked.rejects.reason.tolist() == ["churned: missing"]
    # The same frame saved as CSV by pandas writes "1.0" and "0.0", which were rejected there.
    data.read_table(tmp_path / "outcomes.parquet").to_csv(tmp_path / "outcomes.csv", index=False)
    assert "1.0" in (tmp_path / "outcomes.csv").read_text()
    as_csv = outcomes.check(data.read_table(tmp_path / "outcomes.csv"), now=NOW)
    assert as_csv.good[["customer_id", "churned"]].values.tolist() == [["a", True], ["c", False]]
    training = data.generate(20, seed=1).astype({"churn": float})  # the same for a training file's labels
    assert data.validate(training)["churn"].tolist() == data.generate(20, seed=1)["churn"].tolist()


def test_text_that_is_not_utf8_is_a_422_naming_the_field_and_nothing_is_written(api):
    """JSON may escape half a surrogate pair; no database stores it, and echoing it in a reject
    once answered 500 after the good rows were written, so a retry wrote them twice."""
    for field in ("churned", "observed_at", "customer_id"):
        bad = {"customer_id": "b", "churned": "Yes", field: "\ud800"}
        body = json.dumps({"outcomes": [{"customer_id": "a", "churned": "Yes"}, bad]})
        for strict in ("true", "false"):
            response = api.post("/outcomes", content=body, params={"strict": strict},
                                headers={"X-API-Key": KEY, "content-type": "application/json"})  # fmt: skip
            assert response.status_code == 422, (field, response.text)
            assert response.json()["message"] == f"outcomes.1.{field}: is not UTF-8 text (a lone surrogate escape, " \
                "\\ud800 to \\udfff)"  # fmt: skip
    with pytest.raises(sa.exc.OperationalError):  # nothing written, not even the table
        stored(api.url)


def test_malformed_json_is_a_422_that_says_what_is_wrong(api):
    headers = {"X-API-Key": KEY, "content-type": "application/json"}
    cases = {
        b'{"outcomes": [{"customer_id": "a",}]}': "body: Invalid JSON: Expecting property name enclosed in double "
                                                  "quotes at character 34",
        b'{"outcomes": [{"customer_id": "a", "churned": 1' + b"0" * 5000 + b"}]}":
            "body: Invalid JSON: Exceeds the limit (4300 digits) for integer string conversion",
        b"[" * 5000: "body: Invalid JSON: nested too deeply",
    }  # fmt: skip
    for body, message in cases.items():
        for path in ("/outcomes", "/predict/by-id"):
            response = api.post(path, content=body, headers=headers)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["message"].startswith(message), (path, response.json())


def test_a_padded_id_sent_to_predict_is_judged_by_its_trimmed_outcome(api, telco_csv):
    """Outcomes and the feature store trim ids; the log must too, or a CRM that pads its ids
    never sees a prediction judged. The answer echoes the id as sent."""
    import time

    from tests.unit.test_api import customers, wait_ready

    wait_ready(api)
    two = customers(telco_csv, 2)
    sent = [two[0] | {"customer_id": "  7590-VHVEG "}, two[1] | {"customer_id": "\u00a0 "},
            two[1] | {"customer_id": " NaN"}]  # a pandas export's missing id: many customers under one  # fmt: skip
    for path, body in (("/predict", {"customers": sent}), ("/predict/single", sent[0])):
        response = api.post(path, json=body)
        assert response.status_code == 200, response.text
        answered = response.json().get("predictions", [response.json()])
        assert answered[0]["customer_id"] == "  7590-VHVEG "
    assert api.post("/predict/single", json=two[1] | {"customer_id": "NULL"}).status_code == 200  # alone, unpadded
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sa.create_engine(api.url).connect() as conn:
            try:
                ids = conn.execute(sa.text("SELECT customer_id FROM inference_log ORDER BY id")).scalars().all()
            except sa.exc.OperationalError:  # no table yet
                ids = []
        if len(ids) == 5:
            break
        time.sleep(0.1)
    assert ids == ["7590-VHVEG", None, None, "7590-VHVEG", None]  # an id of only spaces, or a placeholder, is no id
    observed = datetime.now(UTC)  # after the predictions, and not in the future
    assert post(api, [{"customer_id": "7590-VHVEG", "churned": "Yes", "observed_at": observed.isoformat()}]
                ).status_code == 200  # fmt: skip
    params = {"name": "churn", "version": 1, "horizon_days": 90,
              **outcomes.window_params("sqlite", observed - timedelta(hours=1), observed + timedelta(hours=1))}
    with sa.create_engine(api.url).connect() as conn:
        judged = conn.execute(sa.text(outcomes.matched_sql("sqlite")), params).fetchall()
    assert len(judged) == 1 and judged[0].churned
