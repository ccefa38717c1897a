"""Serving speed, side by side: our API vs `mlflow models serve`, same model, same load generator.

    make bench-serving            # or: .venv/bin/python benchmarks/serving.py --seconds 15

Trains one model on the Telco data (or synthetic data) into a throwaway embedded registry,
promotes it, starts both servers on loopback and drives each with wrk (Debian package
`wrk`; `make bench-serving` installs it when missing): single customers at 8 connections,
then 1000-customer batches, in interleaved rounds where ours and the peer take turns to go
first (our inference log catches up after each of our runs, before anything else runs).
Prints requests/s, p50/p99 latency and rows/s of each side's median run, the median of the
rounds' ratios, and where the cores went during the batch runs: the CPU each process (API,
log writer, PostgreSQL's backends and WAL/checkpoint writers, wrk) spent per 1000 rows, from /proc.
Then the cost of a rollout: a second version is trained as the Challenger and our API is
driven with single customers with the rollout off, as a 20 % canary and in shadow (targets:
a canary costs at most 5 % of requests/s; shadow p99 at most 1.5x the p99 with rollout off).
Finally it checks the inference log kept up: after the runs it waits for the log to drain and
counts the rows in the log database against the rows scored. In process, on one core and
without HTTP or the log, it times the steps of a 1000-customer batch answer both ways on the
same rows: ours (decode, score, answer) against the peer's own request handler, MLflow's
``scoring_server.invocations`` (parse, ``pyfunc.predict``, encode). It ends with what
explanations cost in process (benchmarks/explanations.py). The log goes to a throwaway
database on the local PostgreSQL (127.0.0.1:5432, user postgres) when one answers, else to
SQLite; `--log-url` picks another. The databases it creates, the servers it starts and its
throwaway folder are removed however the run ends (an error, Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.soak import cpu_seconds  # noqa: E402
from churn_platform.processes import free_port, start, wait_http  # noqa: E402

if TYPE_CHECKING:
    from churn_platform.scorer import FastScorer
    from churn_platform.settings import Settings

ADMIN_KEY = "benchmark-admin-key"
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "r")
wrk.body = f:read("*a")
f:close()
"""


def scrub_environment() -> None:
    """Drop the caller's CHURN_* and OTEL_* variables, for this process and the servers it
    starts: tracing or an access log left on in the shell slowed our server alone, unmeasured
    (tracing costs about half), and a CHURN_MODEL_NAME trained and rolled out another model."""
    for key in [k for k in os.environ if k.startswith(("CHURN_", "OTEL_"))]:
        del os.environ[key]


