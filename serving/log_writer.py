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
from typing import IO, Annotated, Any

import msgspec
import psycopg
import sqlalchemy as sa

from churn_platform import logs
from churn_platform.contract import INFERENCE_LOG_TABLE, REQUEST_ID, ROW_INDEX
from churn_platform.inference_log import COLUMNS, is_missing_table, make_engine, sqlite_time, sqlstate, table, upgrade
from churn_platform.schema import FEATURES, ID_COLUMN, ID_PLACEHOLDERS
from serving.spool import FORMAT, Frame, Spool, move_unheld

log = logging.getLogger(__name__)

#: Pipe frames from the API: payload length, rows in it; then the MessagePack payload.
PIPE_HEADER = struct.Struct(">II")


class NotWritableNow(Exception):
    """The table is gone, lost its unique index, or may not be written by this user: a state
    someone mends, not the rows' fault."""


#: PostgreSQL's undefined_table, insufficient_privilege (a missing grant, not the owner),
#: invalid_column_reference: the staged load's ON CONFLICT meeting a table without its unique
#: index (a `pg_restore --clean` adds constraints after the data), which a restore mends, and
#: undefined_column: a table restored from an earlier release's dump, which the next try upgrades.
_NOT_WRITABLE_STATES = frozenset({"42P01", "42501", "42P10", "42703"})


def _not_writable(exc: BaseException) -> bool:
    """By the error's code, never its text: PostgreSQL's detail lines quote row values (a
    customer id reading "permission denied" made a bad row retried forever)."""
    if (state := sqlstate(exc)) is not None:
        return state in _NOT_WRITABLE_STATES
    orig = getattr(exc, "orig", None) or exc
    return isinstance(orig, sqlite3.OperationalError) and (is_missing_table(orig) or "no column named" in str(orig))


#: Errors that mean "try again later": the database is down, restarting, locked, slow, or
#: read-only for a moment (a failover) (SQLAlchemy's, and psycopg's own from the raw cursors
#: used for bulk loads), or its table is missing or not ours to write for now.
TRANSIENT = (
    NotWritableNow, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError,
    sqlite3.OperationalError, psycopg.OperationalError, psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
)  # fmt: skip
#: Errors that blame the rows (a value the database cannot store, NULL where SQLite's table
#: refuses it, a malformed item): a batch refused with one is split to find the requests at
#: fault. Any other refusal costs the whole batch at once.
ROW_ERRORS = (psycopg.DataError, sa.exc.DataError, sqlite3.DataError, sqlite3.IntegrityError, ValueError,
              OverflowError)  # fmt: skip
#: Rows per database transaction: large ones replay a backlog fast.
TRANSACTION_ROWS = 20_000
#: On shutdown, how long the writer keeps trying to empty the spool into the database.
DRAIN_S = 15.0
#: How often a running writer looks for spool folders that another writer left since it started.
ADOPT_EVERY_S = 30.0
_BACKOFF_MAX_S = 5.0
_STAGING = "inference_log_staging"
#: ``COLUMNS`` as SQL lists them.
_NAMES = ", ".join(COLUMNS)


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


#: libpq's URL options that choose the server, the database or the schema (``options=-csearch_path=...``):
#: part of the database's identity. Others (sslmode, timeouts, credentials) are not.
_IDENTITY_OPTIONS = ("host", "hostaddr", "port", "dbname", "service", "options")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _identity(url: str) -> str:
    parsed = sa.engine.make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        database = str(Path(database).resolve())
    chosen = sorted((k, str(v)) for k, v in parsed.query.items() if k in _IDENTITY_OPTIONS)
    return f"{parsed.get_backend_name()}://{parsed.host or ''}:{parsed.port or ''}/{database}?{chosen}"


def spool_root(spool_dir: Path, url: str) -> Path:
    """The spool of one database: rows spooled for one database are never replayed into another
    (another database in CHURN_INFERENCE_LOG_URL, two tests side by side), while a new
    password, user or driver (a credentials rotation), or an option such as sslmode, keeps
    the folder.
    Named by a hash of the database's identity (the URL may hold a password) and the spool's
    frame format: a release that cannot read these frames takes them for another database's."""
    return spool_dir / f"{_digest(_identity(url))}-{FORMAT}"


