"""The performance job on a big log: seconds and peak RSS of `churn-platform performance`, SQLite and PostgreSQL.

    make bench-performance        # or: .venv/bin/python benchmarks/performance.py [--predictions 1000000] [--outcomes 200000]

Setup (not timed): trains one model on the Telco data (or synthetic data) into a throwaway
embedded registry and makes it Production; generates ``--customers`` customers (default
200,000) and scores them with that model; writes ``--predictions`` inference-log rows of that
version over 60 days (every customer scored at least once, then at random, so about five
times each), and ``--outcomes`` outcomes observed 1 hour to 14 days after the customer's last
prediction, each label drawn as Bernoulli(score), so the scores are calibrated and every
outcome matches a prediction. The same rows go to a SQLite file and to a throwaway database on
the local PostgreSQL (127.0.0.1:5432, user postgres; skipped when none answers), bulk-loaded
(executemany in one transaction; COPY). PostgreSQL gets ANALYZE after the load, the state its
autovacuum would reach; SQLite gets none, as in production, where nothing analyzes it.

Measured: `churn-platform performance --inference-log-url URL --output-dir DIR --json` as a
child process per backend: wall seconds from spawn to exit (interpreter start and imports
included) and the child's peak RSS from ``os.wait4`` (the kernel's ru_maxrss of that one
child), spawned by a small stdlib-only launcher rather than by this process: ru_maxrss
survives exec, so a child forked from the benchmark would report the benchmark's own RSS
(MLflow and the generated data) whenever that is larger. A baseline child imports what the job
imports and runs `churn-platform performance --help`: the job's RSS minus that is what the
data costs. Checks exit code 0 or 1 and prints rows_matched against the outcomes written.
Target: 1,000,000 predictions and 200,000 outcomes in <= 30 s and <= 1 GiB per backend (the
issue's figures are absolute: it names no peer, so no ratio is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_SECONDS = 30.0
TARGET_RSS_MIB = 1024.0
DAY = 86_400.0
#: What the job imports before it touches data (monitoring.cli imports monitoring.performance
#: lazily, so `--help` alone would not load MLflow): the baseline child imports all of it.
BASELINE = r"""
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.figure, matplotlib.dates, sklearn.metrics, psycopg2
import monitoring.performance, monitoring.performance_report
from churn_platform.cli import main
sys.argv = ["churn-platform", "performance", "--help"]
main()
"""


#: Spawns the measured command and reports what the kernel says about that one child. The
#: benchmark itself holds MLflow and the generated data (~0.5 GiB); ru_maxrss survives exec,
#: so a child forked straight from it would report the benchmark's own RSS: forking from this
#: small stdlib-only process (~10 MiB) keeps the figure the job's own.
LAUNCHER = r"""
import json, os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
figures = {"seconds": time.perf_counter() - started, "maxrss_kib": usage.ru_maxrss,
           "code": os.waitstatus_to_exitcode(status)}
with open(sys.argv[1], "w") as out:
    json.dump(figures, out)
