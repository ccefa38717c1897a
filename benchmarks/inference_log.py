"""Bulk-load methods for the inference log on PostgreSQL, side by side (one run, same rows).

    .venv/bin/python benchmarks/inference_log.py [--rows 200000] [--batch 20000]

Loads the same scored rows into an ``inference_log`` table on the local PostgreSQL
(127.0.0.1:5432, user postgres; a throwaway database) with each method the writer could use,
every batch in its own transaction and with the replay rule (ids already stored are skipped).
Each method starts from an empty table (TRUNCATE, autovacuum off, a CHECKPOINT before the
clock starts), and after each the table must hold exactly its rows:

- binary ``COPY`` (psycopg 3, rows written in C) straight into the table: what
  ``serving/log_writer.py`` does; the unique constraint refuses a batch holding a stored id,
  and only then does the writer take the next method's way;
- binary ``COPY`` into a temporary table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``;
- the same with CSV through psycopg2's ``copy_expert`` (the writer's method until 2026-12);
- ``json_populate_recordset``: one JSON document per batch, expanded by the server;
- ``execute_values`` (psycopg2's multi-row VALUES).

Prints rows/s of each, the client's CPU seconds (the writer's own cost), the server's (the
database's backends and PostgreSQL's WAL and checkpoint writers, from /proc: Linux) and the ratio to the fastest. Both CPUs count: on
one machine the writer, PostgreSQL and the API share the cores.

Then the table's indexes, side by side with the writer's method: the BRIN indexes on time
and version this release declares against the B-trees of earlier releases, as PostgreSQL
CPU per 1000 rows, BRIN's summarizing of the new block ranges included (each layout loaded
``--repeat`` times, taking turns to go first; the lowest counts), the indexes' size, and the
time of a window query like the performance job's (one version, a tenth of the rows).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.registry import terminate_raises  # noqa: E402
from benchmarks.serving import postgres_processes, process_cpu  # noqa: E402


def main() -> None:  # noqa: C901 - one script, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import msgspec
    import psycopg
    import psycopg2
    import sqlalchemy as sa
    from psycopg2.extras import execute_values

    from churn_platform import data
    from churn_platform.contract import INFERENCE_LOG_META, INFERENCE_LOG_TABLE, REQUEST_ID, ROW_INDEX
    from churn_platform.inference_log import BRIN_INDEXES, COLUMNS, table
    from serving.log_writer import binary_types

    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    name = f"bench_log_load_{os.getpid()}"
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    customers = data.to_records(data.generate(5000, seed=1).drop(columns=["churn"]))
    at = datetime.now(UTC)

    def rows() -> list[tuple]:
        """1000-row requests a millisecond apart, with ids as the API makes them."""
        out = []
        for i in range(args.rows):
            c = customers[i % len(customers)]
            if i % 1000 == 0:
                request_id, scored_at = uuid.uuid4().hex, at + timedelta(milliseconds=i // 1000)
            out.append((request_id, i % 1000, scored_at, "churn", 1, "production", 0.05,
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

    types = binary_types()

    def copy_binary(cur, batch: list[tuple], into: str = INFERENCE_LOG_TABLE) -> None:
        with cur.copy(f"COPY {into} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in batch:
                copy.write_row(row)

    def copy_binary_staged(cur, batch: list[tuple]) -> None:
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS staging ON COMMIT DELETE ROWS AS "
                    f"SELECT {names} FROM {INFERENCE_LOG_TABLE} WITH NO DATA")  # fmt: skip
        copy_binary(cur, batch, into="staging")
        cur.execute(f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) SELECT {names} FROM staging {conflict}")

    def values(cur, batch: list[tuple]) -> None:
        execute_values(cur, f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) VALUES %s {conflict}", batch,
                       page_size=len(batch))  # fmt: skip

    results = {}
    stored: dict[str, int] = {}
    terminate_raises()  # SIGTERM too drops the database below
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        engine = sa.create_engine(url)
        table(sa.MetaData()).metadata.create_all(engine)
        engine.dispose()
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name)
        binary_connection = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name)
        binary_connection.execute(f"ALTER TABLE {INFERENCE_LOG_TABLE} SET (autovacuum_enabled = false)")
        binary_connection.commit()  # as for the indexes below: no autovacuum in one method's run and not another's
        for method, load in (("binary COPY", copy_binary), ("binary COPY + INSERT", copy_binary_staged),
                             ("csv COPY + INSERT", copy_csv), ("json_populate_recordset", json_recordset),
                             ("execute_values", values)):  # fmt: skip
            batch_rows = rows()
            # Every method loads into an empty table, from the same state: no rows of the methods
            # before it (their heap and index pages would make each later load dearer), no
            # autovacuum starting in one method's run and not another's, no dirty pages left to
            # write by the checkpointer (PostgreSQL's CPU below counts its writer processes).
            binary_connection.execute(f"TRUNCATE {INFERENCE_LOG_TABLE}")
            binary_connection.commit()
            binary_connection.execute("CHECKPOINT")
            binary_connection.commit()
            binary = method.startswith("binary")
            conn = binary_connection if binary else connection
            cpu0, server0, wall0 = _cpu(), _server_cpu(name), time.perf_counter()
            for start in range(0, len(batch_rows), args.batch):  # psycopg 3's `with conn` would close it
                with binary_connection.transaction() if binary else conn, conn.cursor() as cur:
                    load(cur, batch_rows[start : start + args.batch])
            wall = time.perf_counter() - wall0
            results[method] = (args.rows / wall, _cpu() - cpu0, _server_cpu(name) - server0)
            # Outside the timing: this method's rows, and only they, are in the table.
            stored[method] = binary_connection.execute(f"SELECT count(*) FROM {INFERENCE_LOG_TABLE}").fetchone()[0]
            binary_connection.commit()  # no open transaction holds a lock the next TRUNCATE waits for
        connection.close()
        layouts = {"BRIN on time, version (ours)": [], "B-trees (before 2026-12)": []}
        sizes = {}  # MiB of indexes per million rows
        queries = {}  # best ms of the performance job's kind of query: one version, a tenth of the rows
        for turn in range(args.repeat):
            for layout in list(layouts)[:: 1 if turn % 2 == 0 else -1]:  # turn about: neither always first
                binary_connection.execute(f"DROP TABLE IF EXISTS {INFERENCE_LOG_TABLE}")
                binary_connection.commit()
                engine = sa.create_engine(url)
                metadata = sa.MetaData()
                declared = table(metadata)
                if layout.startswith("B-trees"):
                    for index in list(declared.indexes):
                        if index.name in BRIN_INDEXES:
                            declared.indexes.discard(index)
                            sa.Index(index.name, *index.columns)  # a plain B-tree, as before
                metadata.create_all(engine)
                engine.dispose()
                # No autovacuum during the load: BRIN's deferred upkeep (summarizing the block
                # ranges filled, which autosummarize leaves to autovacuum) is done, and counted, below.
                binary_connection.execute(f"ALTER TABLE {INFERENCE_LOG_TABLE} SET (autovacuum_enabled = false)")
                batch_rows = rows()
                binary_connection.execute("CHECKPOINT")
                binary_connection.commit()  # each batch below is then a transaction of its own
                server0 = _server_cpu(name)
                for start in range(0, len(batch_rows), args.batch):
                    with binary_connection.transaction(), binary_connection.cursor() as cur:
                        copy_binary(cur, batch_rows[start : start + args.batch])
                if not layout.startswith("B-trees"):
                    for index in BRIN_INDEXES:
                        binary_connection.execute("SELECT brin_summarize_new_values(%s::regclass)", (index,))
                    binary_connection.commit()
                layouts[layout].append((_server_cpu(name) - server0) / args.rows * 1e6)
                binary_connection.autocommit = True  # VACUUM cannot run in a transaction
                binary_connection.execute(f"VACUUM ANALYZE {INFERENCE_LOG_TABLE}")
                binary_connection.autocommit = False
                window = (batch_rows[len(batch_rows) * 4 // 10][2], batch_rows[len(batch_rows) * 5 // 10][2])
                queries[layout] = min([queries.get(layout, float("inf"))] + [_timed(binary_connection, window) for _ in range(5)])
                binary_connection.rollback()
                sizes[layout] = int(binary_connection.execute(
                    "SELECT sum(pg_relation_size(indexrelid)) FROM pg_index WHERE indrelid = %s::regclass",
                    (INFERENCE_LOG_TABLE,),
                ).fetchone()[0]) / args.rows * 1e6 / 2**20
        binary_connection.close()
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    wrong = {method: count for method, count in stored.items() if count != args.rows}
    if wrong:
        sys.exit(f"rows stored by each method (expected {args.rows} each): {wrong}")
    best = max(rate for rate, _, _ in results.values())
    print(
        f"\n{args.rows} rows in batches of {args.batch} into an empty table per method, each batch one transaction, "
        "duplicates skipped"
    )
    print(f"{'method':28}{'rows/s':>12}{'client CPU s':>14}{'server CPU s':>14}{'vs fastest':>12}")
    for method, (rate, cpu, server) in results.items():
        print(f"{method:28}{rate:>12.0f}{cpu:>14.2f}{server:>14.2f}{rate / best:>11.2f}x")
    ours, before = (min(costs) for costs in layouts.values())
    first, second = layouts
    print(f"\nindexes, binary COPY: PostgreSQL CPU ms per 1000 rows (lowest of {args.repeat}; every run), all the "
          "table's indexes in MiB per million rows, a window query (a tenth of the rows; best of all) in ms")  # fmt: skip
    for layout, costs in layouts.items():
        print(f"{layout:32}{min(costs):>8.2f}   ({', '.join(f'{c:.2f}' for c in costs)}){sizes[layout]:>10.0f} MiB"
              f"{queries[layout]:>10.1f} ms")  # fmt: skip
    print(f"{'ours vs before':32}{ours / before:>8.2f}x the CPU{' ' * 18}{sizes[first] / sizes[second]:.2f}x the size"
          f"{queries[first] / queries[second]:>10.2f}x the time")  # fmt: skip


def _timed(connection: Any, window: tuple[datetime, datetime]) -> float:
    """Milliseconds for the performance job's kind of query over ``window``."""
    started = time.perf_counter()
    connection.execute(
        "SELECT count(*), avg(churn_probability) FROM inference_log WHERE model_name = 'churn' "
        "AND model_version = 1 AND scored_at >= %s AND scored_at < %s",
        window,
    ).fetchone()
    return (time.perf_counter() - started) * 1000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(database: str) -> float:
    """CPU seconds of the PostgreSQL processes the load on ``database`` costs (this machine's)."""
    return sum(process_cpu(pid) for pid in postgres_processes(database))


if __name__ == "__main__":
    main()
