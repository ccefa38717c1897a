"""The demo end to end with short settings, as a new user would run it (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.services import REPO, http_server

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end(tmp_path, webhook):
    folder = tmp_path / "demo"
    hook, posted = webhook
    pushed: list[str] = []

    class Gateway(BaseHTTPRequestHandler):  # a Pushgateway: records any request (pushes are text, not JSON)
        def record(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            pushed.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.end_headers()

        do_GET = do_PUT = do_POST = do_DELETE = record

        def log_message(self, *args):
            pass

    # A shell set up for production: the demo must touch none of it (it wrote synthetic customers
    # into the real feature store, and posted its degraded verdict to the team's webhook).
    with http_server(Gateway) as gateway:
        production = {"CHURN_FEATURE_STORE_URL": "postgresql://prod@127.0.0.1:1/features",
                      "CHURN_MONITOR_ALERT_WEBHOOK": hook, "CHURN_PUSHGATEWAY_URL": gateway}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "churn_platform.cli", "demo", "--n-rows", "1500", "--traffic", "600",
             "--folder", str(folder)],
            cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ | production,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in range(1, 11):
        assert f"[{step}/10]" in done.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert [v["version"] for v in summary["versions"]] == [3, 2, 1]  # v3: retrained on the outcomes
    assert summary["production"] == 1  # rolled back after the drift alarm
    assert summary["by_id"]["scored"] == 200 and summary["by_id"]["unknown"] == 1
    assert summary["by_id"]["max_difference"] <= 1e-9
    assert summary["monitor"]["normal"] == "no_drift" and summary["monitor"]["drifted"] == "drift"
    assert {"tenure", "contract"} <= set(summary["monitor"]["drifted_columns"])
    assert (folder / "reports" / "drifted" / "report.html").exists()
    # Outcomes with a concept change: the drift monitor was quiet on those customers, performance is not.
    assert summary["performance"]["verdict"] == "degraded"
    assert any(r.startswith("roc_auc") for r in summary["performance"]["reasons"])
    assert (folder / "reports" / "performance" / "report.html").exists()
    # Retrained on the recent outcomes, gated on held-out recent customers against Production.
    retrain = summary["retrain"]
    assert retrain["version"] == 3 and retrain["gate"]["compared_on"].endswith("held-out recent labelled rows")
    # Seeded: the retrain wins its gate, so the shadow steps run (a demo that skipped them passed too).
    assert retrain["challenger"] and retrain["rollout"]["mode"] == "shadow" and "shadow" in done.stdout
    assert "Demo finished" in done.stdout and "Traceback" not in done.stderr
    assert posted == [] and pushed == []
    # Every process the demo started is gone.
    assert _naming(folder) == ""


def test_demo_fails_clearly_on_a_missing_data_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "demo", "--data", "nope.csv", "--folder", str(tmp_path / "d")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--data nope.csv: file not found" in done.stderr


def test_demo_never_wipes_a_folder_it_did_not_make(tmp_path):
    """--folder wipes its folder first: a folder holding someone's files is refused, untouched."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    data = tmp_path / "customers.csv"
    data.write_text("not read: the folder is refused first")
    done = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "demo", "--data", str(data), "--folder", str(folder)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "holds files the demo did not make" in done.stderr and "Traceback" not in done.stderr
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_demo_folder_is_wiped_for_the_next_run_and_data_inside_it_is_refused(tmp_path):
    from churn_platform.demo import MARKER, _fresh_folder
    from churn_platform.errors import DataSourceError

    folder = tmp_path / "demo"
    _fresh_folder(folder, "synthetic")
    (folder / "summary.json").write_text("{}")
    _fresh_folder(folder, "synthetic")  # made by the demo: wiped
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    (folder / "mine.csv").write_text("customer_id\n")
    with pytest.raises(DataSourceError, match="inside --folder"):
        _fresh_folder(folder, str(folder / "mine.csv"))
    assert (folder / "mine.csv").exists()
    # An MLflow project of one's own looks like a demo folder without the marker: never wiped.
    own = tmp_path / "project"
    (own / "artifacts").mkdir(parents=True)
    (own / "mlflow.db").write_text("runs")
    (own / "train.py").write_text("mine")
    with pytest.raises(DataSourceError, match="holds files the demo did not make"):
        _fresh_folder(own, "synthetic")
    assert sorted(p.name for p in own.iterdir()) == ["artifacts", "mlflow.db", "train.py"]


def test_a_demo_stopped_midway_exits_143_and_leaves_nothing_running(tmp_path):
    """SIGTERM (or Ctrl-C) was DemoFailed, exit 1: the code every other command gives a verdict."""
    import signal

    folder = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "churn_platform.cli", "demo", "--n-rows", "1500", "--folder", str(folder)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        for line in proc.stdout:  # until MLflow is up: its address is in every process the demo starts
            if "MLflow UI: " in line:
                address = f"MLFLOW_TRACKING_URI={line.split('MLflow UI: ')[1].split()[0]}".encode()
                break
        deadline = time.monotonic() + 120
        while not _with(address, b"pipelines.train") and time.monotonic() < deadline:
            time.sleep(0.5)  # the training `mlflow run` starts in a grandchild (bash -c python ...)
        assert _with(address, b"pipelines.train"), "the demo's training never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted; stopping every process the demo started" in err and "Traceback" not in err
    assert _naming(folder) == "" and _with(address) == [], _with(address)


def _naming(folder: Path) -> str:
    """The processes whose command line names ``folder`` (the demo's servers do)."""
    return subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.strip()


def _with(environ: bytes, in_command: bytes = b"") -> list[int]:
    """The processes whose environment holds ``environ`` (and whose command line ``in_command``)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            command = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if environ in env and in_command in command:
            found.append(int(pid))
    return found
