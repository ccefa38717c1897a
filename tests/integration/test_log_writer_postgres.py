"""The writer's bulk load into a real PostgreSQL: binary COPY straight into the table, through a
staging table when a replay holds ids already stored (skipped), text and NULLs intact."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from datetime import UTC, datetime

import msgspec
import pytest
import sqlalchemy as sa

from churn_platform import data, outcomes
from serving.log_writer import Database, decode_frame
from tests.services import postgres_database

pytestmark = pytest.mark.integration


def frame(*items: list) -> list:
    """Items as the loader has them: through the pipe's MessagePack, decoded by the writer."""
    return decode_frame(msgspec.msgpack.encode(items))


def test_copy_load_skips_stored_ids_and_keeps_text_and_nulls():
    records = data.to_records(data.generate(5, seed=1).drop(columns=["churn"]))
    records[0]["customer_id"], records[1]["customer_id"] = None, 'quote " and, comma'
    with postgres_database() as url:
        database = Database(url)
        try:
            first = database.insert(frame(["r1", datetime.now(UTC), "churn", 1, "production", records, [0.1] * 5]))
            replay = database.insert(frame(["r1", datetime.now(UTC), "churn", 1, "production", records, [0.1] * 5]))
            more = database.insert(frame(["r2", datetime.now(UTC), "churn", 2, "production", records[:2], [0.9] * 2]))
            mixed = database.insert(frame(  # a replay that holds stored rows and new ones: only the new count
                ["r2", datetime.now(UTC), "churn", 2, "production", records[:2], [0.9] * 2],
                ["r3", datetime.now(UTC), "churn", 2, "production", records[:1], [0.5]],
            ))  # fmt: skip
        finally:
            database.dispose()
        assert (first, replay, more, mixed) == (5, 0, 2, 1)
        assert database.copy_format == "binary"
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT customer_id, tenure FROM inference_log ORDER BY id")).fetchall()
        engine.dispose()
    assert [r[0] for r in stored[:2]] == [None, 'quote " and, comma']
    assert [r[1] for r in stored[:5]] == [r["tenure"] for r in records] and len(stored) == 8


def altered_table(url: str, ddl: str) -> sa.Engine:
    """The log table as the writer makes it, then changed by hand with ``ddl``; an engine on it."""
    database = Database(url)
    database.ensure_table()
    database.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(ddl))
    return engine


def test_a_table_whose_column_types_were_changed_by_hand_still_loads_as_text():
    """Binary COPY sends the declared types; a column altered to another type (NUMERIC here)
    would refuse every batch, so such a table is loaded as text, which PostgreSQL converts."""
    records = data.to_records(data.generate(3, seed=3).drop(columns=["churn"]))
    records[0]["monthly_charges"] = 29  # an integer for a float feature: stored as 29.0
    with postgres_database() as url:
        engine = altered_table(url, "ALTER TABLE inference_log ALTER COLUMN churn_probability TYPE NUMERIC(6, 4)")
        database = Database(url)
        try:
            item = ["r", datetime.now(UTC), "churn", 1, "production", records, [0.12345] * 3]
            inserted = database.insert(frame(item))
            assert inserted == 3 and database.copy_format == "text"
        finally:
            database.dispose()
        with engine.connect() as conn:
            query = "SELECT monthly_charges, churn_probability FROM inference_log ORDER BY row_index"
            stored = conn.execute(sa.text(query)).fetchall()
        engine.dispose()
    assert stored[0][0] == 29.0 and [float(r[1]) for r in stored] == [0.1235] * 3


