"""The API serving a rollout's Challenger beside Production (embedded registry, real writer
process): canary by a stable hash of the customer id, shadow logged only, a Challenger that
fails verification never touching Production."""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from churn_platform import data, loading, outcomes, promotion, rollout
from churn_platform.cli import main
from churn_platform.contract import TAG_THRESHOLD
from serving.app import create_app
from tests.unit.test_api import KEY, make_settings, wait_ready


@pytest.fixture
def registry(registry_uri):
    # Both URIs: another test in this worker may have set MLflow's process-wide registry URI.
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    yield client
    if rollout.current(client, "churn").mode != "off":
        rollout.stop(client, "churn", actor="tests")


def reload(api: TestClient) -> dict:
    response = api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY})
    assert response.status_code == 200, response.text
    rollout = api.get("/model").json()["rollout"]
    assert response.json()["rollout"] == rollout["status"]  # the answer says what /model does
    return rollout


def start_canary(registry: MlflowClient, api: TestClient, percent: int) -> None:
    """A canary of v2 beside v1, and the replica serving it."""
    rollout.start(registry, "churn", mode="canary", percent=percent, version=2, actor="tests")
    assert reload(api)["mode"] == "canary"


def customers(n: int, seed: int = 3) -> list[dict]:
    rows = data.to_records(data.generate(n, seed=seed).drop(columns=["churn"]))
    return [r | {"customer_id": f"cust-{i}"} for i, r in enumerate(rows)]


def versions(api: TestClient, rows: list[dict]) -> dict[str, int]:
    out = {}
    for start in range(0, len(rows), 1000):
        response = api.post("/predict", json={"customers": rows[start : start + 1000]})
        assert response.status_code == 200
        out |= {p["customer_id"]: p["model_version"] for p in response.json()["predictions"]}
    return out


def test_a_canary_sends_a_stable_fifth_of_customers_to_the_challenger(registry, registry_uri, tmp_path):
    rows = customers(5000)
    settings = make_settings(registry_uri, tmp_path)
    with TestClient(create_app(settings)) as api:
        wait_ready(api)
        start_canary(registry, api, percent=20)
        first = versions(api, rows)
        share = sum(v == 2 for v in first.values()) / len(first)
        assert 0.17 <= share <= 0.23, share
        assert set(first.values()) == {1, 2}
        assert versions(api, rows) == first == versions(api, rows)  # the same version, request after request
        # A CRM that pads its ids: the same customers (the log, outcomes and by-id trim them), the same arms.
        padded = [{**r, "customer_id": f" {r['customer_id']}  "} for r in rows[:1000]]
        answered = api.post("/predict", json={"customers": padded}).json()["predictions"]
        assert [p["model_version"] for p in answered] == [first[r["customer_id"]] for r in rows[:1000]]
    with sa.create_engine(settings.inference_log_url).connect() as conn:
        logged = pd.read_sql("SELECT row_index, customer_id, arm FROM inference_log", conn)
    # Each arm logs its own customers, each under its place in the request (they were numbered
    # 0, 1, 2... within the arm, which pointed at other rows of the request).
    assert len(logged) == 16_000 and set(logged.arm) == {"production", "canary"}
    place = logged.customer_id.str.removeprefix("cust-").astype(int) % 1000
    assert (logged.row_index == place).all()
    (tmp_path / "second").mkdir()
    with TestClient(create_app(make_settings(registry_uri, tmp_path / "second"))) as other:  # another replica
        wait_ready(other)
        assert other.get("/model").json()["rollout"]["challenger_version"] == 2
        assert versions(other, rows) == first
    rollout.stop(registry, "churn", actor="tests")


def test_each_challenger_draws_its_own_customers_and_a_larger_share_only_adds_some():
    """Hashed by the id alone, the same tenth of the customers took every canary (and every new
    model's mistakes): two Challengers' 20 % shares overlapped entirely."""
    from serving.predictor import canary

    rows = customers(5000)
    v2, v2_more, v3 = canary(rows, 20, challenger=2), canary(rows, 50, challenger=2), canary(rows, 20, challenger=3)
    assert 0.17 <= v2.mean() <= 0.23 and 0.17 <= v3.mean() <= 0.23
    assert (v2_more[v2]).all() and 0.47 <= v2_more.mean() <= 0.53  # within one canary: only added
    assert 0.02 <= (v2 & v3).mean() <= 0.06  # independent draws: 20 % of 20 %, not the same 20 %


