"""The feature store on both layouts (embedded SQLite/Parquet, and a real PostgreSQL):
snapshots ingested through the CLI, training sets joined point-in-time, the online store
after materializing, bad rows set aside, and a store that is down."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data, feature_store
from churn_platform.cli import main
from churn_platform.contract import FEATURES_AS_OF
from churn_platform.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN
from churn_platform.settings import get_settings
from tests.services import PG_HOST, PG_PORT, PG_USER, Stack, postgres_database

pytestmark = pytest.mark.integration

FIRST, SECOND = "2026-01-01T00:00:00Z", "2026-07-01"


@pytest.fixture(params=["embedded", "postgres"])
def layout(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    if request.param == "embedded":
        yield request.param
    else:
        with postgres_database() as url:
            # A password with a space (trust auth ignores it): the API's reader passed psycopg a URL
            # it refused ("unexpected spaces"), and every read by id was a 503.
            monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url.replace("postgres@", "postgres:pass%20word@", 1))
            get_settings.cache_clear()
            yield request.param
    get_settings.cache_clear()


def _cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result.output


def _typed(raw: pd.DataFrame) -> pd.DataFrame:
    """The schema's typing of raw rows, indexed by customer id: what the store must give back."""
    return data.validate(raw, require_label=False).set_index(ID_COLUMN)[list(FEATURE_NAMES)]


def test_snapshots_in_training_is_point_in_time_and_online_is_the_latest(layout: str, telco_csv: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    monkeypatch.setattr(feature_store, "ONLINE_WRITE_ROWS", 97)  # 300 customers in four online writes, as 10,000s
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN])
    raw = raw[raw["total_charges"].str.strip() != ""].head(300).reset_index(drop=True)
    first = raw.assign(snapshot_time=FIRST)
    second = raw.copy()
    second["tenure"] = (second["tenure"].astype(int) + 6).astype(str)
    second["monthly_charges"] = (second["monthly_charges"].astype(float) + 5.25).astype(str)
    second.loc[::3, "contract"] = "Two year"
    bad = second.head(2).copy()
    bad.loc[0, "tenure"], bad.loc[1, ID_COLUMN] = "-3", ""
    first.to_csv("first.csv", index=False)
    pd.concat([second, bad]).to_parquet("second.parquet", index=False)

    assert "registered customer, customer_features" in _cli("features", "apply")
    assert "no customer snapshots ingested yet" in _cli("features", "materialize", code=2)  # PostgreSQL: a silent 0
    assert "ingested 300 of 300 rows for 300 customers" in _cli("features", "ingest", "first.csv")
    assert not Path("first.rejects.parquet").exists()  # the default place: only when a row is bad
    out = _cli("features", "ingest", "second.parquet", "--as-of", SECOND, code=1)  # 1: rows rejected, as `score`
    assert "ingested 300 of 302 rows" in out and "2 rejected -> second.rejects.parquet" in out
    rejects = pd.read_parquet("second.rejects.parquet")
    assert rejects["row"].tolist() == [301, 302]
    assert "tenure" in rejects["reason"][0] and f"{ID_COLUMN}: empty" in rejects["reason"][1]
    _cli("features", "ingest", "second.parquet", "--as-of", SECOND, code=1)  # again: replaces, never duplicates

    settings = get_settings()
    store = feature_store.open_store(settings)
    ids = raw[ID_COLUMN].tolist()
    times = [t for t in ("2025-12-01", "2026-03-01", "2026-08-01") for _ in ids]
    labels = pd.DataFrame({ID_COLUMN: ids * 3, LABEL_COLUMN: 1, "label_time": times})
    frame = feature_store.training_frame(store, labels)
    # Before the first snapshot: nothing to join, so no row; no value from after a label leaks in.
    assert len(frame) == 600
    labels.to_csv("labels.csv", index=False)
    _, tags = feature_store.training_set(settings, "labels.csv")  # the run's tags: the same on both stores
    assert tags["label_time_from"] == "2026-03-01T00:00:00+00:00"
    assert tags["label_time_to"] == "2026-08-01T00:00:00+00:00"
    at = frame["label_time"].dt.strftime("%Y-%m")
    for month, expected in (("2026-03", _typed(raw)), ("2026-08", _typed(second))):
        got = frame[at == month].set_index(ID_COLUMN)[list(FEATURE_NAMES)].loc[expected.index]
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)

    assert feature_store.online(store, ids[:2]) == [None, None]  # nothing materialized yet
    materialized = _cli("features", "materialize")
    assert "materialized 'customer_features'" in materialized
    assert "(now, and 5 min ahead for clocks that run fast)" in materialized  # "up to" minutes away read as a bug
    assert "\x1b[" not in materialized  # Feast's terminal colours, in a CronJob's log
    store = feature_store.open_store(settings)
    got = feature_store.online(store, [*ids, "no-such-customer"])
    assert got[-1] is None
    # Each says when its snapshot was taken (the API answers with it, and refuses one too old).
    assert {g[FEATURES_AS_OF] for g in got[:-1]} == {datetime(2026, 7, 1, tzinfo=UTC).timestamp()}
    # What the API reads with (on PostgreSQL its own query of Feast's table) gives the same.
    read = feature_store.online_reader(store, settings)
    assert read([*ids, "no-such-customer", ids[0]]) == [*got, got[0]]
    if layout == "postgres":
        assert isinstance(read, feature_store.PostgresOnlineReader)
        import sqlalchemy as sa

        # A customer missing one feature row, and a null value (Feast writes an empty Value and
        # no text for it): both read as None, as Feast reads them.
        engine = sa.create_engine(str(settings.feature_store_url))
        with engine.begin() as conn:
            delete = "DELETE FROM churn_customer_features WHERE feature_name = 'tenure' AND entity_key = :k"
            conn.execute(sa.text(delete), {"k": read._key(ids[0])})  # noqa: SLF001
            null = ("UPDATE churn_customer_features SET value = ''::bytea, value_text = NULL "
                    "WHERE feature_name = 'monthly_charges' AND entity_key = :k")  # fmt: skip
            conn.execute(sa.text(null), {"k": read._key(ids[1])})  # noqa: SLF001
        engine.dispose()
        partial, with_null = read(ids[:2])
        assert partial is not None and partial["tenure"] is None and partial["contract"] == got[0]["contract"]
        assert with_null is not None and with_null["monthly_charges"] is None
        assert [partial, with_null] == feature_store.online(store, ids[:2])
        # A value without its text (as a Feast before 0.66 wrote numbers): an error that says so,
        # never a feature read as missing.
        with engine.begin() as conn:
            untexted = ("UPDATE churn_customer_features SET value_text = NULL "
                        "WHERE feature_name = 'tenure' AND entity_key = :k")  # fmt: skip
            conn.execute(sa.text(untexted), {"k": read._key(ids[2])})  # noqa: SLF001
        engine.dispose()
        with pytest.raises(feature_store.UnreadableFeatures, match=r"tenure.*materialize again"):
            read(ids[2:3])
        # The API's read, on an event loop through its pool of async connections: the same.
        rest = [*ids[:2], *ids[3:], "no-such-customer"]
        assert asyncio.run(_aread(read, rest)) == read(rest) == feature_store.online(store, rest)
    online = pd.DataFrame(got[:-1]).set_index(ID_COLUMN)[list(FEATURE_NAMES)]
    pd.testing.assert_frame_equal(online, _typed(second), check_dtype=False)
    # A source whose clock runs ahead: ingest takes its snapshots (up to five minutes on), and a
    # plain materialize stopped at now, skipping them with success (offline, never online).
    ahead = raw.head(1).assign(customer_id="NEW-AHEAD", snapshot_time=datetime.now(UTC) + timedelta(minutes=3))
    ahead.to_csv("ahead.csv", index=False)
    assert "ingested 1 of 1 rows" in _cli("features", "ingest", "ahead.csv")
    _cli("features", "materialize")
    assert feature_store.online(feature_store.open_store(get_settings()), ["NEW-AHEAD"])[0] is not None
    # A manual ingest since then, and the daily refresh of other customers: the refresh publishes
    # the manual rows too (it scanned from its own file's earliest snapshot only, so never did).
    raw.head(3).assign(tenure="71").to_csv("manual.csv", index=False)
    _cli("features", "ingest", "manual.csv", "--as-of", "now")
    raw.iloc[3:5].assign(tenure="70").to_csv("daily.csv", index=False)
    _cli("features", "refresh", "daily.csv", "--as-of", "now")
    got = feature_store.online(feature_store.open_store(get_settings()), ids[:6])
    assert [g["tenure"] for g in got] == [71, 71, 71, 70, 70, int(second["tenure"][5])]


