"""Drift-check speed and memory: our monitor's path vs Evidently's DataDriftPreset (the peer).

    .venv/bin/python benchmarks/monitoring.py [--sizes 5000 50000 500000]

Reference: 5,000 generated customers; current: N drifted ones. Each measurement runs in a
fresh process so peak RSS belongs to that run alone. Past CHURN_MONITOR_MAX_ROWS (100,000)
current rows, both sides get the same seeded sample of that many (the same rows: what
`churn-platform monitor` compares), taken inside each side's timing; the table shows N and
the rows each side compared. "ours" is what `churn-platform monitor` does with the data:
quality checks, one ValueDrift per feature plus the prediction column, and the HTML report.
The peer is Evidently's DataDriftPreset on the same feature columns, with its HTML report.
Target: 50,000 current rows in <= 10 s and <= 1 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import atexit, json, resource, shutil, sys, tempfile, time
sys.path.insert(0, {repo!r})
import numpy as np
from churn_platform import data
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import Settings
which, n = sys.argv[1], int(sys.argv[2])
reference = data.generate(5000, seed=1)
current = data.generate(n, seed=2, drift=True)
rng = np.random.default_rng(0)
reference["churn_probability"] = rng.random(len(reference))
current["churn_probability"] = rng.random(len(current))
out = tempfile.mkdtemp()
atexit.register(shutil.rmtree, out, ignore_errors=True)  # a failed run leaves no report behind either
settings = Settings()
# Each side's modules loaded before the clock starts, as the footnote says (evidently's import is seconds).
if which == "ours":
    from pathlib import Path
    from monitoring import drift, quality
    from monitoring.report import write_html
else:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from monitoring.drift import CATEGORICAL, NUMERIC
started = time.perf_counter()
# The monitor's sample, for both sides alike: the same rows (same seed) past the limit.
if len(current) > settings.monitor_max_rows:
    current = current.sample(settings.monitor_max_rows, random_state=0)
compared = len(current)
if which == "ours":
    cur, findings = quality.check(current, settings.monitor_max_missing_share)
    compared = len(cur)
    ref, _ = quality.check(reference, 1.0)
    result = drift.compute(ref, cur, {{}}, settings.monitor_column_threshold, set())
    drifted = sum(c.drifted for c in result.columns)
    share = drifted / len(result.columns)
    write_html(Path(out) / "r.html", model_name="churn", model_version=1,
               verdict="drift" if share >= settings.monitor_drift_share else "no_drift", drift_share=share,
               share_limit=settings.monitor_drift_share, critical_drifted=[], result=result,
               reference_rows=len(ref), current_rows=len(cur), created_at="benchmark")
else:
    cols = list(FEATURE_NAMES)
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    def ds(frame):
        frame = frame[cols].copy()
        for c in CATEGORICAL:
            frame[c] = frame[c].astype(str)
        return Dataset.from_pandas(frame, data_definition=definition)
    snapshot = Report([DataDriftPreset()]).run(current_data=ds(current), reference_data=ds(reference))
    snapshot.save_html(out + "/r.html")
    drifted = -1
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "drifted": int(drifted), "rows": compared}}))
"""


def measure(which: str, n: int) -> dict:
    code = CHILD.format(repo=str(REPO))
    done = subprocess.run([sys.executable, "-c", code, which, str(n)], capture_output=True, text=True, timeout=900)
    if done.returncode:
        return {"seconds": float("nan"), "peak_rss_mib": float("nan"), "rows": 0, "error": done.stderr[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 500000])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.registry import terminate_raises
    from benchmarks.serving import scrub_environment

    scrub_environment()  # the caller's CHURN_MONITOR_* would change our side's thresholds alone
    terminate_raises()  # subprocess.run stops the child on the way out
    failed = False
    print(
        f"{'current rows':>12} | {'ours rows':>9} {'ours s':>8} {'ours RSS MiB':>13} | "
        f"{'preset rows':>11} {'preset s':>9} {'preset RSS MiB':>15} | {'time ratio':>10}"
    )
    for n in args.sizes:
        ours, peer = measure("ours", n), measure("peer", n)
        ratio = peer["seconds"] / ours["seconds"] if ours["seconds"] else float("nan")
        print(f"{n:>12} | {ours['rows']:>9} {ours['seconds']:>8.2f} {ours['peak_rss_mib']:>13.0f} | "
              f"{peer['rows']:>11} {peer['seconds']:>9.2f} {peer['peak_rss_mib']:>15.0f} | {ratio:>9.1f}x")  # fmt: skip
        for side, result in (("ours", ours), ("preset", peer)):
            if "error" in result:
                print(f"  {side} failed: {result['error']}")
                failed = True
    print(
        "(time excludes interpreter start and imports; both include the sample past the row limit and writing "
        "the HTML report; 'rows': current rows each side compared)"
    )
    if failed:
        sys.exit("a run failed: no figure stands for it")


if __name__ == "__main__":
    main()