EARLIER_TABLE = """CREATE TABLE inference_log (
    id BIGSERIAL PRIMARY KEY, request_id VARCHAR(64) NOT NULL, row_index INTEGER NOT NULL,
    scored_at TIMESTAMP WITH TIME ZONE NOT NULL, model_name VARCHAR(256) NOT NULL, model_version INTEGER NOT NULL,
    customer_id VARCHAR(64), {features}, churn_probability FLOAT NOT NULL,
    CONSTRAINT uq_inference_log_request_row UNIQUE (request_id, row_index))"""


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_table_from_an_earlier_release_gains_the_new_columns_and_keeps_its_rows(dialect, tmp_path):
    from churn_platform.schema import FEATURES

    kinds = {"category": "VARCHAR(64)", "integer": "INTEGER", "float": "FLOAT"}
    ddl = EARLIER_TABLE.format(features=", ".join(f"{f.name} {kinds[f.kind]}" for f in FEATURES))
    records = data.to_records(data.generate(3, seed=2).drop(columns=["churn"]))
    with postgres_database() as pg_url:
        url = pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path}/log.db"
        if dialect == "sqlite":
            ddl = ddl.replace("BIGSERIAL", "INTEGER")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(ddl))
            conn.execute(sa.text(
                "INSERT INTO inference_log (request_id, row_index, scored_at, model_name, model_version, "
                "churn_probability) VALUES ('old', 0, '2026-01-01T00:00:00+00:00', 'churn', 1, 0.3)"
            ))  # fmt: skip
        database = Database(url)
        try:
            inserted = database.insert(frame(["new", datetime.now(UTC), "churn", 2, "canary", records, [0.7] * 3, 0.4]))
            assert inserted == 3
        finally:
            database.dispose()
        with engine.connect() as conn:
            stored = conn.execute(sa.text(
                "SELECT request_id, arm, scoring_ms FROM inference_log ORDER BY request_id, row_index"
            )).fetchall()  # fmt: skip
        engine.dispose()
    assert [tuple(r) for r in stored] == [("new", "canary", 0.4)] * 3 + [("old", "production", None)]


INDEX_METHODS = sa.text(
    "SELECT c.relname, a.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = 'inference_log'::regclass"
)


def earlier_release_table(url: str) -> sa.Engine:
    """The log table as the last release before 2026-12 made it (B-trees on time and version,
    and the columns added since the first release); one row in it."""
    from churn_platform.schema import FEATURES

    kinds = {"category": "VARCHAR(64)", "integer": "INTEGER", "float": "FLOAT"}
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(EARLIER_TABLE.format(features=", ".join(f"{f.name} {kinds[f.kind]}" for f in FEATURES))))
        conn.execute(sa.text("ALTER TABLE inference_log ADD COLUMN arm VARCHAR(16) NOT NULL DEFAULT 'production', "
                             "ADD COLUMN scoring_ms FLOAT"))  # fmt: skip
        conn.execute(sa.text("CREATE INDEX ix_inference_log_scored_at ON inference_log (scored_at)"))
        conn.execute(sa.text("CREATE INDEX ix_inference_log_model_version ON inference_log (model_version)"))
        conn.execute(sa.text("CREATE INDEX ix_inference_log_customer_id ON inference_log (customer_id)"))
        conn.execute(sa.text(
            "INSERT INTO inference_log (request_id, row_index, scored_at, model_name, model_version, "
            "churn_probability) VALUES ('old', 0, '2026-01-01T00:00:00+00:00', 'churn', 1, 0.3)"
        ))  # fmt: skip
    return engine


@pytest.mark.parametrize("table", ["new", "earlier release"])
def test_time_and_version_indexes_are_brin_and_serve_the_monitors_window(table):
    """BRIN instead of B-trees on time and version: less PostgreSQL CPU per logged row.
    A new table gets them; an earlier release's B-trees are rebuilt as BRIN, its rows kept."""
    records = data.to_records(data.generate(4, seed=7).drop(columns=["churn"]))
    with postgres_database() as url:
        engine = earlier_release_table(url) if table == "earlier release" else sa.create_engine(url)
        database = Database(url)
        try:
            item = ["new", datetime(2026, 12, 4, 12, tzinfo=UTC), "churn", 2, "production", records, [0.6] * 4]
            assert database.insert(frame(item)) == 4
        finally:
            database.dispose()
        window = ("SELECT count(*) FROM inference_log WHERE model_version = 2 AND scored_at >= "
                  "'2026-12-04T00:00:00+00:00' AND scored_at < '2026-12-05T00:00:00+00:00'")  # fmt: skip
        with engine.begin() as conn:
            methods = dict(conn.execute(INDEX_METHODS).all())
            total = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
            in_window = conn.execute(sa.text(window)).scalar()
            conn.execute(sa.text("ANALYZE inference_log"))  # a 5-row table: make the planner show the window's index
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            conn.execute(sa.text("SET LOCAL enable_indexscan = off"))
            plan = "\n".join(conn.execute(sa.text(f"EXPLAIN {window}")).scalars())
        engine.dispose()
    assert methods["ix_inference_log_scored_at"] == methods["ix_inference_log_model_version"] == "brin"
    assert methods["ix_inference_log_customer_id"] == "btree"  # the outcomes join looks customers up one by one
    assert (total, in_window) == ((5, 4) if table == "earlier release" else (4, 4))
    assert "Bitmap Index Scan on ix_inference_log_" in plan