"""


def measure(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float, log: Path) -> dict:
    """Run one child to its end through LAUNCHER: wall seconds, its own peak RSS, exit code, stdout."""
    out, err, figures = log.with_suffix(".out"), log.with_suffix(".err"), log.with_suffix(".json")
    with out.open("w") as stdout, err.open("w") as stderr:
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(figures), *cmd]
        proc = subprocess.Popen(launcher, stdout=stdout, stderr=stderr, env=env, cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout)
        except BaseException:  # the timeout, or ^C: the launcher and the job with it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode:
        raise RuntimeError(f"the launcher failed ({proc.returncode}): {err.read_text()[-1000:]}")
    got = json.loads(figures.read_text())
    return {"seconds": got["seconds"], "rss_mib": got["maxrss_kib"] / 1024, "code": got["code"],
            "stdout": out.read_text(), "stderr": err.read_text()}  # fmt: skip


def summary_of(stdout: str) -> dict | None:
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


# --------------------------------------------------------------------------- the data


class Log:
    """The generated log: who was scored when, with what score, and the outcomes."""

    def __init__(self, customers, scores, n_predictions: int, n_outcomes: int, now: datetime, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        n_customers = len(customers)
        self.customers, self.scores, self.now = customers, scores, now
        # Every customer at least once, then at random: ~n_predictions / n_customers scorings each.
        who = np.concatenate([rng.permutation(n_customers), rng.integers(0, n_customers, max(0, n_predictions - n_customers))])[:n_predictions]  # fmt: skip
        # Seconds before `now`: predictions over 60 days, the last 15 days before now.
        ago = 15 * DAY + rng.random(n_predictions) * 60 * DAY
        order = np.argsort(-ago, kind="stable")  # the log's ids grow with time, as a real log's do
        self.who, self.ago = who[order], ago[order]
        last = np.full(n_customers, np.inf)
        np.minimum.at(last, self.who, self.ago)  # seconds before now of each customer's last prediction
        # Outcomes: distinct customers (cycling when there are more outcomes than customers).
        picked = rng.permutation(n_customers)
        customer = picked[np.arange(n_outcomes) % n_customers]
        later = 3600 + rng.random(n_outcomes) * (14 * DAY - 3600) + (np.arange(n_outcomes) // n_customers) * DAY
        seen = np.isfinite(last[customer])  # False only when there are fewer predictions than customers
        observed = np.maximum(np.where(seen, last[customer], 15 * DAY) - later, 60 + rng.random(n_outcomes))
        self.outcome_customer, self.outcome_ago = customer, observed
        self.churned = rng.random(n_outcomes) < scores[customer]
        self.expected_matches = int(seen.sum())

    def times(self, ago) -> object:
        import pandas as pd

        return pd.Timestamp(self.now) - pd.to_timedelta(ago, unit="s")

    def prediction_chunks(self, rows: int) -> Iterator[object]:
        """The inference log's rows in ``inference_log.COLUMNS`` order, ``rows`` at a time."""
        import pandas as pd

        from churn_platform.inference_log import COLUMNS
        from churn_platform.schema import FEATURE_NAMES, ID_COLUMN

        for start in range(0, len(self.who), rows):
            index = self.who[start : start + rows]
            chunk = self.customers.iloc[index][[ID_COLUMN, *FEATURE_NAMES]].reset_index(drop=True)
            position = pd.RangeIndex(start, start + len(index))
            chunk["request_id"] = [f"bench-{i // 50}" for i in position]
            chunk["row_index"] = position % 50
            chunk["scored_at"] = self.times(self.ago[start : start + rows])
            chunk["model_name"] = "churn"
            chunk["model_version"] = 0  # set by the caller
            chunk["arm"] = "production"
            chunk["scoring_ms"] = 2.5
            chunk["churn_probability"] = self.scores[index]
            yield chunk[list(COLUMNS)]

    def outcomes(self) -> object:
        import pandas as pd

        from churn_platform.schema import ID_COLUMN

        return pd.DataFrame({
            ID_COLUMN: self.customers[ID_COLUMN].to_numpy()[self.outcome_customer],
            "churned": self.churned,
            "observed_at": self.times(self.outcome_ago),
            "source": "benchmark",
            "ingested_at": pd.Timestamp(self.now),
        })  # fmt: skip


def load_sqlite(path: Path, log: Log, version: int, chunk_rows: int) -> None:
    import sqlalchemy as sa

    from churn_platform import inference_log, outcomes
    from churn_platform.inference_log import COLUMNS

    engine = sa.create_engine(f"sqlite:///{path}")
    inference_log.upgrade(engine)
    outcomes.upgrade(engine)
    engine.dispose()
    text_time = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime in SQLite (UTC wall time)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    marks = ", ".join("?" * len(COLUMNS))
    with connection:
        for chunk in log.prediction_chunks(chunk_rows):
            chunk = chunk.assign(model_version=version, scored_at=chunk["scored_at"].dt.strftime(text_time))
            connection.executemany(f"INSERT INTO inference_log ({', '.join(COLUMNS)}) VALUES ({marks})",
                                   chunk.itertuples(index=False, name=None))  # fmt: skip
        frame = log.outcomes()
        frame = frame.assign(churned=frame["churned"].astype(int),
                             observed_at=frame["observed_at"].dt.strftime(text_time),
                             ingested_at=frame["ingested_at"].dt.strftime(text_time))  # fmt: skip
        connection.executemany(f"INSERT INTO outcomes ({', '.join(frame.columns)}) VALUES (?, ?, ?, ?, ?)",
                               frame.itertuples(index=False, name=None))  # fmt: skip
    connection.close()