def test_a_canary_requests_log_line_keeps_each_field_one_type(registry, registry_uri, tmp_path, json_lines):
    """model_version was "1+2" on a request both arms answered, a number on every other line: a
    collector maps the field by its first value and dropped the canary's lines (the rollout's)."""
    from serving.predictor import canary_bucket

    with TestClient(create_app(make_settings(registry_uri, tmp_path, access_log=True))) as api:
        wait_ready(api)
        start_canary(registry, api, percent=50)
        assert api.post("/predict", json={"customers": customers(40)}).status_code == 200
        to_canary = [c for c in customers(40) if canary_bucket(c["customer_id"], challenger=2) < 50]
        assert to_canary and api.post("/predict", json={"customers": to_canary}).status_code == 200
    both, alone = [line for line in json_lines() if line.get("route") == "/predict"]
    assert (both["model_version"], both["challenger_version"], both["arm"]) == (1, 2, "production+canary"), both
    # A request only the Challenger answered: its version where a canary's always is.
    assert (alone["challenger_version"], alone["arm"]) == (2, "canary") and "model_version" not in alone, alone


def test_shadow_answers_with_production_and_logs_both_scores(registry, registry_uri, tmp_path):
    settings = make_settings(registry_uri, tmp_path)
    rows = customers(50, seed=5)
    # Another threshold for the Challenger: agreement with the two swapped would differ (below).
    threshold = registry.get_model_version("churn", "2").tags.get(TAG_THRESHOLD)
    registry.set_model_version_tag("churn", "2", TAG_THRESHOLD, "0.3")
    try:
        _shadow_answers_with_production_and_logs_both_scores(registry, registry_uri, settings, rows)
    finally:
        if threshold is None:
            registry.delete_model_version_tag("churn", "2", TAG_THRESHOLD)
        else:
            registry.set_model_version_tag("churn", "2", TAG_THRESHOLD, threshold)


def _shadow_answers_with_production_and_logs_both_scores(registry, registry_uri, settings, rows) -> None:
    from sklearn.metrics import roc_auc_score

    with TestClient(create_app(settings)) as api:
        wait_ready(api)
        rollout.start(registry, "churn", mode="shadow", version=2, actor="tests")
        assert reload(api)["mode"] == "shadow"
        predictions = api.post("/predict", json={"customers": rows}).json()["predictions"]
        assert {p["model_version"] for p in predictions} == {1}
        metrics = api.get("/metrics").text
        for version, arm in (("1", "production"), ("2", "shadow")):
            counted = re.findall(
                rf'churn_predictions_total{{arm="{arm}",model_version="{version}",risk="\w+"}} (\S+)', metrics
            )
            assert sum(float(c) for c in counted) == 50, (arm, metrics)
            labels = f'{{arm="{arm}",model_version="{version}"}}'
            assert f"churn_model_requests_total{labels} 1.0" in metrics
            assert f"churn_model_scoring_seconds_count{labels} 1.0" in metrics
    with sa.create_engine(settings.inference_log_url).connect() as conn:
        logged = pd.read_sql(
            "SELECT request_id, row_index, customer_id, model_version, arm, scoring_ms, churn_probability"
            " FROM inference_log", conn
        )
    assert (logged.scoring_ms > 0).all()
    logged["request"] = logged.request_id.str.split("~").str[0]
    pairs = logged.pivot_table(index=["request", "row_index"], columns="arm", values="model_version", aggfunc="count")
    assert len(pairs) == 50 and (pairs["production"] == 1).all() and (pairs["shadow"] == 1).all()
    assert set(logged[logged.arm == "shadow"].model_version) == {2}
    status = CliRunner().invoke(main, ["rollout", "status", "--json", "--tracking-uri", registry_uri,
                                       "--inference-log-url", settings.inference_log_url])  # fmt: skip
    assert status.exit_code == 0, status.output
    arms = {a["arm"]: a for a in json.loads(status.stdout)["comparison"]["arms"]}
    assert (arms["production"]["rows"], arms["shadow"]["rows"]) == (50, 50)
    assert (arms["production"]["requests"], arms["shadow"]["requests"]) == (1, 1)
    assert 0 < arms["shadow"]["p50_scoring_ms"] <= arms["shadow"]["p99_scoring_ms"] < 1000
    assert (arms["production"]["model_version"], arms["shadow"]["model_version"]) == (1, 2)
    # Agreement: the share of customers both versions decide alike, each at its own threshold.
    score = logged.pivot_table(index="customer_id", columns="arm", values="churn_probability")
    production_threshold = float(registry.get_model_version("churn", "1").tags.get(TAG_THRESHOLD, 0.5))
    alike = ((score["shadow"] >= 0.3) == (score["production"] >= production_threshold)).mean()
    swapped = ((score["shadow"] >= production_threshold) == (score["production"] >= 0.3)).mean()
    assert alike != swapped  # so a mix-up of the two thresholds would show
    assert arms["shadow"]["agreement"] == pytest.approx(alike) and arms["shadow"]["score_distance"] > 0
    assert abs(sum(arms["shadow"]["risk_bands"].values()) - 1) < 1e-9
    assert arms["shadow"]["labelled_rows"] == 0 and arms["shadow"]["realized_roc_auc"] is None  # no outcomes yet

    # Outcomes arrive: each arm's realized ROC AUC on the customers it scored.
    truth = pd.DataFrame({"customer_id": [r["customer_id"] for r in rows], "churned": ["yes", "no"] * 25})
    outcomes.ingest(truth, settings.inference_log_url, source="test")
    text = CliRunner().invoke(main, ["rollout", "status", "--tracking-uri", registry_uri,
                                     "--inference-log-url", settings.inference_log_url]).output  # fmt: skip
    assert "shadow" in text and "agreement" in text and "p99 ms" in text and "roc_auc" in text
    status = CliRunner().invoke(main, ["rollout", "status", "--json", "--tracking-uri", registry_uri,
                                       "--inference-log-url", settings.inference_log_url])  # fmt: skip
    arms = {a["arm"]: a for a in json.loads(status.stdout)["comparison"]["arms"]}
    churned = truth.set_index("customer_id")["churned"].eq("yes").loc[score.index]
    for arm in ("production", "shadow"):  # each on the scores its own version gave
        assert arms[arm]["labelled_rows"] == 50, arms[arm]
        assert arms[arm]["realized_roc_auc"] == pytest.approx(roc_auc_score(churned, score[arm])), arms[arm]


