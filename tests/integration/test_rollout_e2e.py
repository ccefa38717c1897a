"""A rollout on the real stack: mlflow server on PostgreSQL + S3, real uvicorn processes, the
inference log on PostgreSQL. Two replicas follow the registry; customers keep their arm across
requests, replicas and restarts; shadow logs both scores; promote switches under load."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data
from churn_platform.cli import main
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.services import postgres_database, start_api, wait_ready

pytestmark = pytest.mark.integration
KEY = "rollout-admin-key-5e1"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def reload(base: str) -> dict:
    response = httpx.post(f"{base}/admin/reload?wait=true", headers={"X-API-Key": KEY}, timeout=120)
    assert response.status_code == 200, response.text
    return httpx.get(f"{base}/model").json()


def versions(base: str, rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for start in range(0, len(rows), 1000):
            response = client.post("/predict", json={"customers": rows[start : start + 1000]})
            assert response.status_code == 200, response.text
            out |= {p["customer_id"]: p["model_version"] for p in response.json()["predictions"]}
    return out


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def status(name: str, log_url: str | None = None) -> dict:
    extra = ["--inference-log-url", log_url] if log_url else []
    code, output = cli("rollout", "status", "--json", "--model-name", name, *extra)
    assert code == 0, output
    return json.loads(output)


def test_a_rollout_on_the_real_stack(stack_env, model_name, telco_csv, tmp_path):
    settings = get_settings()
    train(TrainConfig(data=str(telco_csv), model_name=model_name), settings)
    train(TrainConfig(n_rows=3000, model_name=model_name, seed=9), settings)
    assert cli("promote", "--model-name", model_name, "--version", "1", "--force")[0] == 0
    real = data.to_records(data.load(telco_csv).drop(columns=["churn"]))  # 3,930 real customers
    extra = [r | {"customer_id": f"extra-{i:04d}"} for i, r in enumerate(real[: 5000 - len(real)])]
    rows = real + extra
    assert len({r["customer_id"] for r in rows}) == 5000

    with postgres_database() as log_url:
        env = stack_env.env | {
            "CHURN_MODEL_NAME": model_name, "CHURN_ADMIN_API_KEY": KEY, "CHURN_INFERENCE_LOG_URL": log_url,
            "CHURN_INFERENCE_LOG_FLUSH_S": "0.2", "CHURN_STARTUP_BACKOFF_MAX_S": "1",
        }  # fmt: skip
        api, a = start_api(env | {"CHURN_INFERENCE_LOG_SPOOL_DIR": str(tmp_path / "spool-a")}, tmp_path)
        # The second replica is never told: it follows the registry by polling.
        try:
            other, b = start_api(
                env | {"CHURN_INFERENCE_LOG_SPOOL_DIR": str(tmp_path / "spool-b"), "CHURN_RELOAD_POLL_S": "1"}, tmp_path
            )
        except BaseException:
            api.stop()  # never outlives the test when its second replica fails to start
            raise
        engine = sa.create_engine(log_url)
        try:
            wait_ready(a)
            wait_ready(b)

            # Bad input: exit 2, a clear message, the registry unchanged.
            for args, message in (
                (["--mode", "canary", "--percent", "0", "--version", "2"], "between 1 and 99"),
                (["--mode", "canary", "--percent", "20", "--version", "1"], "already holds Production"),
                (["--mode", "shadow", "--version", "9"], "9"),
            ):
                code, output = cli("rollout", "start", "--model-name", model_name, *args)
                assert code == 2 and message in output, (args, output)
            assert status(model_name)["mode"] == "off"

            # Canary 20 %: a stable fifth of the customers, the same on every replica and restart.
            code, output = cli("rollout", "start", "--model-name", model_name, "--mode", "canary", "--percent", "20",
                               "--version", "2", "--reason", "e2e")  # fmt: skip
            assert code == 0, output
            assert reload(a)["rollout"]["challenger"]["version"] == 2
            first = versions(a, rows)
            share = sum(v == 2 for v in first.values()) / len(first)
            assert 0.17 <= share <= 0.23, share
            assert versions(a, rows) == first == versions(a, rows)
            wait_until(lambda: httpx.get(f"{b}/model").json()["rollout"]["mode"] == "canary", 30, "replica b")
            assert versions(b, rows) == first

            api.stop()
            assert api.proc.returncode == 0, api.log_tail()
            api, a = start_api(env | {"CHURN_INFERENCE_LOG_SPOOL_DIR": str(tmp_path / "spool-a")}, tmp_path)
            wait_ready(a)
            assert versions(a, rows) == first  # across a restart
            assert httpx.get(f"{a}/model").json()["rollout"]["challenger_version"] == 2

            canary_rows = 4 * 5000  # three rounds on a, one on b, one after the restart, less b's
            wait_until(lambda: _count(engine, "canary") >= 0.17 * canary_rows, 60, "canary rows in the log")
            arms = {arm["arm"]: arm for arm in status(model_name, log_url)["comparison"]["arms"]}
            assert set(arms) == {"production", "canary"}
            assert arms["canary"]["model_version"] == 2 and arms["production"]["model_version"] == 1
            assert arms["canary"]["rows"] > 0 and arms["canary"]["p99_scoring_ms"] > 0

            # Stop: every customer back on Production.
            assert cli("rollout", "stop", "--model-name", model_name)[0] == 0
            assert reload(a)["rollout"]["mode"] == "off"
            assert set(versions(a, rows[:1000]).values()) == {1}

            # Shadow: answered by Production, both scores logged for every customer.
            code, output = cli("rollout", "start", "--model-name", model_name, "--mode", "shadow", "--version", "2")
            assert code == 0, output
            assert reload(a)["rollout"]["mode"] == "shadow"
            shadowed = rows[:300]
            assert set(versions(a, shadowed).values()) == {1}
            wait_until(lambda: _count(engine, "shadow") >= 300, 60, "shadow rows in the log")
            with engine.connect() as conn:
                pairs = conn.execute(sa.text(
                    # The shadow requests' rows, both arms: the shadow's request id is Production's + "~shadow".
                    "SELECT customer_id, count(DISTINCT arm), count(DISTINCT model_version) FROM inference_log "
                    "WHERE split_part(request_id, '~', 1) IN "
                    "(SELECT split_part(request_id, '~', 1) FROM inference_log WHERE arm = 'shadow') "
                    "AND customer_id IS NOT NULL GROUP BY customer_id"
                )).fetchall()  # fmt: skip
            assert {r[0] for r in pairs} == {r["customer_id"] for r in shadowed}
            assert all(r[1] == 2 and r[2] == 2 for r in pairs)
            arms = {arm["arm"]: arm for arm in status(model_name, log_url)["comparison"]["arms"]}
            assert set(arms) == {"production", "shadow"} and arms["shadow"]["rows"] == 300
            assert arms["shadow"]["requests"] == 1
            # Agreement: the share of these customers both versions decide alike, each at its threshold.
            with engine.connect() as conn:
                scored = pd.read_sql(sa.text(
                    "SELECT customer_id, arm, churn_probability FROM inference_log "
                    "WHERE split_part(request_id, '~', 1) IN "
                    "(SELECT split_part(request_id, '~', 1) FROM inference_log WHERE arm = 'shadow')"),
                    conn)  # fmt: skip
            score = scored.pivot_table(index="customer_id", columns="arm", values="churn_probability")
            registry = MlflowClient(tracking_uri=stack_env.tracking_uri, registry_uri=stack_env.tracking_uri)
            one, two = (float(registry.get_model_version(model_name, v).tags["decision_threshold"]) for v in "12")
            alike = ((score["shadow"] >= two) == (score["production"] >= one)).mean()
            assert arms["shadow"]["agreement"] == pytest.approx(alike), (arms["shadow"], alike)

            # Promote under load on both replicas: no request fails, both end on v2 alone.
            wait_until(lambda: httpx.get(f"{b}/model").json()["rollout"]["mode"] == "shadow", 30, "replica b")
            failures: list[str] = []
            seen: dict[str, list[int]] = {a: [], b: []}
            stop = threading.Event()

            def traffic(base: str) -> None:
                with httpx.Client(base_url=base, timeout=10) as client:
                    while not stop.is_set():
                        try:
                            r = client.post("/predict/single", json=rows[len(seen[base]) % len(rows)])
                        except httpx.HTTPError as exc:
                            failures.append(repr(exc))
                            continue
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text[:200]}")
                        else:
                            seen[base].append(r.json()["model_version"])

            workers = [threading.Thread(target=traffic, args=(base,)) for base in (a, a, b, b)]
            for worker in workers:
                worker.start()
            time.sleep(0.5)
            code, output = cli("rollout", "promote", "--model-name", model_name, "--force", "--reason", "e2e")
            assert code == 0, output
            reload(a)
            wait_until(lambda: httpx.get(f"{b}/model").json()["version"] == 2, 30, "replica b on v2")
            time.sleep(0.5)
            stop.set()
            for worker in workers:
                worker.join()
            assert failures == []
            for base in (a, b):
                assert seen[base][0] == 1 and seen[base][-1] == 2, base
                model = httpx.get(f"{base}/model").json()
                assert model["version"] == 2 and model["rollout"]["mode"] == "off"
            assert status(model_name)["mode"] == "off"
            code, output = cli("history", "--model-name", model_name)
            assert "rollout-start" in output and "rollout-stop" in output, output

            # A version without artifacts is refused before the rollout starts.
            broken = MlflowClient(tracking_uri=stack_env.tracking_uri, registry_uri=stack_env.tracking_uri)
            broken.create_model_version(model_name, f"s3://{stack_env.bucket}/no-such-model", run_id=None)
            start = ("rollout", "start", "--model-name", model_name, "--mode", "canary", "--percent", "50", "--version")
            code, output = cli(*start, "3")
            assert code == 2 and f"{model_name} v3: its model artifacts cannot be read" in output, output
            # A Challenger that stops loading after the start (its threshold tag edited to text in the
            # UI) leaves Production serving and /ready at 200.
            v2 = broken.get_model_version(model_name, "2")
            broken.create_model_version(model_name, v2.source, run_id=v2.run_id,
                                        model_id=v2.source.removeprefix("models:/"))  # fmt: skip
            code, output = cli(*start, "4")
            assert code == 0, output
            broken.set_model_version_tag(model_name, "4", "decision_threshold", "abc")  # read again at each reload
            model = reload(a)
            assert model["version"] == 2 and model["rollout"]["mode"] == "off"
            assert "Challenger not served" in model["rollout"]["status"]
            assert httpx.get(f"{a}/ready").status_code == 200
            assert set(versions(a, rows[:1000]).values()) == {2}
            # Counted (the series exists at 0 from the start).
            metrics = httpx.get(f"{a}/metrics").text
            failed = re.search(r'churn_model_reloads_total\{outcome="challenger_failed"\} (\S+)', metrics)
            assert failed is not None and float(failed.group(1)) >= 1, failed
            assert cli("rollout", "stop", "--model-name", model_name)[0] == 0
        finally:
            api.stop()
            other.stop()
            engine.dispose()
        assert api.proc.returncode == 0 and other.proc.returncode == 0, (api.log_tail(), other.log_tail())


def _count(engine: sa.Engine, arm: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM inference_log WHERE arm = :arm"), {"arm": arm}).scalar()