def test_a_snapshot_ingested_by_mistake_is_deleted_and_its_customers_go_back_online(layout: str, telco_csv: Path):
    """Materialize only adds and replaces: an export ingested with a wrong `--as-of now`
    stayed every customer's latest, online and in every later training join, for good."""
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN])
    raw = raw[raw["total_charges"].str.strip() != ""].head(5).reset_index(drop=True)
    ids = raw[ID_COLUMN].tolist()
    raw.head(3).assign(tenure="5", snapshot_time=FIRST).to_csv("first.csv", index=False)
    raw.assign(tenure="60").to_csv("wrong.csv", index=False)  # the fourth customer is in this one only
    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()  # the fifth's online one is later: untouched
    raw.tail(1).assign(tenure="33", snapshot_time=later).to_csv("later.csv", index=False)
    _cli("features", "apply")
    _cli("features", "ingest", "first.csv")
    wrong = json.loads(_cli("features", "ingest", "wrong.csv", "--as-of", "now", "--json"))
    when = wrong["first"][:19]  # to the second, as the text summary prints it (stored to the microsecond)
    _cli("features", "ingest", "later.csv")
    _cli("features", "materialize")
    settings = get_settings()
    assert [g["tenure"] for g in feature_store.online(feature_store.open_store(settings), ids)] == [60] * 4 + [33]

    asked = _cli("features", "delete", "--snapshot-time", when)
    assert f"5 snapshots were taken at {when.replace('T', ' ')} UTC; nothing deleted: add --yes" in asked
    assert "3 customers would go back to their previous snapshot and 1 would have none left" in asked
    # With a zone, as --as-of and the docs write times (it was "does not match the formats").
    zoned = datetime.fromisoformat(when).replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=2))).isoformat()
    for given in (f"{when}Z", zoned):
        said = _cli("features", "delete", "--snapshot-time", given)
        assert f"5 snapshots were taken at {when.replace('T', ' ')} UTC" in said
    missing = CliRunner().invoke(main, ["features", "delete", "--snapshot-time", "2026-01-01T00:00:01"])
    assert missing.exit_code == 2 and "no snapshot taken at 2026-01-01 00:00:01 UTC" in missing.output
    assert f", {when.replace('T', ' ')}." in missing.output  # after the later one, newest first
    assert "2026-01-01 00:00:00.000000 (UTC)" in missing.output
    done = json.loads(_cli("features", "delete", "--snapshot-time", when, "--yes", "--json"))
    assert (done["rows"], done["deleted"], done["republished"], done["removed"]) == (5, True, 3, 1)

    store = feature_store.open_store(settings)
    got = feature_store.online(store, ids)
    assert [g["tenure"] for g in got[:3]] == [5, 5, 5] and got[3] is None and got[4]["tenure"] == 33
    assert {g[FEATURES_AS_OF] for g in got[:3]} == {datetime(2026, 1, 1, tzinfo=UTC).timestamp()}
    assert feature_store.online_reader(store, settings)(ids) == got  # the API's reader (its own query on PostgreSQL)
    labels = pd.DataFrame({ID_COLUMN: ids, LABEL_COLUMN: 1, "label_time": datetime.now(UTC) + timedelta(minutes=1)})
    joined = feature_store.training_frame(store, labels).set_index(ID_COLUMN).loc[ids[:3], "tenure"]
    assert joined.tolist() == [5, 5, 5]  # gone from the joins too
    _cli("features", "materialize")  # nothing puts it back
    assert feature_store.online(feature_store.open_store(settings), ids) == got
    assert "no snapshot taken" in CliRunner().invoke(main, ["features", "delete", "--snapshot-time", when]).output