def test_a_full_log_queue_keeps_productions_rows_before_the_shadows(registry, registry_uri, tmp_path):
    """Room in the queue for one arm only: the monitor and the performance job read Production's rows."""
    settings = make_settings(registry_uri, tmp_path, inference_log_queue_rows=60, max_batch_size=60,
                             inference_log_batch_rows=1000, inference_log_flush_s=30)  # fmt: skip
    with TestClient(create_app(settings)) as api:
        wait_ready(api)
        rollout.start(registry, "churn", mode="shadow", version=2, actor="tests")
        assert reload(api)["mode"] == "shadow"
        assert api.post("/predict", json={"customers": customers(50, seed=9)}).status_code == 200
        assert "churn_inference_log_rows_dropped_total 50.0" in api.get("/metrics").text
    with sa.create_engine(settings.inference_log_url).connect() as conn:
        logged = conn.execute(sa.text("SELECT arm, count(*) FROM inference_log GROUP BY arm")).fetchall()
    assert [tuple(r) for r in logged] == [("production", 50)]


def test_a_challenger_that_fails_to_score_never_fails_the_request_and_is_counted(
    registry, registry_uri, tmp_path, monkeypatch, caplog
):  # fmt: skip
    """Shadow: Production answers alone. Canary: Production answers the Challenger's customers
    too (the whole batch failed with a 500). Each failure is counted; the log says it once."""
    settings = make_settings(registry_uri, tmp_path)
    rows = customers(200, seed=4)
    with TestClient(create_app(settings)) as api:
        wait_ready(api)
        rollout.start(registry, "churn", mode="shadow", version=2, actor="tests")
        assert reload(api)["mode"] == "shadow"

        def broken(records):
            raise RuntimeError("the Challenger cannot score")

        monkeypatch.setattr(api.app.state.holder.rollout.model.scorer, "score", broken)
        for _ in range(3):
            response = api.post("/predict", json={"customers": rows})
            assert response.status_code == 200
            assert {p["model_version"] for p in response.json()["predictions"]} == {1}
        start_canary(registry, api, percent=50)
        monkeypatch.setattr(api.app.state.holder.rollout.model.scorer, "score", broken)
        response = api.post("/predict", json={"customers": rows})
        assert response.status_code == 200, response.text
        assert [p["customer_id"] for p in response.json()["predictions"]] == [r["customer_id"] for r in rows]
        assert {p["model_version"] for p in response.json()["predictions"]} == {1}
        # A score that is not a number is a failure too: never answered, nor logged.
        monkeypatch.setattr(api.app.state.holder.rollout.model.scorer, "score", lambda r: np.full(len(r), np.nan))
        response = api.post("/predict", json={"customers": rows})
        assert response.status_code == 200 and {p["model_version"] for p in response.json()["predictions"]} == {1}
        metrics = api.get("/metrics").text
        assert 'churn_challenger_errors_total{arm="shadow"} 3.0' in metrics
        assert 'churn_challenger_errors_total{arm="canary"} 2.0' in metrics
        # Production scored each request once, its own customers and the Challenger's together.
        assert 'churn_model_requests_total{arm="production",model_version="1"} 5.0' in metrics
    assert caplog.text.count("scoring by v2 failed") == 1  # once a minute at most, not per request
    rollout.stop(registry, "churn", actor="tests")
    with sa.create_engine(settings.inference_log_url).connect() as conn:
        logged = pd.read_sql("SELECT request_id, row_index, arm FROM inference_log", conn)
    assert len(logged) == 1000 and set(logged.arm) == {"production"}  # each customer logged once, as answered


