"""The inference log, API side: every scored row leaves the request path at once.

A request only appends its rows to a bounded list; a sender thread gathers them into frames
(every ``flush_s`` or ``batch_rows`` rows) and pipes them, as MessagePack, to this worker's
writer process (``serving/log_writer.py``), which spools each frame to disk before it
loads the database. Database drivers hold Python's GIL while they bind parameters; in
their own process that work runs on another core and never delays a request.

What can still be lost is counted, never hidden: past ``queue_rows`` waiting rows in the
API (a writer that cannot keep up even with its disk), rows the writer had been piped but
not yet spooled when it died, rows past the spool's byte cap, and rows the database
refuses for good (a request's bad data costs only its own rows). A writer that dies is
replaced, and the new one replays what the old one spooled; one that starts after an API
crash replays that API's spool.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from churn_platform.errors import SettingsError
from serving.log_writer import pipe_frame, spool_root

if TYPE_CHECKING:
    from serving.schemas import Record  # a type only: the schemas build pydantic models on import

log = logging.getLogger(__name__)

#: A writer that dies young is restarted after a pause that doubles up to the longest: one that
#: cannot make its spool (a full volume) was otherwise respawned every second for good.
_RESTART_PAUSE_S, _RESTART_PAUSE_MAX_S = 1.0, 60.0
_RESTARTED_FOR_GOOD_S = 60.0  # a writer that ran this long resets the pause
_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size

# Frames on the writer's stdin: first the configuration, then lists of items:
# [request_id, scored_at, model_name, version, arm, records, probabilities, scoring_ms, positions]:
# positions, each record's place in the request, only when it is not 0, 1, 2... (a canary's arms).
Item = tuple[str, datetime, str, int, str, Sequence["Record"], Sequence[float], float | None, Sequence[int] | None]
#: What happened to rows, as the writer reports it (and the metrics count it).
Outcome = Literal["written", "dropped", "spooled", "replayed"]


def check_spool_dir(spool_dir: Path, url: str) -> None:
    """``SettingsError`` naming the variable unless the writer can make its folders there: the
    database's own (``spool_root``), and in it a folder and a file (the writer exited at each
    start on a file in the way). A volume that is merely full (a long outage filled it) is
    said, not refused: predictions never depend on the log, and the writer retries."""
    try:
        root = spool_root(spool_dir, url)
        root.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=root))
        try:
            (probe / "file").write_bytes(b"")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.warning("CHURN_INFERENCE_LOG_SPOOL_DIR=%s is full (%s): rows are dropped until there is room; "
                        "a writer cannot replay what is spooled there either: free or grow the volume",
                        spool_dir, exc.strerror)  # fmt: skip
            return
        raise SettingsError(
            f"CHURN_INFERENCE_LOG_SPOOL_DIR={spool_dir}: cannot write there ({exc.strerror}); "
            "mount a writable volume (an emptyDir or PVC in Kubernetes)"
        ) from exc


class LogListener(Protocol):
    """Told what the log does with rows (the API's metrics implement it)."""

    def log_rows_counted(self, outcome: Outcome, rows: int) -> None: ...

    def log_spool(self, spool_bytes: int, live: bool, torn_frames: int, last_skipped_at: float) -> None: ...


class InferenceLog:
    """Bounded list of scored requests + sender thread + writer process (+ its disk spool).

    ``written``, ``dropped``, ``spooled`` and ``replayed`` count rows; ``spool_bytes``,
    ``live``, ``torn_frames`` and ``last_skipped_at`` (epoch seconds, 0: never) describe the
    spool as last reported.
    """

    def __init__(
        self,
        url: str,
        *,
        spool_dir: Path,
        spool_max_bytes: int = 1 << 30,
        batch_rows: int = 500,
        flush_s: float = 1.0,
        queue_rows: int = 100_000,
        listener: LogListener | None = None,
        log_format: str = "text",
    ) -> None:
        self.url, self._log_format = url, log_format
        self.spool_dir, self.spool_max_bytes = Path(spool_dir), spool_max_bytes
        self._pending: list[Item] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set when a batch is due, or to stop
        self._stopping = False
        self._overflowing = False
        self._max_rows, self._batch_rows, self._flush_s = queue_rows, batch_rows, flush_s
        self._listener = listener
        self._encoder = msgspec.msgpack.Encoder()
        self._sender = threading.Thread(target=self._send_loop, name="inference-log-sender", daemon=True)
        self._writer: _WriterProcess | None = None
        self._counts = threading.Lock()  # written, dropped and each writer's unreported rows
        self.written = self.dropped = self.spooled = self.replayed = 0
        self.spool_bytes, self.live, self.torn_frames, self.last_skipped_at = 0, True, 0, 0.0
        self._restart_pause = _RESTART_PAUSE_S
        self._closing = threading.Event()  # cuts a restart's pause short

    def start(self) -> None:
        """Start the writer (it first replays any spool an earlier process left) and the sender.

        A spool folder that cannot be written is a deployment error: it stops the start,
        naming the variable, instead of losing rows later.
        """
        check_spool_dir(self.spool_dir, self.url)
        self._writer = self._spawn_writer()
        self._sender.start()

    def state(self) -> dict[str, Any]:
        """For /model: is the log live or spooling, and what it has done so far."""
        writer = self._writer
        with self._counts:
            down = writer is None or writer.gone  # restarting: nothing takes rows now
            return {
                "state": "stopped" if self._stopping else "down" if down else "live" if self.live else "spooling",
                "spool_dir": str(self.spool_dir),
                "spool_bytes": self.spool_bytes,
                "rows": {"written": self.written, "spooled": self.spooled, "replayed": self.replayed,
                         "dropped": self.dropped},
                "torn_frames": self.torn_frames,
                "last_skipped_at": (datetime.fromtimestamp(self.last_skipped_at, UTC).isoformat(timespec="seconds")
                                    if self.last_skipped_at else None),
            }  # fmt: skip

    def append(
        self,
        request_id: str,
        model_name: str,
        version: int,
        records: Sequence[Record],
        scores: Sequence[float],
        arm: str = "production",
        scoring_ms: float | None = None,
        positions: Sequence[int] | None = None,
    ) -> None:
        """Queue one request's rows; never blocks. Past the row limit the rows are dropped and counted.

        Only a full batch wakes the sender, so a single-customer request costs a lock and
        an append, not a thread switch.
        """
        n = len(records)
        with self._lock:
            full = self._pending_rows + n > self._max_rows
            if not full:
                item = (request_id, datetime.now(UTC), model_name, version, arm, records, scores, scoring_ms, positions)
                self._pending.append(item)
                self._pending_rows += n
                if self._pending_rows >= self._batch_rows:
                    self._ready.set()
        if full:
            self._count("dropped", n)
            if not self._overflowing:  # one line per episode; the metric counts every row
                self._overflowing = True
                log.warning("inference log queue is full (%d rows, CHURN_INFERENCE_LOG_QUEUE_ROWS): rows are "
                            "dropped until the writer catches up", self._max_rows)  # fmt: skip
        elif self._overflowing:
            self._overflowing = False

    def close(self, timeout: float = 25.0) -> None:
        """Flush what is queued, let the writer finish, and stop (graceful shutdown)."""
        deadline = time.monotonic() + timeout
        if self._sender.is_alive():
            self._stopping = True
            self._closing.set()
            self._ready.set()
            self._sender.join(timeout)
        writer = self._writer
        if writer is not None:
            writer.finish(max(0.1, deadline - time.monotonic()))

    # -- API side internals ------------------------------------------------------------

    def _count(self, outcome: Outcome, rows: int) -> None:
        with self._counts:
            setattr(self, outcome, getattr(self, outcome) + rows)
        if self._listener is not None:
            self._listener.log_rows_counted(outcome, rows)

    def _spawn_writer(self) -> _WriterProcess:
        config = {"url": self.url, "spool_dir": str(self.spool_dir), "spool_max_bytes": self.spool_max_bytes,
                  "flush_s": self._flush_s, "log_format": self._log_format}  # fmt: skip
        writer = _WriterProcess(config)
        writer.reader = threading.Thread(
            target=self._read_reports, args=(writer,), name="inference-log-reports", daemon=True
        )
        writer.reader.start()
        return writer

    def _read_reports(self, writer: _WriterProcess) -> None:
        """Count what the writer reports (see ``serving/log_writer.py``); when it is gone,
        rows it was piped and never reported as spooled are lost: count those too."""
        assert writer.process.stdout is not None
        for line in writer.process.stdout:
            outcome, *values = line.decode().split()
            if outcome == "status":
                with self._counts:
                    self.spool_bytes, self.live = int(values[0]), values[1] == "live"
                self._spool_changed()
                continue
            rows = int(values[0])
            if outcome == "torn":
                with self._counts:
                    self.torn_frames += rows
                    self.last_skipped_at = time.time()
                self._spool_changed()
                continue
            if outcome in ("spooled", "full"):
                with self._counts:
                    writer.unreported -= rows
            self._count("dropped" if outcome == "full" else outcome, rows)  # type: ignore[arg-type]
        with self._counts:
            writer.gone = True
            self.live = False
            lost, writer.unreported = writer.unreported, 0
        self._spool_changed()  # /metrics: no longer live, whatever its last report said
        self._ready.set()  # the sender replaces it now, not at the next request of an idle API
        # Below 0 when the sender took back a payload the writer had partly reported before its
        # pipe broke (those frames are sent again: the table's unique id stores them once).
        if lost > 0:
            log.warning("inference log writer exited with %d rows not spooled", lost)
            self._count("dropped", lost)

    def _spool_changed(self) -> None:
        if self._listener is not None:
            self._listener.log_spool(self.spool_bytes, self.live, self.torn_frames, self.last_skipped_at)

    def _send_loop(self) -> None:
        while True:
            self._ready.wait(self._flush_s)
            with self._lock:
                items = self._pending
                self._pending, self._pending_rows = [], 0
                self._ready.clear()
                stopping = self._stopping
            if items:
                self._send(list(_chunks(items, self._batch_rows)))
            elif not stopping and (writer := self._writer) is not None and writer.gone:
                self._replace(writer)  # what the gone writer spooled is replayed while no request comes
            if stopping:
                break
        if self._writer is not None:
            self._writer.close_input()  # the writer flushes and exits

    def _encode(self, items: list[Item]) -> tuple[bytes | None, int]:
        """The frame for ``items``, and how many rows could not be encoded (and are dropped).

        Validation upstream should make every row encodable; should one slip through (an
        integer beyond 64 bits, say), only its request is lost, never the sender thread.
        """
        rows = [(rid, at, name, version, arm, records, _floats(scores), ms, positions)
                for rid, at, name, version, arm, records, scores, ms, positions in items]  # fmt: skip
        try:
            return self._encoder.encode(rows), 0
        except (OverflowError, TypeError, ValueError):
            good, bad = [], 0
            for row in rows:
                try:
                    self._encoder.encode([row])
                    good.append(row)
                except (OverflowError, TypeError, ValueError) as exc:
                    bad += len(row[5])
                    log.error("inference log: request %s cannot be encoded (%s); its rows are dropped", row[0], exc)
            return (self._encoder.encode(good) if good else None), bad

    def _send(self, chunks: list[tuple[list[Item], int]]) -> None:
        """Pipe one frame per chunk, all in one write.

        A write gives up the GIL, and under full load winning it back from the event loop can
        take the whole switch interval (5 ms): with a write per chunk the sender managed ~200
        batches of 1000 rows a second, the API scored more, and its queue overflowed.
        """
        frames: list[bytes] = []
        rows = 0
        for items, chunk_rows in chunks:
            frame, unencodable = self._encode(items)
            if unencodable:
                self._count("dropped", unencodable)
            if frame is not None:
                frames.append(pipe_frame(frame, chunk_rows - unencodable))
                rows += chunk_rows - unencodable
        if not frames:
            return
        payload = b"".join(frames)  # one write: joined without a copy
        for last_try in (False, True):  # a writer found gone is replaced, and the frames go to the new one
            writer = self._writer
            alive = False
            if writer is not None:
                with self._counts:
                    alive = not writer.gone
                    if alive:  # from here on, the report reader counts these rows as lost if the writer exits
                        writer.unreported += rows
            if alive:
                try:
                    writer.send(payload)
                    return
                except (OSError, ValueError):
                    with self._counts:
                        counted = writer.gone  # the reader has counted them as lost already
                        if not counted:
                            writer.unreported -= rows
                    if counted:
                        self._replace(writer)
                        return
            if last_try or not self._replace(writer):
                self._count("dropped", rows)
                return

    def _replace(self, writer: _WriterProcess | None) -> bool:
        """Start a writer in place of one that is gone (it replays what that one spooled)."""
        code = writer.process.poll() if writer is not None else None
        if writer is not None and time.monotonic() - writer.started >= _RESTARTED_FOR_GOOD_S:
            self._restart_pause = _RESTART_PAUSE_S
        pause = self._restart_pause
        self._restart_pause = min(pause * 2, _RESTART_PAUSE_MAX_S)
        log.warning("inference log writer is gone (exit code %s); restarting it in %.0f s", code, pause)
        self._closing.wait(pause)  # shutting down: at once, for what is queued
        try:
            self._writer = self._spawn_writer()
        except OSError as exc:
            log.warning("inference log writer could not start (%s); rows are dropped until it does", exc)
            return False
        return True


class _WriterProcess:
    """One writer process, and the rows piped to it that it has not reported as spooled yet."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.log_writer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        _widen(self.process.stdin)
        self.started = time.monotonic()
        self.unreported = 0
        self.gone = False
        self.reader: threading.Thread | None = None  # counts its reports
        # The URL may hold a password: it goes through the pipe, never the command line.
        self.send(pipe_frame(msgspec.msgpack.encode(config), 0))

    def send(self, frames: bytes) -> None:
        """Pipe whole frames (``pipe_frame``) to the writer."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(frames)
        stdin.flush()

    def close_input(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()

    def finish(self, timeout: float) -> None:
        """Let the writer spool what it was sent, load what it can, and exit (stopped if it
        takes longer than ``timeout``: the spool keeps the rest); count its last reports."""
        deadline = time.monotonic() + timeout
        self.close_input()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("inference log writer did not finish in time; stopping it (its spool is kept)")
            self.process.kill()
            self.process.wait()
        if self.reader is not None:
            self.reader.join(max(1.0, deadline - time.monotonic()))


def _widen(pipe: IO[bytes] | None) -> None:
    """Let a whole frame (~400 KB for 1000 rows) fit in the pipe: 64 KB pipes made every frame
    several blocking writes, each a wake-up of the writer and a GIL hand-off in the API."""
    resize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if pipe is None or resize is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), resize, _PIPE_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size: the default stays
        pass


def _chunks(items: list[Item], batch_rows: int) -> Iterator[tuple[list[Item], int]]:
    """Consecutive groups of whole requests, each closed once it holds ``batch_rows`` rows."""
    chunk: list[Item] = []
    rows = 0
    for item in items:
        chunk.append(item)
        rows += len(item[5])
        if rows >= batch_rows:
            yield chunk, rows
            chunk, rows = [], 0
    if chunk:
        yield chunk, rows


def _floats(scores: Sequence[float]) -> list[float]:
    return scores.tolist() if hasattr(scores, "tolist") else [float(s) for s in scores]