def test_a_delete_after_a_correction_dated_earlier_than_the_last_materialization(layout: str, telco_csv: Path):
    """The corrected export, dated by its own time, went in after the last materialization but
    dated before its end: the wrong snapshot, deleted, stayed online ("0 customers are back on
    their previous snapshot") until the next materialization."""
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN])
    raw = raw[raw["total_charges"].str.strip() != ""].head(2).reset_index(drop=True)
    ids = raw[ID_COLUMN].tolist()
    raw.assign(tenure="70", snapshot_time="2026-12-05T00:00:00Z").to_csv("wrong.csv", index=False)
    raw.head(1).assign(tenure="20", snapshot_time="2026-12-05T12:00:00Z").to_csv("fixed.csv", index=False)
    _cli("features", "apply")
    _cli("features", "ingest", "wrong.csv")
    _cli("features", "materialize")
    _cli("features", "ingest", "fixed.csv")  # not materialized yet
    done = json.loads(_cli("features", "delete", "--snapshot-time", "2026-12-05T00:00:00Z", "--yes", "--json"))
    assert (done["rows"], done["republished"], done["removed"]) == (2, 1, 1), done
    got = feature_store.online(feature_store.open_store(get_settings()), ids)
    assert got[0]["tenure"] == 20 and got[0][FEATURES_AS_OF] == datetime(2026, 12, 5, 12, tzinfo=UTC).timestamp()
    assert got[1] is None  # the second had no other snapshot


def test_a_delete_that_waited_for_a_materialization_judges_by_what_it_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telco_csv: Path
):
    """The end of the last materialization was read before the lock: one that ran while the
    delete waited had published a later snapshot, and the delete wrote the customer's older
    one over it (the next refresh never mends that)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    settings = get_settings()
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN]).head(1)
    for name, tenure, at in (("first", "5", FIRST), ("wrong", "60", "2026-06-01"), ("later", "33", "2026-08-01")):
        raw.assign(tenure=tenure, snapshot_time=at).to_csv(f"{name}.csv", index=False)
    _cli("features", "apply")
    _cli("features", "ingest", "first.csv")
    _cli("features", "ingest", "wrong.csv")
    feature_store.materialize(settings, end=datetime(2026, 7, 1, tzinfo=UTC))  # the wrong one is online
    real, ran = feature_store._one_at_a_time, []  # noqa: SLF001

    def another_run_first(s):  # the daily refresh holds the lock when the delete asks for it
        if not ran:
            ran.append(True)
            _cli("features", "refresh", "later.csv")
        return real(s)

    monkeypatch.setattr(feature_store, "_one_at_a_time", another_run_first)
    done = feature_store.delete(settings, datetime(2026, 6, 1, tzinfo=UTC), apply=True)
    assert (done.rows, done.republished, done.removed) == (1, 0, 0)  # its online snapshot is the later one
    customer = raw[ID_COLUMN].iloc[0]
    assert feature_store.online(feature_store.open_store(settings), [customer])[0]["tenure"] == 33
    get_settings.cache_clear()


async def _aread(read: feature_store.PostgresOnlineReader, ids: list[str]) -> list:
    try:
        return await read.aread(ids)
    finally:
        await read.aclose()


def test_refresh_never_puts_an_older_snapshot_back_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          telco_csv: Path):  # fmt: skip
    """A snapshot a fast clock dated minutes ahead, already online, was replaced by the
    customer's older one: refresh's window ended at now and left it out."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN]).head(3)
    now = pd.Timestamp.now(tz="UTC")
    raw.assign(tenure="70", snapshot_time=(now + pd.Timedelta(minutes=4)).isoformat()).to_csv("ahead.csv", index=False)
    raw.assign(tenure="4", snapshot_time=(now - pd.Timedelta(hours=1)).isoformat()).to_csv("earlier.csv", index=False)
    try:
        _cli("features", "apply")
        _cli("features", "ingest", "ahead.csv")
        _cli("features", "materialize")
        _cli("features", "refresh", "earlier.csv")
        store = feature_store.open_store(get_settings())
        assert [row["tenure"] for row in feature_store.online(store, raw[ID_COLUMN].tolist())] == [70, 70, 70]
    finally:
        get_settings.cache_clear()


def test_a_materialization_waits_for_one_already_running_on_postgresql(tmp_path: Path, telco_csv: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """Two at once deadlocked in Feast's upserts: the loser exited 3 and its snapshots never
    went online. The second one now waits, says so, and then publishes."""
    import psycopg2

    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN])
    raw = raw[raw["total_charges"].str.strip() != ""].head(50)
    raw.assign(tenure="10", snapshot_time="2026-12-02").to_csv(tmp_path / "a.csv", index=False)
    monkeypatch.chdir(tmp_path)
    with postgres_database() as url:
        monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url)  # the materialize process inherits both
        monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
        get_settings.cache_clear()
        _cli("features", "apply")  # in this process: the one that must wait is a process of its own
        _cli("features", "ingest", "a.csv")
        command = [sys.executable, "-m", "churn_platform.cli", "features"]
        database = url.rsplit("/", 1)[1]
        holder = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
        holder.autocommit = True
        try:
            with holder.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (feature_store._MATERIALIZE_LOCK,))  # noqa: SLF001
                run = subprocess.Popen([*command, "materialize"], cwd=tmp_path, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)  # fmt: skip
                deadline = time.monotonic() + 120
                waiting = 0
                while not waiting and run.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.5)
                    # In this database: the other worker's tests take advisory locks too (the
                    # inference log's schema lock), and counting theirs failed this test once.
                    cur.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE "
                                "l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()")
                    waiting = cur.fetchone()[0]
                assert waiting == 1 and run.poll() is None, "materialize did not wait for the one running"
                cur.execute("SELECT pg_advisory_unlock(%s)", (feature_store._MATERIALIZE_LOCK,))  # noqa: SLF001
            said = run.communicate(timeout=300)[0]
        finally:
            holder.close()
        assert run.returncode == 0 and "waiting for another materialization" in said, said
        try:
            online = feature_store.online(feature_store.open_store(get_settings()), raw[ID_COLUMN].tolist())
        finally:
            get_settings.cache_clear()
    assert {row["tenure"] for row in online} == {10}