def test_a_canary_request_that_fails_logs_neither_arm(registry, registry_uri, tmp_path, monkeypatch):
    """The Challenger's customers are scored first: when Production then failed (a 500), its
    rows were already in the log and counted, as if that request had been answered."""
    settings = make_settings(registry_uri, tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        wait_ready(api)
        start_canary(registry, api, percent=50)

        def broken(records):
            raise RuntimeError("Production cannot score")

        monkeypatch.setattr(api.app.state.holder.current.scorer, "score", broken)
        assert api.post("/predict", json={"customers": customers(200, seed=6)}).status_code == 500
        assert 'churn_model_requests_total{arm="canary",model_version="2"}' not in api.get("/metrics").text
    rollout.stop(registry, "churn", actor="tests")
    engine = sa.create_engine(settings.inference_log_url)  # the writer makes its table with its first rows
    assert not sa.inspect(engine).has_table("inference_log"), "rows were logged for a request that failed"
    engine.dispose()


def test_a_challenger_whose_tags_cannot_be_read_keeps_serving(registry, registry_uri, tmp_path, monkeypatch):
    """A reload re-reads the Challenger's decision threshold: a registry that does not answer
    that one call dropped the Challenger as failed, and the next poll loaded it all again."""
    from churn_platform.errors import RegistryUnreachable

    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
        wait_ready(api)
        start_canary(registry, api, percent=50)
        refreshed = loading.refreshed

        def challenger_unreadable(client, model, **kwargs):
            if model.version == 2:
                raise RegistryUnreachable("the registry at http://mlflow:5000 is unreachable: timed out")
            return refreshed(client, model, **kwargs)

        monkeypatch.setattr(loading, "refreshed", challenger_unreadable)
        state = reload(api)
        assert state["mode"] == "canary" and state["challenger_version"] == 2, state
        assert state["status"].startswith("canary: serving Challenger v2 (kept: its tags could not be read: "), state
        assert 'churn_model_reloads_total{outcome="challenger_failed"} 0.0' in api.get("/metrics").text
    rollout.stop(registry, "churn", actor="tests")


def test_an_artifact_store_outage_loading_the_challenger_is_no_broken_challenger(registry, registry_uri, tmp_path,
                                                                                   monkeypatch):
    """It counted as `challenger_failed` and fired ChurnChallengerFailingVerification, whose
    runbook sends the operator to the model, not to the store."""
    from churn_platform.errors import StorageUnreachable

    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
        wait_ready(api)
        rollout.start(registry, "churn", mode="canary", percent=50, version=2, actor="tests")
        load = loading.load

        def store_down(client, name, version, **kwargs):
            if version == 2:
                raise StorageUnreachable("the artifact store at http://s3:9000 is unreachable: timed out")
            return load(client, name, version, **kwargs)

        monkeypatch.setattr(loading, "load", store_down)
        state = reload(api)
        assert state["mode"] == "off" and "StorageUnreachable" in state["status"], state
        metrics = api.get("/metrics").text
        assert 'churn_model_reloads_total{outcome="challenger_failed"} 0.0' in metrics
        assert 'churn_model_reloads_total{outcome="registry_unreachable"} 1.0' in metrics
        # Its streak stands (ChurnRegistryUnreachable), though Production's own poll went through.
        assert re.search(r"^churn_registry_unreachable_since_timestamp_seconds [1-9]", metrics, re.M), metrics
        monkeypatch.setattr(loading, "load", load)
        assert reload(api)["status"] == "canary: serving Challenger v2"  # the store is back: at once
        assert re.search(r"^churn_registry_unreachable_since_timestamp_seconds 0\.0$", api.get("/metrics").text, re.M)
    rollout.stop(registry, "churn", actor="tests")


def test_a_challenger_failing_verification_leaves_production_serving(registry, registry_uri, tmp_path, monkeypatch):
    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
        wait_ready(api)
        rollout.start(registry, "churn", mode="canary", percent=50, version=2, actor="tests")
        tolerance = loading.PARITY_TOLERANCE
        monkeypatch.setattr(loading, "PARITY_TOLERANCE", -1.0)  # nothing new can pass
        state = reload(api)
        assert state["mode"] == "off" and "Challenger not served" in state["status"]
        assert api.get("/ready").status_code == 200
        assert {v for v in versions(api, customers(200)).values()} == {1}
        assert 'churn_model_reloads_total{outcome="challenger_failed"} 1.0' in api.get("/metrics").text

        # Fixed (here: the check passes again). The next poll does not download and verify it
        # again (every poll did, on every replica, holding the load lock), but still counts it.
        monkeypatch.setattr(loading, "PARITY_TOLERANCE", tolerance)
        api.app.state.holder.load_production()  # what the poll calls
        state = api.get("/model").json()["rollout"]
        assert state["mode"] == "off" and re.search(r"tried again after 20\S+, or at once by POST /admin/reload",
                                                    state["status"]), state  # fmt: skip
        assert 'churn_model_reloads_total{outcome="challenger_failed"} 2.0' in api.get("/metrics").text
        assert reload(api)["status"] == "canary: serving Challenger v2"  # an operator's reload tries at once

        # A rollout started again is another rollout: the next poll tries its Challenger at once.
        monkeypatch.setattr(loading, "PARITY_TOLERANCE", -1.0)
        rollout.stop(registry, "churn", actor="tests")
        reload(api)
        rollout.start(registry, "churn", mode="canary", percent=50, version=2, actor="tests")
        assert "Challenger not served" in reload(api)["status"]
        monkeypatch.setattr(loading, "PARITY_TOLERANCE", tolerance)
        rollout.stop(registry, "churn", actor="tests")
        rollout.start(registry, "churn", mode="canary", percent=50, version=2, actor="tests")
        api.app.state.holder.load_production()
        assert api.get("/model").json()["rollout"]["status"] == "canary: serving Challenger v2"


def test_a_challenger_the_store_could_not_send_is_tried_again_at_the_next_poll(
    registry, registry_uri, tmp_path, monkeypatch
):  # fmt: skip
    """An outage is not a broken Challenger: it must not wait out a pause once the store is back."""
    from churn_platform.errors import RegistryUnreachable, StorageUnreachable

    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
        wait_ready(api)
        real = loading.load
        rollout.start(registry, "churn", mode="canary", percent=50, version=2, actor="tests")
        # Through the tracking server, or from the bucket itself (an s3:// artifact location).
        for outage in (RegistryUnreachable("registry unreachable at http://mlflow:5000: timed out"),
                       StorageUnreachable("object store unreachable: Could not connect to http://minio:9000")):

            def unreachable(*args, error=outage, **kwargs):
                raise error

            monkeypatch.setattr(loading, "load", unreachable)
            reload(api)
            assert "Challenger not served" in api.get("/model").json()["rollout"]["status"]
            monkeypatch.setattr(loading, "load", real)
            api.app.state.holder.load_production()  # the next poll
            assert api.get("/model").json()["rollout"]["status"] == "canary: serving Challenger v2", outage
            rollout.stop(registry, "churn", actor="tests")  # started again: off, then on at the next load
            reload(api)
            rollout.start(registry, "churn", mode="canary", percent=50, version=2, actor="tests")


def test_a_replica_whose_production_fails_to_load_still_follows_the_rollout(registry, registry_uri, tmp_path):
    """Before, a failed Production load returned before the rollout was read: `rollout stop`
    (the abort button) and a Production move were ignored, and the replica went on sending
    customers to the Challenger."""
    rows = customers(300)

    def reload_fails(api: TestClient) -> dict:
        response = api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY})
        assert response.status_code == 409, response.text
        return api.get("/model").json()["rollout"]

    threshold = registry.get_model_version("churn", "2").tags.get(TAG_THRESHOLD)
    try:
        with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
            wait_ready(api)
            start_canary(registry, api, percent=50)
            registry.delete_registered_model_alias("churn", "Production")  # v1 serves on
            assert reload_fails(api)["mode"] == "canary"  # nothing said the rollout ended
            rollout.stop(registry, "churn", actor="tests")
            assert reload_fails(api)["mode"] == "off"
            assert set(versions(api, rows).values()) == {1}

            registry.set_registered_model_alias("churn", "Production", "1")
            start_canary(registry, api, percent=50)
            # Moved in the UI to the Challenger, whose threshold tag was spoilt since: it cannot serve here.
            registry.set_model_version_tag("churn", "2", TAG_THRESHOLD, "high")
            registry.set_registered_model_alias("churn", "Production", "2")
            state = reload_fails(api)
            assert state["mode"] == "off" and state["status"] == (
                "off here: this replica serves v1, not Production v2, which it could not load")
            assert set(versions(api, rows).values()) == {1} and api.get("/ready").status_code == 200
    finally:
        if threshold is None:
            registry.delete_model_version_tag("churn", "2", TAG_THRESHOLD)
        else:
            registry.set_model_version_tag("churn", "2", TAG_THRESHOLD, threshold)
        registry.set_registered_model_alias("churn", "Production", "1")