def _take_over_earlier_spools(spool_dir: Path, url: str, root: Path) -> None:
    """Earlier releases named the folder by a hash of the whole URL (before 2026-12-05), then
    of the database's identity without the frame format (before 2026-12-07): a writer of this
    release moves what such folders hold for the same database into its own, to be replayed
    (it reads their frames)."""
    for earlier in (spool_dir / _digest(url), spool_dir / _digest(_identity(url))):
        if earlier != root and earlier.is_dir() and (moved := move_unheld(earlier, root)):
            log.info("inference log spool: took over %d folder(s) an earlier release spooled in %s", moved, earlier)


def _warn_of_other_spools(root: Path) -> None:
    """Say so when rows wait in the spool of another database: they are never replayed here
    (the URL named another database when they were spooled)."""
    for other in sorted(p for p in root.parent.iterdir() if p.is_dir() and p != root):
        try:
            waiting = sum(f.stat().st_size for f in other.glob("*/*.seg"))
        except OSError:  # its live writer deleted a segment as we looked: it is being replayed
            continue
        if waiting:
            log.warning("inference log spool: %s holds %d bytes spooled for another database: not replayed into "
                        "this one (see 'The inference log spool' in docs/operations.md)", other, waiting)


#: PostgreSQL's INTEGER: binary COPY would wrap a larger value silently, so decoding refuses it.
Int4 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
_PYTHON_TYPES = {"category": str, "integer": Int4, "float": float}
#: A logged customer as the writer decodes it: typed as the schema says (a float feature sent
#: as 29 is 29.0), a field a frame lacks is NULL, and fields it does not know are ignored.
LoggedCustomer = msgspec.defstruct(
    "LoggedCustomer",
    [(ID_COLUMN, str | None, None), *((f.name, _PYTHON_TYPES[f.kind] | None, None) for f in FEATURES)],
)


class LoggedRequest(msgspec.Struct, array_like=True):
    """One scored request in a frame, as ``serving/inference_log.py`` sends it (a list).
    A spool from an earlier release has items one or two fields shorter: ``scoring_ms`` and
    ``positions`` are then None."""

    request_id: str
    scored_at: datetime
    model_name: str
    model_version: Int4
    arm: str
    records: list[LoggedCustomer]  # type: ignore[valid-type]
    scores: list[float]
    scoring_ms: float | None = None
    #: Each record's place in the request (its ``row_index``), when it is not 0, 1, 2...: a
    #: canary's arms each hold some of the request's rows.
    positions: list[int] | None = None


#: Decodes a frame's payload; ``msgspec.DecodeError`` (a ``ValidationError`` too) if it is not one.
decode_frame = msgspec.msgpack.Decoder(list[LoggedRequest]).decode
_decode_items = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
_decode_item = msgspec.msgpack.Decoder(LoggedRequest).decode
_ID = operator.attrgetter(ID_COLUMN)


def _trimmed(customers: list[Any]) -> list[Any]:
    """The customers with their ids trimmed, as outcomes and the feature store store theirs: a
    CRM that pads its ids still sees each prediction joined to its outcome. Done here, not in
    the API's request path; the check is a few loops in C (a tenth of a microsecond per row),
    and only a request holding a padded id or a placeholder pays for a copy. An id of only
    spaces is no id, and so is a placeholder (``nan``, ``NULL``: a pandas export's missing id),
    which outcomes refuse: logged, it put many customers under one id that nothing joins."""
    present = list(filter(None, map(_ID, customers)))
    if list(map(str.strip, present)) == present and ID_PLACEHOLDERS.isdisjoint(map(str.lower, present)):
        return customers
    return [msgspec.structs.replace(c, **{ID_COLUMN: logged})
            if (given := _ID(c)) is not None and (logged := _logged_id(given)) != given else c
            for c in customers]  # fmt: skip


def _logged_id(given: str) -> str | None:
    trimmed = given.strip()
    return None if not trimmed or trimmed.lower() in ID_PLACEHOLDERS else trimmed


