"""The inference log's writer process: real processes, a real SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from churn_platform.data import generate, to_records
from churn_platform.errors import SettingsError
from serving.inference_log import InferenceLog
from serving.log_writer import spool_root
from serving.spool import FORMAT

RECORDS = to_records(generate(20, seed=5).drop(columns=["churn"]))


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def logged(url: str) -> tuple[int, int]:
    """(rows, distinct (request_id, row_index) pairs) in the log table."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.text(
                "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT request_id, row_index FROM inference_log))"
                " FROM inference_log"
            )).one())  # fmt: skip
    finally:
        engine.dispose()


def test_rows_spooled_by_a_writer_that_crashes_are_replayed_by_the_next(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=1, flush_s=0.05)
    log.start()
    try:
        for i in range(5):
            log.append(f"before-{i}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written == 100)
        lock = sqlite3.connect(f"{tmp_path}/log.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the database is away: the writer can only spool
        log.append("held", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.spooled == 120)
        first = log._writer
        first.process.kill()  # dies with 20 rows on disk that no database has
        first.process.wait()
        lock.execute("COMMIT")
        lock.close()
        for i in range(20):  # the first send after the crash finds it gone: a new writer takes those rows
            log.append(f"after-{i}", "churn", 1, RECORDS[:5], [0.25] * 5)
            time.sleep(0.1)
        wait_for(lambda: log.written + log.dropped == 220)
        assert log._writer is not first and log.replayed == 20 and log.dropped == 0
    finally:
        log.close()
    assert logged(url) == (log.written, log.written)
    assert not list((tmp_path / "spool").rglob("*.seg"))  # everything committed, nothing left behind


def test_a_writer_that_dies_while_no_request_comes_is_replaced_and_replays_its_spool(tmp_path):
    """The writer was replaced only by the next request's rows: an idle API kept its spooled
    rows out of the database, and /metrics said live, until traffic came back."""
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=1, flush_s=0.05)
    log.start()
    try:
        lock = sqlite3.connect(f"{tmp_path}/log.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the database is away: the writer can only spool
        log.append("held", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.spooled == 20)
        first = log._writer
        first.process.kill()
        first.process.wait()
        lock.execute("COMMIT")
        lock.close()
        wait_for(lambda: log.replayed == 20)  # no request since
        assert log._writer is not first and log.written == 20 and log.dropped == 0
        wait_for(lambda: log.state()["state"] == "live")
    finally:
        log.close()
    assert logged(url) == (20, 20)


def test_close_flushes_everything_queued(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=10_000, flush_s=30)  # sent only at close
    log.start()
    for i in range(50):
        log.append(f"r{i}", "churn", 3, RECORDS, [0.1] * len(RECORDS))
    log.close()
    assert (log.written, log.dropped) == (1000, 0)
    assert logged(url) == (1000, 1000)
    assert log._writer.process.returncode == 0
    assert log.state()["state"] == "stopped"  # not "down": nothing is restarting


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path, caplog):
    log = InferenceLog(
        f"sqlite:///{tmp_path}/log.db", spool_dir=tmp_path / "spool", batch_rows=10_000, flush_s=30, queue_rows=50
    )
    log.start()
    for i in range(10):
        log.append(f"r{i}", "churn", 1, RECORDS, [0.1] * len(RECORDS))
    log.close()
    assert (log.written, log.dropped) == (40, 160)  # an append that waited for room would drop nothing
    full = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert full == ["inference log queue is full (50 rows, CHURN_INFERENCE_LOG_QUEUE_ROWS): rows are dropped "
                    "until the writer catches up"]  # fmt: skip


def test_database_url_never_reaches_the_command_line(tmp_path):
    secret_url = f"sqlite:///{tmp_path}/log.db?password=s3cr3t-value"
    log = InferenceLog(secret_url, spool_dir=tmp_path / "spool")
    log.start()
    try:
        # Empty while the child is inside execve (one clean run in many read it then): read it once it has run.
        deadline, cmdline = time.monotonic() + 30, b""
        while not cmdline and time.monotonic() < deadline and log._writer.process.poll() is None:
            cmdline = Path(f"/proc/{log._writer.process.pid}/cmdline").read_bytes()
            time.sleep(0 if cmdline else 0.05)
        assert b"s3cr3t" not in cmdline and b"serving.log_writer" in cmdline
    finally:
        log.close()


def test_writer_finishes_piped_frames_and_exits_when_the_api_is_killed(tmp_path):
    """SIGKILL loses what the API still held in memory, never what it had piped: the writer
    writes that (its reports now go nowhere), sees its input close, and exits."""
    url = f"sqlite:///{tmp_path}/log.db"
    script = textwrap.dedent(f"""
        import sys, time
        from serving.inference_log import InferenceLog
        from tests.unit.test_inference_log import RECORDS
        log = InferenceLog({url!r}, spool_dir={str(tmp_path / "spool")!r}, batch_rows=1, flush_s=0.01)
        log.start()
        for i in range(5):
            log.append(f"first{{i}}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        while log.written < 100:
            time.sleep(0.05)
        print(log._writer.process.pid, flush=True)
        sys.stdin.readline()
        for i in range(5):
            log.append(f"second{{i}}", "churn", 1, RECORDS[:5], [0.5] * 5)
        time.sleep(0.5)  # small frames: all piped by now, none written (the database is locked)
        print("sent", flush=True)
        time.sleep(600)
    """)
    api = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    writer_pid = int(api.stdout.readline())
    lock = sqlite3.connect(f"{tmp_path}/log.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    api.stdin.write("go\n")
    api.stdin.flush()
    assert api.stdout.readline().strip() == "sent"
    api.send_signal(signal.SIGKILL)
    api.wait()
    lock.execute("COMMIT")  # within the writer's 5 s busy timeout
    lock.close()

    def gone() -> bool:
        try:
            os.kill(writer_pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{writer_pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped

    wait_for(gone, timeout=30)
    assert logged(url) == (125, 125)


def test_a_row_that_cannot_be_encoded_costs_its_request_not_the_sender(tmp_path):
    """Found by the API fuzzer: a 2**70 tenure killed the sender thread, so nothing after it was logged."""
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=1000, flush_s=0.05)
    log.start()
    try:
        log.append("good-1", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        log.append("huge", "churn", 1, [RECORDS[0] | {"tenure": 2**70}], [0.5])
        log.append("good-2", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written == 40 and log.dropped == 1)
        log.append("after", "churn", 1, RECORDS, [0.5] * len(RECORDS))  # the sender still runs
        wait_for(lambda: log.written == 60)
    finally:
        log.close()
    assert logged(url) == (60, 60)


def test_a_row_sqlite_refuses_is_counted_as_dropped_never_skipped_as_stored(tmp_path):
    """A NaN score binds as NULL, which the table refuses: INSERT OR IGNORE skipped those rows
    as if a replay had stored them, uncounted."""
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=1000, flush_s=0.05)
    log.start()
    try:
        log.append("good-1", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        log.append("nan", "churn", 1, RECORDS[:3], [float("nan")] * 3)
        log.append("good-2", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written + log.dropped == 43)
    finally:
        log.close()
    assert (log.written, log.dropped) == (40, 3) and logged(url) == (40, 40)


def locked(path: Path) -> sqlite3.Connection:
    """Hold SQLite's exclusive lock: to the writer, the database is down."""
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    return lock


def test_a_database_outage_costs_no_row_and_writes_none_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=20, flush_s=0.05)
    log.start()
    try:
        log.append("warm-up", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written == 20)
        lock = locked(tmp_path / "log.db")
        for i in range(30):
            log.append(f"outage-{i}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.spooled == 620 and not log.live and log.spool_bytes > 0)
        assert log.state()["state"] == "spooling" and log.written == 20
        lock.execute("COMMIT")
        lock.close()
        wait_for(lambda: log.written == 620 and log.live)
    finally:
        log.close()
    assert log.dropped == 0 and logged(url) == (620, 620)


def test_an_api_killed_with_a_full_spool_replays_it_at_the_next_start(tmp_path):
    """Both processes SIGKILLed (a container killed) while the database was away: the next
    start finds the spool, replays it, and writes each row once."""
    url = f"sqlite:///{tmp_path}/log.db"
    spool = tmp_path / "spool"
    script = textwrap.dedent(f"""
        import time
        from serving.inference_log import InferenceLog
        from tests.unit.test_inference_log import RECORDS
        log = InferenceLog({url!r}, spool_dir={str(spool)!r}, batch_rows=20, flush_s=0.05)
        log.start()
        for i in range(10):
            log.append(f"r{{i}}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        while log.spooled < 200:
            time.sleep(0.05)
        print(log._writer.process.pid, flush=True)
        time.sleep(600)
    """)
    sqlite3.connect(tmp_path / "log.db").close()
    lock = locked(tmp_path / "log.db")
    api = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).parents[2])  # fmt: skip
    writer_pid = int(api.stdout.readline())
    os.kill(writer_pid, signal.SIGKILL)
    api.kill()
    api.wait()
    lock.execute("COMMIT")
    lock.close()
    assert list(spool.rglob("*.seg"))
    # Restarted with the URL's options changed (as with a rotated password): the same database, the same spool.
    log = InferenceLog(f"{url}?timeout=10", spool_dir=spool, batch_rows=20, flush_s=0.05)
    log.start()
    try:
        wait_for(lambda: log.replayed == 200)
    finally:
        log.close()
    assert logged(url) == (200, 200) and log.dropped == 0


def test_the_spool_folder_names_the_database_not_its_credentials():
    root = Path("/spool")
    same = {spool_root(root, u) for u in ("postgresql://u:old@db:5432/log", "postgresql+psycopg://v:new@db:5432/log",
                                           "postgresql://u:new@db:5432/log?sslmode=require")}  # fmt: skip
    assert len(same) == 1 and "old" not in str(same) and "new" not in str(same)
    others = {spool_root(root, u) for u in ("postgresql://u@db:5432/log2", "postgresql://u@db:5433/log",
                                             "postgresql://u@db2:5432/log", "mysql://u@db:5432/log",
                                             "postgresql://u@db:5432/log?options=-csearch_path%3Dstaging",
                                             "postgresql:///log?host=/cloudsql/a", "postgresql:///log?host=/cloudsql/b")}
    assert len(others) == 7 and not others & same
    assert spool_root(root, "sqlite:///log.db") == spool_root(root, f"sqlite:///{Path.cwd()}/./log.db")


def as_an_earlier_release_wrote(segment: Path) -> None:
    """Rewrite a segment's frames with the header of releases before 2026-12-07 (length, crc32, rows)."""
    data, out, at = segment.read_bytes(), b"", 0
    while at < len(data):
        _, length, rows, crc, _ = struct.unpack_from(">4sIIII", data, at)
        out += struct.pack(">III", length, crc, rows) + data[at + 20 : at + 20 + length]
        at += 20 + length
    segment.write_bytes(out)


@pytest.mark.parametrize("named_by", ["the whole URL", "the database"])
def test_rows_an_earlier_release_spooled_are_replayed(tmp_path, named_by):
    """Its folder named by a hash of the whole URL (before 2026-12-05) or of the database
    (before 2026-12-07), its frames without a header checksum."""
    import hashlib

    url = f"sqlite:///{tmp_path}/log.db"
    spool = tmp_path / "spool"
    old = InferenceLog(url, spool_dir=spool, batch_rows=20, flush_s=0.05)
    lock = None
    old.start()
    try:
        sqlite3.connect(tmp_path / "log.db").close()
        lock = locked(tmp_path / "log.db")
        old.append("r", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: old.spooled == 20)
        old._writer.process.kill()
        old._writer.process.wait()
        old.close()
    finally:
        if lock is not None:
            lock.execute("COMMIT")
            lock.close()
    root = spool_root(spool, url)
    earlier = {"the whole URL": hashlib.sha256(url.encode()).hexdigest()[:16],
               "the database": root.name.removesuffix(f"-{FORMAT}")}  # fmt: skip
    root.rename(legacy := spool / earlier[named_by])  # where that release kept it
    for segment in legacy.glob("*/*.seg"):
        as_an_earlier_release_wrote(segment)
    log = InferenceLog(url, spool_dir=spool, batch_rows=20, flush_s=0.05)
    log.start()
    try:
        wait_for(lambda: log.replayed == 20)
    finally:
        log.close()
    assert logged(url) == (20, 20) and not legacy.exists()


def test_rows_spooled_for_another_database_are_named_at_start_never_replayed_here(tmp_path, capfd):
    spool = tmp_path / "spool"
    waiting = spool_root(spool, f"sqlite:///{tmp_path}/old.db") / "writer"
    waiting.mkdir(parents=True)
    (waiting / "000000000001.seg").write_bytes(b"x" * 100)
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=spool, batch_rows=1, flush_s=0.05)
    log.start()
    try:
        log.append("r", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written == 20)
    finally:
        log.close()
    assert f"{waiting.parent} holds 100 bytes spooled for another database" in capfd.readouterr().err
    assert (waiting / "000000000001.seg").exists() and log.replayed == 0


def spooled_by_a_crashed_writer(tmp_path: Path) -> tuple[str, Path, sqlite3.Connection]:
    """(log URL, the one spool segment, the lock keeping the database away): five frames of 20
    rows a writer spooled while its database was away, then was killed."""
    url = f"sqlite:///{tmp_path}/log.db"
    sqlite3.connect(tmp_path / "log.db").close()
    lock = locked(tmp_path / "log.db")
    first = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=20, flush_s=0.05)
    first.start()
    for i in range(5):
        first.append(f"r{i}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
    wait_for(lambda: first.spooled == 100)
    first._writer.process.kill()
    first._writer.process.wait()
    (segment,) = (tmp_path / "spool").rglob("*.seg")
    return url, segment, lock


def replayed_by_the_next_writer(url: str, tmp_path: Path, lock: sqlite3.Connection, done) -> InferenceLog:
    """The database back (``lock`` released) and the next writer started on the same spool,
    until ``done(writer)`` holds; the writer, closed."""
    lock.execute("COMMIT")
    lock.close()
    second = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=20, flush_s=0.05)
    second.start()
    try:
        wait_for(lambda: done(second))
    finally:
        second.close()
    return second


