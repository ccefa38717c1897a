"""Soak: N minutes of mixed single/batch load at a fixed rate on loopback (not a test).

    .venv/bin/python benchmarks/soak.py --minutes 5 --rate 200

Trains a model into a throwaway embedded registry, starts the API (uvicorn), then sends
`--rate` requests per second (90 % single customers, 10 % batches of 100) from a thread
pool, bounded in count and time. Prints throughput, p50/p99 latency, errors and the API's
RSS at start and end (and its inference-log writer's), and the log's rows written and
dropped. Target: RSS growth under 10 %. Ctrl-C or SIGTERM stops the API (and its log writer)
and removes the throwaway folder.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from churn_platform.processes import free_port, start, wait_http, wait_ready  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_pid(api_pid: int) -> int:
    """The inference-log writer: the API's child process."""
    children = Path(f"/proc/{api_pid}/task/{api_pid}/children").read_text().split()
    return int(children[0])


def log_counters(client: httpx.Client) -> tuple[float, float]:
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("churn_inference_log_rows_written_total", "churn_inference_log_rows_dropped_total"):
            values[name] = float(value)
    return values["churn_inference_log_rows_written_total"], values["churn_inference_log_rows_dropped_total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=int, default=200, help="requests per second")
    args = parser.parse_args()
    from benchmarks.serving import scrub_environment

    scrub_environment()  # the shell's CHURN_*/OTEL_* (tracing, an access log) would slow the API unmeasured

    from mlflow import MlflowClient

    from benchmarks.registry import remove, terminate_raises
    from churn_platform import data
    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    terminate_raises()  # SIGTERM, like Ctrl-C, goes through the finally blocks below
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        os.chdir(folder)
        uri = f"sqlite:///{folder}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        result = train(TrainConfig(n_rows=3000), Settings(tracking_uri=uri))
        MlflowClient(uri).set_registered_model_alias("churn", "Production", str(result.version))
        rows = data.to_records(data.generate(2000, seed=9).drop(columns=["churn"]))

        env = dict(os.environ, CHURN_INFERENCE_LOG_URL=f"sqlite:///{folder}/log.db",
                   CHURN_INFERENCE_LOG_SPOOL_DIR=str(folder / "spool"))  # fmt: skip
        # The API runs in its own session: nothing but its stop below ends it and its log writer.
        # (start_api's steps, so that the stop covers the wait for /health too.)
        port = free_port()
        bin_dir = Path(sys.executable).parent
        command = [str(bin_dir / "churn-platform"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        api = start(f"api_{port}", command, folder, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(api, f"{base}/health", timeout=60)
            figures = soak(base, api.proc.pid, rows, args.minutes, args.rate)
        finally:
            api.stop()
    finally:
        remove(folder)
    report(args.minutes, args.rate, figures)


def soak(base: str, pid: int, rows: list[dict], minutes: float, rate: int) -> dict[str, float | list[float]]:
    """Drive the API at ``base`` (server process ``pid``) and read its figures."""
    wait_ready(base)
    client = httpx.Client(base_url=base, timeout=10, limits=httpx.Limits(max_connections=32))
    for _ in range(200):  # warm up before the first RSS reading
        client.post("/predict/single", json=random.choice(rows))
    rss_start, writer = rss_mib(pid), writer_pid(pid)
    writer_start = rss_mib(writer)
    cpu_start = cpu_seconds(pid) + cpu_seconds(writer)
    peak = [rss_start + writer_start]
    sampling = threading.Event()

    def sample() -> None:  # the pod's memory: the API and its writer together, every second
        while not sampling.wait(1):
            peak.append(rss_mib(pid) + rss_mib(writer))

    threading.Thread(target=sample, daemon=True).start()
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int, due: float) -> None:
        """Request ``i``, timed from when it was due: time spent queued behind busy threads
        counts, as it would for a client sending at this rate (no coordinated omission)."""
        nonlocal errors
        try:
            if i % 10 == 0:
                r = client.post("/predict", json={"customers": random.sample(rows, 100)})
            else:
                r = client.post("/predict/single", json=rows[i % len(rows)])
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        with lock:
            latencies.append(time.perf_counter() - due)
            errors += not ok

    total = int(minutes * 60 * rate)
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=16)
    try:
        for i in range(total):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, target)
    except BaseException:  # Ctrl-C or SIGTERM: drop the queued requests, then let the API be stopped
        sampling.set()
        # Those in flight finish first (each within the client's 10 s timeout): a request reaching
        # the API as its group is stopped would have it restart the log writer the signal ended.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    elapsed = time.perf_counter() - t0
    sampling.set()
    cores = (cpu_seconds(pid) + cpu_seconds(writer) - cpu_start) / elapsed
    rss_end, writer_end = rss_mib(pid), rss_mib(writer)
    time.sleep(2)  # the last batch reaches the log
    written, dropped = log_counters(client)
    client.close()
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "cores": cores, "peak": max(peak),
            "rss_start": rss_start, "rss_end": rss_end, "writer_start": writer_start, "writer_end": writer_end,
            "written": written, "dropped": dropped}  # fmt: skip


def report(minutes: float, rate: int, figures: dict) -> None:
    latencies, elapsed, errors = figures["latencies"], figures["elapsed"], figures["errors"]
    rss_start, rss_end = figures["rss_start"], figures["rss_end"]
    writer_start, writer_end = figures["writer_start"], figures["writer_end"]
    written, dropped, cores = figures["written"], figures["dropped"], figures["cores"]
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"soak: {minutes:g} min at {rate} req/s (90% single, 10% batch of 100)")
    print(f"  requests {len(latencies)}  throughput {len(latencies) / elapsed:.0f} req/s  errors {errors}")
    print(f"  latency p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    print(f"  API RSS start {rss_start:.0f} MiB  end {rss_end:.0f} MiB  growth {100 * (rss_end / rss_start - 1):+.1f}%")
    print(
        f"  log writer RSS start {writer_start:.0f} MiB  end {writer_end:.0f} MiB  "
        f"growth {100 * (writer_end / writer_start - 1):+.1f}%"
    )
    print(f"  inference log rows written {written:.0f}  dropped {dropped:.0f}")
    print(
        f"  pod (API + writer): CPU {cores:.2f} cores on average  peak RSS {figures['peak']:.0f} MiB "
        f"(what deploy/base/api.yaml's requests and limits are sized from: docs/deploy.md)"
    )


if __name__ == "__main__":
    main()
