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
``replayed N`` (of those written, rows an earlier process had spooled), ``dropped N`` (rows
the database refuses for good), ``torn N`` (frames skipped as torn), and
``status BYTES live|spooling``.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import signal
import sqlite3
import struct
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import psycopg
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
    sqlite3.OperationalError, psycopg.OperationalError, psycopg.InterfaceError,
)  # fmt: skip
#: Errors that blame rows, not the database (a value it cannot store, a malformed item): a
#: batch refused with one is split to find the requests at fault. Any other refusal (a
#: missing grant, a dropped table) costs the whole batch, as splitting would not help.
ROW_ERRORS = (
    psycopg.DataError, psycopg.IntegrityError, sqlite3.DataError, sqlite3.IntegrityError,
    sa.exc.DataError, sa.exc.IntegrityError, ValueError, TypeError, OverflowError,
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


_PYTHON_TYPES = {"category": str, "integer": int, "float": float}
#: A logged customer as the writer decodes it: typed as the schema says (a float feature sent
#: as 29 is 29.0), a field a frame lacks is NULL, and fields it does not know are ignored.
LoggedCustomer = msgspec.defstruct(
    "LoggedCustomer",
    [(ID_COLUMN, str | None, None), *((f.name, _PYTHON_TYPES[f.kind] | None, None) for f in FEATURES)],
)


class LoggedRequest(msgspec.Struct, array_like=True):
    """One scored request in a frame, as ``serving/inference_log.py`` sends it (a list).
    A spool from before scoring times has items one field shorter: ``scoring_ms`` is then None."""

    request_id: str
    scored_at: datetime
    model_name: str
    model_version: int
    arm: str
    records: list[LoggedCustomer]  # type: ignore[valid-type]
    scores: list[float]
    scoring_ms: float | None = None


#: Decodes a frame's payload; ``msgspec.DecodeError`` (a ``ValidationError`` too) if it is not one.
decode_frame = msgspec.msgpack.Decoder(list[LoggedRequest]).decode
_CUSTOMER_VALUES = operator.attrgetter(ID_COLUMN, *(f.name for f in FEATURES))


def binary_types() -> tuple[str, ...]:
    """The PostgreSQL type binary COPY sends each of ``COLUMNS`` as: what ``inference_log.table`` declares."""
    declared = table(sa.MetaData())

    def pg_type(kind: sa.types.TypeEngine) -> str:
        if isinstance(kind, sa.DateTime):
            return "timestamptz" if kind.timezone else "timestamp"
        return "text" if isinstance(kind, sa.String) else "int4" if isinstance(kind, sa.Integer) else "float8"

    return tuple(pg_type(declared.c[name].type) for name in COLUMNS)


#: information_schema's names for those types, to check a table made by someone else has them.
_TYPE_NAMES = {"text": ("character varying", "text"), "int4": ("integer",), "float8": ("double precision",),
               "timestamptz": ("timestamp with time zone",), "timestamp": ("timestamp without time zone",)}  # fmt: skip


def _bulk_url(url: str) -> str:
    """psycopg (3) for PostgreSQL over libpq, whichever libpq driver the URL names (the same
    connection parameters): its COPY writes binary rows in C, ~10x cheaper than CSV text."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    """Inserts frames of scored requests, one transaction per call: all its rows or none;
    rows whose (request id, row index) is already stored are skipped."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(_bulk_url(url))
        self._dialect = self._engine.dialect.name
        if self._dialect == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_wal)
        self._copy = self._dialect == "postgresql" and self._engine.dialect.driver == "psycopg"
        self._table = table(sa.MetaData())
        self._types = binary_types()
        self._binary = True  # unless the table turns out to have other column types
        self._table_ready = False

    def ensure_table(self) -> None:
        if not self._table_ready:
            upgrade(self._engine)
            if self._copy:
                self._binary = self._has_declared_types()
            self._table_ready = True

    def _has_declared_types(self) -> bool:
        """Whether the table's columns have the types binary COPY will send (a table someone
        altered, say to NUMERIC, gets text COPY instead, which PostgreSQL converts)."""
        query = sa.text("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = :t AND table_schema = current_schema()")  # fmt: skip
        with self._engine.connect() as conn:
            actual = dict(conn.execute(query, {"t": INFERENCE_LOG_TABLE}).tuples().all())
        mismatched = [c for c, t in zip(COLUMNS, self._types, strict=True) if actual.get(c) not in _TYPE_NAMES[t]]
        if mismatched:
            log.warning("inference log: columns %s do not have the types this release declares; "
                        "loading them as text", mismatched)  # fmt: skip
        return not mismatched

    def rows(self, items: list[LoggedRequest]) -> list[tuple]:
        text_time = self._dialect == "sqlite"
        values = _CUSTOMER_VALUES
        rows = []
        for item in items:
            rid, at = item.request_id, sqlite_time(item.scored_at) if text_time else item.scored_at
            name, version, arm, ms = item.model_name, item.model_version, item.arm, item.scoring_ms
            rows.extend(
                (rid, i, at, name, version, arm, ms, *values(r), p)
                for i, (r, p) in enumerate(zip(item.records, item.scores, strict=True))
            )
        return rows

    def insert(self, items: list[LoggedRequest]) -> int:
        """Rows actually inserted: a replay's rows that are already stored do not count."""
        self.ensure_table()
        rows = self.rows(items)
        if self._copy:
            try:  # straight into the table; the unique constraint refuses the whole batch if any id is stored
                return self._copy_rows(rows, into=INFERENCE_LOG_TABLE)
            except psycopg.errors.UniqueViolation:  # a replay: through a staging table that skips stored ids
                return self._copy_rows(rows, into=_STAGING)
        names = ", ".join(COLUMNS)
        with self._engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            if self._dialect == "sqlite":
                cur = raw.cursor()
                marks = ", ".join("?" * len(COLUMNS))
                conflict = f"INSERT OR IGNORE INTO {INFERENCE_LOG_TABLE} ({names}) VALUES ({marks})"
                cur.executemany(conflict, rows)
                inserted = cur.rowcount
                cur.close()
                return inserted
            conn.execute(self._table.insert(), [dict(zip(COLUMNS, r, strict=True)) for r in rows])
        return len(rows)

    def _copy_rows(self, rows: list[tuple], into: str) -> int:
        """COPY ``rows`` into ``into`` in one transaction (PostgreSQL through psycopg); from the
        staging table, one INSERT moves the rows whose ids are not stored yet."""
        names = ", ".join(COLUMNS)
        with self._engine.begin() as conn, conn.connection.dbapi_connection.cursor() as cur:
            if into == _STAGING:
                cur.execute(  # our columns only: no id, no constraints
                    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
                    f"SELECT {names} FROM {INFERENCE_LOG_TABLE} WITH NO DATA"
                )
            binary = " (FORMAT BINARY)" if self._binary else ""
            with cur.copy(f"COPY {into} ({names}) FROM STDIN{binary}") as copy:
                if self._binary:
                    copy.set_types(self._types)
                for row in rows:
                    copy.write_row(row)
            if into != _STAGING:
                return len(rows)
            cur.execute(f"INSERT INTO {INFERENCE_LOG_TABLE} ({names}) SELECT {names} FROM {_STAGING} "
                        f"ON CONFLICT ({REQUEST_ID}, {ROW_INDEX}) DO NOTHING")  # fmt: skip
            return cur.rowcount

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
            items = [item for frame in frames for item in decode_frame(frame.payload)]
        except msgspec.DecodeError as exc:
            log.error("inference log: %d spooled rows cannot be decoded (%s); dropped", rows, exc)
            report("dropped", rows)
            return True
        return self._insert(items, replay=frames[0].directory != self.spool.own)  # a read never mixes directories

    def _insert(self, items: list[LoggedRequest], replay: bool) -> bool:
        """Insert ``items`` in one transaction, waiting while the database is away (False: it
        stayed away past the shutdown deadline). A batch refused for its rows (``ROW_ERRORS``)
        is split in halves until only the requests at fault are left: their rows are dropped
        and counted, every other request's are stored, in order (one customer id holding a NUL
        byte used to cost the whole batch, up to TRANSACTION_ROWS rows of other requests)."""
        rows = sum(len(item.records) for item in items)
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
            except Exception as exc:  # noqa: BLE001 - refused for good: counted, never fatal
                if len(items) > 1 and isinstance(exc, ROW_ERRORS):
                    half = len(items) // 2
                    return self._insert(items[:half], replay) and self._insert(items[half:], replay)
                whose = f"request {items[0].request_id}" if len(items) == 1 else f"{len(items)} requests"
                log.error("inference log: the database refused %d rows (%s; %s: %s); dropped", rows, whose,
                          type(exc).__name__, str(exc)[:300])  # fmt: skip
                report("dropped", rows)
                return True
            if not self.live:
                log.info("inference log database is back; replaying the spool")
            self.live = True
            report("written", inserted)
            if replay:
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
