"""Peak memory of reading a version's training reference when an API loads it: batch by batch
(ours, ``loading.Reference``) vs the whole file as one DataFrame (how loading read it before).

    .venv/bin/python benchmarks/reference_memory.py [ROWS]     # default 1,000,000 customers

Each way runs in a fresh process that first imports everything and builds the scorer, then
resets the kernel's peak-RSS mark (Linux), so the figure is what reading the reference adds:
the verification sample (CHURN_VERIFY_SAMPLE_ROWS's default) and the linear explainer's
column means, as ``loading.load`` takes them now and as it took them before (the whole file,
then the means through a dict per row, chunk by chunk). The file is
written as training writes it (row groups of ``explanation.CHUNK_ROWS``). The API's memory
limit in deploy/ is 1.5 GiB.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WAYS = {"batches (ours)": "batches", "whole DataFrame (before)": "whole"}


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (Linux)."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1])


def _measure(way: str, folder: Path) -> None:
    """In the child: peak RSS added by reading the reference one ``way``, and the seconds."""
    import pandas as pd

    from churn_platform import explanation, loading
    from churn_platform.schema import FEATURE_NAMES
    from churn_platform.scorer import FastScorer
    from churn_platform.settings import Settings

    scorer = FastScorer(pickle.loads((folder / "pipeline.pkl").read_bytes()))
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) := RSS now: imports' peak forgotten
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    rows = Settings.model_fields["verify_sample_rows"].default
    if way == "batches":
        reference = loading.Reference(folder / "reference.parquet")
        sample, means = reference.sample(rows), explanation.training_means(scorer, reference.batches())
    else:
        frame = pd.read_parquet(folder / "reference.parquet", columns=list(FEATURE_NAMES))
        sample, total = frame.sample(rows, random_state=0), 0
        for start in range(0, len(frame), explanation.CHUNK_ROWS):
            chunk = frame.iloc[start : start + explanation.CHUNK_ROWS]
            total += scorer.matrix(chunk.to_dict(orient="records")).sum(axis=0)
        means = total / len(frame)
    seconds = time.perf_counter() - started
    added = _status_kib("VmHWM") - before
    print(f"{added / 1024:.0f} {seconds:.1f} {len(sample)} {means.sum():.12g}")


def main(rows: int) -> None:
    from benchmarks.registry import terminate_raises
    from churn_platform import data, explanation, model

    terminate_raises()  # SIGTERM too removes the temp folder (and subprocess.run stops its child)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame = data.generate(rows, seed=1)
        fitted = frame.head(20_000)
        pipeline = model.build_pipeline("logistic").fit(model.features(fitted), fitted.churn)
        (folder / "pipeline.pkl").write_bytes(pickle.dumps(pipeline))
        model.features(frame).to_parquet(folder / "reference.parquet", index=False,
                                          row_group_size=explanation.CHUNK_ROWS)  # fmt: skip
        size_mb = (folder / "reference.parquet").stat().st_size / 2**20
        del frame
        results = {}
        for label, way in WAYS.items():
            done = subprocess.run([sys.executable, __file__, "--child", way, tmp], capture_output=True, text=True,
                                  check=True)  # fmt: skip
            added_mb, seconds, sampled, means = done.stdout.split()
            results[label] = (float(added_mb), float(seconds), means)
    print(f"reference of {rows:,} customers ({size_mb:.0f} MB of Parquet): peak RSS added by reading it at load")
    print(f"{'':28} {'MiB':>8} {'seconds':>8}")
    for label, (added_mb, seconds, _) in results.items():
        print(f"{label:28} {added_mb:8.0f} {seconds:8.1f}")
    ours, before = results["batches (ours)"], results["whole DataFrame (before)"]
    print(f"memory ratio (before / ours): {before[0] / max(ours[0], 1):.1f}x")
    print(f"column means, summed, both ways: {ours[2]} vs {before[2]}")
    if abs(float(ours[2]) - float(before[2])) > 1e-6 * max(1.0, abs(float(before[2]))):  # the same numbers, or no figure
        sys.exit("the two ways read different column means: the comparison is not valid")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _measure(sys.argv[2], Path(sys.argv[3]))
    elif sys.argv[1:2] and not sys.argv[1].isdigit():  # --help, or a typo: int() failed with a traceback
        sys.exit(__doc__)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