def load_postgresql(url: str, dbname: str, log: Log, version: int, chunk_rows: int) -> None:
    import psycopg2
    import sqlalchemy as sa

    from churn_platform import inference_log, outcomes

    engine = sa.create_engine(url)
    inference_log.upgrade(engine)
    outcomes.upgrade(engine)
    engine.dispose()
    zoned = "%Y-%m-%d %H:%M:%S.%f+00"

    def copy(cur, table: str, frame) -> None:
        buffer = io.StringIO()
        frame.to_csv(buffer, header=False, index=False)
        buffer.seek(0)
        cur.copy_expert(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)", buffer)

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname)
    try:
        with connection, connection.cursor() as cur:
            for chunk in log.prediction_chunks(chunk_rows):
                copy(cur, "inference_log", chunk.assign(model_version=version,
                                                        scored_at=chunk["scored_at"].dt.strftime(zoned)))  # fmt: skip
            frame = log.outcomes()
            copy(cur, "outcomes", frame.assign(observed_at=frame["observed_at"].dt.strftime(zoned),
                                               ingested_at=frame["ingested_at"].dt.strftime(zoned)))  # fmt: skip
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute("ANALYZE inference_log")
            cur.execute("ANALYZE outcomes")
    finally:
        connection.close()


def postgresql_database(stack: contextlib.ExitStack, keep: bool) -> tuple[str, str] | None:
    """(URL, name) of a throwaway database on the local PostgreSQL, dropped when ``stack`` closes
    (unless ``keep``)."""
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - no local PostgreSQL: SQLite only
        print(f"no PostgreSQL on 127.0.0.1:5432 ({str(exc).strip()}): measuring SQLite only")
        return None
    admin.autocommit = True
    name = f"bench_performance_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        if keep:
            print(f"kept PostgreSQL database {name} (DROP DATABASE {name}; when done)")
        else:
            with admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    stack.callback(drop)
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", name


def step(what: str, action: Callable[..., object], *args: object) -> object:
    started = time.perf_counter()
    print(f"  {what} ...", end="", flush=True)
    result = action(*args)
    print(f" {time.perf_counter() - started:.1f} s", flush=True)
    return result


# --------------------------------------------------------------------------- main


