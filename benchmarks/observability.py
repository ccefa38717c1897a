"""What logs and traces cost the API, side by side: text logs vs JSON logs (tracing off), and
JSON logs with tracing on (spans exported over OTLP/HTTP to a local sink that accepts them).

    make bench-serving      # runs this after benchmarks/serving.py
    .venv/bin/python benchmarks/observability.py [--seconds 10] [--rounds 3]

Trains the default model into a throwaway embedded registry, then for each round starts the
API once per configuration and drives single customers at 8 connections with wrk; the rounds
interleave the configurations, each round in a rotated order, so machine noise and a run's
place in the round hit all of them alike; the best round of each is reported. Target (the
observability issue): JSON logs within 5 % of text logs' req/s.

Every configuration runs with the access log on (CHURN_ACCESS_LOG=true, off by default): it is
the one line a successful prediction writes, so without it no configuration would log anything
per request and the text and JSON rows would measure the same work. The API's output goes to
a file in the throwaway folder, which is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import interleaved, scrub_environment, wrk  # noqa: E402
from churn_platform.processes import free_port, start, wait_http  # noqa: E402

#: Each with the access line per request: the log cost being compared (traces: on top of JSON logs).
CONFIGS = {
    "text logs": {"CHURN_LOG_FORMAT": "text", "CHURN_ACCESS_LOG": "true"},
    "JSON logs": {"CHURN_LOG_FORMAT": "json", "CHURN_ACCESS_LOG": "true"},
    "JSON logs + traces": {
        "CHURN_LOG_FORMAT": "json",
        "CHURN_ACCESS_LOG": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "{sink}",
    },
}


def sink() -> str:
    """An OTLP/HTTP endpoint that accepts and discards spans (a collector's cost is not ours)."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def measure(folder: Path, seconds: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """wrk's figures of every run, by configuration."""
    from churn_platform import data

    customer = data.to_records(data.generate(1, seed=3).drop(columns=["churn", "customer_id"]))[0]
    body = folder / "single.json"
    body.write_text(json.dumps(customer))
    endpoint = sink()
    bin_dir = Path(sys.executable).parent
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for run, name in enumerate(interleaved(list(CONFIGS), rounds)):
        extra = CONFIGS[name]
        port = free_port()
        env = dict(os.environ, CHURN_INFERENCE_LOG_URL=f"sqlite:///{folder}/log-{run}-{port}.db",
                   CHURN_INFERENCE_LOG_SPOOL_DIR=str(folder / f"spool-{port}"),
                   **{k: v.replace("{sink}", endpoint) for k, v in extra.items()})  # fmt: skip
        api = start(f"api-{port}", [str(bin_dir / "churn-platform"), "serve", "--port", str(port)], folder, env=env)
        try:
            wait_http(api, f"http://127.0.0.1:{port}/health", 120)
            deadline = time.time() + 120
            while httpx.get(f"http://127.0.0.1:{port}/ready").status_code != 200:
                if time.time() > deadline:
                    sys.exit(f"{name}: the API did not become ready")
                time.sleep(0.3)
            url = f"http://127.0.0.1:{port}/predict/single"
            wrk(url, body, 8, 2, folder)  # warm-up
            measured = wrk(url, body, 8, seconds, folder)
            if measured["errors"] or measured["socket_errors"]:
                sys.exit(f"{name}: {measured['errors']} non-2xx responses, socket errors "
                         f"{measured['socket_errors'] or 'none'}: the figures would not be valid")  # fmt: skip
            results[name].append(measured)
        finally:
            api.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk (or run `make bench-serving`)")
    scrub_environment()  # each configuration sets what it measures, and nothing else may
    from benchmarks.registry import production_registry, remove, terminate_raises

    terminate_raises()
    folder, _ = production_registry("bench-observability-")
    try:
        results = measure(folder, args.seconds, args.rounds)
    finally:
        remove(folder)
    best = {name: max(runs, key=lambda r: r["rps"]) for name, runs in results.items()}
    base = best["text logs"]["rps"]
    print(f"\nsingle customers, 8 connections, best of {args.rounds} interleaved rounds of {args.seconds}s")
    print(f"{'':22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs text':>9}  target")
    for name, figures in best.items():
        target = "within 5 %" if name == "JSON logs" else ("report" if "traces" in name else "")
        print(f"{name:22}{figures['rps']:>10,.0f}{figures['p50_ms']:>9.2f}{figures['p99_ms']:>9.2f}"
              f"{figures['rps'] / base - 1:>+9.1%}  {target}")  # fmt: skip


if __name__ == "__main__":
    main()
