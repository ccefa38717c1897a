"""What one API pod serves at its CPU limit (1 CPU), side by side with `mlflow models serve`
under the same limit: the figure prod's request-rate autoscaling target comes from.

    .venv/bin/python benchmarks/capacity.py [--seconds 15]      # make bench-serving runs it

Trains the default model on the project's Telco customers into a throwaway embedded registry,
starts our API pinned to CPU 0 with its children (taskset: a pod's 1-CPU limit; our
inference-log writer shares it, as in the pod) and drives it from CPU 1 with wrk: single
customers at 8 connections and batches of 100 at 4. Before each measured run and after it, our
inference log is left to catch up (as benchmarks/serving.py does), so no run inherits the
writer's backlog of the one before; the catch-up after each run is printed, and counted in the
"sustained" rate (requests over the run's seconds plus the catch-up: what a pod keeps up
with). The peer runs pinned to CPU 0 too, driven the same way; the two take turns to go
first over ``--rounds`` rounds (the one not measured idles). Prints the medians of req/s and
p99 of each, the rounds' ratios, and the per-pod target for the HorizontalPodAutoscaler (60 %
of the sustained single-customer capacity, rounded down to 50: the headroom covers the
minute a new pod needs to become ready) and the pods that target gives the seed's 1,000
req/s per deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import drained, peer_environment, scrub_environment, wrk  # noqa: E402
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


Runs = dict[str, list[dict[str, float]]]


def measure(folder: Path, seconds: int, rounds: int) -> tuple[Runs, dict[str, list[float]]]:
    """wrk's figures of each run, and the seconds our log took to catch up after each of ours."""
    from benchmarks.serving import interleaved
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
    results: Runs = {}
    catch_up: dict[str, list[float]] = {}

    def run(name: str, url: str, server: Process, log_url: str | None) -> None:
        connections = 8 if name.endswith("single") else 4
        pinned_wrk(url, folder / f"{name}.json", connections, 3, folder)  # warm-up
        if log_url:
            drained(log_url)  # the warm-up's rows are written before the measured run starts
        result = pinned_wrk(url, folder / f"{name}.json", connections, seconds, folder)
        if result["errors"] or result["socket_errors"]:
            sys.exit(f"{name}: errors under load: {result} (server log: {server.log_path})")
        results.setdefault(name, []).append(result)
        if log_url:  # nor does the next run inherit this one's backlog
            catch_up.setdefault(name, []).append(drained(log_url)[1])

    # Both up, each pinned to CPU 0 and idle while the other is measured; they take turns to go
    # first, round by round, so a change in the machine's speed hits both alike.
    with contextlib.ExitStack() as servers:
        port, peer_port = free_port(), free_port()
        ours = start("ours", [*pin, str(bin_dir / "churn-platform"), "serve", "--port", str(port), "--workers", "1"],
                     folder, env=env)  # fmt: skip
        servers.callback(ours.stop)
        # The group stop reaches the server mlflow starts: it stays in the group (no new session).
        peer = start("peer", [*pin, str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/churn@Production",
                              "--env-manager", "local", "-h", "127.0.0.1", "-p", str(peer_port), "-w", "1"], folder,
                     env=peer_environment(env))  # fmt: skip
        servers.callback(peer.stop)
        base, invocations = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}/invocations"
        wait_http(ours, f"{base}/health", 120)
        deadline = time.time() + 120
        while httpx.get(f"{base}/ready").status_code != 200:
            if time.time() > deadline:
                sys.exit("our API did not become ready")
            time.sleep(0.5)
        wait_http(peer, f"http://127.0.0.1:{peer_port}/ping", 120)
        for side in interleaved(["ours", "peer"], rounds):
            for kind in ("single", "batch"):
                if side == "ours":
                    run(f"ours_{kind}", f"{base}/predict/single" if kind == "single" else f"{base}/predict", ours, base)
                else:
                    run(f"peer_{kind}", invocations, peer, None)
    return results, catch_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=4, help="Interleaved runs per side and load: even, so each "
                        "side goes first as often.")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    if not shutil.which("wrk") or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        sys.exit("needs wrk, taskset and two CPUs (apt-get install wrk; `make bench-serving` installs it)")
    scrub_environment()  # tracing left on in the shell slowed our server alone (serving.py clears it too)
    from benchmarks.registry import production_registry, remove, terminate_raises

    terminate_raises()
    folder, _ = production_registry("bench-capacity-")
    try:
        results, catch_up = measure(folder, args.seconds, args.rounds)
    finally:
        remove(folder)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\none pod at its CPU limit (1 CPU, taskset), wrk on the other CPU, {args.seconds}s each; "
          f"medians of {args.rounds} interleaved rounds")  # fmt: skip
    print("(both servers pinned to CPU 0, the one not measured idle; our log caught up around each run; "
          "sustained: requests over the run plus the log's catch-up)")  # fmt: skip
    print(f"{'':28}{'ours req/s':>11}{'sustained':>11}{'p99 ms':>8}{'peer req/s':>12}{'p99 ms':>8}{'ratio':>8}"
          f"{'sustained ratio':>17}")  # fmt: skip
    for kind, label in (("single", "single customer, 8 conns"), ("batch", "batch of 100, 4 conns")):
        ours, peer = results[f"ours_{kind}"], results[f"peer_{kind}"]
        held = [r["requests"] / (args.seconds + c) for r, c in zip(ours, catch_up[f"ours_{kind}"], strict=True)]
        ratios = [o["rps"] / p["rps"] for o, p in zip(ours, peer, strict=True)]
        held_ratios = [h / p["rps"] for h, p in zip(held, peer, strict=True)]
        print(f"{label:28}{median(f'ours_{kind}', 'rps'):>11,.0f}{statistics.median(held):>11,.0f}"
              f"{median(f'ours_{kind}', 'p99_ms'):>8.1f}{median(f'peer_{kind}', 'rps'):>12,.0f}"
              f"{median(f'peer_{kind}', 'p99_ms'):>8.1f}{statistics.median(ratios):>7.1f}x"
              f"{statistics.median(held_ratios):>16.1f}x")  # fmt: skip
        print(f"{'':28}rounds: {', '.join(f'{r:.1f}x' for r in ratios)}; the log caught up "
              f"{', '.join(f'{c:.1f}' for c in catch_up[f'ours_{kind}'])} s after each of ours")  # fmt: skip
    single = statistics.median(
        r["requests"] / (args.seconds + c) for r, c in zip(results["ours_single"], catch_up["ours_single"], strict=True)
    )
    target = int(single * HEADROOM // 50 * 50)
    print(f"\nper-pod target (HPA churn_api_requests_per_second): {HEADROOM:.0%} of {single:,.0f} sustained "
          f"-> {target} req/s per pod")  # fmt: skip
    print(
        f"the seed's {DEPLOYMENT_RPS:,} req/s per deployment: {math.ceil(DEPLOYMENT_RPS / target)} pods at that target"
    )


if __name__ == "__main__":
    main()
