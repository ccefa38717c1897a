"""What one API pod serves at its CPU limit (1 CPU), side by side with `mlflow models serve`
under the same limit: the figure prod's request-rate autoscaling target comes from.

    .venv/bin/python benchmarks/capacity.py [--seconds 15]      # make bench-serving runs it

Trains the default model on the project's Telco customers into a throwaway embedded registry,
starts our API and the peer, each pinned to CPU 0 with its children (taskset: a pod's 1-CPU
limit; our inference-log writer shares it, as in the pod), and drives them from CPU 1 with wrk:
single customers at 8 connections and batches of 100 at 4. Prints req/s and p99 of each, the
ratio, and the per-pod target for the HorizontalPodAutoscaler (60 % of the single-customer
capacity, rounded down to 50: the headroom covers the minute a new pod needs to become ready)
and the pods that target gives the seed's 1,000 req/s per deployment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import wrk  # noqa: E402
from churn_platform.processes import free_port, start, wait_http  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        sys.exit("needs wrk, taskset and two CPUs (apt-get install wrk; `make bench-serving` installs it)")
    from benchmarks.registry import production_registry
    from churn_platform import data

    folder, _ = production_registry("bench-capacity-")
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
    ours_port, peer_port = free_port(), free_port()
    pin = ["taskset", "-c", "0"]
    ours = start("ours", [*pin, str(bin_dir / "churn-platform"), "serve", "--port", str(ours_port)], folder, env=env)
    peer = start("peer", [*pin, str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/churn@Production",
                          "--env-manager", "local", "-h", "127.0.0.1", "-p", str(peer_port)], folder, env=env)  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    try:
        wait_http(ours, f"http://127.0.0.1:{ours_port}/health", 120)
        deadline = time.time() + 120
        while httpx.get(f"http://127.0.0.1:{ours_port}/ready").status_code != 200:
            if time.time() > deadline:
                sys.exit("our API did not become ready")
            time.sleep(0.5)
        wait_http(peer, f"http://127.0.0.1:{peer_port}/ping", 120)
        urls = {"ours_single": f"http://127.0.0.1:{ours_port}/predict/single",
                "ours_batch": f"http://127.0.0.1:{ours_port}/predict",
                "peer_single": f"http://127.0.0.1:{peer_port}/invocations",
                "peer_batch": f"http://127.0.0.1:{peer_port}/invocations"}  # fmt: skip
        for name, url in urls.items():
            connections = 8 if name.endswith("single") else 4
            pinned_wrk(url, folder / f"{name}.json", connections, 3, folder)  # warm-up
            results[name] = pinned_wrk(url, folder / f"{name}.json", connections, args.seconds, folder)
            if results[name]["errors"] or results[name]["socket_errors"]:
                sys.exit(f"{name}: errors under load: {results[name]}")
    finally:
        ours.stop()
        peer.stop()
        subprocess.run(["pkill", "-f", "--", f"-p {peer_port}"], check=False)
    print(f"\none pod at its CPU limit (1 CPU, taskset), wrk on the other CPU, {args.seconds}s each")
    print(f"{'':28}{'ours req/s':>11}{'p99 ms':>8}{'peer req/s':>12}{'p99 ms':>8}{'ratio':>8}")
    for kind, label in (("single", "single customer, 8 conns"), ("batch", "batch of 100, 4 conns")):
        o, p = results[f"ours_{kind}"], results[f"peer_{kind}"]
        print(f"{label:28}{o['rps']:>11,.0f}{o['p99_ms']:>8.1f}{p['rps']:>12,.0f}{p['p99_ms']:>8.1f}"
              f"{o['rps'] / p['rps']:>7.1f}x")  # fmt: skip
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
