"""The inference log's writer process: real processes, a real SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import sqlalchemy as sa

from churn_platform.data import generate, to_records
from serving.inference_log import InferenceLog

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


def test_rows_survive_a_writer_crash_counted_and_never_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, batch_rows=1, flush_s=0.05)
    log.start()
    try:
        for i in range(5):
            log.append(f"before-{i}", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        wait_for(lambda: log.written == 100)
        lock = sqlite3.connect(f"{tmp_path}/log.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the writer takes the next frame and waits on the lock
        log.append("held", "churn", 1, RECORDS, [0.5] * len(RECORDS))
        time.sleep(1.0)
        first = log._writer
        first.process.kill()  # dies holding 20 rows it never reported
        first.process.wait()
        lock.execute("COMMIT")
        lock.close()
        wait_for(lambda: log.dropped == 20)
        for i in range(20):  # the first sends after the crash fail (counted), then a new writer takes over
            log.append(f"after-{i}", "churn", 1, RECORDS[:5], [0.25] * 5)
            time.sleep(0.1)
        wait_for(lambda: log.written + log.dropped == 220)
        assert log.dropped > 20 and log._writer is not first
    finally:
        log.close()
    assert log.written + log.dropped == 220 and log.written > 100
    assert logged(url) == (log.written, log.written)


def test_close_flushes_everything_queued(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log = InferenceLog(url, batch_rows=10_000, flush_s=30)  # nothing would be sent before close
    log.start()
    for i in range(50):
        log.append(f"r{i}", "churn", 3, RECORDS, [0.1] * len(RECORDS))
    log.close()
    assert (log.written, log.dropped) == (1000, 0)
    assert logged(url) == (1000, 1000)
    assert log._writer.process.returncode == 0


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    log = InferenceLog(f"sqlite:///{tmp_path}/log.db", batch_rows=10_000, flush_s=30, queue_rows=50)
    log.start()
    started = time.perf_counter()
    for i in range(10):
        log.append(f"r{i}", "churn", 1, RECORDS, [0.1] * len(RECORDS))
    assert time.perf_counter() - started < 1.0
    log.close()
    assert (log.written, log.dropped) == (40, 160)


def test_database_url_never_reaches_the_command_line(tmp_path):
    secret_url = f"sqlite:///{tmp_path}/log.db?password=s3cr3t-value"
    log = InferenceLog(secret_url)
    log.start()
    try:
        cmdline = Path(f"/proc/{log._writer.process.pid}/cmdline").read_bytes()
        assert b"s3cr3t" not in cmdline and b"serving.inference_log" in cmdline
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
        log = InferenceLog({url!r}, batch_rows=1, flush_s=0.01)
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
    log = InferenceLog(url, batch_rows=1000, flush_s=0.05)
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
