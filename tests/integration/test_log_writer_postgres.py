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
