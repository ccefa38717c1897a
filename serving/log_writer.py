"""The inference log's writer process (``python -m serving.log_writer``), one per API worker.

It reads frames of scored requests from its stdin, appends each to the disk spool at once
(``serving/spool.py``), and a loader thread moves them from the spool into the database in
order, in large transactions, deleting spool segments only after their commit. So the API
never waits on the database, and a database that is down, slow or behind costs no row: the
spool absorbs it up to ``CHURN_INFERENCE_LOG_SPOOL_MAX_BYTES``, and a writer that starts
after a crash replays what an earlier one left. Every row has a unique id (request id, row
index) and inserts skip ids already stored, so a replay never writes a row twice.

Reports go to stdout, one line each, for the API's counters and metrics:
``spooled N`` (rows safe on disk), ``full N`` (refused: spool at its cap), ``written N``,
``replayed N`` (of those written, rows an earlier process had spooled), ``dropped N`` (a
batch the database refuses for good), ``torn N`` (frames skipped as torn), and
``status BYTES live|spooling``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import operator
import signal
import sqlite3
import struct
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import msgspec
import psycopg2
import sqlalchemy as sa

from churn_platform import logs
from churn_platform.contract import INFERENCE_LOG_TABLE, REQUEST_ID, ROW_INDEX
from churn_platform.inference_log import COLUMNS, make_engine, sqlite_time, table, upgrade
from churn_platform.schema import FEATURES, ID_COLUMN
from serving.spool import Frame, Spool

log = logging.getLogger(__name__)

#: Pipe frames from the API: payload length, rows in it; then the MessagePack payload.
PIPE_HEADER = struct.Struct(">II")
#: Errors that mean "try again later": the database is down, restarting, locked or slow
#: (SQLAlchemy's, and the drivers' own from the raw cursors used for bulk loads).
TRANSIENT = (
    sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError,
    sqlite3.OperationalError, psycopg2.OperationalError, psycopg2.InterfaceError,
)  # fmt: skip
#: Rows per database transaction: large ones replay a backlog fast.
TRANSACTION_ROWS = 20_000
#: On shutdown, how long the writer keeps trying to empty the spool into the database.
DRAIN_S = 15.0
_BACKOFF_MAX_S = 5.0
_STAGING = "inference_log_staging"


def read_frame(stream: IO[bytes]) -> tuple[bytes, int] | None:
    """The next (payload, rows) frame on ``stream``, or None when it closed."""
    header = stream.read(PIPE_HEADER.size)
    if len(header) < PIPE_HEADER.size:
        return None
    length, rows = PIPE_HEADER.unpack(header)
    payload = stream.read(length)
    return (payload, rows) if len(payload) == length else None


def pipe_frame(payload: bytes, rows: int) -> bytes:
    return PIPE_HEADER.pack(len(payload), rows) + payload


def spool_root(spool_dir: Path, url: str) -> Path:
    """The spool of one database: rows spooled for one database are never replayed into another
    (a changed CHURN_INFERENCE_LOG_URL, two tests side by side). Named by a hash: the URL may
    hold a password."""
    return spool_dir / hashlib.sha256(url.encode()).hexdigest()[:16]


class Database:
    """Inserts frames of scored requests, one transaction per call: all its rows or none;
    rows whose (request id, row index) is already stored are skipped."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_wal)
        self._table = table(sa.MetaData())
        self._table_ready = False
        self._values = operator.itemgetter(*(f.name for f in FEATURES))

    def ensure_table(self) -> None:
        if not self._table_ready:
            upgrade(self._engine)
            self._table_ready = True

    def rows(self, items: list[list[Any]]) -> list[tuple]:
        text_time = self._engine.dialect.name == "sqlite"
        values = self._values
        rows = []
        for item in items:  # a spool from before scoring times has items one field shorter
            request_id, at, model_name, version, arm, records, scores = item[:7]
            scoring_ms = item[7] if len(item) > 7 else None
            at = sqlite_time(at) if text_time else at
            rows.extend(
                (request_id, i, at, model_name, version, arm, scoring_ms, r.get(ID_COLUMN), *values(r), p)
                for i, (r, p) in enumerate(zip(records, scores, strict=True))
            )
        return rows

    def insert(self, items: list[list[Any]]) -> int:
        """Rows actually inserted: a replay's rows that are already stored do not count."""
        self.ensure_table()
        rows = self.rows(items)
        names = ", ".join(COLUMNS)
        conflict = f"ON CONFLICT ({REQUEST_ID}, {ROW_INDEX}) DO NOTHING"
        with self._engine.begin() as conn:
            dialect, raw = conn.dialect.name, conn.connection.dbapi_connection
            if dialect == "postgresql" and conn.dialect.driver == "psycopg2":
                # COPY into a temporary table, then one INSERT that skips ids already stored
                # (COPY cannot): the fastest of the methods benchmarks/inference_log.py compares.
                buffer = io.StringIO()
                csv.writer(buffer).writerows(rows)
                buffer.seek(0)
                with raw.cursor() as cur:
                    cur.execute(  # our columns only: no id, no constraints
                        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
                        f"SELECT {names} FROM {INFERENCE_LOG_TABLE} WITH NO DATA"
                    )
                    cur.copy_expert(f"COPY {_STAGING} ({names}) FROM STDIN WITH (FORMAT csv)", buffer)
                    cur.execute(
                        f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) SELECT {names} FROM {_STAGING} {conflict}"
                    )
                    return cur.rowcount
            if dialect == "sqlite":
                cur = raw.cursor()
                marks = ", ".join("?" * len(COLUMNS))
                cur.executemany(f"INSERT OR IGNORE INTO {INFERENCE_LOG_TABLE} ({names}) VALUES ({marks})", rows)
                inserted = cur.rowcount
                cur.close()
                return inserted
            conn.execute(self._table.insert(), [dict(zip(COLUMNS, r, strict=True)) for r in rows])
        return len(rows)

    def dispose(self) -> None:
        self._engine.dispose()


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead logging: the monitor can read while we write, and a commit costs no fsync
    (the spool already holds the rows until the commit)."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def report(outcome: str, *values: int | str) -> None:
    try:
        sys.stdout.write(" ".join([outcome, *map(str, values)]) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the API is gone; the spool keeps what matters
        pass


class Loader:
    """Moves frames from the spool into the database, in order; retries while the database
    is away, and drops (counted) only what the database refuses for good."""

    def __init__(self, spool: Spool, database: Database, flush_s: float) -> None:
        self.spool, self.database, self.flush_s = spool, database, flush_s
        self.stopping = threading.Event()
        self.drain_until = float("inf")
        self.live = True
        self._decoder = msgspec.msgpack.Decoder()
        self._torn = 0
        self._thread = threading.Thread(target=self._run, name="inference-log-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, drain_s: float) -> None:
        """Empty the spool into the database for at most ``drain_s``; what is left stays on disk."""
        self.drain_until = time.monotonic() + drain_s
        self.stopping.set()
        self._thread.join(drain_s + 5)

    def _status(self) -> None:
        if self.spool.torn_frames > self._torn:
            report("torn", self.spool.torn_frames - self._torn)
            self._torn = self.spool.torn_frames
        report("status", self.spool.bytes, "live" if self.live else "spooling")

    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            frames = self.spool.read(TRANSACTION_ROWS, timeout=self.flush_s)
            if time.monotonic() - last_sync >= self.flush_s:
                self.spool.sync()  # at least every flush interval, frames are on the disk itself
                last_sync = time.monotonic()
            if not frames:
                self._status()
                if self.stopping.is_set():
                    return
                continue
            if not self._load(frames):
                return  # shutting down with the database away: the spool keeps the rest
            self.spool.ack(frames)
            self._status()

    def _load(self, frames: list[Frame]) -> bool:
        rows = sum(f.rows for f in frames)
        try:
            items = [item for frame in frames for item in self._decoder.decode(frame.payload)]
        except msgspec.DecodeError as exc:
            log.error("inference log: %d spooled rows cannot be decoded (%s); dropped", rows, exc)
            report("dropped", rows)
            return True
        backoff = 0.2
        while True:
            try:
                inserted = self.database.insert(items)
            except TRANSIENT as exc:
                if self.live:
                    log.warning("inference log database unavailable (%s); spooling to %s", type(exc).__name__,
                                self.spool.root)  # fmt: skip
                self.live = False
                self._status()
                if self.stopping.is_set() and time.monotonic() + backoff > self.drain_until:
                    return False
                if self.stopping.is_set():
                    time.sleep(backoff)  # draining: keep trying until the deadline
                else:
                    self.stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            except Exception as exc:  # noqa: BLE001 - refused for good (bad data): counted, never fatal
                log.error("inference log: the database refused %d rows (%s: %s); dropped", rows,
                          type(exc).__name__, str(exc)[:300])  # fmt: skip
                report("dropped", rows)
                return True
            if not self.live:
                log.info("inference log database is back; replaying the spool")
            self.live = True
            report("written", inserted)
            if frames[0].directory != self.spool.own:  # a read never mixes directories
                report("replayed", inserted)
            if inserted < rows:
                log.info("inference log: %d replayed rows were already stored; skipped", rows - inserted)
            return True


def main() -> None:
    """Spool every frame from stdin; load the spool into the database; report on stdout."""
    # The API decides when the writer stops (by closing its input); a Ctrl-C or SIGTERM to
    # the process group must not cut the final flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    first = read_frame(stdin)
    if first is None:
        return
    # The URL may hold a password: it comes through the pipe, never the command line.
    config = msgspec.msgpack.decode(first[0])
    logs.configure(logging.INFO, config.get("log_format", "text"))  # the API's format
    spool = Spool(spool_root(Path(config["spool_dir"]), config["url"]), max_bytes=int(config["spool_max_bytes"]))
    if spool.adopted_bytes:
        log.info("inference log: replaying %d bytes spooled by an earlier process", spool.adopted_bytes)
    database = Database(config["url"])
    loader = Loader(spool, database, float(config["flush_s"]))
    loader.start()
    try:
        while (frame := read_frame(stdin)) is not None:
            payload, rows = frame
            if spool.append(payload, rows):
                report("spooled", rows)
            else:
                log.error("inference log spool is full (%d bytes): %d rows dropped", spool.max_bytes, rows)
                report("full", rows)
        spool.sync()
        loader.finish(DRAIN_S)
    finally:
        spool.close()
        database.dispose()


if __name__ == "__main__":
    main()