#: A decoded customer's values in ``COLUMNS`` order, which is its fields' order: copied in C,
#: without a lookup per name (a quarter less time building the rows than ``attrgetter``).
_customer_values = msgspec.structs.astuple


def binary_types() -> tuple[str, ...]:
    """The PostgreSQL type binary COPY sends each of ``COLUMNS`` as: what ``inference_log.table`` declares."""
    declared = table(sa.MetaData())

    def pg_type(column: sa.Column) -> str:
        kind = column.type
        if isinstance(kind, sa.DateTime):
            return "timestamptz" if kind.timezone else "timestamp"
        if isinstance(kind, sa.String):
            return "text"
        if isinstance(kind, sa.Integer) and not isinstance(kind, sa.BigInteger | sa.SmallInteger):
            return "int4"
        if isinstance(kind, sa.Float):
            return "float8"
        raise TypeError(f"inference_log.{column.name}: no binary COPY type for {kind!r}")

    return tuple(pg_type(declared.c[name]) for name in COLUMNS)


#: The table's columns and their type ids, wherever search_path finds the table (as COPY does).
_COLUMN_TYPES = sa.text(
    "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0 AND NOT attisdropped"
)
#: Whether a unique, non-deferred index on exactly (request id, row index) refuses a stored id:
#: a valid one (a failed CREATE UNIQUE INDEX CONCURRENTLY leaves an invalid index, which
#: enforces nothing: every replay was stored twice).
_HAS_UNIQUE_ID = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass(:t) AND i.indisunique "
    "AND i.indisvalid AND i.indisready "
    "AND i.indimmediate AND i.indpred IS NULL AND i.indnatts = 2 AND ARRAY(SELECT a.attname::text "
    "FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) ORDER BY 1) = :id_columns)"
)