def test_an_offline_table_of_another_schema_is_named_and_its_time_is_indexed(
    tmp_path: Path, telco_csv: Path, monkeypatch: pytest.MonkeyPatch
):
    """A table made by a release with fewer features was kept by CREATE IF NOT EXISTS, and the
    COPY into it failed as "feature store unavailable", exit 3 (retried by the CronJob)."""
    import psycopg2

    monkeypatch.chdir(tmp_path)
    data.read_table(telco_csv).head(5).to_csv("a.csv", index=False)
    with postgres_database() as url:
        monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url)
        get_settings.cache_clear()
        try:
            _cli("features", "apply")
            connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=url.rsplit("/", 1)[1])
            connection.autocommit = True
            try:
                with connection.cursor() as cur:
                    # Materialize's scan selects by time alone: an index on it keeps a day's run a day's read.
                    cur.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'customer_snapshots'")
                    assert any(d.endswith("(snapshot_time)") for (d,) in cur.fetchall())
                    cur.execute("ALTER TABLE customer_snapshots DROP COLUMN tenure")
                out = _cli("features", "ingest", "a.csv", "--as-of", "now", code=2)
                assert "table customer_snapshots has no column ['tenure']: it was made for another schema" in out
                with connection.cursor() as cur:
                    cur.execute("SELECT count(*) FROM customer_snapshots")
                    assert cur.fetchone()[0] == 0
                    # The other way: a feature this release dropped, NOT NULL as made. Its COPY failed
                    # as a not-null violation, "feature store unavailable", exit 3, retried daily.
                    cur.execute("ALTER TABLE customer_snapshots ADD COLUMN tenure BIGINT NOT NULL, "
                                "ADD COLUMN fax_line TEXT NOT NULL")  # fmt: skip
                out = _cli("features", "ingest", "a.csv", "--as-of", "now", code=2)
                assert (
                    "customer_snapshots has column ['fax_line'], which this release's schema has not, NOT NULL" in out
                ), out
                with connection.cursor() as cur:
                    cur.execute("ALTER TABLE customer_snapshots ALTER COLUMN fax_line DROP NOT NULL")
                _cli("features", "ingest", "a.csv", "--as-of", "now")  # as the message says: the old values kept
                with connection.cursor() as cur:
                    cur.execute("SELECT count(*), count(fax_line) FROM customer_snapshots")
                    assert cur.fetchone() == (5, 0)
            finally:
                connection.close()
        finally:
            get_settings.cache_clear()


def test_an_ingest_runs_beside_another_ones_open_transaction(tmp_path: Path, telco_csv: Path,
                                                            monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """Every ingest ran CREATE INDEX IF NOT EXISTS, which takes a SHARE lock on the table even
    when the index exists: it waited for any open insert, and two ingests deadlocked."""
    import psycopg2

    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN])
    raw = raw[raw["total_charges"].str.strip() != ""]
    raw.head(5).assign(snapshot_time="2026-12-01").to_csv(tmp_path / "a.csv", index=False)
    raw.iloc[5:10].assign(snapshot_time="2026-12-01").to_csv(tmp_path / "b.csv", index=False)
    monkeypatch.chdir(tmp_path)
    with postgres_database() as url:
        monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url)
        # libpq reads PGOPTIONS at each connect: a lock wait of more than 5 s fails the ingest
        # instead of hanging the test.
        monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=5000")
        get_settings.cache_clear()
        _cli("features", "apply")
        _cli("features", "ingest", "a.csv")
        holder = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=url.rsplit("/", 1)[1])
        try:
            with holder.cursor() as cur:  # another ingest's transaction, not yet committed
                cur.execute("INSERT INTO customer_snapshots SELECT * FROM customer_snapshots LIMIT 0")
                cur.execute("UPDATE customer_snapshots SET tenure = tenure WHERE customer_id = %s",
                            (str(raw.iloc[0]["customer_id"]),))  # fmt: skip
                said = _cli("features", "ingest", "b.csv")
        finally:
            holder.rollback()
            holder.close()
            get_settings.cache_clear()
    assert "ingested 5 of 5 rows" in said


def test_a_missing_online_store_file_is_named_and_the_api_makes_no_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telco_csv: Path
):
    """online.db deleted (or a folder copied without it): the API's reopening made an empty one
    in the store's folder, and materialize and delete failed "no such table" (exit 3, retried as
    an outage), where `features apply` is the mend."""
    import time

    from serving.features import FeatureSource

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN]).head(3)
    raw.to_csv("day.csv", index=False)
    _cli("features", "apply")
    _cli("features", "ingest", "day.csv", "--as-of", "2026-12-01")
    _cli("features", "materialize")
    online = tmp_path / "store" / "online.db"
    online.unlink()
    source = FeatureSource(get_settings())
    source.start()
    deadline = time.monotonic() + 30
    while source.status()["state"] == "opening":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert source.status()["state"] == "unavailable" and f"{online} is missing" in source.status()["detail"]
    assert not online.exists()
    for args in (["features", "materialize"], ["features", "delete", "--snapshot-time", "2026-12-01", "--yes"]):
        said = _cli(*args, code=2)
        assert f"the embedded online store {online} is missing" in said, said
        assert "run `churn-platform features apply`, then `features materialize`" in said
    _cli("features", "apply")
    _cli("features", "materialize")  # fills it again, from the first snapshot on
    ids = raw[ID_COLUMN].tolist()
    got = feature_store.online(feature_store.open_store(get_settings()), ids)
    assert all(g is not None for g in got), got
    # Read in chunks (SQLite's 250,000 variables), in order: the same as in one read.
    monkeypatch.setattr(feature_store, "ONLINE_CHUNK", 2)
    assert feature_store.online(feature_store.open_store(get_settings()), [ids[2], "nobody", *ids]) == [
        got[2], None, *got]
    get_settings.cache_clear()