def test_a_torn_last_frame_is_skipped_and_counted_the_rest_replayed(tmp_path):
    url, segment, lock = spooled_by_a_crashed_writer(tmp_path)
    with open(segment, "r+b") as handle:  # killed in the middle of writing the last frame
        handle.truncate(segment.stat().st_size - 10)
    second = replayed_by_the_next_writer(url, tmp_path, lock, lambda w: w.replayed == 80 and w.torn_frames == 1)
    assert logged(url) == (80, 80) and time.time() - 60 < second.last_skipped_at <= time.time()  # the alert's figure
    assert second.state()["last_skipped_at"] == datetime.fromtimestamp(second.last_skipped_at, UTC).isoformat(
        timespec="seconds")  # /model -> inference_log
    assert second.dropped == 0  # a torn frame's rows were never reported spooled: the API counted them


def test_a_corrupt_frame_in_the_middle_costs_its_rows_counted_as_dropped(tmp_path):
    """Its rows had been reported spooled, then were lost without a count: no alert heard of them."""
    url, segment, lock = spooled_by_a_crashed_writer(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bad block in the third of five frames
    segment.write_bytes(bytes(data))
    second = replayed_by_the_next_writer(url, tmp_path, lock, lambda w: w.replayed == 80 and w.dropped == 20)
    assert logged(url) == (80, 80) and second.torn_frames == 1


def test_past_the_spool_cap_rows_are_dropped_and_counted_nothing_else_lost(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    sqlite3.connect(tmp_path / "log.db").close()
    lock = locked(tmp_path / "log.db")
    log = InferenceLog(url, spool_dir=tmp_path / "spool", spool_max_bytes=40_000, batch_rows=20, flush_s=0.05)
    log.start()
    try:
        for i in range(40):
            log.append(f"r{i}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.spooled + log.dropped == 800)
        assert 0 < log.dropped < 800 and log.spool_bytes <= 40_000
        lock.execute("COMMIT")
        lock.close()
        wait_for(lambda: log.written == log.spooled)
    finally:
        log.close()
    assert log.written + log.dropped == 800 and logged(url) == (log.written, log.written)


def test_a_spool_folder_that_cannot_be_written_stops_the_start_naming_the_variable(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool folder should be")
    log = InferenceLog(f"sqlite:///{tmp_path}/log.db", spool_dir=blocker / "spool")
    with pytest.raises(SettingsError, match="CHURN_INFERENCE_LOG_SPOOL_DIR=.*cannot write there"):
        log.start()


def test_a_spool_folder_for_the_database_that_cannot_be_made_stops_the_start(tmp_path):
    """The start checked the spool folder only; the writer's own folder in it (named for the
    database) failing, the writer exited at each start and every row was dropped."""
    url = f"sqlite:///{tmp_path}/log.db"
    spool_root(tmp_path / "spool", url).parent.mkdir(parents=True)
    spool_root(tmp_path / "spool", url).write_text("a file where the database's spool folder goes")
    log = InferenceLog(url, spool_dir=tmp_path / "spool")
    with pytest.raises(SettingsError, match="CHURN_INFERENCE_LOG_SPOOL_DIR=.*cannot write there"):
        log.start()


def test_a_full_spool_volume_is_said_at_the_start_not_refused(tmp_path, monkeypatch, caplog):
    """A long outage filled the volume and the container restarted: refusing the start took the
    predictions down with the log."""
    import errno
    import tempfile

    from serving import inference_log

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    inference_log.check_spool_dir(tmp_path / "spool", f"sqlite:///{tmp_path}/log.db")
    assert "is full (No space left on device): rows are dropped until there is room" in caplog.text

    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(SettingsError, match="cannot write there"):
        inference_log.check_spool_dir(tmp_path / "spool", f"sqlite:///{tmp_path}/log.db")


def test_a_writer_that_cannot_make_its_spool_says_so_and_is_restarted_ever_later(tmp_path, caplog, capfd):
    """A volume that refuses the writer's folder after the start (filled, a file in the way):
    the writer died with a traceback and was respawned every second for good, and /model said
    the log was live."""
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, spool_dir=tmp_path / "spool", batch_rows=1, flush_s=0.05)
    log.start()
    try:
        log.append("first", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written == 20)
        root = spool_root(tmp_path / "spool", url)
        log._writer.process.kill()
        log._writer.process.wait()
        root.rename(tmp_path / "moved")
        root.write_text("in the way")
        deadline, sent = time.monotonic() + 60, 0
        while "in 2 s" not in caplog.text:  # each send finds the writer gone: restarted after 1 s, then 2 s
            assert time.monotonic() < deadline, "timed out"
            log.append(f"after-{sent}", "churn", 1, RECORDS[:1], [0.5])
            sent += 1
            time.sleep(0.1)
        assert log.state()["state"] == "down"
        assert "restarting it in 1 s" in caplog.text
    finally:
        log.close()
    err = capfd.readouterr().err
    assert "cannot make a folder in" in err and "Traceback" not in err


def test_frames_from_an_earlier_release_load_with_what_they_hold(tmp_path):
    """A spool left by an earlier release is replayed: an item without scoring time, a
    customer missing a feature (NULL) or carrying one this release dropped (ignored); an
    integer sent for a float feature is stored as a float."""
    import msgspec

    from serving.log_writer import Database, decode_frame

    old, extra = dict(RECORDS[0]), dict(RECORDS[1], retired_feature="x", monthly_charges=29)
    del old["tenure"]
    at = datetime.now(UTC)
    items = decode_frame(msgspec.msgpack.encode([
        ["before-scoring-times", at, "churn", 1, "production", [old], [0.25]],
        ["now", at, "churn", 2, "canary", [extra], [0.75], 1.5],
    ]))  # fmt: skip
    url = f"sqlite:///{tmp_path}/log.db"
    database = Database(url)
    try:
        assert database.insert(items) == 2
    finally:
        database.dispose()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        query = "SELECT request_id, arm, scoring_ms, tenure, monthly_charges FROM inference_log ORDER BY id"
        rows = conn.execute(sa.text(query)).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("before-scoring-times", "production", None, None, RECORDS[0]["monthly_charges"]),
        ("now", "canary", 1.5, RECORDS[1]["tenure"], 29.0),
    ]
    with pytest.raises(msgspec.DecodeError):
        decode_frame(msgspec.msgpack.encode([["not", "a", "request"]]))


def test_a_stop_half_way_through_a_split_reports_each_dropped_row_once(tmp_path, capsys):
    """A batch refused for one request's data is split; if the database goes away after part
    of it committed and the writer must stop, the frames stay spooled and are replayed: the
    refused request's rows are reported dropped once, at the replay, and stored rows not twice.
    (The database here is a stand-in: what is tested is the loader's counting.)"""
    import msgspec

    from serving.log_writer import Loader, LoggedRequest
    from serving.spool import Frame, Spool

    class Database:
        def __init__(self) -> None:
            self.stored: set[str] = set()
            self.away, self.goes_away = False, True

        def insert(self, items: list[LoggedRequest]) -> int:
            if any(item.request_id == "bad" for item in items):
                raise ValueError("a value the table cannot hold")
            if self.away:
                raise sqlite3.OperationalError("database is gone")
            new = [item for item in items if item.request_id not in self.stored]
            self.stored.update(item.request_id for item in new)
            self.away, self.goes_away = self.goes_away, False  # gone right after the first commit
            return sum(len(item.records) for item in new)

    spool, database = Spool(tmp_path / "spool", max_bytes=1 << 20), Database()
    at = datetime.now(UTC)
    requests = [[rid, at, "churn", 1, "production", RECORDS[:5], [0.5] * 5] for rid in ("first", "bad", "last")]
    frames = [Frame(spool.own, 0, 0, 15, msgspec.msgpack.encode(requests))]
    loader = Loader(spool, database, flush_s=0.1)
    loader.stopping.set()
    loader.drain_until = time.monotonic() + 0.5
    assert loader._load(frames) is False  # "first" committed, "bad" refused, then the database went away
    database.away, loader.drain_until = False, float("inf")
    assert loader._load(frames) is True  # the replay
    reports = [line.split() for line in capsys.readouterr().out.splitlines() if not line.startswith(("status", "torn"))]
    assert reports == [["written", "5"], ["written", "0"], ["dropped", "5"], ["written", "5"]] or reports == [
        ["written", "5"], ["written", "0"], ["written", "5"], ["dropped", "5"]
    ]
    assert database.stored == {"first", "last"}


def test_each_logged_value_lands_in_its_own_column():
    """The writer copies a customer's values in its struct's field order: every column must
    still get the value of the same name (a reordered schema would shift them silently)."""
    import msgspec

    from churn_platform.contract import INFERENCE_LOG_META
    from churn_platform.inference_log import COLUMNS
    from serving.log_writer import Database, LoggedCustomer, decode_frame

    assert LoggedCustomer.__struct_fields__ == COLUMNS[len(INFERENCE_LOG_META) : -1]

    at = datetime.now(UTC)
    items = decode_frame(msgspec.msgpack.encode([["r", at, "churn", 3, "canary", RECORDS[:2], [0.25, 0.75], 1.5]]))
    database = Database("postgresql+psycopg://nobody@127.0.0.1:1/never-connected")
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in database.rows(items)]
    meta = {"request_id": "r", "scored_at": at, "model_name": "churn", "model_version": 3, "arm": "canary",
            "scoring_ms": 1.5}  # fmt: skip
    assert rows == [
        {**meta, "row_index": i, **record, "churn_probability": p}
        for i, (record, p) in enumerate(zip(RECORDS[:2], [0.25, 0.75], strict=True))
    ]


def logged_once_there(url: str) -> tuple[int, int]:
    """``logged``, or (0, 0) while the writer has not made the table yet."""
    try:
        return logged(url)
    except sa.exc.OperationalError:
        return 0, 0


def test_a_running_writer_replays_a_spool_folder_another_writer_left_after_it_started(tmp_path, capsys):
    """An API worker killed alone: its writer drains while the database is away and exits after
    the replacement's writer started. Before, that folder waited for the next writer start (a
    deploy, maybe days later); now the running writer's loader takes it over and loads it."""
    import msgspec

    from serving.log_writer import Database, Loader
    from serving.spool import Spool

    root, url = tmp_path / "spool", f"sqlite:///{tmp_path}/log.db"
    at = datetime.now(UTC)
    spool = Spool(root, max_bytes=1 << 20)
    left = Spool(root, max_bytes=1 << 20)  # the old worker's writer, still holding its folder
    for rid in ("left-1", "left-2"):
        left.append(msgspec.msgpack.encode([[rid, at, "churn", 1, "production", RECORDS[:5], [0.5] * 5]]), rows=5)
    spool.append(msgspec.msgpack.encode([["ours", at, "churn", 1, "production", RECORDS[:3], [0.5] * 3]]), rows=3)
    database = Database(url)
    loader = Loader(spool, database, flush_s=0.05, adopt_s=0.2)
    loader.start()
    try:
        wait_for(lambda: logged_once_there(url) == (3, 3))
        left.sync()
        left.release()  # it exits with its rows still spooled
        wait_for(lambda: logged(url) == (13, 13))
        spool.append(msgspec.msgpack.encode([["after", at, "churn", 1, "production", RECORDS[:2], [0.5] * 2]]), rows=2)
        wait_for(lambda: logged(url) == (15, 15))
        wait_for(lambda: not left.own.exists())  # let go of once a later frame of ours is committed
    finally:
        loader.finish(5)
        spool.close()
        database.dispose()
    out = capsys.readouterr().out.split("\n")
    assert "replayed 10" in out


def test_a_disk_error_in_the_loader_is_retried_not_the_end_of_loading(tmp_path, monkeypatch, caplog):
    """An EIO while deleting a committed segment killed the loader thread: the writer went on
    spooling, nothing reached the database and nothing said so until the API restarted."""
    import msgspec

    from serving import log_writer
    from serving.log_writer import Database, Loader
    from serving.spool import Spool

    monkeypatch.setattr(log_writer, "_BACKOFF_MAX_S", 0.1)
    url, at = f"sqlite:///{tmp_path}/log.db", datetime.now(UTC)
    spool, database = Spool(tmp_path / "spool", max_bytes=1 << 20), Database(url)
    real_ack, failures = spool.ack, []

    def ack_fails_once(frames) -> None:
        if not failures:
            failures.append(frames)
            raise OSError(5, "Input/output error")
        real_ack(frames)

    monkeypatch.setattr(spool, "ack", ack_fails_once)
    loader = Loader(spool, database, flush_s=0.05)
    loader.start()
    try:
        for rid, stored in (("first", 4), ("second", 8)):
            spool.append(msgspec.msgpack.encode([[rid, at, "churn", 1, "production", RECORDS[:4], [0.5] * 4]]), rows=4)
            wait_for(lambda n=stored: logged_once_there(url)[0] >= n)
    finally:
        loader.finish(5)
        spool.close()
        database.dispose()
    assert failures and logged(url) == (8, 8)
    assert "Input/output error; trying again" in caplog.text



def test_a_payload_taken_back_from_a_writer_that_reported_part_of_it_counts_no_negative_loss(tmp_path):
    """The writer reported a payload's first frame spooled, then its pipe broke; the sender took
    the payload back (sent whole to the next writer: the table's unique id stores it once). The
    dead writer's count then ended below zero: `dropped` went down, and prometheus_client
    refused the negative increment with a ValueError in the report thread."""
    import io
    import threading

    log = InferenceLog(f"sqlite:///{tmp_path}/log.db", spool_dir=tmp_path / "spool")

    class Dead:  # its last report, "spooled 2", is read only after the sender took the payload back
        unreported, gone = 0, False
        process = type("P", (), {"stdout": io.BytesIO(b"spooled 2\n")})()

        def send(self, payload: bytes) -> None:
            raise BrokenPipeError

    class Next:
        unreported, gone, payloads = 0, False, []

        def send(self, payload: bytes) -> None:
            self.payloads.append(payload)

    dead, following = Dead(), Next()
    log._writer = dead
    log._replace = lambda writer: setattr(log, "_writer", following) or True
    items = [(f"r{i}", datetime.now(UTC), "churn", 1, "production", RECORDS[:2], [0.5, 0.5], 0.1, None)
             for i in range(3)]  # fmt: skip
    log._send([(items[:1], 2), (items[1:], 4)])
    assert len(following.payloads) == 1 and following.unreported == 6  # all of it, to the next writer
    reader = threading.Thread(target=log._read_reports, args=(dead,))
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and (log.spooled, log.dropped) == (2, 0)


def test_a_refused_login_is_told_apart_from_an_outage_and_quoted_from_its_own_line():
    """Each was exit 3, retried as an outage; libpq tries each address of a host, and the
    message quoted the first one's "Connection refused" under "refused this job's login"."""
    from churn_platform.inference_log import refused_login

    two_addresses = ('connection to server at "::1", port 5432 failed: Connection refused\n\tIs the server running?\n'
                     'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed '
                     'for user "u"\n')  # fmt: skip
    assert refused_login(Exception(two_addresses)) == ('connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
                                                       'password authentication failed for user "u"')  # fmt: skip
    for refused in ('FATAL:  role "u" does not exist', 'FATAL:  database "d" does not exist',
                    'FATAL:  no pg_hba.conf entry for host "10.0.0.9"', 'FATAL:  pg_hba.conf rejects connection for',
                    'FATAL:  role "u" is not permitted to log in', 'FATAL:  Peer authentication failed for user "u"',
                    "fe_sendauth: no password supplied"):  # fmt: skip
        assert refused_login(Exception(refused)) == refused, refused
    for outage in ('relation "inference_log" does not exist', "FATAL:  the database system is starting up",
                   "could not connect to server: Connection refused", "server closed the connection unexpectedly"):
        assert refused_login(Exception(outage)) is None, outage