def peer_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for `mlflow models serve`, without the access log its uvicorn writes by default
    (a line per request, where ours writes none: work only one side did), read by uvicorn's
    command line from ``UVICORN_ACCESS_LOG``."""
    return {**env, "UVICORN_ACCESS_LOG": "false"}


def wrk(url: str, body: Path | None, connections: int, seconds: int, folder: Path) -> dict[str, float]:
    """POST ``body`` (a JSON file) to ``url`` for ``seconds``; a GET without one."""
    script = folder / f"{body.stem if body else 'get'}.lua"
    script.write_text(LUA.replace("{body}", str(body)) if body else 'wrk.method = "GET"\n')
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def inference_log_rows(url: str) -> dict[str, float]:
    """Rows scored, spooled, written and dropped by our inference log, from /metrics: a log
    that fell behind and dropped rows would flatter the throughput."""
    text = httpx.get(f"{url}/metrics").text
    counters = {}
    for name in ("rows_scored_total", "inference_log_rows_written_total", "inference_log_rows_spooled_total",
                 "inference_log_rows_dropped_total", "inference_log_spool_bytes"):  # fmt: skip
        counters[name] = float(re.search(rf"^churn_{name} ([\d.e+]+)$", text, re.M).group(1))
    # Shadow scores are logged too, though no caller sees them: the log owes them as well.
    shadow = re.findall(r'^churn_predictions_total\{arm="shadow",[^}]*\} ([\d.e+]+)$', text, re.M)
    counters["shadow_rows"] = sum(float(s) for s in shadow)
    counters["rows_to_log"] = counters["rows_scored_total"] + counters["shadow_rows"]
    return counters


def drained(url: str, timeout: float = 300) -> tuple[dict[str, float], float]:
    """Wait until every scored row is written or counted as dropped; return the counters and
    how long the log took to catch up after the load stopped."""
    started = time.perf_counter()
    while True:
        rows = inference_log_rows(url)
        done = rows["inference_log_rows_written_total"] + rows["inference_log_rows_dropped_total"]
        if done >= rows["rows_to_log"]:
            return rows, time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            print(f"warning: the inference log had not caught up after {timeout:.0f}s "
                  f"({done:.0f} of {rows['rows_to_log']:.0f} rows)", file=sys.stderr)  # fmt: skip
            return rows, time.perf_counter() - started
        time.sleep(0.05)  # the catch-up time is part of a figure


def log_database(folder: Path, given: str | None, prefix: str = "bench_log") -> tuple[str, str, object]:
    """(URL, what it is, cleanup) of a throwaway database for this run (the inference log's,
    or with another ``prefix`` the feature store's)."""
    if given:
        return given, given.split(":", 1)[0], lambda: None
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except Exception:  # noqa: BLE001 - no local PostgreSQL: SQLite
        return f"sqlite:///{folder}/log.db", "SQLite", lambda: None
    admin.autocommit = True
    name = f"{prefix}_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", "PostgreSQL", drop


def logged_rows(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar())
    finally:
        engine.dispose()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 once it is gone)."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _processes() -> dict[int, tuple[int, str]]:
    """Every process's (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                found[int(entry.name)] = (parent, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, ValueError, IndexError):
                continue
    return found


#: PostgreSQL's own processes, which a load's writes keep busy whatever the database (the WAL
#: its COPY writes, the checkpoints that flush its pages), titled with the cluster's name when
#: it has one (Debian's: ``postgres: 15/main: walwriter``).
_CLUSTER = re.compile(r"postgres: (?:[^:]+: )?(?:walwriter|checkpointer|background writer)\b")


def postgres_processes(database: str, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """The local PostgreSQL processes a load on ``database`` costs: its backends and the
    cluster's writers, not the backends of the other databases (a test suite's, say)."""
    table = _processes() if table is None else table
    return [pid for pid, (_, cmd) in table.items()
            if _CLUSTER.match(cmd) or (cmd.startswith("postgres:") and f" {database} " in cmd)]  # fmt: skip


def process_groups(api_pid: int, log_database_name: str | None) -> dict[str, list[int]]:
    """The processes serving one API: the server and its workers, the inference-log writer
    (a child started by the server), and the PostgreSQL processes of the log's database (on
    this machine only)."""
    table = _processes()
    tree, frontier = {api_pid}, [api_pid]
    while frontier:
        pid = frontier.pop()
        children = [child for child, (parent, _) in table.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    writer = {pid for pid in tree if "serving.log_writer" in table.get(pid, (0, ""))[1]}
    backends = postgres_processes(log_database_name, table) if log_database_name else []
    return {"API": sorted(tree - writer), "inference-log writer": sorted(writer), "PostgreSQL (the log)": backends}


def cpu_during(
    groups: Callable[[], dict[str, list[int]]],
    run: Callable[..., dict[str, float]],
    *args: Any,
    until: Callable[[], object] | None = None,
) -> dict[str, float]:
    """``run(*args)``'s result with the CPU seconds each group of processes (and the load generator,
    a child of ours) used as ``cpu:<group>`` keys: during the run, and after it until ``until()``
    returns (our log catching up, so that the rows it loads after the load are paid for too)."""
    before = {name: {pid: process_cpu(pid) for pid in pids} for name, pids in groups().items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run(*args)
    if until is not None:
        until()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = {f"cpu:{name}": sum(max(0.0, process_cpu(pid) - before.get(name, {}).get(pid, 0.0)) for pid in pids)
            for name, pids in groups().items()}  # fmt: skip
    used["cpu:wrk"] = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return {**result, **used}


def cpu_table(ours: dict[str, float], peer: dict[str, float], rows_per_request: int, target_ratio: float = 10) -> list[str]:
    """Where the machine's cores went for the two batch runs, in CPU ms per 1000 rows scored
    (ours until its log had caught up), and what ``target_ratio`` times the peer's rows/s
    would leave per 1000 rows."""
    cores = os.cpu_count() or 1
    lines = [f"{'CPU ms per 1000 rows scored':34}{'ours':>12}{'mlflow serve':>14}  (ours: until the log caught up)"]
    names = sorted({k for k in (*ours, *peer) if k.startswith("cpu:")}, key=lambda k: (k == "cpu:wrk", k))
    for key in [*names, "total"]:
        cells = []
        for run in (ours, peer):
            spent = sum(run[k] for k in names if k in run) if key == "total" else run.get(key)
            rows = run["requests"] * rows_per_request
            cells.append(f"{spent / rows * 1e6:.1f}" if spent and rows else "-")
        lines.append(f"{'  ' + key.removeprefix('cpu:'):34}{cells[0]:>12}{cells[1]:>14}")
    goal = target_ratio * peer["rps"] * rows_per_request
    lines.append(f"{'':34}{target_ratio:.0f}x the peer ({goal:,.0f} rows/s) leaves {cores / goal * 1e6:.1f} ms of "
                 f"{cores} cores per 1000 rows for all of ours")  # fmt: skip
    return lines


def interleaved(names: list[str], rounds: int) -> list[str]:
    """``names`` once per round, each round starting one later, so noise and a run's place in
    the round hit all of them alike (with as many rounds as names, each runs once in every place)."""
    return [names[(r + i) % len(names)] for r in range(rounds) for i in range(len(names))]


def in_process_batch(scorer: FastScorer, body: bytes, settings: Settings, repeat: int = 200) -> dict[str, float]:
    """Milliseconds of one core for the steps every batch answer needs, as the API does them:
    the validating decode, scoring and the answer (built by the predictor's ``answers``, encoded
    as the route does). Their sum bounds what one API worker can reach, whatever the HTTP layer and the
    log cost."""
    import msgspec
    import numpy as np

    from churn_platform.contract import MODEL_NAME, MODEL_VERSION
    from serving.predictor import answers
    from serving.schemas import BatchRequest, customers_from_json

    encode = msgspec.json.Encoder().encode
    edges, threshold = np.array([settings.risk_medium_from, settings.risk_high_from]), settings.decision_threshold
    customers = customers_from_json(body, BatchRequest)
    probabilities = np.clip(scorer.score(customers), 0.0, 1.0)

    def answer() -> bytes:
        bands = np.searchsorted(edges, probabilities, side="right")
        predictions = answers(customers, probabilities, bands, threshold, 1)
        return encode({"predictions": predictions, MODEL_VERSION: 1, MODEL_NAME: "churn"})

    steps = {"decode": lambda: customers_from_json(body, BatchRequest),
             "score": lambda: np.clip(scorer.score(customers), 0.0, 1.0), "answer": answer}  # fmt: skip
    timings = {}
    for name, step in steps.items():
        step()
        started = time.perf_counter()
        for _ in range(repeat):
            step()
        timings[name] = (time.perf_counter() - started) / repeat * 1000
    return timings


def peer_in_process_batch(body: bytes, repeat: int = 50) -> float:
    """Milliseconds of one core for the peer's whole answer to a batch, without HTTP: what
    `mlflow models serve` runs for each POST /invocations (``scoring_server.invocations``: the
    JSON parsed into a DataFrame against the signature, ``pyfunc.predict``, the answer encoded),
    on the Production model it serves."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model("models:/churn@Production")
    schema = model.metadata.get_input_schema()

    def answer() -> None:
        result = scoring_server.invocations(body, "application/json", model, schema)
        if result.status != 200:
            raise RuntimeError(f"the peer's handler answered {result.status}: {str(result.response)[:300]}")

    answer()
    started = time.perf_counter()
    for _ in range(repeat):
        answer()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="Duration of each wrk run.")
    parser.add_argument("--data", default=str(REPO / "data" / "telco_churn.csv"))
    parser.add_argument("--model-type", default="logistic")
    parser.add_argument("--rounds", type=int, default=4, help="Interleaved runs per load (ours, peer) and per "
                        "rollout mode: even, so each side goes first as often.")  # fmt: skip
    parser.add_argument("--log-url", default=None, help="Inference-log database (default: local PostgreSQL).")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk (or run `make bench-serving`)")
    scrub_environment()
    from benchmarks.registry import remove, terminate_raises

    terminate_raises()  # SIGTERM, like Ctrl-C, goes through the clean-ups below
    folder = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        run(args, folder)
    finally:
        remove(folder)


