"""A command stopped by SIGTERM (a Job's deadline, ``kubectl delete``): exit 143, its
cleanup done. In a container the command is PID 1, where the kernel ignores a signal with
no handler: `train` ran on through the 30 s grace and was then killed, its MLflow run left
RUNNING for ever."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from churn_platform import job_metrics
from tests.services import BIN


def _statuses(db) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            return [row[0] for row in conn.execute("SELECT status FROM runs")]
    except sqlite3.OperationalError:  # the tables are still being made
        return []


def test_train_stopped_by_sigterm_exits_143_and_ends_its_mlflow_run(tmp_path):
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    job = subprocess.Popen([str(BIN / "churn-platform"), "train", "--n-rows", "100000"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "RUNNING" not in _statuses(db):
            assert job.poll() is None and time.monotonic() < deadline, "the training run never started"
            time.sleep(0.1)
        job.send_signal(signal.SIGTERM)
        output, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 143, output  # killed by the signal it was -15, the run left RUNNING
    assert _statuses(db) == ["FAILED"] and "Traceback" not in output, output


def test_a_sigterm_handled_inside_a_finalizer_still_stops_the_command():
    """The exit raised in a weakref callback or ``__del__`` is dropped by Python ("Exception
    ignored in ..."): `train`, signalled while sklearn freed objects, ran on to the end, exit 0."""

    class Freed:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs here, inside the finalizer
                pass

    with pytest.raises(SystemExit) as stopped, job_metrics.sigterm_exits():
        Freed()  # freed at once
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert stopped.value.code == 143