def test_a_replica_left_on_an_older_production_serves_no_challenger_beside_it(registry, registry_uri, tmp_path):
    """Before, a replica that could not load Production v2 (and served v1 on) followed a canary
    started beside v2: its canary customers went to v3 and the rest to v1, a mix no other
    replica served, and `rollout status` counted its canary rows against v2's."""
    rows = customers(300)
    v2 = registry.get_model_version("churn", "2")
    threshold, v3 = v2.tags.get(TAG_THRESHOLD), None
    try:
        with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
            wait_ready(api)  # and MLflow pointed at the registry, where v2's logged model is
            v3 = registry.create_model_version("churn", source=v2.source, run_id=v2.run_id)  # the Challenger
            registry.set_model_version_tag("churn", "2", TAG_THRESHOLD, "high")  # v2 cannot serve here
            registry.set_registered_model_alias("churn", "Production", "2")
            rollout.start(registry, "churn", mode="canary", percent=50, version=int(v3.version), actor="tests")
            assert api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY}).status_code == 409
            state = api.get("/model").json()["rollout"]
            assert state["mode"] == "off" and "not Production v2" in state["status"], state
            assert set(versions(api, rows).values()) == {1}
            # Even were the holder to hold it (a request that began before a swap): v1 alone answers.
            api.app.state.holder.rollout = holder_rollout = _loaded_canary(registry, int(v3.version), 2)
            assert holder_rollout.model.version == int(v3.version)
            assert set(versions(api, rows).values()) == {1}
    finally:
        if threshold is None:
            registry.delete_model_version_tag("churn", "2", TAG_THRESHOLD)
        else:
            registry.set_model_version_tag("churn", "2", TAG_THRESHOLD, threshold)
        if v3 is not None:
            registry.delete_model_version("churn", v3.version)
        registry.set_registered_model_alias("churn", "Production", "1")
        with contextlib.suppress(rollout.RolloutError):  # not started: the test failed before
            rollout.stop(registry, "churn", actor="tests")


