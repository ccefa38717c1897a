"""Faults injected into real processes: the platform keeps answering and loses nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data
from churn_platform.cli import main
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.services import (
    S3_KEYS,
    free_port,
    http_server,
    postgres_database,
    start_api,
    start_mlflow,
    start_moto,
    wait_ready,
)

pytestmark = pytest.mark.integration


def customers(n: int, seed: int = 0) -> list[dict]:
    return data.to_records(data.generate(n, seed=seed).drop(columns=["churn"]))


@pytest.fixture
def promoted(stack_env, model_name):
    train(TrainConfig(n_rows=800, model_name=model_name), get_settings())
    assert CliRunner().invoke(main, ["promote", "--model-name", model_name, "--version", "1"]).exit_code == 0
    return model_name


def test_api_waits_for_a_registry_that_is_down_and_gets_ready_when_it_returns(stack_env, promoted, tmp_path):
    port = free_port()
    env = stack_env.env | {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "CHURN_MODEL_NAME": promoted,
        "CHURN_STARTUP_BACKOFF_MAX_S": "2", "CHURN_INFERENCE_LOG_URL": f"sqlite:///{tmp_path}/l.db",
    }  # fmt: skip
    api, base = start_api(env, tmp_path)
    server = None
    try:
        deadline = time.monotonic() + 30  # its first look at the registry, on a busy machine
        while (response := httpx.get(f"{base}/ready")).json()["status"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert response.status_code == 503 and response.json()["status"] == "registry_unreachable"
        assert f"127.0.0.1:{port}" in response.json()["message"]
        # The same registry comes back on that address.
        server, _ = start_mlflow(tmp_path, stack_env.backend_uri, f"s3://{stack_env.bucket}/artifacts",
                                 stack_env.s3_endpoint, port=port)  # fmt: skip
        back = time.monotonic()
        wait_ready(base, timeout=60)
        assert time.monotonic() - back < 20
        assert httpx.post(f"{base}/predict/single", json=customers(1)[0]).json()["model_version"] == 1
    finally:
        api.stop()
        if server:
            server.stop()


def test_sigkill_during_a_reload_then_restart_serves_production(stack_env, promoted, tmp_path):
    env = stack_env.env | {"CHURN_MODEL_NAME": promoted, "CHURN_ADMIN_API_KEY": "k",
                           "CHURN_INFERENCE_LOG_URL": f"sqlite:///{tmp_path}/l.db"}  # fmt: skip
    api, base = start_api(env, tmp_path)
    wait_ready(base)
    train(TrainConfig(n_rows=800, seed=4, model_name=promoted), get_settings())
    assert CliRunner().invoke(main, ["promote", "--model-name", promoted, "--version", "2", "--force"]).exit_code == 0
    assert httpx.post(f"{base}/admin/reload", headers={"X-API-Key": "k"}).status_code == 202
    os.killpg(api.proc.pid, signal.SIGKILL)  # in the middle of loading v2
    api.proc.wait(10)
    api, base = start_api(env, tmp_path)
    try:
        wait_ready(base)
        assert httpx.get(f"{base}/model").json()["version"] == 2
    finally:
        api.stop()


def test_sigterm_under_load_finishes_requests_flushes_the_log_and_exits_0(stack_env, promoted, tmp_path):
    with postgres_database() as log_url:
        env = stack_env.env | {
            "CHURN_MODEL_NAME": promoted, "CHURN_INFERENCE_LOG_URL": log_url, "CHURN_INFERENCE_LOG_FLUSH_S": "5",
            "CHURN_INFERENCE_LOG_QUEUE_ROWS": "5000000",
        }  # fmt: skip
        api, base = start_api(env, tmp_path)
        wait_ready(base)
        batch = customers(200)
        answered, errors = [], []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                while not stop.is_set():
                    try:
                        r = client.post("/predict", json={"customers": batch})
                        (answered if r.status_code == 200 else errors).append(r.status_code)
                    except httpx.HTTPError:
                        return  # the server stopped accepting: expected after SIGTERM

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(2)
        started = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        api.proc.wait(30)
        stop.set()
        for w in workers:
            w.join()
        assert api.proc.returncode == 0, api.log_tail()
        assert time.monotonic() - started < 30
        assert errors == [] and answered
        engine = sa.create_engine(log_url)
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
        engine.dispose()
        # Shutdown wrote every answered row still queued, each once.
        assert logged == len(answered) * len(batch)


def test_sigterm_while_a_reload_waits_on_a_hanging_registry_answers_503_json_and_exits(stack_env, tmp_path):
    """uvicorn cancels what still runs when its graceful shutdown (20 s) ends: the waiting
    reload answered a plain-text 500, and the process lived on for the load's whole length."""
    gone = threading.Event()

    class Hangs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            gone.wait(180)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Hangs) as hanging:
        env = stack_env.env | {
            "MLFLOW_TRACKING_URI": hanging, "MLFLOW_REGISTRY_URI": hanging, "CHURN_REGISTRY_TIMEOUT_S": "150",
            "CHURN_ADMIN_API_KEY": "k", "CHURN_INFERENCE_LOG_URL": f"sqlite:///{tmp_path}/l.db",
        }  # fmt: skip
        api, base = start_api(env, tmp_path)
        answers: list[httpx.Response] = []
        try:
            waiting = threading.Thread(target=lambda: answers.append(
                httpx.post(f"{base}/admin/reload?wait=true", headers={"X-API-Key": "k"}, timeout=120)))
            waiting.start()
            time.sleep(1)
            signalled = time.monotonic()
            api.proc.send_signal(signal.SIGTERM)
            api.proc.wait(60)
            exited = time.monotonic() - signalled
            waiting.join(10)
        finally:
            gone.set()
            api.stop()
    assert exited < 40, (exited, api.log_tail())
    assert api.proc.returncode == 0, api.log_tail()
    [answer] = answers
    assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
    assert answer.json()["detail"]["state"] == "shutting_down"
    assert "stopped before the reload finished" in answer.json()["message"]


