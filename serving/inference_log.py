"""The inference log: every scored row, written in batches by a background thread.

The request path only appends to a bounded queue and never waits for the database. When
the database is down, the batch being written is dropped and counted (never retried, so
no row is written twice); writing resumes with the next batch once the database answers.
"""

from __future__ import annotations

import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from churn_platform.inference_log import make_engine, sqlite_time, table
from churn_platform.schema import FEATURES, ID_COLUMN

log = logging.getLogger(__name__)

_COLUMNS = (
    "request_id", "row_index", "scored_at", "model_name", "model_version", ID_COLUMN,
    *(f.name for f in FEATURES), "churn_probability",
)  # fmt: skip


class InferenceLog:
    """Bounded queue of scored requests + writer thread. ``on_written``/``on_dropped`` get row counts.

    The request path enqueues one item per request (no per-row work); the writer turns
    items into rows and inserts them with the driver's fast multi-row path, because it
    shares the interpreter with the requests and every millisecond it spends is theirs.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_rows: int = 500,
        flush_s: float = 1.0,
        queue_rows: int = 100_000,
        on_written: Callable[[int], None] = lambda n: None,
        on_dropped: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.url = url
        self._engine = make_engine(url)
        self._table = table(sa.MetaData())
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._queued_rows = 0
        self._count_lock = threading.Lock()
        self._max_rows = queue_rows
        self._batch_rows = batch_rows
        self._flush_s = flush_s
        self._on_written, self._on_dropped = on_written, on_dropped
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._table_ready = False
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        try:  # create the table early when the database is up; the writer retries otherwise
            self._ensure_table()
        except Exception as exc:  # noqa: BLE001
            log.warning("inference log database not ready yet (%s); will retry", type(exc).__name__)
        self._thread.start()

    def _ensure_table(self) -> None:
        if not self._table_ready:
            self._table.metadata.create_all(self._engine)
            self._table_ready = True

    def append(
        self,
        request_id: str,
        model_name: str,
        version: int,
        records: Sequence[dict[str, Any]],
        scores: Sequence[float],
    ) -> None:
        """Queue one request's rows; never blocks. Past the row limit the rows are dropped and counted."""
        n = len(records)
        with self._count_lock:
            if self._queued_rows + n > self._max_rows:
                full = True
            else:
                full = False
                self._queued_rows += n
        if full:
            self._drop(n)
            return
        self._queue.put((request_id, datetime.now(UTC), model_name, version, records, scores))

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._on_dropped(n)

    @staticmethod
    def _rows(item: tuple, text_time: bool) -> list[tuple]:
        request_id, at, model_name, version, records, scores = item
        at = sqlite_time(at) if text_time else at
        values = operator.itemgetter(*(f.name for f in FEATURES))
        return [
            (request_id, i, at, model_name, version, r.get(ID_COLUMN), *values(r), float(p))
            for i, (r, p) in enumerate(zip(records, scores, strict=True))
        ]

    def _insert(self, rows: list[tuple]) -> None:
        with self._engine.begin() as conn:  # one transaction: all rows or none
            dialect = conn.dialect.name
            raw = conn.connection.dbapi_connection
            names = ", ".join(_COLUMNS)
            if dialect == "postgresql" and conn.dialect.driver == "psycopg2":
                from psycopg2.extras import execute_values

                with raw.cursor() as cur:
                    execute_values(
                        cur, f"INSERT INTO inference_log ({names}) VALUES %s", rows, page_size=1000
                    )
            elif dialect == "sqlite":
                cur = raw.cursor()
                marks = ", ".join("?" * len(_COLUMNS))
                cur.executemany(f"INSERT INTO inference_log ({names}) VALUES ({marks})", rows)
                cur.close()
            else:
                conn.execute(self._table.insert(), [dict(zip(_COLUMNS, r, strict=True)) for r in rows])

    def _write(self, items: list[tuple]) -> None:
        text_time = self._engine.dialect.name == "sqlite"
        rows = [row for item in items for row in self._rows(item, text_time)]
        with self._count_lock:
            self._queued_rows -= len(rows)
        try:
            self._ensure_table()
            self._insert(rows)
        except Exception as exc:  # noqa: BLE001 - the log must never take the API down
            log.warning("inference log: dropped %d rows (%s)", len(rows), type(exc).__name__)
            self._drop(len(rows))
            return
        self.written += len(rows)
        self._on_written(len(rows))

    def _run(self) -> None:
        stop = False
        while not stop:
            items: list[tuple] = []
            rows = 0
            deadline = time.monotonic() + self._flush_s
            while rows < self._batch_rows:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
                rows += len(item[4])
            if items:
                self._write(items)

    def close(self, timeout: float = 25.0) -> None:
        """Flush what is queued and stop the writer (graceful shutdown)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._engine.dispose()