def test_a_copied_store_never_reads_the_original_folders_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   telco_csv: Path):  # fmt: skip
    """The registry holds the offline file's absolute path: a copy materialized the original's
    snapshots (every value stale), and a moved store failed as unreachable (exit 3)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "first"))
    get_settings.cache_clear()
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN]).head(3)
    raw.assign(tenure="7").to_csv("june.csv", index=False)
    raw.assign(tenure="11").to_csv("july.csv", index=False)
    try:
        _cli("features", "apply")
        _cli("features", "ingest", "june.csv", "--as-of", "2026-06-30")
        shutil.copytree(tmp_path / "first", tmp_path / "copy")
        monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "copy"))
        get_settings.cache_clear()
        for command in (["ingest", "july.csv", "--as-of", "2026-07-31"], ["materialize"]):
            said = _cli("features", *command, code=2)
            assert f"was registered with the snapshots at {tmp_path / 'first'}" in said and "features apply" in said
        _cli("features", "refresh", "july.csv", "--as-of", "2026-07-31")  # apply, then its own snapshots
        store = feature_store.open_store(get_settings())
        assert [row["tenure"] for row in feature_store.online(store, raw[ID_COLUMN].tolist())] == [11, 11, 11]
    finally:
        get_settings.cache_clear()


def test_metrics_made_after_feast_is_imported_work():
    """Feast's import sets PROMETHEUS_MULTIPROC_DIR (undone after it); prometheus_client, first
    imported under it, chose multi-process values for good, and every metric made afterwards
    failed: an API or job that opened the store before making its metrics."""
    code = ("from churn_platform import feature_store; feature_store._import_feast(); "
            "from serving.metrics import Metrics; Metrics(); print('made')")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "made" in done.stdout, done.stderr[-1500:]


def test_as_of_modified_dates_the_rows_by_the_exports_last_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 telco_csv: Path):  # fmt: skip
    """The daily job dated whatever file it found 'now': an ETL that stopped left yesterday's
    export, loaded again as today's snapshot, online and in every later training set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    data.read_table(telco_csv).drop(columns=[LABEL_COLUMN]).head(3).to_csv("export.csv", index=False)
    written = datetime(2026, 6, 30, 23, 15, tzinfo=UTC)
    os.utime("export.csv", (written.timestamp(), written.timestamp()))
    try:
        said = _cli("features", "refresh", "export.csv", "--as-of", "modified")
        assert "(snapshots 2026-06-30 23:15:00 .. 2026-06-30 23:15:00 UTC)" in said, said
        ahead = (datetime.now(UTC) + timedelta(hours=1)).timestamp()
        os.utime("export.csv", (ahead, ahead))  # a clock ahead: never the latest snapshot for good
        said = _cli("features", "ingest", "export.csv", "--as-of", "modified", code=2)
        assert "--as-of modified: export.csv was last written at" in said and "in the future" in said
        assert "not found: gone.csv" in _cli("features", "ingest", "gone.csv", "--as-of", "modified", code=2)
        # Replaced by the ETL between its time's read and its rows' (seconds: Feast is imported between):
        # the new rows were dated by the old file's write, before labels they would then join.
        os.utime("export.csv", (written.timestamp(), written.timestamp()))
        read = data.read_table

        def replaced_while_read(*args, **kwargs):
            rows = read(*args, **kwargs)
            os.utime("export.csv", (written.timestamp() + 60, written.timestamp() + 60))
            return rows

        monkeypatch.setattr(data, "read_table", replaced_while_read)
        said = _cli("features", "refresh", "export.csv", "--as-of", "modified", code=3)
        assert "export.csv was written again while it was read (at 2026-06-30 23:15:00, then 2026-06-30 23:16" in said
        monkeypatch.setattr(data, "read_table", read)
        assert "(snapshots 2026-06-30 23:16:00 .. 2026-06-30 23:16:00 UTC)" in _cli("features", "refresh", "export.csv",
                                                                                   "--as-of", "modified")  # fmt: skip
    finally:
        get_settings.cache_clear()


