"""The writer's bulk load into a real PostgreSQL: COPY through a staging table, ids already
stored skipped, text and NULLs intact."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from churn_platform import data
from serving.log_writer import Database
from tests.services import postgres_database

pytestmark = pytest.mark.integration


def test_copy_load_skips_stored_ids_and_keeps_text_and_nulls():
    records = data.to_records(data.generate(5, seed=1).drop(columns=["churn"]))
    records[0]["customer_id"], records[1]["customer_id"] = None, 'quote " and, comma'
    with postgres_database() as url:
        database = Database(url)
        try:
            first = database.insert([["r1", datetime.now(UTC), "churn", 1, "production", records, [0.1] * 5]])
            replay = database.insert([["r1", datetime.now(UTC), "churn", 1, "production", records, [0.1] * 5]])
            more = database.insert([["r2", datetime.now(UTC), "churn", 2, "production", records[:2], [0.9] * 2]])
        finally:
            database.dispose()
        assert (first, replay, more) == (5, 0, 2)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT customer_id, tenure FROM inference_log ORDER BY id")).fetchall()
        engine.dispose()
    assert [r[0] for r in stored[:2]] == [None, 'quote " and, comma']
    assert [r[1] for r in stored[:5]] == [r["tenure"] for r in records] and len(stored) == 7


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
            assert database.insert([["new", datetime.now(UTC), "churn", 2, "canary", records, [0.7] * 3, 0.42]]) == 3
        finally:
            database.dispose()
        with engine.connect() as conn:
            stored = conn.execute(sa.text(
                "SELECT request_id, arm, scoring_ms FROM inference_log ORDER BY request_id, row_index"
            )).fetchall()  # fmt: skip
        engine.dispose()
    assert [tuple(r) for r in stored] == [("new", "canary", 0.42)] * 3 + [("old", "production", None)]