def test_a_busy_table_keeps_its_btree_until_a_later_start_and_loads_meanwhile(caplog):
    """Rebuilding an index needs the table to itself; behind a long query it gives up after
    CONVERT_LOCK_TIMEOUT instead of queueing every reader and writer, and the rows still load."""
    import psycopg

    records = data.to_records(data.generate(2, seed=8).drop(columns=["churn"]))
    with postgres_database() as url:
        engine = earlier_release_table(url)
        reader = psycopg.connect(sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
        reader.execute("SELECT count(*) FROM inference_log").fetchall()  # a monitor's query, transaction still open
        database = Database(url)
        try:
            with caplog.at_level("WARNING", logger="churn_platform.inference_log"):
                assert database.insert(frame(["busy", datetime.now(UTC), "churn", 1, "production", records, [0.4] * 2]))
            with engine.connect() as conn:
                busy = dict(conn.execute(INDEX_METHODS).all())
            reader.rollback()
            later = Database(url)  # the next start
            try:
                assert later.insert(frame(["free", datetime.now(UTC), "churn", 1, "production", records, [0.4] * 2]))
            finally:
                later.dispose()
        finally:
            reader.close()
            database.dispose()
        with engine.connect() as conn:
            free = dict(conn.execute(INDEX_METHODS).all())
            total = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
        engine.dispose()
    assert busy["ix_inference_log_scored_at"] == "btree" and "not converted to BRIN" in caplog.text
    assert free["ix_inference_log_scored_at"] == free["ix_inference_log_model_version"] == "brin" and total == 5


def test_a_writer_that_does_not_own_the_table_keeps_its_btrees_and_loads(caplog):
    """A writer role granted INSERT only cannot rebuild indexes: it must still load every batch."""
    import secrets

    records = data.to_records(data.generate(2, seed=9).drop(columns=["churn"]))
    role = f"log_writer_{secrets.token_hex(3)}"
    with postgres_database() as url:
        engine = earlier_release_table(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
            conn.execute(sa.text(f"GRANT SELECT, INSERT ON inference_log TO {role}"))
            conn.execute(sa.text(f"GRANT USAGE ON SEQUENCE inference_log_id_seq TO {role}"))
        database = Database(sa.make_url(url).set(username=role).render_as_string(hide_password=False))
        try:
            with caplog.at_level("WARNING", logger="churn_platform.inference_log"):
                item = ["granted", datetime.now(UTC), "churn", 1, "production", records, [0.4] * 2]
                assert database.insert(frame(item)) == 2
        finally:
            database.dispose()
            with engine.begin() as conn:
                methods = dict(conn.execute(INDEX_METHODS).all())
                total = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
                conn.execute(sa.text(f"DROP OWNED BY {role}"))
                conn.execute(sa.text(f"DROP ROLE {role}"))
            engine.dispose()
    assert methods["ix_inference_log_scored_at"] == "btree" and total == 3
    assert "does not own the table" in caplog.text


def test_a_request_the_database_refuses_costs_only_its_own_rows(tmp_path):
    """PostgreSQL refuses text holding a NUL byte (the API accepts any customer id): the whole
    20,000-row transaction used to be dropped; now only the request at fault is, and counted.
    A value the table's INTEGER cannot hold costs its request alone too, and is never stored."""
    from serving.inference_log import InferenceLog

    records = data.to_records(data.generate(10, seed=4).drop(columns=["churn"]))
    with postgres_database() as url:
        log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=100_000, flush_s=0.5)  # one batch
        log.start()
        for i in range(30):
            batch = list(records)
            if i == 17:
                batch[3] = dict(batch[3], customer_id="nul\x00id")
            if i == 23:  # beyond PostgreSQL's INTEGER: binary COPY would have stored it wrapped around
                batch[5] = dict(batch[5], tenure=2**31)
            log.append(f"r{i}", "churn", 1, batch, [0.5] * len(batch))
        log.close()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT request_id, count(*) FROM inference_log GROUP BY request_id")).all()
            lowest = conn.execute(sa.text("SELECT min(tenure) FROM inference_log")).scalar()
        engine.dispose()
    assert (log.spooled, log.written, log.dropped) == (300, 280, 20)
    assert dict(stored) == {f"r{i}": 10 for i in range(30) if i not in (17, 23)} and lowest >= 0


def test_without_the_unique_index_rows_wait_in_the_spool_until_it_is_restored(tmp_path):
    """Straight COPY relies on the unique index to refuse a replay's stored ids; a table that
    lost it (a `pg_restore --clean` adds constraints after the data) must not take rows it
    cannot deduplicate, nor lose them: each batch was refused for good and deleted from the spool."""
    import time

    from serving.inference_log import InferenceLog
    from serving.log_writer import NotWritableNow

    records = data.to_records(data.generate(2, seed=6).drop(columns=["churn"]))
    with postgres_database() as url:
        engine = altered_table(url, "ALTER TABLE inference_log DROP CONSTRAINT uq_inference_log_request_row")
        database = Database(url)
        try:
            with pytest.raises(NotWritableNow, match="ON CONFLICT"):
                database.insert(frame(["r", datetime.now(UTC), "churn", 1, "production", records, [0.5] * 2]))
        finally:
            database.dispose()
        log = InferenceLog(url, spool_dir=tmp_path / "spool", flush_s=0.2)
        log.start()
        log.append("r1", "churn", 1, records, [0.5] * 2)
        deadline = time.monotonic() + 60
        while log.state()["state"] != "spooling":
            assert time.monotonic() < deadline, log.state()
            time.sleep(0.1)
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar() == 0
            conn.execute(sa.text("ALTER TABLE inference_log ADD CONSTRAINT uq_inference_log_request_row "
                                 "UNIQUE (request_id, row_index)"))  # fmt: skip
        log.append("r2", "churn", 1, records, [0.5] * 2)
        log.close()
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT request_id, count(*) FROM inference_log GROUP BY request_id")).all()
        engine.dispose()
    assert dict(stored) == {"r1": 2, "r2": 2} and log.dropped == 0


def test_a_unique_index_left_invalid_by_a_failed_build_is_no_unique_index():
    """The index restored after a restore that appended duplicates: CREATE UNIQUE INDEX
    CONCURRENTLY fails and leaves an invalid index, which enforces nothing. The writer took
    it for the real one and loaded straight into the table: every replay was stored twice."""
    from serving.log_writer import NotWritableNow

    records = data.to_records(data.generate(2, seed=6).drop(columns=["churn"]))
    row = ["r", datetime.now(UTC), "churn", 1, "production", records, [0.5] * 2]
    with postgres_database() as url:
        database = Database(url)
        database.ensure_table()
        database.insert(frame(row))
        database.dispose()
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # a restore without the constraint, appended twice
            conn.execute(sa.text("ALTER TABLE inference_log DROP CONSTRAINT uq_inference_log_request_row"))
            columns = ", ".join(c["name"] for c in sa.inspect(conn).get_columns("inference_log") if c["name"] != "id")
            conn.execute(sa.text(f"INSERT INTO inference_log ({columns}) SELECT {columns} FROM inference_log"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(sa.text("CREATE UNIQUE INDEX CONCURRENTLY uq_inference_log_request_row "
                                     "ON inference_log (request_id, row_index)"))  # fmt: skip
            valid = conn.execute(sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                                         "'uq_inference_log_request_row'::regclass")).scalar()  # fmt: skip
        assert valid is False  # the index is there, unique, and enforces nothing
        try:
            with engine.connect() as conn:
                before = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
            database = Database(url)
            with pytest.raises(NotWritableNow, match="ON CONFLICT"):
                database.insert(frame(row))
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar() == before
        finally:
            database.dispose()
            engine.dispose()


def test_replicas_starting_together_on_a_new_database_store_their_first_rows():
    """Four writers and an outcomes upload create their tables at once: before the schema lock,
    PostgreSQL's catalog refused all but one (a unique violation on pg_type) and the writers
    dropped their first batch."""
    records = data.to_records(data.generate(3, seed=2).drop(columns=["churn"]))
    with postgres_database() as url:
        databases = [Database(url) for _ in range(4)]
        start = threading.Barrier(5)

        def first_batch(i: int) -> int:
            start.wait()
            item = [f"r{i}", datetime.now(UTC), "churn", 1, "production", records, [0.2] * 3]
            return databases[i].insert(frame(item))

        def outcomes_table() -> None:
            engine = sa.create_engine(url)
            start.wait()
            outcomes.upgrade(engine)
            engine.dispose()

        try:
            with concurrent.futures.ThreadPoolExecutor(5) as pool:
                stored = [pool.submit(first_batch, i) for i in range(4)]
                created = pool.submit(outcomes_table)
                assert [f.result() for f in stored] == [3, 3, 3, 3]
                created.result()
        finally:
            for database in databases:
                database.dispose()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar() == 12
            assert conn.execute(sa.text("SELECT count(*) FROM outcomes")).scalar() == 0
        engine.dispose()


@pytest.mark.parametrize(
    ("dialect", "change"),
    [("postgresql", "DROP TABLE inference_log"), ("sqlite", "DROP TABLE inference_log"),
     # A table restored from a dump of an earlier release, without a column added since.
     ("postgresql", "ALTER TABLE inference_log DROP COLUMN scoring_ms"),
     ("sqlite", "ALTER TABLE inference_log DROP COLUMN scoring_ms")],
)  # fmt: skip
def test_a_table_dropped_under_the_writer_is_made_again_and_no_row_is_lost(tmp_path, dialect, change):
    """A `pg_restore --clean` drops the table: each batch was refused for good, counted as
    dropped and deleted from the spool, until the writer restarted (SQLite: retried forever).
    A column missing was the same on PostgreSQL (SQLite: retried forever, "unavailable")."""
    import contextlib
    import time

    from serving.inference_log import InferenceLog

    records = data.to_records(data.generate(10, seed=5).drop(columns=["churn"]))
    database = postgres_database() if dialect == "postgresql" else contextlib.nullcontext(f"sqlite:///{tmp_path}/l.db")
    with database as url:
        log = InferenceLog(url, spool_dir=tmp_path / "spool", flush_s=0.2)
        log.start()
        log.append("before", "churn", 1, records, [0.5] * 10)
        deadline = time.monotonic() + 60
        while log.written < 10:
            assert time.monotonic() < deadline, log.state()
            time.sleep(0.1)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(change))
        log.append("after", "churn", 1, records, [0.5] * 10)
        log.close()
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT request_id, count(*) FROM inference_log GROUP BY request_id")).all()
        engine.dispose()
    assert dict(stored) == ({"after": 10} if change.startswith("DROP TABLE") else {"before": 10, "after": 10})
    assert log.dropped == 0


def test_a_missing_grant_keeps_the_rows_spooled_until_it_is_given(tmp_path):
    """A rotation to a user not yet granted INSERT: each batch was refused for good, counted
    as dropped and deleted from the spool."""
    import secrets
    import time

    from serving.inference_log import InferenceLog

    records = data.to_records(data.generate(10, seed=6).drop(columns=["churn"]))
    role = f"log_writer_{secrets.token_hex(3)}"
    with postgres_database() as url:
        Database(url).ensure_table()  # made by its owner
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
            conn.execute(sa.text(f"GRANT SELECT ON inference_log TO {role}"))  # INSERT forgotten
        try:
            log = InferenceLog(sa.make_url(url).set(username=role).render_as_string(hide_password=False),
                               spool_dir=tmp_path / "spool", flush_s=0.2)  # fmt: skip
            log.start()
            # "permission denied" as a customer id: the text of an error never decides
            log.append("r1", "churn", 1, [dict(r, customer_id="permission denied") for r in records], [0.5] * 10)
            deadline = time.monotonic() + 60
            while log.state()["state"] != "spooling":
                assert time.monotonic() < deadline, log.state()
                time.sleep(0.1)
            with engine.begin() as conn:
                conn.execute(sa.text(f"GRANT INSERT ON inference_log TO {role}"))
                conn.execute(sa.text(f"GRANT USAGE ON SEQUENCE inference_log_id_seq TO {role}"))
            log.close()
            with engine.connect() as conn:
                stored = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP OWNED BY {role}"))
                conn.execute(sa.text(f"DROP ROLE {role}"))
            engine.dispose()
    assert stored == 10 and log.dropped == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [("", (1, 60_000, 30)), ("?keepalives_idle=45", (1, 60_000, 45)), ("?keepalives=0", (0, 0, 7200))],
)
def test_the_writers_connection_notices_a_server_gone_mid_statement_within_a_minute(options, expected):
    """Without keepalives a COPY to a host that vanished waited for TCP's 15 minutes, the
    writer still "live" and its rows neither stored nor spooling. The URL's own options win."""
    import socket

    with postgres_database() as url:
        database = Database(url + options)
        try:
            with database._engine.connect() as conn:  # noqa: SLF001
                fd = conn.connection.dbapi_connection.fileno()
                sock = socket.socket(fileno=os.dup(fd))
                try:
                    keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                    user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                    idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                finally:
                    sock.close()
        finally:
            database.dispose()
    assert (keepalive, user_timeout, idle) == expected