def main() -> None:  # noqa: C901 - one script, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--outcomes", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=200_000, help="Distinct customer ids in the log.")
    parser.add_argument("--data", default=str(REPO / "data" / "telco_churn.csv"), help="Training data.")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="Rows per bulk-load batch.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds one measured run may take.")
    parser.add_argument(
        "--keep", action="store_true", help="Keep the temp folder and the PostgreSQL database (to profile)."
    )
    args = parser.parse_args()
    if min(args.predictions, args.outcomes, args.customers) < 1:
        parser.error("--predictions, --outcomes and --customers must be at least 1")

    from benchmarks.registry import terminate_raises

    terminate_raises()  # SIGTERM too drops the database and the temp folder
    begun = time.perf_counter()
    data_path = Path(args.data).resolve()  # before chdir: a relative --data is relative to where we started
    home = Path.cwd()
    folder = Path(tempfile.mkdtemp(prefix="bench-performance-"))
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: print(f"kept {folder}") if args.keep else shutil.rmtree(folder, ignore_errors=True))
        stack.callback(os.chdir, home)
        os.chdir(folder)  # MLflow's artifacts and any relative path land in the temp folder
        uri = f"sqlite:///{folder}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                    capture_output=True, text=True).stdout.strip()  # fmt: skip
        except OSError:  # no git here: the figures still stand
            commit = ""
        print(f"code at {commit or 'unknown commit'}; setup in {folder} (not timed):")

        import mlflow
        from mlflow import MlflowClient

        from churn_platform import data
        from churn_platform.schema import FEATURE_NAMES, ID_COLUMN
        from churn_platform.settings import Settings
        from churn_platform.training import TrainConfig, train

        source = str(data_path) if data_path.exists() else "synthetic"
        trained = step(f"train on {Path(source).name}",
                       lambda: train(TrainConfig(data=source, model_name="churn"), Settings(tracking_uri=uri)))  # fmt: skip
        version = int(trained.version)
        MlflowClient(uri).set_registered_model_alias("churn", "Production", str(version))

        def customers_and_scores():
            frame = data.generate(args.customers, seed=11).drop(columns=["churn"])
            frame[ID_COLUMN] = [f"C{i:08d}" for i in range(len(frame))]
            pipeline = mlflow.sklearn.load_model(f"models:/churn/{version}")
            return frame, pipeline.predict_proba(frame[list(FEATURE_NAMES)])[:, 1]

        customers, scores = step(f"generate and score {args.customers:,} customers", customers_and_scores)
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        log = step("draw predictions and outcomes", Log, customers, scores, args.predictions, args.outcomes, now, 12)

        backends: dict[str, str] = {}
        sqlite_path = folder / "log.db"
        step(f"SQLite: {args.predictions:,} predictions, {args.outcomes:,} outcomes",
             load_sqlite, sqlite_path, log, version, args.chunk_rows)  # fmt: skip
        backends["SQLite"] = f"sqlite:///{sqlite_path}"
        postgres = postgresql_database(stack, args.keep)
        if postgres:
            step(f"PostgreSQL: {args.predictions:,} predictions, {args.outcomes:,} outcomes (COPY, ANALYZE)",
                 load_postgresql, postgres[0], postgres[1], log, version, args.chunk_rows)  # fmt: skip
            backends["PostgreSQL"] = postgres[0]
        expected = log.expected_matches
        del log, customers, scores

        env = {k: v for k, v in os.environ.items() if not k.startswith("CHURN_")} | {"MLFLOW_TRACKING_URI": uri}
        env.pop("MLFLOW_RUN_ID", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        cli = str(Path(sys.executable).parent / "churn-platform")
        print("measured:")
        baseline = measure([sys.executable, "-c", BASELINE], env, folder, args.timeout, folder / "baseline")
        if baseline["code"]:
            print(f"  baseline failed ({baseline['code']}): {baseline['stderr'][-500:]}")
        print(f"  baseline (imports + --help): {baseline['seconds']:.1f} s, {baseline['rss_mib']:.0f} MiB", flush=True)
        for backend, url in backends.items():
            out_dir = folder / f"report-{backend.lower()}"
            cmd = [cli, "performance", "--inference-log-url", url, "--output-dir", str(out_dir), "--json"]
            result = measure(cmd, env, folder, args.timeout, folder / backend.lower())
            result["summary"] = summary_of(result["stdout"])
            results[backend] = result
            print(f"  {backend}: exit {result['code']}, {result['seconds']:.1f} s, {result['rss_mib']:.0f} MiB",
                  flush=True)  # fmt: skip
            if result["code"] not in (0, 1) or result["summary"] is None:
                print(f"    FAILED: {result['stderr'][-1500:]}")

    header = (f"{'backend':<26} | {'seconds':>7} | {'peak RSS MiB':>12} | {'rows_matched':>12} | {'predictions':>11} | "
              f"{'exit':>4} | {'target':<20} | met?")  # fmt: skip
    print(f"\n{args.predictions:,} predictions, {args.outcomes:,} outcomes, {args.customers:,} customers")
    print(header)
    print("-" * len(header))
    target = f"<= {TARGET_SECONDS:.0f} s, <= {TARGET_RSS_MIB:.0f} MiB"
    print(f"{'baseline: imports + --help':<26} | {baseline['seconds']:>7.1f} | {baseline['rss_mib']:>12.0f} | "
          f"{'-':>12} | {'-':>11} | {baseline['code']:>4} | {'-':<20} | -")  # fmt: skip
    failed = False
    for backend, result in results.items():
        summary = result["summary"] or {}
        # A run that matched other rows than the data holds measured other work: a failure too.
        ok = result["code"] in (0, 1) and bool(summary) and summary.get("rows_matched") == expected
        met = ok and result["seconds"] <= TARGET_SECONDS and result["rss_mib"] <= TARGET_RSS_MIB
        failed |= not ok
        print(f"{backend:<26} | {result['seconds']:>7.1f} | {result['rss_mib']:>12.0f} | "
              f"{summary.get('rows_matched', '-'):>12} | {summary.get('predictions', '-'):>11} | {result['code']:>4} | "
              f"{target:<20} | {'yes' if met else 'NO'}")  # fmt: skip
    print(f"\nrows_matched must be {expected:,} (outcomes whose customer has a prediction; else the run fails); "
          f"peak RSS minus the baseline is what the data costs:")  # fmt: skip
    for backend, result in results.items():
        summary = result["summary"] or {}
        verdict = summary.get("verdict", "-")
        real, est = summary.get("realized") or {}, summary.get("estimated") or {}
        print(f"  {backend}: +{result['rss_mib'] - baseline['rss_mib']:.0f} MiB, +{result['seconds'] - baseline['seconds']:.1f} s "
              f"over the baseline; verdict {verdict}, realized roc_auc {real.get('roc_auc')}, "
              f"estimated {est.get('roc_auc')}, baseline {summary.get('baseline', {}).get('roc_auc')}")  # fmt: skip
    print("(wall seconds include interpreter start and imports; peak RSS: ru_maxrss via os.wait4)")
    print(f"total run time {time.perf_counter() - begun:.0f} s")
    sys.exit(1 if failed else 0)  # a missed target is in the table; only a failed run fails the script


if __name__ == "__main__":
    main()