def test_object_store_down_during_training_fails_clearly_and_registers_nothing(tmp_path, model_name):
    with postgres_database() as backend:
        moto, s3 = start_moto(tmp_path)
        import boto3

        boto3.client("s3", endpoint_url=s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="faults")  # fmt: skip
        try:
            server, uri = start_mlflow(tmp_path, backend, "s3://faults/artifacts", s3)
        finally:
            moto.stop()  # the object store goes away (and never outlives a server that failed to start)
        try:
            env = dict(os.environ) | S3_KEYS | {"MLFLOW_TRACKING_URI": uri, "CHURN_REGISTRY_MAX_RETRIES": "0"}
            done = subprocess.run(
                [sys.executable, "-m", "churn_platform.cli", "train", "--n-rows", "300", "--model-name", model_name],
                env=env, capture_output=True, text=True, timeout=240,
            )  # fmt: skip
            assert done.returncode == 3, done.stderr[-1500:]  # unreachable: worth the CronJob's retry
            assert done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr[-1500:]
            assert "Traceback" not in done.stderr
            assert MlflowClient(uri, uri).search_model_versions(f"name='{model_name}'") == []
        finally:
            server.stop()


class Traffic:
    """Mixed single and batch requests at a steady rate from a few threads, each customer with
    an id of its own, so the log can be checked id by id afterwards."""

    def __init__(self, base: str, rate: float, threads: int = 4) -> None:
        self.base, self.interval, self.threads = base, threads / rate, threads
        self.sent: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.pool = customers(50, seed=4)
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i, next_at = 0, time.monotonic()
            while not self.stop.is_set():
                size = 20 if i % 5 == 0 else 1  # one batch of 20 in five requests
                batch = [self.pool[(i + j) % 50] | {"customer_id": f"w{worker}-{i}-{j}"} for j in range(size)]
                try:
                    if size == 1:
                        response = client.post("/predict/single", json=batch[0])
                    else:
                        response = client.post("/predict", json={"customers": batch})
                    ok = response.status_code == 200
                except httpx.HTTPError as exc:
                    ok, response = False, exc
                with self._lock:
                    if ok:
                        self.sent += [c["customer_id"] for c in batch]
                    else:
                        self.failures.append(str(response)[:200])
                i += 1
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))


def test_postgres_down_30s_under_200_requests_a_second_loses_no_row_and_writes_none_twice(
    stack_env, promoted, tmp_path
):
    from tests.services import private_postgres

    with private_postgres() as pg:
        env = stack_env.env | {"CHURN_MODEL_NAME": promoted, "CHURN_INFERENCE_LOG_URL": pg.url,
                               "CHURN_INFERENCE_LOG_FLUSH_S": "0.2",
                               "CHURN_INFERENCE_LOG_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
        api, base = start_api(env, tmp_path)
        try:
            wait_ready(base)
            with Traffic(base, rate=200) as traffic, httpx.Client(base_url=base, timeout=10) as client:
                time.sleep(5)
                pg.stop()
                outage_ends = time.monotonic() + 30
                states, ready = set(), set()
                while time.monotonic() < outage_ends:
                    states.add(client.get("/model").json()["inference_log"]["state"])
                    ready.add(client.get("/ready").status_code)
                    time.sleep(1)
                during = len(traffic.sent)
                pg.start()
                time.sleep(5)
            assert traffic.failures == [] and ready == {200}  # predictions never depend on the log
            assert "spooling" in states
            rows = len(traffic.sent)
            # ~200 req/s for ~40 s, 4.8 rows a request; at least half of that rate, even on a loaded machine
            assert rows > 0.5 * 200 * 40 * 4.8, (rows, during)

            def drained() -> bool:
                info = client_get(base, "/model")["inference_log"]
                return info["rows"]["written"] >= rows and info["state"] == "live"

            deadline = time.monotonic() + 120
            while not drained():
                assert time.monotonic() < deadline, client_get(base, "/model")["inference_log"]
                time.sleep(1)
            metrics = httpx.get(f"{base}/metrics").text
        finally:
            api.stop()

        def counter(name: str) -> float:
            return float(re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE).group(1))

        assert counter("churn_inference_log_rows_dropped_total") == 0
        assert counter("churn_inference_log_rows_spooled_total") >= rows
        engine = sa.create_engine(pg.url)
        with engine.connect() as conn:
            logged = [r[0] for r in conn.execute(sa.text("SELECT customer_id FROM inference_log"))]
        engine.dispose()
        assert len(logged) == rows and sorted(logged) == sorted(traffic.sent)  # each once, none missing


def client_get(base: str, path: str) -> dict:
    return httpx.get(f"{base}{path}", timeout=10).json()
