"""The inference log: every scored row, written to its database by a separate process.

The API process only appends each request to a bounded list; a sender thread gathers
what is queued into one frame (every ``flush_s`` or ``batch_rows`` rows) and pipes it,
encoded as MessagePack, to a writer process (``python -m serving.inference_log``) that
turns frames into rows and inserts them. Database drivers hold Python's GIL while they
bind parameters (psycopg2's ``mogrify``, sqlite3 per row), which cost the API tens of
milliseconds per thousand rows when the writer was a thread; in its own process that
work runs on another core and never delays a request.

Loss is counted, never hidden, and no row is written twice: past ``queue_rows`` waiting
rows a request's rows are dropped; a batch the database refuses is dropped (not retried)
and writing resumes with the next batch; a writer process that dies is replaced, and the
rows it had been sent but never reported are counted as dropped. The writer exits when
its input closes, which is also what happens if the API is killed, so
it flushes what it has and never outlives the API.
"""

from __future__ import annotations

import logging
import operator
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import msgspec
import sqlalchemy as sa

from churn_platform.inference_log import COLUMNS as _COLUMNS
from churn_platform.inference_log import make_engine, sqlite_time, table
from churn_platform.schema import FEATURES, ID_COLUMN

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")  # frame header: payload length in bytes
_RESTART_PAUSE_S = 1.0

# Frames on the writer's stdin: first {"url": ...}, then lists of items:
# [request_id, scored_at, model_name, version, records, probabilities].
Item = tuple[str, datetime, str, int, Sequence[dict[str, Any]], Sequence[float]]


