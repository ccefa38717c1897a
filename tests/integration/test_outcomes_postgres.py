"""Outcomes written to a real PostgreSQL: the figures an upload reports are its own, even while
another upload runs, and uploads sharing customers wait for each other instead of deadlocking."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from churn_platform import inference_log, outcomes
from churn_platform.errors import StorageUnreachable
from tests.services import PG_HOST, PG_PORT, PG_USER, postgres_database

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def checked(ids: list[str], churned: str = "yes", observed_at: str = "2026-11-01") -> pd.DataFrame:
    frame = pd.DataFrame({"customer_id": ids, "churned": churned, "observed_at": observed_at})
    result = outcomes.check(frame, now=NOW)
    assert result.rejects.empty
    return result.good


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg", "postgresql"])
def test_ingesting_twice_changes_nothing_and_a_new_label_replaces_the_old(driver):
    """With either driver the settings accept (plain postgresql:// is psycopg 3 in SQLAlchemy
    2.1): the COPY was psycopg2's alone, a traceback (exit 70) under psycopg 3."""
    with postgres_database() as url:
        engine = sa.create_engine(url.replace("postgresql+psycopg2", driver, 1))
        first = checked([f"c{i}" for i in range(10)])
        assert outcomes.write(engine, first, "crm.csv") == outcomes.Written(10, 0, 0)
        assert outcomes.write(engine, first, "crm.csv") == outcomes.Written(0, 0, 10)
        change = pd.concat([checked(["c0"], churned="no"), checked(["c0"], observed_at="2026-11-02")])
        assert outcomes.write(engine, change, "fix.csv") == outcomes.Written(1, 1, 0)
        engine.dispose()


def test_concurrent_uploads_each_report_their_own_rows_and_never_deadlock():
    with postgres_database() as url:
        engine = sa.create_engine(url, pool_size=4)
        outcomes.upgrade(engine)
        shared = [f"s{i:05d}" for i in range(20_000)]
        uploads = [
            checked([f"a{i:05d}" for i in range(20_000)]),  # only its own customers
            checked([f"b{i:05d}" for i in range(20_000)]),
            checked(shared),  # the same customers as the next one, labelled the other way
            checked(shared[::-1], churned="no"),
        ]
        start = threading.Barrier(len(uploads))

        def write(good: pd.DataFrame) -> outcomes.Written:
            start.wait()
            return outcomes.write(engine, good, "concurrent", chunk_rows=2000)

        with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
            written = list(pool.map(write, uploads))
        engine.dispose()
    assert written[:2] == [outcomes.Written(20_000, 0, 0)] * 2
    shared_results = sorted(written[2:], key=lambda w: w.inserted)
    assert shared_results == [outcomes.Written(0, 20_000, 0), outcomes.Written(20_000, 0, 0)]


def test_a_database_that_refuses_every_write_is_unavailable_not_bad_data():
    """A standby after a failover is read-only: a 503 / exit 3 to send again later, not a 422 /
    exit 2 that tells the sender their outcomes are wrong (a client would drop them)."""
    with postgres_database() as url:
        engine = sa.create_engine(url)
        outcomes.upgrade(engine)
        with engine.begin() as db:
            db.exec_driver_sql(f"ALTER DATABASE {engine.url.database} SET default_transaction_read_only = on")
        engine.dispose()
        frame = pd.DataFrame({"customer_id": ["c1"], "churned": ["yes"], "observed_at": ["2026-11-01"]})
        with pytest.raises(StorageUnreachable, match="read-only transaction"):
            outcomes.ingest(frame, url, source="crm.csv", now=NOW)