def _bulk_url(url: str) -> str:
    """psycopg (3) for PostgreSQL over libpq, whichever libpq driver the URL names (the same
    connection parameters): its binary COPY writes rows in C, with a sixth of the client CPU
    of psycopg2's CSV (benchmarks/inference_log.py)."""
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
        self._binary = self._direct = True  # until the table, inspected, says otherwise
        self._table_ready = False

    @property
    def copy_format(self) -> str | None:
        """How rows go into PostgreSQL: ``binary`` or ``text`` COPY (None: not through COPY)."""
        return ("binary" if self._binary else "text") if self._copy else None

    def ensure_table(self) -> None:
        if not self._table_ready:
            upgrade(self._engine)
            if self._copy:
                self._inspect()
            self._table_ready = True

    def _inspect(self) -> None:
        """Binary COPY needs the declared column types (a column someone altered, say to NUMERIC,
        gets text COPY instead, which PostgreSQL converts), and loading straight into the table
        needs the unique index that refuses a replay's stored ids: without it, a replay would
        write rows twice, so loads take the staging table, which fails loudly instead."""
        oids = {name: {psycopg.adapters.types[name].oid} for name in set(self._types)}
        oids["text"].add(psycopg.adapters.types["varchar"].oid)
        with self._engine.connect() as conn:
            actual = dict(conn.execute(_COLUMN_TYPES, {"t": INFERENCE_LOG_TABLE}).all())
            unique = conn.execute(_HAS_UNIQUE_ID, {"t": INFERENCE_LOG_TABLE,
                                                   "id_columns": sorted((REQUEST_ID, ROW_INDEX))}).scalar()  # fmt: skip
        mismatched = [c for c, t in zip(COLUMNS, self._types, strict=True) if actual.get(c) not in oids[t]]
        if mismatched:
            log.warning("inference log: columns %s do not have the types this release declares; "
                        "loading them as text", mismatched)  # fmt: skip
        if not unique:
            log.error("inference log: no unique index on (%s, %s): stored ids cannot be skipped, so "
                      "loads go through the staging table, whose INSERT is refused: rows wait in the spool "
                      "until the index is restored",
                      REQUEST_ID, ROW_INDEX)  # fmt: skip
        self._binary, self._direct = not mismatched, bool(unique)

    def rows(self, items: list[LoggedRequest]) -> list[tuple]:
        """One tuple per scored customer, in ``COLUMNS`` order."""
        text_time = self._dialect == "sqlite"
        values = _customer_values
        rows = []
        for item in items:
            rid, at = item.request_id, sqlite_time(item.scored_at) if text_time else item.scored_at
            name, version, arm, ms = item.model_name, item.model_version, item.arm, item.scoring_ms
            places = range(len(item.records)) if item.positions is None else item.positions
            rows.extend(
                (rid, i, at, name, version, arm, ms, *values(r), p)
                for i, r, p in zip(places, _trimmed(item.records), item.scores, strict=True)
            )
        return rows

    def insert(self, items: list[LoggedRequest]) -> int:
        """Rows actually inserted: a replay's rows that are already stored do not count."""
        try:
            return self._load(items)
        except Exception as exc:
            # The table dropped under us (a restore with --clean), restored without a column a
            # later release added, or this user's grant gone (a rotation to a user not yet
            # granted): the rows wait in the spool, the table is made again or upgraded at the
            # next try. Counted as refused, they were deleted from the spool for good.
            if not _not_writable(exc):
                raise
            self._table_ready = False
            raise NotWritableNow(str(exc).strip().splitlines()[0][:300]) from exc

    def _load(self, items: list[LoggedRequest]) -> int:
        self.ensure_table()
        rows = self.rows(items)
        if self._copy:
            try:
                return self._copy_in(rows) if self._direct else self._copy_staged(rows)
            except psycopg.errors.UniqueViolation:  # a replay holding stored ids: skip them
                return self._copy_staged(rows)
            except psycopg.errors.InvalidBinaryRepresentation:  # a column altered while we ran?
                self._inspect()
                if self._binary:
                    raise
                return self._load(items)
        with self._engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            if self._dialect == "sqlite":
                cur = raw.cursor()
                marks = ", ".join("?" * len(COLUMNS))
                # DO NOTHING on a stored (request id, row index) only: OR IGNORE also skipped a row
                # refused by NOT NULL (a NaN score binds as NULL), lost without a count.
                conflict = f"INSERT INTO {INFERENCE_LOG_TABLE} ({_NAMES}) VALUES ({marks}) ON CONFLICT DO NOTHING"
                cur.executemany(conflict, rows)
                inserted = cur.rowcount
                cur.close()
                return inserted
            conn.execute(self._table.insert(), [dict(zip(COLUMNS, r, strict=True)) for r in rows])
        return len(rows)

    def _copy_in(self, rows: list[tuple]) -> int:
        """COPY straight into the table, one transaction: the unique index refuses the whole
        batch (UniqueViolation) if any of its ids is stored."""
        with self._engine.begin() as conn, conn.connection.dbapi_connection.cursor() as cur:
            self._write(cur, INFERENCE_LOG_TABLE, rows)
        return len(rows)

    def _copy_staged(self, rows: list[tuple]) -> int:
        """COPY into a temporary table, then one INSERT moves the rows whose ids are not stored."""
        with self._engine.begin() as conn, conn.connection.dbapi_connection.cursor() as cur:
            cur.execute(  # our columns only: no id, no constraints
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
                f"SELECT {_NAMES} FROM {INFERENCE_LOG_TABLE} WITH NO DATA"
            )
            self._write(cur, _STAGING, rows)
            cur.execute(f"INSERT INTO {INFERENCE_LOG_TABLE} ({_NAMES}) SELECT {_NAMES} FROM {_STAGING} "
                        f"ON CONFLICT ({REQUEST_ID}, {ROW_INDEX}) DO NOTHING")  # fmt: skip
            return cur.rowcount

    def _write(self, cur: psycopg.Cursor, into: str, rows: list[tuple]) -> None:
        binary = " (FORMAT BINARY)" if self._binary else ""
        with cur.copy(f"COPY {into} ({_NAMES}) FROM STDIN{binary}") as copy:
            if self._binary:
                copy.set_types(self._types)
            for row in rows:
                copy.write_row(row)

    def dispose(self) -> None:
        self._engine.dispose()


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead logging: the monitor can read while we write. A commit is synced (FULL):
    the spool deletes the rows once committed, and NORMAL's unsynced commits were lost, with
    them, in a power cut. One fsync per transaction of up to 20,000 rows."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=FULL")