class InferenceLog:
    """Bounded list of scored requests + sender thread + writer process.

    ``written`` and ``dropped`` count rows; ``on_written``/``on_dropped`` get each increment.
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
        self._pending: list[Item] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set when a batch is due, or to stop
        self._stopping = False
        self._max_rows, self._batch_rows, self._flush_s = queue_rows, batch_rows, flush_s
        self._on_written, self._on_dropped = on_written, on_dropped
        self._encoder = msgspec.msgpack.Encoder()
        self._sender = threading.Thread(target=self._send_loop, name="inference-log-sender", daemon=True)
        self._writer: _WriterProcess | None = None
        self._counts = threading.Lock()  # written, dropped and each writer's unreported rows
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._writer = self._spawn_writer()
        self._sender.start()

    def append(
        self,
        request_id: str,
        model_name: str,
        version: int,
        records: Sequence[dict[str, Any]],
        scores: Sequence[float],
    ) -> None:
        """Queue one request's rows; never blocks. Past the row limit the rows are dropped and counted.

        Only a full batch wakes the sender, so a single-customer request costs a lock and
        an append, not a thread switch.
        """
        n = len(records)
        with self._lock:
            full = self._pending_rows + n > self._max_rows
            if not full:
                self._pending.append((request_id, datetime.now(UTC), model_name, version, records, scores))
                self._pending_rows += n
                if self._pending_rows >= self._batch_rows:
                    self._ready.set()
        if full:
            self._count(dropped=n)

    def close(self, timeout: float = 25.0) -> None:
        """Flush what is queued, let the writer finish, and stop (graceful shutdown)."""
        deadline = time.monotonic() + timeout
        if self._sender.is_alive():
            self._stopping = True
            self._ready.set()
            self._sender.join(timeout)
        writer = self._writer
        if writer is not None:
            writer.finish(max(0.1, deadline - time.monotonic()))

    # -- API side internals ------------------------------------------------------------

    def _count(self, *, written: int = 0, dropped: int = 0) -> None:
        with self._counts:
            self.written += written
            self.dropped += dropped
        if written:
            self._on_written(written)
        if dropped:
            self._on_dropped(dropped)

    def _spawn_writer(self) -> _WriterProcess:
        writer = _WriterProcess(self.url)
        writer.reader = threading.Thread(
            target=self._read_reports, args=(writer,), name="inference-log-reports", daemon=True
        )
        writer.reader.start()
        return writer

    def _read_reports(self, writer: _WriterProcess) -> None:
        """Count each batch's outcome as the writer reports it (``written N`` / ``dropped N``);
        when it is gone, whatever it was sent and never reported is lost: count that too."""
        assert writer.process.stdout is not None
        for line in writer.process.stdout:
            outcome, _, count = line.decode().partition(" ")
            rows = int(count)
            with self._counts:
                writer.unreported -= rows
            if outcome == "written":
                self._count(written=rows)
            else:
                self._count(dropped=rows)
        with self._counts:
            writer.gone = True
            lost, writer.unreported = writer.unreported, 0
        if lost:
            log.warning("inference log writer exited with %d rows unwritten", lost)
            self._count(dropped=lost)

    def _send_loop(self) -> None:
        while True:
            self._ready.wait(self._flush_s)
            with self._lock:
                items = self._pending
                self._pending, self._pending_rows = [], 0
                self._ready.clear()
                stopping = self._stopping
            for chunk, chunk_rows in _chunks(items, self._batch_rows):
                self._send(chunk, chunk_rows)
            if stopping:
                break
        if self._writer is not None:
            self._writer.close_input()  # the writer flushes and exits

    def _encode(self, items: list[Item]) -> tuple[bytes | None, int]:
        """The frame for ``items``, and how many rows could not be encoded (and are dropped).

        Validation upstream should make every row encodable; should one slip through (an
        integer beyond 64 bits, say), only its request is lost, never the sender thread.
        """
        rows = [(rid, at, name, version, records, _floats(scores)) for rid, at, name, version, records, scores in items]
        try:
            return self._encoder.encode(rows), 0
        except (OverflowError, TypeError, ValueError):
            good, bad = [], 0
            for row in rows:
                try:
                    self._encoder.encode([row])
                    good.append(row)
                except (OverflowError, TypeError, ValueError) as exc:
                    bad += len(row[4])
                    log.error("inference log: request %s cannot be encoded (%s); its rows are dropped", row[0], exc)
            return (self._encoder.encode(good) if good else None), bad

    def _send(self, items: list[Item], rows: int) -> None:
        frame, unencodable = self._encode(items)
        if unencodable:
            self._count(dropped=unencodable)
            rows -= unencodable
        if frame is None:
            return
        writer = self._writer
        alive = False
        if writer is not None:
            with self._counts:
                alive = not writer.gone
                if alive:  # from here on, the report reader counts these rows as lost if the writer exits
                    writer.unreported += rows
        lost = rows
        if alive:
            try:
                writer.send(frame)
                return
            except (OSError, ValueError):
                with self._counts:
                    if writer.gone:  # the reader has counted them already
                        lost = 0
                    else:
                        writer.unreported -= rows
        self._count(dropped=lost)
        code = writer.process.poll() if writer is not None else None
        log.warning("inference log writer is gone (exit code %s); restarting it", code)
        time.sleep(_RESTART_PAUSE_S)
        try:
            self._writer = self._spawn_writer()
        except OSError as exc:
            log.warning("inference log writer could not start (%s); rows are dropped until it does", exc)


class _WriterProcess:
    """One writer process, and the rows piped to it that it has not reported yet."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.inference_log"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.unreported = 0
        self.gone = False
        self.reader: threading.Thread | None = None  # counts its reports
        # The URL may hold a password: it goes through the pipe, never the command line.
        self.send(msgspec.msgpack.encode({"url": url}))

    def send(self, payload: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(_LENGTH.pack(len(payload)) + payload)
        stdin.flush()

    def close_input(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()

    def finish(self, timeout: float) -> None:
        """Let the writer write what it was sent and exit (stopped if it takes longer than
        ``timeout``), and count its last reports."""
        deadline = time.monotonic() + timeout
        self.close_input()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("inference log writer did not finish in time; stopping it")
            self.process.kill()
            self.process.wait()
        if self.reader is not None:
            self.reader.join(max(1.0, deadline - time.monotonic()))


def _chunks(items: list[Item], batch_rows: int) -> Iterator[tuple[list[Item], int]]:
    """Consecutive groups of whole requests, each closed once it holds ``batch_rows`` rows."""
    chunk: list[Item] = []
    rows = 0
    for item in items:
        chunk.append(item)
        rows += len(item[4])
        if rows >= batch_rows:
            yield chunk, rows
            chunk, rows = [], 0
    if chunk:
        yield chunk, rows


def _floats(scores: Sequence[float]) -> list[float]:
    return scores.tolist() if hasattr(scores, "tolist") else [float(s) for s in scores]


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


# -- the writer process --------------------------------------------------------------


class _Database:
    """Inserts frames of scored requests, one transaction per frame: all its rows or none."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_wal)
        self._table = table(sa.MetaData())
        self._table_ready = False
        self._values = operator.itemgetter(*(f.name for f in FEATURES))

    def ensure_table(self) -> None:
        if not self._table_ready:
            self._table.metadata.create_all(self._engine)
            self._table_ready = True

    def rows(self, items: list[list[Any]]) -> list[tuple]:
        text_time = self._engine.dialect.name == "sqlite"
        values = self._values
        rows = []
        for request_id, at, model_name, version, records, scores in items:
            at = sqlite_time(at) if text_time else at
            rows.extend(
                (request_id, i, at, model_name, version, r.get(ID_COLUMN), *values(r), p)
                for i, (r, p) in enumerate(zip(records, scores, strict=True))
            )
        return rows

    def insert(self, items: list[list[Any]]) -> int:
        self.ensure_table()
        rows = self.rows(items)
        names = ", ".join(_COLUMNS)
        with self._engine.begin() as conn:
            dialect, raw = conn.dialect.name, conn.connection.dbapi_connection
            if dialect == "postgresql" and conn.dialect.driver == "psycopg2":
                # The server expands one JSON document into typed rows: several times faster
                # than sending a thousand VALUES tuples.
                document = msgspec.json.encode([dict(zip(_COLUMNS, r, strict=True)) for r in rows]).decode()
                with raw.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO inference_log ({names}) SELECT {names} "
                        "FROM json_populate_recordset(NULL::inference_log, %s)",
                        (document,),
                    )
            elif dialect == "sqlite":
                cur = raw.cursor()
                marks = ", ".join("?" * len(_COLUMNS))
                cur.executemany(f"INSERT INTO inference_log ({names}) VALUES ({marks})", rows)
                cur.close()
            else:
                conn.execute(self._table.insert(), [dict(zip(_COLUMNS, r, strict=True)) for r in rows])
        return len(rows)

    def dispose(self) -> None:
        self._engine.dispose()


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead logging: the monitor can read while we write, and a commit costs no fsync
    (a power cut may lose the last batches, never corrupt the file)."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _report(outcome: str, rows: int) -> None:
    try:
        sys.stdout.write(f"{outcome} {rows}\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the API is gone; its last frames are still worth writing
        pass


def writer_main() -> None:
    """Read frames from stdin until it closes; insert each; report outcomes on stdout."""
    # The API decides when the writer stops (by closing its input); a Ctrl-C or SIGTERM to
    # the process group must not cut the final flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stdin = sys.stdin.buffer
    config = _read_frame(stdin)
    if config is None:
        return
    database = _Database(msgspec.msgpack.decode(config)["url"])
    decoder = msgspec.msgpack.Decoder()
    try:
        try:  # create the table early when the database is up; each batch retries otherwise
            database.ensure_table()
        except Exception as exc:  # noqa: BLE001
            log.warning("inference log database not ready yet (%s); will retry", type(exc).__name__)
        while (frame := _read_frame(stdin)) is not None:
            items = decoder.decode(frame)
            rows = sum(len(item[4]) for item in items)
            try:
                _report("written", database.insert(items))
            except Exception as exc:  # noqa: BLE001 - a lost batch is counted, never fatal
                log.warning("inference log: dropped %d rows (%s)", rows, type(exc).__name__)
                _report("dropped", rows)
    finally:
        database.dispose()


if __name__ == "__main__":
    writer_main()
