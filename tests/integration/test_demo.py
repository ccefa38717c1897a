"""The demo end to end with short settings, as a new user would run it (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.services import REPO

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end(tmp_path):
    folder = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "demo", "--n-rows", "1500", "--traffic", "600",
         "--folder", str(folder)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
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
    if retrain["challenger"]:
        assert retrain["rollout"]["mode"] == "shadow" and "shadow" in done.stdout
    assert "Demo finished" in done.stdout and "Traceback" not in done.stderr
    # Every process the demo started is gone.
    leftovers = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.strip()
    assert leftovers == ""


def test_demo_fails_clearly_on_a_missing_data_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "demo", "--data", "nope.csv", "--folder", str(tmp_path / "d")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "--data nope.csv: file not found" in done.stderr
