"""What one API pod serves at its CPU limit (1 CPU), side by side with `mlflow models serve`
under the same limit: the figure prod's request-rate autoscaling target comes from.

    .venv/bin/python benchmarks/capacity.py [--seconds 15]      # make bench-serving runs it

Trains the default model on the project's Telco customers into a throwaway embedded registry,
starts our API pinned to CPU 0 with its children (taskset: a pod's 1-CPU limit; our
inference-log writer shares it, as in the pod) and drives it from CPU 1 with wrk: single
customers at 8 connections and batches of 100 at 4. Before each measured run and after it, our
inference log is left to catch up (as benchmarks/serving.py does), so no run inherits the
writer's backlog of the one before; the catch-up after each run is printed. Then our API is
stopped, and the peer is started alone on CPU 0 and driven the same way. Prints req/s and p99
of each, the ratio, and the per-pod target for the HorizontalPodAutoscaler (60 % of the single-customer
capacity, rounded down to 50: the headroom covers the minute a new pod needs to become ready)
and the pods that target gives the seed's 1,000 req/s per deployment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import drained, scrub_environment, wrk  # noqa: E402
from churn_platform.processes import Process, free_port, start, wait_http  # noqa: E402

#: The share of one pod's saturated single-customer rate the autoscaler aims at.
HEADROOM = 0.6
#: The seed's target load for one deployment.
DEPLOYMENT_RPS = 1000


def pinned_wrk(url: str, body: Path, connections: int, seconds: int, folder: Path) -> dict[str, float]:
    """wrk on CPU 1, leaving CPU 0 to the server under test."""
    real = shutil.which("wrk")
    shim = folder / "bin" / "wrk"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec taskset -c 1 {real} "$@"\n')
    shim.chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{shim.parent}{os.pathsep}{path}"
    try:
        return wrk(url, body, connections, seconds, folder)
    finally:
        os.environ["PATH"] = path


def measure(folder: Path, seconds: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """wrk's figures of each run, and the seconds our log took to catch up after each of ours."""
    from churn_platform import data

    frame = data.load(str(REPO / "data" / "telco_churn.csv")).drop(columns=["churn", "customer_id"])
    features = data.to_records(frame.head(100))
    bodies = {
        "ours_single": features[0],
        "ours_batch": {"customers": features},
        "peer_single": {"dataframe_records": features[:1]},
        "peer_batch": {"dataframe_records": features},
    }
    for name, body in bodies.items():
        (folder / f"{name}.json").write_text(json.dumps(body))
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               CHURN_INFERENCE_LOG_URL=f"sqlite:///{folder}/log.db", CHURN_INFERENCE_LOG_SPOOL_DIR=str(folder / "spool"))  # fmt: skip
    pin = ["taskset", "-c", "0"]
    results: dict[str, dict[str, float]] = {}
    catch_up: dict[str, float] = {}

    def run(name: str, url: str, server: Process, log_url: str | None) -> None:
        connections = 8 if name.endswith("single") else 4
        pinned_wrk(url, folder / f"{name}.json", connections, 3, folder)  # warm-up
        if log_url:
            drained(log_url)  # the warm-up's rows are written before the measured run starts
        results[name] = pinned_wrk(url, folder / f"{name}.json", connections, seconds, folder)
        if log_url:
            _, catch_up[name] = drained(log_url)  # nor does the next run inherit this one's backlog
        if results[name]["errors"] or results[name]["socket_errors"]:
            sys.exit(f"{name}: errors under load: {results[name]} (server log: {server.log_path})")

    # Ours first, alone on CPU 0, then stopped (its writer with it) before the peer starts.
    port = free_port()
    ours = start("ours", [*pin, str(bin_dir / "churn-platform"), "serve", "--port", str(port)], folder, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(ours, f"{base}/health", 120)
        deadline = time.time() + 120
        while httpx.get(f"{base}/ready").status_code != 200:
            if time.time() > deadline:
                sys.exit("our API did not become ready")
            time.sleep(0.5)
        run("ours_single", f"{base}/predict/single", ours, base)
        run("ours_batch", f"{base}/predict", ours, base)
    finally:
        ours.stop()
    port = free_port()
    peer = start("peer", [*pin, str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/churn@Production",
                          "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], folder, env=env)  # fmt: skip
    try:  # the group stop reaches the server mlflow starts: it stays in the group (no new session)
        wait_http(peer, f"http://127.0.0.1:{port}/ping", 120)
        run("peer_single", f"http://127.0.0.1:{port}/invocations", peer, None)
        run("peer_batch", f"http://127.0.0.1:{port}/invocations", peer, None)
    finally:
        peer.stop()
    return results, catch_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        sys.exit("needs wrk, taskset and two CPUs (apt-get install wrk; `make bench-serving` installs it)")
    scrub_environment()  # tracing left on in the shell slowed our server alone (serving.py clears it too)
    from benchmarks.registry import production_registry, remove, terminate_raises

    terminate_raises()
    folder, _ = production_registry("bench-capacity-")
    try:
        results, catch_up = measure(folder, args.seconds)
    finally:
        remove(folder)
    print(f"\none pod at its CPU limit (1 CPU, taskset), wrk on the other CPU, {args.seconds}s each")
    print("(each server alone on CPU 0: ours stopped before the peer started; our log caught up around each run)")
    print(
        f"{'':28}{'ours req/s':>11}{'p99 ms':>8}{'peer req/s':>12}{'p99 ms':>8}{'ratio':>8}{'ours: log caught up':>22}"
    )
    for kind, label in (("single", "single customer, 8 conns"), ("batch", "batch of 100, 4 conns")):
        o, p = results[f"ours_{kind}"], results[f"peer_{kind}"]
        print(f"{label:28}{o['rps']:>11,.0f}{o['p99_ms']:>8.1f}{p['rps']:>12,.0f}{p['p99_ms']:>8.1f}"
              f"{o['rps'] / p['rps']:>7.1f}x{catch_up[f'ours_{kind}']:>13.1f}s after it")  # fmt: skip
    target = int(results["ours_single"]["rps"] * HEADROOM // 50 * 50)
    print(
        f"\nper-pod target (HPA churn_api_requests_per_second): {HEADROOM:.0%} of "
        f"{results['ours_single']['rps']:,.0f} -> {target} req/s per pod"
    )
    print(
        f"the seed's {DEPLOYMENT_RPS:,} req/s per deployment: {math.ceil(DEPLOYMENT_RPS / target)} pods at that target"
    )


if __name__ == "__main__":
    main()