def run(args: argparse.Namespace, folder: Path) -> None:  # noqa: C901 - one benchmark, read top to bottom
    """Everything in ``folder``, which the caller removes."""
    from churn_platform import data, rollout
    from churn_platform.scorer import FastScorer
    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    uri = f"sqlite:///{folder}/mlflow.db"
    data_path = Path(args.data).resolve()  # before chdir: a relative --data is relative to where we started
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    source = str(data_path) if data_path.exists() else "synthetic"
    settings = Settings(tracking_uri=uri)
    result = train(TrainConfig(data=source, model_type=args.model_type), settings)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    client.set_registered_model_alias("churn", "Production", str(result.version))
    challenger = train(TrainConfig(data=source, model_type=args.model_type, seed=7), settings)
    frame = data.load(source) if source != "synthetic" else data.generate(5000)
    rows = frame.drop(columns=["churn"]).head(1000)
    records = data.to_records(rows)
    features = [{k: v for k, v in r.items() if k != "customer_id"} for r in records]

    # In-process scoring of one customer with the fast scorer.
    import mlflow

    pipeline = mlflow.sklearn.load_model(f"models:/churn/{result.version}")
    scorer = FastScorer(pipeline)
    one = features[:1]
    for _ in range(200):
        scorer.score(one)
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        scorer.score(one)
    fast_us = (time.perf_counter() - started) / n * 1e6
    import pandas as pd

    frame_one = pd.DataFrame(one)
    started = time.perf_counter()
    for _ in range(300):
        pipeline.predict_proba(frame_one)
    sklearn_us = (time.perf_counter() - started) / 300 * 1e6

    # With the customers' ids, as callers send them (the HTTP loads leave them out: the peer's signature has none).
    batch_ms = in_process_batch(scorer, json.dumps({"customers": records}).encode(), settings)
    # The peer's counterpart on the same 1000 rows (the body its HTTP runs get).
    peer_batch_ms = peer_in_process_batch(json.dumps({"dataframe_records": features}).encode())

    bodies = {
        "ours_single": features[0],
        "ours_batch": {"customers": features},
        "peer_single": {"dataframe_records": features[:1]},
        "peer_batch": {"dataframe_records": features},
    }
    for name, body in bodies.items():
        (folder / f"{name}.json").write_text(json.dumps(body))

    bin_dir = Path(sys.executable).parent
    # What this run creates and starts, undone in reverse order however it ends: the servers
    # stopped (their process groups), then the databases dropped.
    cleanups = ExitStack()
    try:
        log_url, log_kind, drop_log = log_database(folder, args.log_url)
        cleanups.callback(drop_log)
        log_name = log_url.rsplit("/", 1)[1] if log_kind == "PostgreSQL" else None  # its backends' CPU is counted
        # The feature store on PostgreSQL, holding the same 1000 customers, for the by-id rows.
        store_url, store_kind, drop_store = log_database(folder, None, prefix="bench_features")
        cleanups.callback(drop_store)
        by_id = store_kind == "PostgreSQL"
        if by_id:
            from datetime import UTC, datetime

            from churn_platform import feature_store

            store_settings = Settings(tracking_uri=uri, feature_store_url=store_url)
            rows.to_csv(folder / "snapshot.csv", index=False)
            feature_store.apply(store_settings)
            feature_store.ingest(store_settings, str(folder / "snapshot.csv"), as_of=datetime.now(UTC))
            feature_store.materialize(store_settings)
            ids = [r["customer_id"] for r in records]
            (folder / "by_id_batch.json").write_text(json.dumps({"customer_ids": ids}))
        env = dict(
            os.environ,
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            CHURN_INFERENCE_LOG_URL=log_url,
            CHURN_INFERENCE_LOG_SPOOL_DIR=str(folder / "spool"),
            CHURN_ADMIN_API_KEY=ADMIN_KEY,
            **({"CHURN_FEATURE_STORE_URL": store_url} if by_id else {}),
        )
        ours_port, peer_port = free_port(), free_port()
        log_rates: dict[str, tuple[float, float]] = {}
        ours = start("ours", [str(bin_dir / "churn-platform"), "serve", "--port", str(ours_port), "--workers", "1"],
                     folder, env=env)  # fmt: skip
        cleanups.callback(ours.stop)
        peer = start(
            "peer",
            [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/churn@Production", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(peer_port), "-w", "1"],
            folder, env=peer_environment(env),
        )  # fmt: skip
        cleanups.callback(peer.stop)
        wait_http(ours, f"http://127.0.0.1:{ours_port}/health", 120)
        deadline = time.time() + 120
        while httpx.get(f"http://127.0.0.1:{ours_port}/ready").status_code != 200:
            if time.time() > deadline:
                sys.exit("our API did not become ready")
            time.sleep(0.5)
        wait_http(peer, f"http://127.0.0.1:{peer_port}/ping", 120)
        ours_url = f"http://127.0.0.1:{ours_port}"
        peer_url = f"http://127.0.0.1:{peer_port}/invocations"
        # Same answers before measuring anything.
        a = httpx.post(f"{ours_url}/predict", json=bodies["ours_batch"], timeout=60).json()["predictions"]
        b = httpx.post(peer_url, json=bodies["peer_batch"], timeout=60).json()["predictions"]
        diff = max(abs(p["churn_probability"] - q[1]) for p, q in zip(a, b, strict=True))
        if diff > 1e-9:  # measuring two servers that answer differently compares nothing
            sys.exit(f"ours and the peer answer differently: max |ours - peer| = {diff:.2e}")
        # Each load runs ``--rounds`` times per side, the sides taking turns to go first, so a change
        # in the machine's speed (up to 2x within minutes here) hits both alike; the median run of
        # each is reported. Our log catches up after each of our runs, inside its CPU window: its
        # writer must not take the cores from the next run, ours or the peer's.
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        logged: dict[str, list[tuple[float, float, float]]] = {}
        sustained: dict[str, list[float]] = {}  # rows/s until the log held them, per run of ours
        loads = {"single": ("/predict/single", "single", 8), "batch": ("/predict", "batch", 2)}
        ends: list[tuple[dict[str, float], float]] = []  # the log's counters and the time as each run of ours ended
        caught_up: list[tuple[dict[str, float], float]] = []  # the counters once the log held every row, and when

        def catch_up() -> None:
            ends.append((inference_log_rows(ours_url), time.perf_counter()))
            caught_up.append(drained(ours_url))

        def run_ours(label: str) -> None:
            path, body, conns = loads[label]
            drained(ours_url)
            before, started = inference_log_rows(ours_url), time.perf_counter()
            runs.setdefault(("ours", label), []).append(cpu_during(
                lambda: process_groups(ours.pid, log_name),
                wrk, f"{ours_url}{path}", folder / f"ours_{body}.json", conns, args.seconds, folder,
                until=catch_up,
            ))  # fmt: skip
            after, ended = ends[-1]
            # How fast the log wrote while the API scored at full speed (the spool holds the rest).
            logged.setdefault(label, []).append(
                (ended - started, *(after[k] - before[k] for k in ("rows_scored_total", "inference_log_rows_written_total")))
            )
            # Rows written, over wrk's own time (requests / rate, not the set-up around it) and the catch-up.
            held, catch = caught_up[-1]
            wrk_s = runs[("ours", label)][-1]["requests"] / runs[("ours", label)][-1]["rps"]
            written = held["inference_log_rows_written_total"] - before["inference_log_rows_written_total"]
            sustained.setdefault(label, []).append(written / (wrk_s + catch))

        def run_peer(label: str) -> None:
            _, body, conns = loads[label]
            runs.setdefault(("peer", label), []).append(cpu_during(
                lambda: process_groups(peer.pid, None),
                wrk, peer_url, folder / f"peer_{body}.json", conns, args.seconds, folder,
            ))  # fmt: skip

        sides = {"ours": run_ours, "peer": run_peer}
        order = interleaved(list(sides), args.rounds)  # ours first in one round, the peer in the next
        for round_ in range(args.rounds):
            for label in loads:
                for name in order[2 * round_ : 2 * round_ + 2]:
                    sides[name](label)
        results = {key: sorted(r, key=lambda run: run["rps"])[len(r) // 2] for key, r in runs.items()}
        ratios = {label: [o["rps"] / p["rps"] for o, p in zip(runs[("ours", label)], runs[("peer", label)], strict=True)]
                  for label in loads}  # fmt: skip
        median_ratio = {label: statistics.median(values) for label, values in ratios.items()}
        # Rows/s until the log held every row of the run: scoring outruns the log's writer, whose
        # catch-up after the load is work the requests/s above do not count.
        held = sustained["batch"]
        held_ratio = statistics.median(h / (p["rps"] * 1000) for h, p in zip(held, runs[("peer", "batch")], strict=True))
        for label, rates in logged.items():
            seconds = sum(r[0] for r in rates)
            log_rates[label] = (sum(r[1] for r in rates) / seconds, sum(r[2] for r in rates) / seconds)
        if by_id:
            deadline = time.time() + 120
            while (state := httpx.get(f"{ours_url}/ready").json()["feature_store"])["state"] != "ok":
                if time.time() > deadline:
                    sys.exit(f"the API did not open the feature store: {state}")
                time.sleep(0.5)
            results[("ours", "by-id single")] = wrk(f"{ours_url}/predict/{ids[0]}", None, 8, args.seconds, folder)
            results[("ours", "by-id batch")] = wrk(f"{ours_url}/predict/by-id", folder / "by_id_batch.json", 2,
                                                   args.seconds, folder)  # fmt: skip
        peer.stop()  # the rollout runs below have the machine to themselves, as "off" had
        rollouts: dict[str, list[dict[str, float]]] = {"off": [], "canary": [], "shadow": []}
        for mode in interleaved(list(rollouts), args.rounds):
            if mode != "off":
                rollout.start(client, "churn", mode=mode, percent=20 if mode == "canary" else None,  # type: ignore[arg-type]
                              version=challenger.version, actor="benchmark")  # fmt: skip
            reloaded = httpx.post(f"{ours_url}/admin/reload?wait=true", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
            served = reloaded.json() if reloaded.status_code == 200 else {}
            if mode != "off" and httpx.get(f"{ours_url}/model").json()["rollout"]["mode"] != mode:
                sys.exit(f"the API did not take up the {mode} rollout: {served}")
            drained(ours_url)  # a shadow run's backlog (twice the rows) must not slow the next run
            rollouts[mode].append(wrk(f"{ours_url}/predict/single", folder / "ours_single.json", 8, args.seconds, folder))
            if mode != "off":
                rollout.stop(client, "churn", actor="benchmark")
        log_rows, catch_up_s = drained(ours_url)
        in_database = logged_rows(log_url)
    finally:
        cleanups.close()

    print(f"\nmodel: {args.model_type} trained on {source} ({len(frame)} rows); max |ours - peer| = {diff:.2e}")
    print(f"median run of {args.rounds} interleaved rounds (ours and the peer, taking turns to go first) of "
          f"{args.seconds}s per load; "
          "ratio: the median of the rounds' ratios")
    print(f"{'':34}{'ours':>12}{'mlflow serve':>14}{'ratio':>9}")
    s_o, s_p = results[("ours", "single")], results[("peer", "single")]
    b_o, b_p = results[("ours", "batch")], results[("peer", "batch")]
    print(f"{'single, 8 conns: requests/s':34}{s_o['rps']:>12.0f}{s_p['rps']:>14.0f}{median_ratio['single']:>8.1f}x")
    print(f"{'single, 8 conns: p50 latency ms':34}{s_o['p50_ms']:>12.2f}{s_p['p50_ms']:>14.2f}")
    print(f"{'single, 8 conns: p99 latency ms':34}{s_o['p99_ms']:>12.2f}{s_p['p99_ms']:>14.2f}")
    print(
        f"{'batch 1000, 2 conns: rows/s':34}{b_o['rps'] * 1000:>12.0f}{b_p['rps'] * 1000:>14.0f}{median_ratio['batch']:>8.1f}x"
    )
    print(f"{'batch 1000, 2 conns: p99 ms':34}{b_o['p99_ms']:>12.1f}{b_p['p99_ms']:>14.1f}")
    print(f"{'batch rows/s, log caught up':34}{statistics.median(held):>12.0f}{b_p['rps'] * 1000:>14.0f}"
          f"{held_ratio:>8.1f}x  (until the log held every row)")  # fmt: skip
    for label, values in ratios.items():
        print(f"{'  ' + label + ': ratio in each round':34}" + ", ".join(f"{v:.1f}x" for v in values))
    print(*cpu_table(b_o, b_p, rows_per_request=1000), sep="\n")
    if by_id:
        i_s, i_b = results[("ours", "by-id single")], results[("ours", "by-id batch")]
        print(f"{'by id (Feast, PostgreSQL online store)':34}{'ours':>12}{'target':>14}")
        print(f"{'by id, 8 conns: p50 / p99 ms':34}{i_s['p50_ms']:>6.2f}/{i_s['p99_ms']:<5.2f}{'p99 <= 20':>14}")
        print(f"{'by id 1000, 2 conns: rows/s':34}{i_b['rps'] * 1000:>12.0f}{'>= 20000':>14}")
        print(f"{'by id 1000, 2 conns: p99 ms':34}{i_b['p99_ms']:>12.1f}")
    # Every run's, not the medians': a run that answered errors fast would make any ratio meaningless.
    measured = {side: [r for (who, _), rs in runs.items() if who == side for r in rs] for side in ("ours", "peer")}
    measured["ours"] += [r for k, r in results.items() if k[0] == "ours" and k[1].startswith("by-id")]
    measured["ours"] += [r for rs in rollouts.values() for r in rs]
    errors = {side: sum(r["errors"] for r in rs) for side, rs in measured.items()}
    sockets = sorted({f"{side}: {r['socket_errors']}" for side, rs in measured.items() for r in rs if r["socket_errors"]})
    print(f"{'non-2xx responses, every run':34}{errors['ours']:>12}{errors['peer']:>14}")
    if sockets:
        print(f"{'socket errors':34}" + "; ".join(sockets))
    scored = log_rows["rows_to_log"]
    print(
        f"{'inference log (' + log_kind + ')':34}{in_database:>12.0f}  rows in the table of {scored:.0f} scored "
        f"(shadow included) "
        f"({log_rows['inference_log_rows_spooled_total']:.0f} spooled, "
        f"{log_rows['inference_log_rows_dropped_total']:.0f} dropped; drained {catch_up_s:.1f}s after the load)"
    )
    lost = bool(log_rows["inference_log_rows_dropped_total"] or in_database != scored)
    if lost:
        why = [line for line in ours.log_path.read_text(errors="replace").splitlines()
               if re.search("queue is full|spool is full|refused|writer is gone|cannot", line)]  # fmt: skip
        print(f"{'':34}LOST ROWS: the log does not hold every scored row; the API said:", *why[:5], sep="\n  ")
    for label, (scored_rate, written_rate) in log_rates.items():
        if not scored_rate:
            continue
        print(f"{'  while ' + label + ' ran: rows/s':34}{written_rate:>12.0f}  written of {scored_rate:.0f} scored "
              f"({written_rate / scored_rate:.2f}x; the spool holds the rest until the load ends)")  # fmt: skip
    median = {mode: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p99_ms", "errors")}
              for mode, runs in rollouts.items()}  # fmt: skip
    off = median["off"]
    print(f"\nrollout cost, single customers, 8 conns, median of {args.rounds} interleaved runs "
          f"(Challenger v{challenger.version}):")  # fmt: skip
    print(f"{'':34}{'requests/s':>12}{'p99 ms':>10}{'req/s vs off':>14}{'p99 vs off':>12}  target")
    for mode, label, target in (("off", "rollout off", ""), ("canary", "canary 20 %", "req/s >= 0.95x"),
                                ("shadow", "shadow", "p99 <= 1.5x")):  # fmt: skip
        r = median[mode]
        print(f"{label:34}{r['rps']:>12.0f}{r['p99_ms']:>10.2f}{r['rps'] / off['rps']:>13.2f}x"
              f"{r['p99_ms'] / off['p99_ms']:>11.2f}x  {target}")  # fmt: skip
    print(
        f"{'in-process, one customer, us':34}{fast_us:>12.1f}{sklearn_us:>14.1f}{sklearn_us / fast_us:>8.1f}x  (sklearn predict_proba)"
    )
    # Like with like: both sides' whole answer to the same 1000 rows, in process, on one core.
    ours_ms = sum(batch_ms.values())
    print(f"{'in-process, 1000 customers, ms':34}{ours_ms:>12.2f}{peer_batch_ms:>14.2f}{peer_batch_ms / ours_ms:>8.1f}x"
          "  (one core, no HTTP, no log; peer: mlflow's invocations())")  # fmt: skip
    print(f"{'  ours: ' + ', '.join(f'{k} {v:.2f}' for k, v in batch_ms.items()) + ' ms':34}"
          f"  at most {1e6 / ours_ms:,.0f} rows/s on one core, the peer's at most {1e6 / peer_batch_ms:,.0f}")  # fmt: skip
    from benchmarks import explanations

    print("\n" + "\n".join(explanations.rows(data_path)))
    if errors["ours"] or errors["peer"] or sockets:
        sys.exit(f"the load met errors (non-2xx: ours {errors['ours']}, peer {errors['peer']}; socket errors: "
                 f"{'; '.join(sockets) or 'none'}): the figures above are not valid")  # fmt: skip
    if lost:  # the issue's "rows scored = rows in the log": printed, it never failed the run
        sys.exit(f"the inference log holds {in_database:.0f} rows of {scored:.0f} scored: rows were lost")


if __name__ == "__main__":
    main()