def _loaded_canary(registry: MlflowClient, version: int, production: int):
    from serving.holder import ActiveRollout

    state = rollout.RolloutState(mode="canary", percent=50, challenger_version=version, production_version=production)
    return ActiveRollout(state, loading.load(registry, "churn", version, default_threshold=0.5, sample=50))


def test_explanations_during_a_canary_need_its_challenger_to_explain_and_a_shadow_changes_nothing(
    registry, registry_uri, tmp_path
):  # fmt: skip
    import dataclasses

    from serving.holder import ActiveRollout

    rows = customers(20)
    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
        wait_ready(api)
        start_canary(registry, api, percent=50)
        holder = api.app.state.holder
        assert api.post("/predict?explain=true", json={"customers": rows}).status_code == 200
        # As a Challenger served by sklearn instead of the fast scorer loads: without an explainer.
        unexplained = dataclasses.replace(holder.rollout.model, explainer=None, explanations={
            "available": False, "reason": "the pipeline is served by sklearn, not the fast scorer"})  # fmt: skip
        holder.rollout = ActiveRollout(holder.rollout.state, unexplained)
        for body in ({"customers": rows}, {"customers": rows[:1]}):  # whichever arm its customers fall in
            refused = api.post("/predict?explain=true", json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json()["detail"] == (
                "the canary's Challenger, churn v2, serves without explanations: the pipeline is served by sklearn, "
                "not the fast scorer; no request is explained while the canary runs (stop it, or run the rollout "
                "in shadow)")  # fmt: skip
        assert api.post("/predict", json={"customers": rows}).status_code == 200  # scoring goes on
        assert api.get("/model").json()["rollout"]["challenger"]["explanations"]["available"] is False
        shadow = rollout.RolloutState(**{**holder.rollout.state.model_dump(), "mode": "shadow", "percent": None})
        holder.rollout = ActiveRollout(shadow, unexplained)
        explained = api.post("/predict?explain=true", json={"customers": rows})
        assert explained.status_code == 200 and all("explanation" in p for p in explained.json()["predictions"])
    rollout.stop(registry, "churn", actor="tests")


def test_a_registry_blip_while_reading_the_rollout_keeps_the_challenger_serving(registry, registry_uri, tmp_path,
                                                                               monkeypatch):
    """Before, an unreadable rollout tag counted as a Challenger that failed: this replica
    alone answered its canary customers with Production, then loaded the Challenger again."""
    from churn_platform.errors import RegistryUnreachable

    rows = customers(300)
    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
        wait_ready(api)
        start_canary(registry, api, percent=50)
        before = versions(api, rows)
        real = rollout.current

        def unreachable(*args, **kwargs):
            raise RegistryUnreachable("registry unreachable at http://mlflow:5000: timed out")

        monkeypatch.setattr(rollout, "current", unreachable)
        state = reload(api)
        assert state["mode"] == "canary" and "kept: the rollout state could not be read" in state["status"]
        assert versions(api, rows) == before
        monkeypatch.setattr(rollout, "current", real)
        assert reload(api)["status"] == "canary: serving Challenger v2"
        assert 'churn_model_reloads_total{outcome="challenger_failed"} 0.0' in api.get("/metrics").text
    rollout.stop(registry, "churn", actor="tests")


def test_a_promoted_challenger_is_served_as_it_was_loaded_not_loaded_again(
    registry, registry_uri, tmp_path, monkeypatch
):  # fmt: skip
    """Loading it again held three models at once, and a load that failed (an artifact store
    blip) ended its canary: the canary's customers went back to the old version."""
    try:
        with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
            wait_ready(api)
            start_canary(registry, api, percent=50)
            challenger = api.app.state.holder.rollout.model

            def unreachable(*args, **kwargs):
                raise RuntimeError("the artifact store did not answer")

            monkeypatch.setattr(loading, "load", unreachable)
            registry.set_registered_model_alias("churn", "Production", "2")
            assert reload(api)["mode"] == "off"
            assert api.app.state.holder.current is challenger
            assert set(versions(api, customers(300)).values()) == {2}
    finally:
        registry.set_registered_model_alias("churn", "Production", "1")


def test_a_rollout_ends_when_production_moves_and_a_rollback_does_not_bring_its_challenger_back(
    registry, registry_uri, tmp_path
):
    rows = customers(500)
    try:
        with TestClient(create_app(make_settings(registry_uri, tmp_path))) as api:
            wait_ready(api)
            start_canary(registry, api, percent=50)
            # Moved in the MLflow UI: no command has recorded it, the replica sees it at its next load.
            registry.set_registered_model_alias("churn", "Production", "2")
            state = reload(api)
            assert state["mode"] == "off" and "ended when Production moved to v2" in state["status"]
            assert promotion.current_production(registry, "churn") == 2  # any command records the move
            # Back to v1, the version the canary was started beside: it stays ended.
            registry.set_registered_model_alias("churn", "Production", "1")
            assert reload(api)["mode"] == "off"
            assert set(versions(api, rows).values()) == {1}
    finally:
        registry.set_registered_model_alias("churn", "Production", "1")
