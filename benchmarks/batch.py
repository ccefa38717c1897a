"""Batch scoring, side by side: `churn-platform score` (local engine) vs MLflow's pyfunc.

    make bench-batch             # or: .venv/bin/python benchmarks/batch.py [--rows 1000000]

Trains the default logistic model on the Telco data into a throwaway embedded registry,
promotes it, writes N generated customers to Parquet (and 5N, to show that memory does not
grow with the input), then runs each job in its own process and reports rows/s over the
scoring loop (model loading excluded for both) and the process's peak RSS:

- ours: ``batch_scoring.score`` (read in chunks, check each row, score, write Parquet);
- peer: ``mlflow.pyfunc.load_model("models:/churn@Production").predict`` over 100,000-row
  pandas chunks read from the same file (it writes nothing and checks only the signature).

Targets (the batch-scoring issue): ours >= 10x the peer's rows/s; our peak RSS <= 1 GiB
for N = 1M and no higher for 5N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike getrusage's figure, which a child
    inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(kind: str, source: str, output: str) -> None:
    """One measured job (run in its own process); prints its rows and seconds as JSON."""
    from churn_platform.settings import Settings

    settings = Settings()
    if kind == "ours":
        from churn_platform import batch_scoring

        summary = batch_scoring.score(settings, source, output, progress=False)
        print(json.dumps({"rows": summary.rows, "seconds": summary.scoring_seconds, "rss_mib": _peak_rss_mib()}))
        return
    import mlflow
    import pyarrow.parquet as pq

    from churn_platform.schema import FEATURE_NAMES

    model = mlflow.pyfunc.load_model("models:/churn@Production")
    started, rows = time.perf_counter(), 0
    for batch in pq.ParquetFile(source).iter_batches(batch_size=100_000):
        frame = batch.to_pandas()
        model.predict(frame[list(FEATURE_NAMES)])
        rows += len(frame)
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "rss_mib": _peak_rss_mib()}))


def _measure(kind: str, source: Path, output: Path, env: dict[str, str]) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", kind, "--input", str(source), "--output", str(output)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{kind} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "rows_s": result["rows"] / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.input, args.output)

    import pandas as pd
    from mlflow import MlflowClient

    from churn_platform import data
    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    uri = f"sqlite:///{folder}/mlflow.db"
    telco = REPO / "data" / "telco_churn.csv"
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    result = train(TrainConfig(data=str(telco) if telco.exists() else "synthetic"), Settings(tracking_uri=uri))
    MlflowClient(uri, uri).set_registered_model_alias("churn", "Production", str(result.version))

    block = data.generate(100_000, seed=5).drop(columns=["churn"])
    sizes = {"n": args.rows, "5n": 5 * args.rows}
    inputs = {}
    for label, n in sizes.items():
        path = folder / f"customers-{label}.parquet"
        frame = pd.concat([block] * (n // len(block) + 1), ignore_index=True).head(n)
        frame["customer_id"] = [f"C{i:09d}" for i in range(n)]
        frame.to_parquet(path, index=False, row_group_size=100_000)
        inputs[label] = path
        del frame
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    ours = _measure("ours", inputs["n"], folder / "scores-n.parquet", env)
    peer = _measure("peer", inputs["n"], folder / "unused.parquet", env)
    ours_5n = _measure("ours", inputs["5n"], folder / "scores-5n.parquet", env)

    print(f"\nbatch scoring, {args.rows:,} generated customers from Parquet (logistic, model load excluded)")
    print(f"{'':28}{'ours (local)':>14}{'mlflow pyfunc':>15}{'ratio':>9}  target")
    print(f"{'rows/s':28}{ours['rows_s']:>14,.0f}{peer['rows_s']:>15,.0f}{ours['rows_s'] / peer['rows_s']:>8.1f}x"
          "  >= 10x")  # fmt: skip
    print(f"{'peak RSS, MiB':28}{ours['rss_mib']:>14.0f}{peer['rss_mib']:>15.0f}{'':>9}  <= 1024")
    big = f"ours, {sizes['5n']:,} rows:"
    print(f"{big + ' rows/s':28}{ours_5n['rows_s']:>14,.0f}")
    print(f"{big + ' peak RSS MiB':28}{ours_5n['rss_mib']:>14.0f}{'':>24}  <= the {args.rows:,}-row figure")


if __name__ == "__main__":
    main()