def report(outcome: str, *values: int | str) -> None:
    try:
        sys.stdout.write(" ".join([outcome, *map(str, values)]) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the API is gone; the spool keeps what matters
        pass


class Loader:
    """Moves frames from the spool into the database, in order; retries while the database
    is away, and drops (counted) only what the database refuses for good."""

    def __init__(self, spool: Spool, database: Database, flush_s: float, adopt_s: float = ADOPT_EVERY_S) -> None:
        self.spool, self.database, self.flush_s, self.adopt_s = spool, database, flush_s, adopt_s
        self.stopping = threading.Event()
        self.drain_until = float("inf")
        self.live = True
        self._dropped: list[tuple[int, str]] = []  # (rows, why) of the frames being loaded
        self._torn = self._corrupt_rows = 0
        self._last_adopt = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="inference-log-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, drain_s: float) -> None:
        """Empty the spool into the database for at most ``drain_s``; what is left stays on disk."""
        self.drain_until = time.monotonic() + drain_s
        self.stopping.set()
        self.spool.seal()
        self._thread.join(drain_s + 5)

    def _status(self) -> None:
        if self.spool.torn_frames > self._torn:
            report("torn", self.spool.torn_frames - self._torn)
            self._torn = self.spool.torn_frames
        if self.spool.corrupt_rows > self._corrupt_rows:  # counted, so ChurnInferenceLogDropping hears of them
            report("dropped", self.spool.corrupt_rows - self._corrupt_rows)
            self._corrupt_rows = self.spool.corrupt_rows
        report("status", self.spool.bytes, "live" if self.live else "spooling")

    def _adopt(self) -> None:
        """Take over the spool folders of writers that exited since this one started with rows
        the database did not have yet (a writer outlives its API worker by its drain time, so
        the worker's replacement started while the folder was still held)."""
        try:
            size = self.spool.adopt()
        except OSError as exc:  # the next look may succeed; the rows stay on disk meanwhile
            log.warning("inference log spool: cannot look for folders left by other writers (%s)", exc)
            return
        if size:
            log.info("inference log: replaying %d bytes another writer left in %s", size, self.spool.root)
            self._status()

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # noqa: BLE001 - a disk error must not end the loading for good
                if self.stopping.is_set():
                    return  # what is left stays spooled for the next writer
                log.error("inference log loader: %s: %s; trying again in %.0f s", type(exc).__name__, exc,
                          _BACKOFF_MAX_S)  # fmt: skip
                try:
                    self._status()  # the metrics move on (spool bytes, torn frames) while it cannot
                except Exception:  # noqa: BLE001, S110 - the report channel itself failing: the error above says it
                    pass
                self.stopping.wait(_BACKOFF_MAX_S)

    def _step(self) -> bool:
        """Load one read's frames; True when the loader should stop."""
        # Only while the database takes rows: during an outage a folder taken over cannot be
        # replayed, and its bytes would take the cap's room from our own live rows.
        if time.monotonic() - self._last_adopt >= self.adopt_s and self.live and not self.stopping.is_set():
            self._adopt()
            self._last_adopt = time.monotonic()
        frames = self.spool.read(TRANSACTION_ROWS, timeout=self.flush_s)
        if not frames:
            self._status()
            return self.stopping.is_set()
        if not self._load(frames):
            return True  # shutting down with the database away: the spool keeps the rest
        self.spool.ack(frames)
        self._status()
        return False

    def _load(self, frames: list[Frame]) -> bool:
        """Decode and insert ``frames``; False if the database stayed away past the shutdown
        deadline (the spool keeps them). Rows dropped on the way are reported only once the
        frames are done: frames replayed after a stop half-way through must not count them twice."""
        self._dropped = []
        items = [item for frame in frames for item in self._decode(frame)]
        done = not items or self._insert(items, replay=frames[0].directory != self.spool.own)  # one directory
        if done:
            for rows, message in self._dropped:
                log.error("inference log: %s; %d rows dropped", message, rows)
                report("dropped", rows)
        return done

    def _decode(self, frame: Frame) -> list[LoggedRequest]:
        """A frame's requests; one that cannot be decoded (a value out of range, a spool from an
        unknown release) is dropped alone, the frame's others kept."""
        try:
            return decode_frame(frame.payload)
        except msgspec.DecodeError as exc:
            first = exc
        good: list[LoggedRequest] = []
        try:
            for raw in _decode_items(frame.payload):
                try:
                    good.append(_decode_item(raw))
                except msgspec.DecodeError as exc:
                    first = exc
        except msgspec.DecodeError:  # not even a list: the whole frame
            pass
        lost = frame.rows - sum(len(item.records) for item in good)
        if lost > 0:
            self._dropped.append((lost, f"spooled rows cannot be decoded ({first})"))
        return good

    def _insert(self, items: list[LoggedRequest], replay: bool) -> bool:
        """Insert ``items`` in one transaction, waiting while the database is away (False: it
        stayed away past the shutdown deadline). A batch refused for its rows (``ROW_ERRORS``)
        is split in halves until only the requests at fault are left: their rows are dropped,
        every other request's are stored, in order (one customer id holding a NUL byte used to
        cost the whole batch, up to TRANSACTION_ROWS rows of other requests)."""
        rows = sum(len(item.records) for item in items)
        backoff = 0.2
        while True:
            if self.stopping.is_set() and time.monotonic() > self.drain_until:
                return False
            try:
                inserted = self.database.insert(items)
            except TRANSIENT as exc:
                if self.live:
                    log.warning("inference log database unavailable (%s: %s); spooling to %s", type(exc).__name__,
                                str(exc).strip().split("\n")[0][:300], self.spool.root)  # fmt: skip
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
                blames_rows = isinstance(exc, ROW_ERRORS)
                if blames_rows and len(items) > 1:
                    half = len(items) // 2
                    return self._insert(items[:half], replay) and self._insert(items[half:], replay)
                whose = f"request {items[0].request_id}'s data" if blames_rows else f"{len(items)} requests"
                self._dropped.append((rows, f"the database refused {whose} ({type(exc).__name__}: {str(exc)[:300]})"))
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
    root = spool_root(Path(config["spool_dir"]), config["url"])
    try:
        _take_over_earlier_spools(Path(config["spool_dir"]), config["url"], root)
        spool = Spool(root, max_bytes=int(config["spool_max_bytes"]))
    except OSError as exc:  # the API restarts the writer, later each time; the rows spooled before wait
        log.error("inference log spool: cannot make a folder in %s (%s); rows are dropped until a writer can",
                  root, exc.strerror or exc)  # fmt: skip
        sys.exit(1)
    _warn_of_other_spools(root)
    if spool.adopted_bytes:
        log.info("inference log: replaying %d bytes spooled by an earlier process", spool.adopted_bytes)
    database = Database(config["url"])
    loader = Loader(spool, database, float(config["flush_s"]))
    loader.start()
    stop_syncing = threading.Event()
    threading.Thread(target=keep_synced, args=(spool, float(config["flush_s"]), stop_syncing), daemon=True).start()
    try:
        while (frame := read_frame(stdin)) is not None:
            payload, rows = frame
            if spool.append(payload, rows):
                report("spooled", rows)
            else:
                if spool.disk_refused:  # said by the spool: "cannot write to", another remedy than the cap's
                    log.error("inference log spool: %d rows dropped", rows)
                else:
                    log.error("inference log spool is full (%d bytes): %d rows dropped", spool.max_bytes, rows)
                report("full", rows)
        spool.sync()
        loader.finish(DRAIN_S)
    finally:
        stop_syncing.set()
        spool.close()
        database.dispose()


def keep_synced(spool: Spool, every: float, done: threading.Event) -> None:
    """Fsync the spool's latest frames within ``every`` seconds however the rest is busy: the
    last append of a burst, with the loader inside a statement that neither ends nor fails
    (waiting on a lock), was not on the disk itself until the statement returned."""
    while not done.wait(every):
        spool.sync()


if __name__ == "__main__":
    main()
