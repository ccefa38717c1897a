"""Bulk-load methods for the inference log on PostgreSQL, side by side (one run, same rows).

    .venv/bin/python benchmarks/inference_log.py [--rows 200000] [--batch 20000]

Loads the same scored rows into a fresh ``inference_log`` table on the local PostgreSQL
(127.0.0.1:5432, user postgres; a throwaway database) with each method the writer could use,
every batch in its own transaction and with the replay rule (ids already stored are skipped):

- ``json_populate_recordset``: one JSON document per batch, expanded by the server (what
  ``serving/log_writer.py`` does);
- ``COPY`` (CSV through ``copy_expert``) into a temporary table, then ``INSERT ... SELECT ...
  ON CONFLICT DO NOTHING`` (COPY itself cannot skip duplicates);
- ``execute_values`` (psycopg2's multi-row VALUES).

Prints rows/s of each, client CPU seconds (the writer's own cost) and the ratio to the
fastest.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:  # noqa: C901 - one script, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()

    import msgspec
    import psycopg2
    import sqlalchemy as sa
    from psycopg2.extras import execute_values

    from churn_platform import data
    from churn_platform.contract import INFERENCE_LOG_META, INFERENCE_LOG_TABLE, REQUEST_ID, ROW_INDEX
    from churn_platform.inference_log import COLUMNS, table

    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    name = f"bench_log_load_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    customers = data.to_records(data.generate(5000, seed=1).drop(columns=["churn"]))
    at = datetime.now(UTC)

    def rows(method: str) -> list[tuple]:
        out = []
        for i in range(args.rows):
            c = customers[i % len(customers)]
            out.append((f"{method}-{i // 1000}", i % 1000, at, "churn", 1, "production", 0.05,
                        *(c[k] for k in COLUMNS[len(INFERENCE_LOG_META):-1]), 0.25))  # fmt: skip
        return out

    names = ", ".join(COLUMNS)
    conflict = f"ON CONFLICT ({REQUEST_ID}, {ROW_INDEX}) DO NOTHING"

    def json_recordset(cur, batch: list[tuple]) -> None:
        document = msgspec.json.encode([dict(zip(COLUMNS, r, strict=True)) for r in batch]).decode()
        cur.execute(
            f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) SELECT {names} "
            f"FROM json_populate_recordset(NULL::{INFERENCE_LOG_TABLE}, %s) {conflict}",
            (document,),
        )

    def copy_csv(cur, batch: list[tuple]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(batch)
        buffer.seek(0)
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS staging ON COMMIT DELETE ROWS AS "
                    f"SELECT {names} FROM {INFERENCE_LOG_TABLE} WITH NO DATA")  # fmt: skip
        cur.copy_expert(f"COPY staging ({names}) FROM STDIN WITH (FORMAT csv)", buffer)
        cur.execute(f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) SELECT {names} FROM staging {conflict}")

    def values(cur, batch: list[tuple]) -> None:
        execute_values(cur, f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) VALUES %s {conflict}", batch,
                       page_size=len(batch))  # fmt: skip

    results = {}
    try:
        engine = sa.create_engine(url)
        table(sa.MetaData()).metadata.create_all(engine)
        engine.dispose()
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name)
        for method, load in (("json_populate_recordset", json_recordset), ("COPY csv + INSERT", copy_csv),
                             ("execute_values", values)):  # fmt: skip
            batch_rows = rows(method.split()[0])
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
            for start in range(0, len(batch_rows), args.batch):
                with connection, connection.cursor() as cur:
                    load(cur, batch_rows[start : start + args.batch])
            wall = time.perf_counter() - wall0
            cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
            results[method] = (args.rows / wall, cpu)
        with connection.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {INFERENCE_LOG_TABLE}")
            stored = cur.fetchone()[0]
        connection.close()
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    assert stored == 3 * args.rows, stored
    best = max(rate for rate, _ in results.values())
    print(f"\n{args.rows} rows in batches of {args.batch}, each batch one transaction, duplicates skipped")
    print(f"{'method':28}{'rows/s':>12}{'client CPU s':>14}{'vs fastest':>12}")
    for method, (rate, cpu) in results.items():
        print(f"{method:28}{rate:>12.0f}{cpu:>14.2f}{rate / best:>11.2f}x")


if __name__ == "__main__":
    main()