def test_the_rejects_file_keeps_each_bad_rows_snapshot_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            telco_csv: Path):  # fmt: skip
    """It had the id and the features but not the time, the very value to mend."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    raw = data.read_table(telco_csv).drop(columns=[LABEL_COLUMN]).head(4)
    # Before 1970 (a year typo) was stored and joined into training sets, but never went online.
    raw.assign(snapshot_time=["", "05/06/2026", "2099-01-01", "1969-12-31T23:00:00Z"]).to_csv("times.csv", index=False)
    try:
        _cli("features", "apply")
        # --as-of takes a zone as the column does (it refused one, where the docs say ISO 8601).
        said = _cli("features", "ingest", "times.csv", "--as-of", "2026-06-30T23:59:59+02:00", code=1)
        assert "ingested 1 of 4 rows" in said and "snapshots 2026-06-30 21:59:59" in said
        # Why, without reading the Parquet file: the first three reasons, by row.
        assert "The first: row 2: snapshot_time: " in said
        assert " | row 4: snapshot_time: 1969-12-31 is before 1970" in said
        rejects = pd.read_parquet("times.rejects.parquet")
        assert rejects["snapshot_time"].tolist() == ["05/06/2026", "2099-01-01", "1969-12-31T23:00:00Z"]
        assert rejects["reason"].iloc[-1] == "snapshot_time: 1969-12-31 is before 1970"
        assert rejects[ID_COLUMN].tolist() == raw[ID_COLUMN].tolist()[1:]
        # A column of bytes beside them (a row hash) failed the rejects file as text: exit 70, nothing loaded.
        raw.head(1).assign(row_hash=[b"\xff\x00"]).to_parquet("hashed.parquet", index=False)
        said = _cli("features", "ingest", "hashed.parquet", "--as-of", "2026-06-30", "--rejects", "r.parquet")
        assert "ingested 1 of 1 rows" in said and len(pd.read_parquet("r.parquet")) == 0
    finally:
        get_settings.cache_clear()


def test_bad_files_and_a_store_that_is_down_get_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               telco_csv: Path):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    data.read_table(telco_csv).head(5).to_csv("no_time.csv", index=False)
    data.read_table(telco_csv).head(5).assign(tenure="seven").to_csv("all_bad.csv", index=False)
    data.read_table(telco_csv).head(5).assign(snapshotTime="2026-05-01").to_csv("camel.csv", index=False)
    data.read_table(telco_csv).head(5).assign(snapshot_time="2026-05-01").to_csv("semi.csv", index=False, sep=";")
    cases = [
        ((), ["features", "materialize"], 2, f"not registered: no feature store at {tmp_path / 'store'}"),
        # Before apply (a misspelt CHURN_FEATURE_STORE_DIR, say), nothing goes into a folder no one
        # reads, and no folder is made (the message says it is still missing).
        ((), ["features", "ingest", "no_time.csv", "--as-of", "now"], 2, "not registered: no feature store at"),
        # A typo's folder, with its parents, took the store anywhere, exit 0.
        (("CHURN_FEATURE_STORE_DIR", str(tmp_path / "nowhere" / "store")), ["features", "apply"], 2,
         f"CHURN_FEATURE_STORE_DIR: no folder {tmp_path / 'nowhere'} to make store in (a typo?)"),
        (("CHURN_FEATURE_STORE_DIR", str(tmp_path / "store")), ["features", "apply"], 0,
         "registered customer, customer_features"),
        ((), ["features", "materialize"], 2, "no customer snapshots ingested yet"),  # was exit 3, from Feast
        # Nothing loaded: the summary says why (it was Feast's error from materializing, exit 3).
        ((), ["features", "refresh", "all_bad.csv", "--as-of", "2026-01-01"], 1, "ingested 0 of 5 rows"),
        ((), ["features", "ingest", "no_time.csv"], 2, "no_time.csv: missing required columns: ['snapshot_time (or"),
        # It was stored at the file's write time, its history lost: the CronJob refreshes with --as-of modified.
        ((), ["features", "ingest", "camel.csv", "--as-of", "modified"], 2,
         "no snapshot_time column, and ['snapshotTime'] is not read: rename the snapshots' time to snapshot_time"),
        ((), ["features", "ingest", "missing.csv", "--as-of", "2026-01-01"], 2, "data file not found: missing.csv"),
        # Its one-column header names snapshot_time too: not a misnamed time, a file cut by semicolons.
        ((), ["features", "ingest", "semi.csv"], 2, "the header is one column holding semicolons"),
        ((), ["features", "ingest", "no_time.csv", "--as-of", "yesterday"], 2, "Invalid value for '--as-of'"),
        # A zone without a time: fromisoformat read it as 02:00 UTC; the column refuses it.
        ((), ["features", "ingest", "no_time.csv", "--as-of", "2026-06-30+02:00"], 2, "is not 'now', 'modified' nor"),
        ((), ["features", "ingest", "no_time.csv", "--as-of", "2999-01-01"], 2, "'2999-01-01' is in the future"),
        ((), ["features", "ingest", "no_time.csv", "--as-of", "now", "--rejects", "./no_time.csv"], 2,
         "--rejects ./no_time.csv names the same file as the input"),
        ((), ["features", "ingest", "no_time.csv", "--as-of", "now", "--rejects",
              "store/offline/customer_snapshots.parquet"], 2, "is inside the feature store's folder"),
        # It replaced the online store (then the registry, and not even `apply` mended that), exit 0.
        ((), ["features", "ingest", "no_time.csv", "--as-of", "now", "--rejects", "store/registry.db"], 2,
         "is inside the feature store's folder"),
        ((), ["features", "ingest", "no_time.csv", "--as-of", "now", "--rejects", "no_time.csv/r.parquet"], 2,
         "--rejects no_time.csv/r.parquet: its folder cannot be made"),  # was exit 70
        (("CHURN_FEATURE_STORE_URL", "postgresql://postgres@127.0.0.1:1/churn"), ["features", "apply"], 3,
         "feature store unavailable: OperationalError"),
        (("CHURN_FEATURE_STORE_URL", "mysql://u@h/d"), ["features", "apply"], 2, "must be postgresql://"),
    ]  # fmt: skip
    try:
        for env, args, code, message in cases:
            if env:
                monkeypatch.setenv(*env)
                get_settings.cache_clear()
            result = CliRunner().invoke(main, args)
            assert (result.exit_code, message in result.output) == (code, True), (args, result.output)
            assert "Traceback" not in result.output
        assert len(pd.read_csv("no_time.csv")) == 5
        assert not (tmp_path / "store" / "offline").exists()
        monkeypatch.delenv("CHURN_FEATURE_STORE_URL")
        get_settings.cache_clear()
        assert CliRunner().invoke(main, ["features", "apply"]).exit_code == 0  # the registry is whole
    finally:
        get_settings.cache_clear()


def test_a_silent_database_is_not_waited_on_and_a_missing_privilege_is_not_an_outage(
    embedded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telco_csv: Path
):
    """A database that accepts and never answers (a failover's old address) held the API's
    store "opening" for as long as TCP waited; a user without CREATE on the schema made
    `train --from-features` exit 3, an outage the CronJob retried, for a grant to make."""
    import psycopg2

    from churn_platform.errors import SettingsError
    from churn_platform.settings import Settings
    from serving.features import FeatureSource

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never speaks
    source = FeatureSource(Settings(feature_store_url=f"postgresql://u@127.0.0.1:{silent.getsockname()[1]}/f"))
    source.start()  # as the API does
    deadline = time.monotonic() + 90  # a few connect_timeouts of 5 s; without them, until TCP gives up
    while source.state == "opening" and time.monotonic() < deadline:
        time.sleep(0.5)
    silent.close()
    assert source.status() == {"state": "unavailable", "detail": source.reason}
    assert "timeout" in source.reason, source.reason

    monkeypatch.chdir(tmp_path)
    raw = data.read_table(telco_csv).head(50)
    raw.drop(columns=[LABEL_COLUMN]).to_csv("snapshot.csv", index=False)
    raw[[ID_COLUMN, LABEL_COLUMN]].assign(label_time="2026-04-01").to_csv("labels.csv", index=False)
    role = f"reader_{os.getpid()}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    try:
        with postgres_database() as url:
            monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url)
            get_settings.cache_clear()
            for step in (["apply"], ["ingest", "snapshot.csv", "--as-of", "2026-03-01"], ["materialize"]):
                _cli("features", *step)
            database = url.rsplit("/", 1)[1]
            with admin.cursor() as cur:
                cur.execute(f'CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE "{database}" TO {role}')
            owner = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
            with owner, owner.cursor() as cur:  # read only: PostgreSQL 15 gives PUBLIC no CREATE on public
                cur.execute(f"GRANT USAGE ON SCHEMA public TO {role}; "
                            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
            owner.close()
            monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url.replace(f"//{PG_USER}@", f"//{role}@", 1))
            get_settings.cache_clear()
            # The API's side reads with SELECT alone, as docs/deploy.md says.
            store = feature_store.open_store(get_settings())
            assert feature_store.online_reader(store, get_settings())([raw[ID_COLUMN][0]])[0] is not None
            said = _cli("train", "--from-features", "--labels", "labels.csv", code=2)  # was 3: "unavailable"
            assert "the feature store's database refused its user a privilege: permission denied" in said, said
            with pytest.raises(SettingsError):  # the same for every command that meets one
                feature_store.materialize(get_settings())
            with admin.cursor() as cur:  # refused at connect, where no SQLSTATE reaches the client: was exit 3
                cur.execute(f'REVOKE CONNECT ON DATABASE "{database}" FROM PUBLIC, {role}')
            said = _cli("features", "materialize", code=2)
            assert "the feature store's database refused its user a privilege: " in said, said
            assert "permission denied for database" in said, said
            # A role the server does not know (a typo, a password rotated away): the URL's to mend, was exit 3.
            monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url.replace(f"//{PG_USER}@", f"//no_{role}@", 1))
            get_settings.cache_clear()
            said = _cli("features", "materialize", code=2)
            assert "the feature store's database refused the login: " in said, said
            assert f'role "no_{role}" does not exist' in said and "CHURN_FEATURE_STORE_URL" in said, said
    finally:
        get_settings.cache_clear()
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def test_a_job_user_with_a_schema_of_its_own_keeps_the_store_where_feast_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telco_csv: Path
):
    """A common grant on PostgreSQL 15: a schema named after the user. Our connections made the
    snapshots table there (the server's default path, "$user" first) and Feast's, which see only
    its db_schema (public), could not find it: materialize "unavailable", exit 3, retried daily."""
    import psycopg2

    monkeypatch.chdir(tmp_path)
    raw = data.read_table(telco_csv).head(30)
    raw.drop(columns=[LABEL_COLUMN]).to_csv("snapshot.csv", index=False)
    role = f"features_{os.getpid()}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {role} LOGIN")
        with postgres_database() as url:
            database = url.rsplit("/", 1)[1]
            owner = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
            with owner, owner.cursor() as cur:
                cur.execute(
                    f"GRANT USAGE, CREATE ON SCHEMA public TO {role}; CREATE SCHEMA {role} AUTHORIZATION {role}"
                )
            owner.close()
            monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url.replace(f"//{PG_USER}@", f"//{role}@", 1))
            get_settings.cache_clear()
            for step in (["apply"], ["ingest", "snapshot.csv", "--as-of", "2026-03-01"], ["materialize"]):
                _cli("features", *step)  # materialize was exit 3: "relation customer_snapshots does not exist"
            store = feature_store.open_store(get_settings())
            found = feature_store.online_reader(store, get_settings())([raw[ID_COLUMN][0]])[0]
            assert found is not None and found["tenure"] == _typed(raw.drop(columns=[LABEL_COLUMN]))["tenure"].iloc[0]
            check = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
            with check, check.cursor() as cur:
                cur.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = %s",
                            (feature_store.OFFLINE_TABLE,))  # fmt: skip
                assert cur.fetchall() == [("public",)]
            check.close()
    finally:
        get_settings.cache_clear()
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def test_train_from_features_records_the_view_and_the_label_times(embedded: str, telco_csv: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    monkeypatch.setenv("CHURN_FEATURE_STORE_DIR", "store")
    monkeypatch.delenv("CHURN_FEATURE_STORE_URL", raising=False)
    get_settings.cache_clear()
    raw = data.read_table(telco_csv)
    raw = raw[raw["total_charges"].str.strip() != ""].head(600).reset_index(drop=True)
    raw.drop(columns=[LABEL_COLUMN]).to_csv("snapshot.csv", index=False)
    labels = raw[[ID_COLUMN, LABEL_COLUMN]].assign(label_time="2026-04-01T12:00:00Z")
    early = labels.head(10).assign(label_time="2025-01-01")  # before any snapshot: nothing to learn from
    # The same label twice is one (Feast's join kept one silently, and counted the other as a label
    # without features).
    pd.concat([labels, early, labels.head(3)]).to_csv("labels.csv", index=False)
    _cli("features", "apply")
    labels.to_csv("labels_first.csv", index=False)
    nothing_yet = _cli("train", "--from-features", "--labels", "labels_first.csv", code=2)  # was exit 3
    assert "no customer snapshots ingested yet" in nothing_yet
    ingested = _cli("features", "ingest", "snapshot.csv", "--as-of", "2026-03-01", "--json")
    summary, _ = json.JSONDecoder().raw_decode(ingested[ingested.index("{") :])
    assert (summary["rejected"], summary["rejects"]) == (0, None)  # no file written, none named
    for bad, message in ((labels.assign(churn=["Yes"] * 4 + ["maybe"] + ["No"] * 595),
                          "1 rows whose churn is not Yes/No, 1/0 or true/false, first at rows [5]"),  # not row 22
                         (pd.concat([labels, labels.head(1).assign(churn="No" if labels.churn[0] == "Yes" else "Yes")]),
                          "different labels for one customer at one label_time, at rows [1, 601]")):  # fmt: skip
        bad.to_csv("bad_labels.csv", index=False)
        assert message in _cli("train", "--from-features", "--labels", "bad_labels.csv", code=2)

    refused = CliRunner().invoke(main, ["train", "--from-features"])
    assert refused.exit_code == 2 and "--from-features needs --labels" in refused.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _cli("train", "--from-features", "--labels", "labels.csv", "--json")
    # The labels' ids are joined as the offline source's dtype: dask warned of a mismatch every run.
    assert not [w for w in caught if "data type mismatches" in str(w.message)]
    result, _ = json.JSONDecoder().raw_decode(out[out.index("{\n") :])  # among MLflow's log lines
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.tags["feature_view"] == "churn/customer_features"
    assert run.data.tags["label_time_from"] == run.data.tags["label_time_to"] == "2026-04-01T12:00:00+00:00"
    assert run.data.tags["labels_without_features"] == "10"
    assert run.data.params["from_features"] == "True" and run.data.params["labels"] == "labels.csv"
    assert not {"data", "n_rows", "drift"} & set(run.data.params)  # data=synthetic, n_rows=5000 said what was not
    assert run.data.metrics["training_rows"] + run.data.metrics["validation_rows"] == 600

    # A stored value this release refuses (a category since dropped): "row 2" counted the join's
    # rows, which no file has; the customer and the label's time are named instead.
    offline = Path("store") / "offline" / "customer_snapshots.parquet"
    stored = pd.read_parquet(offline)
    stored.loc[stored[ID_COLUMN] == labels[ID_COLUMN][4], "internet_service"] = "Fiber"
    stored.to_parquet(offline, index=False)
    said = _cli("train", "--from-features", "--labels", "labels_first.csv", code=2)
    assert (f"1 labels in labels_first.csv meet a stored feature snapshot this release's schema refuses "
            f"({labels[ID_COLUMN][4]} at 2026-04-01T12:00:00+00:00: internet_service: ") in said, said


def test_refresh_from_s3_loads_materializes_and_puts_the_rejects_beside_the_export(
    stack_env: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, telco_csv: Path
):
    """What the daily CronJob runs: an s3:// export dated `now`, the rejects to s3://, exit 1
    with the good rows loaded and already in the online store (PostgreSQL layout)."""
    monkeypatch.chdir(tmp_path)
    raw = data.read_table(telco_csv).head(40).reset_index(drop=True)
    raw.loc[3, "tenure"] = "-1"
    raw.loc[20, ID_COLUMN] = "bad\x00id"  # PostgreSQL cannot store a NUL: refused by name, the rest loaded
    buffer = io.BytesIO()
    raw.to_parquet(buffer, index=False)
    s3 = stack_env.s3()
    s3.put_object(Bucket=stack_env.bucket, Key="data/features/customers.parquet", Body=buffer.getvalue())
    export = f"s3://{stack_env.bucket}/data/features/customers.parquet"
    rejects = f"s3://{stack_env.bucket}/data/features/customers.rejects.parquet"
    with postgres_database() as url:
        monkeypatch.setenv("CHURN_FEATURE_STORE_URL", url)
        get_settings.cache_clear()
        before = datetime.now(UTC)
        args = ["features", "refresh", export, "--as-of", "now", "--rejects", rejects, "--json"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        out = json.loads(result.stdout)  # Feast's progress goes to stderr: stdout is the JSON alone
        assert (out["rows"], out["ingested"], out["rejected"], out["rejects"]) == (40, 38, 2, rejects)
        assert before <= datetime.fromisoformat(out["first"]) <= datetime.now(UTC)
        assert datetime.fromisoformat(out["materialized_to"]) >= datetime.fromisoformat(out["first"])
        stored = s3.get_object(Bucket=stack_env.bucket, Key="data/features/customers.rejects.parquet")
        bad = pd.read_parquet(io.BytesIO(stored["Body"].read()))
        assert bad["row"].tolist() == [4, 21] and "tenure" in bad["reason"][0]
        assert bad["reason"][1] == "customer_id: contains a control character (tab, newline, NUL...)"
        store = feature_store.open_store(get_settings())
        kept = raw.drop(index=20)
        ids = kept[ID_COLUMN].tolist()
        got = feature_store.online(store, ids)
        assert got[3] is None and sum(g is not None for g in got) == 38
        # The next day's export holds 10 customers, with a snapshot_time column: the column wins
        # over --as-of, those 10 get the new values, the others keep theirs, and the rejects
        # file (written every run) is this run's: empty.
        later = datetime.now(UTC) + timedelta(minutes=2)  # a CRM whose clock runs two minutes ahead
        changed = raw.head(10).assign(tenure=lambda f: (f["tenure"].astype(int) + 12).astype(str),
                                      snapshot_time=later.isoformat())  # fmt: skip
        buffer = io.BytesIO()
        changed.to_parquet(buffer, index=False)
        s3.put_object(Bucket=stack_env.bucket, Key="data/features/customers.parquet", Body=buffer.getvalue())
        result = CliRunner().invoke(main, [*args[:-1]])
        assert result.exit_code == 0, result.output
        again = feature_store.online(feature_store.open_store(get_settings()), ids)
        assert [a["tenure"] for a in again[:3]] == [int(t) + 12 for t in raw["tenure"][:3]]
        assert again[3]["tenure"] == int(raw.loc[3, "tenure"]) + 12  # rejected before, loaded now
        assert [a["tenure"] for a in again[10:]] == [int(t) for t in kept["tenure"][10:]]
        stored = s3.get_object(Bucket=stack_env.bucket, Key="data/features/customers.rejects.parquet")
        assert pd.read_parquet(io.BytesIO(stored["Body"].read())).empty
        frame = feature_store.training_frame(
            feature_store.open_store(get_settings()),
            pd.DataFrame({ID_COLUMN: ids[:2], LABEL_COLUMN: 1, "label_time": [later + timedelta(minutes=1)] * 2}),
        )
        assert frame.set_index(ID_COLUMN)["tenure"][ids[:2]].tolist() == [int(t) + 12 for t in raw["tenure"][:2]]
    get_settings.cache_clear()