def test_a_job_whose_user_may_not_read_the_log_is_told_to_grant_it_not_to_retry():
    """A missing grant was 'cannot read the inference log', exit 3: the CronJob retried it as
    an outage, and it failed the same way until someone looked."""
    import os

    from churn_platform import retraining
    from churn_platform.errors import SettingsError, StorageRefused

    role = f"no_grant_{os.getpid()}"
    try:
        with postgres_database() as url:
            engine = sa.create_engine(url)
            inference_log.upgrade(engine)
            outcomes.upgrade(engine)
            with engine.begin() as db:
                db.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
            engine.dispose()
            as_role = url.replace("//postgres@", f"//{role}@", 1)
            with pytest.raises(SettingsError, match="refused this job's database user: permission denied for table"):
                retraining.labelled(as_role, "churn", None, 30)
            # Writing outcomes too: it was exit 3, retried as an outage; the API still answers 503
            # (a StorageUnreachable), so a CRM keeps the outcomes it sent.
            frame = pd.DataFrame({"customer_id": ["c1"], "churned": ["yes"], "observed_at": ["2026-11-01"]})
            grant = "this database user may not .*grant it CONNECT and TEMPORARY on the database .*, SELECT, INSERT"
            with pytest.raises(StorageRefused, match=grant) as refused:
                outcomes.ingest(frame, as_role, source="crm.csv", now=NOW)
            assert refused.value.exit_code == 2 and isinstance(refused.value, StorageUnreachable)
            with sa.create_engine(url).begin() as db:  # refused at connect: no SQLSTATE reaches the client
                db.exec_driver_sql(f'REVOKE CONNECT ON DATABASE "{url.rsplit("/", 1)[1]}" FROM PUBLIC')
            with pytest.raises(SettingsError, match="permission denied for database"):
                retraining.labelled(as_role, "churn", None, 30)
            with pytest.raises(StorageRefused, match="permission denied for database"):
                outcomes.ingest(frame, as_role, source="crm.csv", now=NOW)
    finally:  # the database is gone: the role owns nothing, and has no grant left
        with sa.create_engine(f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres").begin() as db:
            db.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")


def test_a_url_whose_login_postgres_refuses_is_the_urls_to_mend_not_an_outage_to_retry():
    """A wrong role, password or database name in a URL was exit 3: a CronJob retried it as an
    outage, and it failed the same way until someone looked."""
    from churn_platform import retraining
    from churn_platform.errors import SettingsError, StorageRefused

    server = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}"
    frame = pd.DataFrame({"customer_id": ["c1"], "churned": ["yes"], "observed_at": ["2026-11-01"]})
    for url, problem in [
        (server.replace(f"//{PG_USER}@", "//no_such_role@", 1) + "/postgres", 'role "no_such_role" does not exist'),
        (f"{server}/no_such_database", 'database "no_such_database" does not exist'),
    ]:
        with pytest.raises(SettingsError, match=f"refused this job's login: .*{problem}.*check the user, password"):
            retraining.labelled(url, "churn", None, 30)
        # The API still answers 503 (a StorageUnreachable): a CRM keeps the outcomes it sent.
        with pytest.raises(StorageRefused, match=f"it refused the login .*{problem}") as refused:
            outcomes.ingest(frame, url, source="crm.csv", now=NOW)
        assert refused.value.exit_code == 2 and isinstance(refused.value, StorageUnreachable)


def test_the_horizon_is_the_same_hours_whatever_the_session_time_zone():
    """90 days before an outcome in November reaches back into summer time: counted in New York
    calendar days it was an hour longer than on SQLite, and matched a prediction SQLite does not."""
    observed = datetime(2026, 11, 10, 12, tzinfo=UTC)
    with postgres_database() as url:
        engine = sa.create_engine(url, connect_args={"options": "-c timezone=America/New_York"})
        inference_log.upgrade(engine)
        log = inference_log.table(sa.MetaData())
        rows = [("early", observed - timedelta(days=90, minutes=30)),
                ("inside", observed - timedelta(days=89, hours=23))]  # fmt: skip
        with engine.begin() as db:
            db.execute(log.insert(), [
                {"request_id": f"r{i}", "row_index": 0, "scored_at": at, "model_name": "churn", "model_version": 1,
                 "customer_id": customer, "churn_probability": 0.5}
                for i, (customer, at) in enumerate(rows)
            ])  # fmt: skip
        outcomes.write(engine, checked(["early", "inside"], observed_at=observed.isoformat()), "crm.csv")
        params = {"name": "churn", "version": 1, "horizon_days": 90,
                  **outcomes.window_params("postgresql", observed - timedelta(days=1), observed + timedelta(days=1))}
        with engine.connect() as db:
            matched = db.execute(sa.text(outcomes.matched_sql("postgresql")), params).fetchall()
        engine.dispose()
    assert len(matched) == 1  # "inside" only, as on SQLite


def test_the_judge_rule_is_the_same_on_postgresql():
    from tests.unit.test_outcomes import judge_rule_holds

    with postgres_database() as url:
        judge_rule_holds(sa.create_engine(url))
