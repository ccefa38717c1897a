"""Routes of the prediction API, with FastAPI's TestClient on the embedded registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from churn_platform import data, loading
from churn_platform.contract import FEATURES_AS_OF
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import Settings
from serving.app import create_app

KEY = "test-admin-key-5b1f"


def make_settings(registry_uri, tmp_path, **overrides) -> Settings:
    values = dict(
        tracking_uri=registry_uri, admin_api_key=KEY, inference_log_url=f"sqlite:///{tmp_path}/log.db",
        inference_log_flush_s=0.1, verify_sample_rows=200, feature_store_dir=str(tmp_path / "features"),
    )  # fmt: skip
    values.update(overrides)
    return Settings(**values)


def settled(client: TestClient, timeout: float = 30) -> httpx.Response:
    """``/ready`` once the API has looked at the registry (no longer ``starting``)."""
    deadline = time.monotonic() + timeout
    while (response := client.get("/ready")).json()["status"] == "starting":
        assert time.monotonic() < deadline, "still starting"
        time.sleep(0.1)
    return response


def wait_ready(client: TestClient, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/ready")
        if response.status_code == 200:
            return response.json()
        time.sleep(0.2)
    raise AssertionError(f"not ready: {client.get('/ready').json()}")


@pytest.fixture
def api(registry_uri, tmp_path):
    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as client:
        wait_ready(client)
        yield client


def customers(telco_csv, n: int) -> list[dict]:
    frame = data.load(telco_csv).head(n)
    return data.to_records(frame.drop(columns=["churn"]))


def test_a_registry_database_that_does_not_exist_is_registry_unreachable_not_alias_missing(tmp_path):
    """alias_missing's runbook says to promote a version; the URI is what needs mending."""
    from tests.services import PG_HOST, PG_PORT, PG_USER

    uri = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/churn_no_such_registry"
    with TestClient(create_app(make_settings(uri, tmp_path))) as client:
        response = settled(client)
    assert response.status_code == 503 and response.json()["status"] == "registry_unreachable", response.json()
    assert 'database "churn_no_such_registry" does not exist' in response.json()["message"]


def test_not_ready_while_the_alias_is_missing(registry_uri, tmp_path):
    with TestClient(create_app(make_settings(registry_uri, tmp_path, model_name="nobody"))) as client:
        assert client.get("/health").json() == {"status": "ok"}
        response = settled(client)
        assert response.status_code == 503
        assert response.json()["status"] == "alias_missing"
        assert "holds the alias 'Production'" in response.json()["message"]
        one = customers_stub()
        refused = client.post("/predict/single", json=one)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"  # the replica keeps trying
        assert client.get("/predict/single").status_code == 405  # a wrong method whether or not a model is served


def customers_stub() -> dict:
    return data.generate(1, seed=1).drop(columns=["churn"]).iloc[0].to_dict() | {
        "senior_citizen": 0,
        "tenure": 5,
    }


def test_batch_predictions_equal_the_registered_model(api, telco_csv):
    rows = customers(telco_csv, 300)
    response = api.post("/predict", json={"customers": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == 1 and body["model_name"] == "churn"
    got = np.array([p["churn_probability"] for p in body["predictions"]])
    model = mlflow.pyfunc.load_model("models:/churn/1")
    expected = np.asarray(model.predict(pd.DataFrame(rows)[list(FEATURE_NAMES)]))[:, 1]
    assert np.max(np.abs(got - expected)) <= 1e-6
    first = body["predictions"][0]
    assert first["customer_id"] == rows[0]["customer_id"]
    assert first["will_churn"] == (first["churn_probability"] >= 0.5)
    assert {p["risk"] for p in body["predictions"]} == {"low", "medium", "high"}
    for p in body["predictions"]:
        band = "high" if p["churn_probability"] >= 0.6 else "medium" if p["churn_probability"] >= 0.3 else "low"
        assert p["risk"] == band


def test_single_prediction(api, telco_csv):
    row = customers(telco_csv, 1)[0]
    row.pop("customer_id")
    response = api.post("/predict/single", json=row)
    assert response.status_code == 200
    body = response.json()
    assert body["customer_id"] is None and body["model_version"] == 1
    batch = api.post("/predict", json={"customers": [row]}).json()["predictions"][0]  # the same row, batched
    assert body["churn_probability"] == batch["churn_probability"] and 0 < body["churn_probability"] < 1
    assert (body["will_churn"], body["risk"]) == (batch["will_churn"], batch["risk"])


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"contract": "Three year"}, "contract", "'Month-to-month', 'One year' or 'Two year'"),
        ({"tenure": "abc"}, "tenure", "valid integer"),
        ({"tenure": -1}, "tenure", "greater than or equal to 0"),
        ({"tenure": 2**31}, "tenure", "less than or equal to 2147483647"),
        ({"tenure": 2**70}, "tenure", "less than or equal to 2147483647"),
        ({"monthly_charges": -3.5}, "monthly_charges", "greater than or equal to 0"),
        ({"senior_citizen": 2}, "senior_citizen", "0 or 1"),
        ({"contrat": "One year"}, "contrat", "Extra inputs are not permitted"),
        ({"payment_method": None}, "payment_method", "Input should be"),
        ({"customer_id": "7590\x00VHVEG"}, "customer_id", "contains a control character"),
        ({"customer_id": "7590\x85VHVEG"}, "customer_id", "contains a control character"),  # C1: NEL
        ({"customer_id": "7590\u2028"}, "customer_id", "contains a control character"),  # line separator
    ],
)
def test_bad_customers_get_422_naming_the_field(api, telco_csv, change, field, words):
    row = customers(telco_csv, 1)[0] | change
    response = api.post("/predict/single", json=row)
    assert response.status_code == 422
    assert f"{field}:" in response.json()["message"] and words in response.json()["message"]


def test_missing_field_nan_and_malformed_json(api, telco_csv):
    row = customers(telco_csv, 1)[0]
    del row["tenure"]
    response = api.post("/predict", json={"customers": [row]})
    assert response.status_code == 422 and "customers.0.tenure: Field required" in response.json()["message"]
    huge = customers(telco_csv, 1)[0] | {"monthly_charges": 1e308}  # once scored as a certain churner
    response = api.post("/predict", json={"customers": [huge]})
    assert response.status_code == 422 and "customers.0.monthly_charges" in response.json()["message"], response.text
    text = re.sub(
        r'"total_charges": [0-9.]+',
        '"total_charges": NaN',
        json.dumps({"customers": customers(telco_csv, 1)}),
    )
    assert "NaN" in text
    response = api.post("/predict", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "total_charges" in response.json()["message"]
    response = api.post("/predict", content=b'{"customers": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["message"]
    latin1 = json.dumps({"customers": customers(telco_csv, 1)}).encode().replace(b'_id": "', b'_id": "\xe9', 1)
    response = api.post("/predict", content=latin1, headers={"content-type": "application/json"})  # not UTF-8
    assert response.status_code == 422 and "Invalid JSON" in response.json()["message"]
    for path, body in (("/predict/by-id", b'{"customer_ids": ["caf\xe9"]}'), ("/outcomes", b'{"outcomes": "\xe9"}')):
        response = api.post(path, content=body, headers={"content-type": "application/json", "X-API-Key": KEY})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["message"].startswith("body: Invalid JSON: not UTF-8 (invalid ")
    assert api.post("/predict", json={"customers": []}).status_code == 422
    # A byte-order mark, as /predict/by-id takes it (404 there: no feature store, past the body).
    bom, one = b"\xef\xbb\xbf", customers(telco_csv, 1)
    for path, body in (("/predict", {"customers": one}), ("/predict/single", one[0]),
                       ("/predict/by-id", {"customer_ids": ["7590-VHVEG"]})):
        response = api.post(path, content=bom + json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert response.status_code == (404 if path.endswith("by-id") else 200), (path, response.text)
        assert "Invalid JSON" not in response.text
    # Nesting deeper than Python's recursion limit (a few kB, no key needed): a 422, never a 500.
    deep = "[" * 3000 + "]" * 3000
    row = json.dumps(customers(telco_csv, 1)[0])
    for path, body in (("/predict", f'{{"customers": {deep}}}'), ("/predict/single", f'{{"x": {deep}}}'),
                       ("/predict", f'{{"customers": [{row[:-1]}, "x": {deep}}}]}}'), ("/predict", deep)):
        response = api.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, body[:40], response.status_code, response.text[:200])
        assert "nest" in response.json()["message"] or "recursion" in response.json()["message"], response.text


def test_size_limits_give_413(registry_uri, tmp_path, telco_csv):
    settings = make_settings(registry_uri, tmp_path, max_batch_size=5, max_body_bytes=20_000)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post("/predict", json={"customers": customers(telco_csv, 6)})
        assert response.status_code == 413 and "the limit is 5" in response.json()["message"]
        response = client.post("/predict", json={"customers": customers(telco_csv, 60)})
        assert response.status_code == 413 and "larger than 20000 bytes" in response.json()["message"]

        # Over the limit and invalid too: counted before it is validated (validation came first: 422).
        response = client.post("/predict", json={"customers": [*customers(telco_csv, 6)[:5], {"tenure": -1}]})
        assert response.status_code == 413 and "6 customers in one request" in response.json()["message"]
        # A NaN, which pydantic reads and our counting parser did not: every customer was validated, then 422
        nan = '{"customers": [' + ", ".join(["{}"] * 600) + '], "x": NaN}'
        response = client.post("/predict", content=nan, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "600 customers in one request" in response.json()["message"]

        def chunks():
            yield b'{"customers": ['
            for _ in range(100):
                yield b" " * 1000

        response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_a_body_full_of_problems_gets_a_short_422_that_counts_them(api, telco_csv):
    """A 422 listed every problem: 9,000 customers of bad fields were a 22 MB answer after
    seconds of the event loop, and 250,000 unknown fields in one customer the same."""
    bad = {name: "x" for name in FEATURE_NAMES}
    response = api.post("/predict", json={"customers": [bad] * 1000})
    body = response.json()
    assert response.status_code == 422 and len(body["detail"]) == 100, len(body["detail"])
    assert body["message"].startswith("customers.0.")
    assert f"(and {1000 * len(FEATURE_NAMES) - 5} more)" in body["message"]
    flood = {**customers(telco_csv, 1)[0], **{f"f{i}": 1 for i in range(50_000)}}
    response = api.post("/predict/single", json=flood)
    body = response.json()
    assert response.status_code == 422 and len(body["detail"]) == 100
    unknown = {"loc": ["body", "f0"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    assert body["detail"][0] == unknown
    assert body["message"].endswith("(and 49995 more) (unknown fields only: the others were not checked)")
    response = api.post("/predict", json={"customers": [flood]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "customers", 0, "f0"]
    # With a NaN among them (msgspec refuses it, pydantic reads it): counted all the same.
    with_nan = json.dumps({"customers": [flood], "x": float("nan")})
    response = api.post("/predict", content=with_nan, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["message"].endswith("the others were not checked)")
    # A few unknown fields are still validated with the rest: every problem named.
    response = api.post("/predict/single", json={**customers(telco_csv, 1)[0], "tenure": -1, "planet": "Mars"})
    names = sorted(".".join(map(str, e["loc"])) for e in response.json()["detail"])
    assert response.status_code == 422 and names == ["body.planet", "body.tenure"], names


def test_a_streamed_body_over_the_limit_is_never_acted_on():
    """Chunks arrive one by one (chunked transfer): the part read before the limit may parse,
    and the route must not act on it (score, store outcomes) while the caller is told 413."""
    import asyncio

    from starlette.requests import Request
    from starlette.responses import Response

    from serving.middleware import BodyLimit

    acted: list[bytes] = []

    async def route(scope, receive, send):
        body = await Request(scope, receive).body()
        acted.append(body)
        await Response("done")(scope, receive, send)

    chunks = [b'{"customers": []}', b" " * 600, b" " * 600]
    sent: list[dict] = []

    async def receive():
        body = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [], "query_string": b""}
    asyncio.run(BodyLimit(route, max_bytes=1000)(scope, receive, send))
    assert acted == [] and sent[0]["status"] == 413


def test_model_info_and_metrics(api, telco_csv):
    info = api.get("/model").json()
    assert info["version"] == 1 and info["alias"] == "Production" and info["scorer"] == "fast"
    assert info["verified"]["max_abs_difference"] <= 1e-6 and info["verified"]["rows"] > 100
    assert [c["name"] for c in info["input_schema"]] == list(FEATURE_NAMES)
    assert info["metrics"]["roc_auc"] >= 0.84
    api.post("/predict", json={"customers": customers(telco_csv, 10)})
    text = api.get("/metrics").text
    assert 'churn_api_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert "churn_rows_scored_total 10.0" in text
    assert 'churn_model_info{model_name="churn",scorer="fast",version="1"} 1.0' in text
    assert "churn_api_request_seconds_bucket" in text
    counted = re.findall(r"^churn_predictions_total\{[^}]*\} (\S+)$", text, re.M)  # a HELP line proves nothing
    assert sum(float(n) for n in counted) == 10, counted
    assert "churn_inference_log_rows_dropped_total 0.0" in text
    # Each failure from 0, so that the first one is an increase() the reload alerts see.
    for outcome in ("registry_unreachable", "alias_missing", "verification_failed", "load_failed", "challenger_failed"):
        assert f'churn_model_reloads_total{{outcome="{outcome}"}} 0.0' in text
    assert api.get("/docs").status_code == 200
    schema = api.get("/openapi.json").json()
    assert schema["components"]["schemas"]["Customer"]["examples"]
    api.get("/no-such-path")
    text = api.get("/metrics").text  # FastAPI's own pages by name: `unmatched` is for paths no route serves
    assert 'churn_api_requests_total{endpoint="/openapi.json",method="GET",status="200"} 1.0' in text
    assert 'churn_api_requests_total{endpoint="/docs",method="GET",status="200"} 1.0' in text
    assert 'churn_api_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in text


def test_metrics_say_since_when_the_registry_does_not_answer(api, monkeypatch):
    """What ChurnRegistryUnreachable reads: set by the first load of a streak that cannot reach
    MLflow, kept by the next ones, cleared by the first that gets through."""
    from churn_platform import loading
    from churn_platform.errors import RegistryUnreachable

    def since() -> float:
        line = next(x for x in api.get("/metrics").text.splitlines()
                    if x.startswith("churn_registry_unreachable_since_timestamp_seconds "))  # fmt: skip
        return float(line.split()[1])

    def reload() -> int:
        return api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY}).status_code

    assert since() == 0
    resolve = loading.resolve

    def away(*args, **kwargs):
        raise RegistryUnreachable("the registry did not answer")

    monkeypatch.setattr(loading, "resolve", away)
    assert reload() == 409
    first = since()
    assert time.time() - 60 < first <= time.time()
    time.sleep(0.05)
    assert reload() == 409 and since() == first  # the streak's start, not the last failure
    monkeypatch.setattr(loading, "resolve", resolve)
    assert reload() == 200 and since() == 0


def test_admin_reload_needs_the_key_and_swaps_versions(api):
    unauthenticated = api.post("/admin/reload")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["www-authenticate"].startswith("Bearer")
    assert api.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 403
    client = MlflowClient()
    client.set_registered_model_alias("churn", "Production", "2")
    try:
        response = api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY})
        assert response.status_code == 200 and response.json()["version"] == 2
        assert response.json()["previous_version"] == 1
        assert api.post("/predict/single", json=customers_stub()).json()["model_version"] == 2
    finally:
        client.set_registered_model_alias("churn", "Production", "1")
    response = api.post("/admin/reload?wait=true", headers={"Authorization": f"Bearer {KEY}"})
    assert response.json()["version"] == 1
    # `curl -u` sends the key as Basic credentials: "missing API key" read as if none was sent.
    basic = api.post("/admin/reload", headers={"Authorization": "Basic YWRtaW46c2VjcmV0"})
    assert basic.status_code == 401 and basic.json()["message"].startswith("the Authorization header holds 'Basic' "
                                                                         "credentials: send the admin key as")
    bare = api.post("/admin/reload", headers={"Authorization": KEY})  # no scheme: the key is not echoed
    assert bare.status_code == 401 and "holds no 'Bearer' token" in bare.text and KEY not in bare.text
    spaced = api.post("/admin/reload", headers={"Authorization": "correct horse battery"})  # nor a word of one
    assert spaced.status_code == 401 and "no 'Bearer' token" in spaced.text and "correct" not in spaced.text


def test_a_threshold_edited_in_the_ui_serves_from_the_next_reload(api, telco_csv):
    """The version number did not change, so the reload kept the model it had, and its
    threshold, while replicas started later, batch scoring and rollout status used the tag."""
    client = MlflowClient()
    rows = customers(telco_csv, 200)
    trained = client.get_model_version("churn", "1").tags["decision_threshold"]
    before = api.post("/predict", json={"customers": rows}).json()["predictions"]
    assert any(p["will_churn"] for p in before)
    try:
        client.set_model_version_tag("churn", "1", "decision_threshold", "0.999")
        response = api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY})
        assert response.status_code == 200 and api.get("/model").json()["decision_threshold"] == 0.999
        after = api.post("/predict", json={"customers": rows}).json()["predictions"]
        assert not any(p["will_churn"] for p in after)
        assert [p["churn_probability"] for p in after] == [p["churn_probability"] for p in before]
        client.set_model_version_tag("churn", "1", "decision_threshold", "1.5")  # no customer would ever churn
        response = api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY})
        assert response.status_code == 409 and "decision_threshold='1.5' is not between 0 and 1" in response.text
        assert api.get("/model").json()["decision_threshold"] == 0.999 and api.get("/ready").status_code == 200
    finally:
        client.set_model_version_tag("churn", "1", "decision_threshold", trained)
    assert api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY}).status_code == 200
    assert api.get("/model").json()["decision_threshold"] == float(trained)


def test_admin_is_disabled_without_a_key(registry_uri, tmp_path):
    with TestClient(create_app(make_settings(registry_uri, tmp_path, admin_api_key=None))) as client:
        response = client.post("/admin/reload", headers={"X-API-Key": "anything"})
        assert response.status_code == 403 and "CHURN_ADMIN_API_KEY" in response.json()["message"]


def test_a_version_failing_verification_is_not_swapped_in(api, monkeypatch):
    client = MlflowClient()
    monkeypatch.setattr(loading, "PARITY_TOLERANCE", -1.0)  # nothing can pass
    client.set_registered_model_alias("churn", "Production", "2")
    try:
        response = api.post("/admin/reload?wait=true", headers={"X-API-Key": KEY})
        assert response.status_code == 409 and response.json()["state"] == "verification_failed"
        assert api.get("/ready").status_code == 200
        info = api.get("/model").json()
        assert info["version"] == 1
        assert info["last_load"]["state"] == "verification_failed"
        assert "not serving it" in info["last_load"]["reason"]
    finally:
        client.set_registered_model_alias("churn", "Production", "1")


def test_scored_rows_reach_the_inference_log(registry_uri, tmp_path, telco_csv):
    settings = make_settings(registry_uri, tmp_path)
    rows = customers(telco_csv, 25)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        probabilities = [
            p["churn_probability"] for p in client.post("/predict", json={"customers": rows}).json()["predictions"]
        ]
    # Leaving the client ran the shutdown, which flushes the log.
    engine = sa.create_engine(settings.inference_log_url)
    with engine.connect() as conn:
        logged = pd.read_sql("SELECT * FROM inference_log ORDER BY row_index", conn)
    assert len(logged) == 25 and logged.request_id.nunique() == 1
    assert list(logged.customer_id) == [r["customer_id"] for r in rows]
    assert np.allclose(logged.churn_probability, probabilities)
    assert (logged.model_version == 1).all() and list(logged.tenure) == [r["tenure"] for r in rows]
    sent = np.array([r["total_charges"] for r in rows], dtype=float)  # a blank one (None) is NaN both sides
    np.testing.assert_array_equal(logged.total_charges.to_numpy(dtype=float), sent)


def test_a_page_of_an_allowed_origin_may_send_the_key_and_read_the_request_id(registry_uri, tmp_path, telco_csv):
    """CORS is the API's alone (the Ingress leaves it): a preflight for the headers a page sends
    is allowed, and the page's script may read the X-Request-ID it would quote to support."""
    settings = make_settings(registry_uri, tmp_path, cors_origins=["https://app.example"])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        preflight = client.options("/predict/single", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key, x-request-id, traceparent"})  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert all(h in allowed for h in ("x-api-key", "x-request-id", "traceparent"))
        answer = client.post("/predict/single", json=customers(telco_csv, 1)[0],
                             headers={"Origin": "https://app.example", "X-Request-ID": "ticket-42"})  # fmt: skip
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "ticket-42"
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
        # By id from the allowed page's script: past the cross-site check (404: no store here).
        fetch = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
        assert client.get("/predict/7590-VHVEG", headers={**fetch, "Origin": "https://app.example"}).status_code == 404
        assert client.get("/predict/7590-VHVEG", headers={**fetch, "Origin": "https://evil.example"}).status_code == 403
        other = client.options("/predict/single", headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("path", ["/predict", "/predict/single"])
@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])  # fmt: skip
def test_a_body_not_declared_json_is_refused_with_415(registry_uri, tmp_path, telco_csv, path, content_type):
    """A browser posts text/plain cross-site without a CORS preflight: it must not be scored or logged."""
    settings = make_settings(registry_uri, tmp_path)
    one = customers(telco_csv, 1)[0]
    body = json.dumps({"customers": [one]} if path == "/predict" else one).encode()
    headers = {"content-type": content_type} if content_type else {}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        refused = client.post(path, content=body, headers=headers)
        assert refused.status_code == 415, refused.text
        assert "application/json" in refused.json()["message"]
        for accepted in ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"):
            assert client.post(path, content=body, headers={"content-type": accepted}).status_code == 200
        # Two content types: the first is what FastAPI reads (it then left the body unparsed: a 500)
        twice = client.post(path, content=body, headers=[("content-type", "text/plain"),
                                                         ("content-type", "application/json")])  # fmt: skip
        assert twice.status_code == 415, twice.text
        assert client.post("/admin/reload", content=b"x", headers={"content-type": "text/plain",
                                                                   "X-API-Key": KEY}).status_code == 415  # fmt: skip
        assert client.post("/admin/reload", headers={"X-API-Key": KEY}).status_code == 202  # no body, no type: fine
        # No body, whatever it declares (`curl -d ''` declares a form): without the key, the 401 that says so
        formless = client.post("/admin/reload", content=b"", headers={"content-type": content_type or "text/plain"})
        assert formless.status_code == 401, formless.text
        text = client.get("/metrics").text
        # Refused before routing, counted under the route all the same (the route's panels show them).
        assert f'churn_api_requests_total{{endpoint="{path}",method="POST",status="415"}} 2.0' in text
        assert 'churn_api_requests_total{endpoint="/admin/reload",method="POST",status="415"} 1.0' in text
    with sa.create_engine(settings.inference_log_url).connect() as conn:
        logged = conn.execute(sa.text("SELECT count(*) FROM inference_log")).scalar()
    assert logged == 3  # only the three accepted posts were scored


def test_predictions_by_id_from_an_embedded_feature_store(registry_uri, tmp_path, telco_csv):
    from churn_platform import feature_store

    settings = make_settings(registry_uri, tmp_path)
    with TestClient(create_app(settings)) as client:  # no store set up: a clear 404, the rest unaffected
        ready = wait_ready(client)
        assert ready["feature_store"]["state"] == "not configured"
        # Not a 503: nothing is down, and a client asking by id paged on-call (ChurnApi5xxRate).
        for response in (client.post("/predict/by-id", json={"customer_ids": ["7590-VHVEG"]}),
                         client.get("/predict/7590-VHVEG")):  # fmt: skip
            assert response.status_code == 404 and "features apply" in response.json()["message"], response.text
            assert "Retry-After" not in response.headers

        # Set up under the running API (as `make demo` does): the next request opens it. It was
        # "no feature store ... run features apply" (404) for 10 s more, and the demo failed.
        frame = data.load(telco_csv).head(40).drop(columns=["churn"])
        frame.loc[5, "customer_id"] = "CRM/5"  # a slash: the store takes it, so GET /predict/{id} must too
        frame.assign(snapshot_time="2026-05-01").to_csv(tmp_path / "snapshot.csv", index=False)
        feature_store.apply(settings)
        feature_store.ingest(settings, str(tmp_path / "snapshot.csv"))
        feature_store.materialize(settings)
        ids = frame["customer_id"].tolist()
        deadline = time.monotonic() + 60
        while (answer := client.get(f"/predict/{ids[0]}")).status_code != 200:
            assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
            time.sleep(0.2)
    with TestClient(create_app(settings)) as client:
        wait_store_ready(client)
        direct = client.post("/predict", json={"customers": data.to_records(frame)}).json()["predictions"]
        body = client.post("/predict/by-id", json={"customer_ids": [ids[0], "nobody", *ids[1:]]},
                           headers={"X-Request-ID": "by-id-places"}).json()  # fmt: skip
        # Each says when its features were snapshotted: a customer dropped from the export was
        # scored on its last snapshot for good, with no sign of its age.
        assert {p.pop(FEATURES_AS_OF) for p in body["predictions"]} == {"2026-05-01T00:00:00Z"}
        assert body["predictions"] == direct
        assert body["errors"] == [{"customer_id": "nobody", "message": ANY_UNKNOWN}]
        by_path = client.get(f"/predict/{ids[3]}").json()
        assert by_path.pop(FEATURES_AS_OF) == "2026-05-01T00:00:00Z"
        assert by_path == client.post("/predict/single", json=data.to_records(frame)[3]).json()
        explained = client.get(f"/predict/{ids[3]}?explain=true&top_k=3").json()
        assert len(explained["explanation"]["contributions"]) == 3
        # The ids the store was given, as the store reads them: padding stripped (as at ingest), a slash kept.
        padded = client.post("/predict/by-id", json={"customer_ids": [f" {ids[3]}\u00a0"]}).json()
        assert padded["errors"] == [] and padded["predictions"][0]["customer_id"] == ids[3]
        assert client.get(f"/predict/%20{ids[3]}").json() == client.get(f"/predict/{ids[3]}").json()
        for path in ("/predict/CRM/5", "/predict/CRM%2F5"):
            assert client.get(path).json()["customer_id"] == "CRM/5"
        assert client.get("/predict/%20").status_code == 422
        # Starlette's `:path` stopped at a newline: a bare 404 "Not Found", not the id's own 422.
        newline = client.get("/predict/a%0Ab")
        assert newline.status_code == 422 and "customer_id: contains a control character" in newline.text
        # A page of another site made its visitors' browsers score and log customers (an <img>).
        scored = _counter(client, "churn_rows_scored_total")
        for fetch in ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
                      {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Origin": "https://evil.example"}):
            refused = client.get(f"/predict/{ids[3]}", headers=fetch)
            assert refused.status_code == 403 and "CHURN_CORS_ORIGINS" in refused.json()["message"], refused.text
        assert _counter(client, "churn_rows_scored_total") == scored  # nothing scored, nothing logged
        for site in ("same-origin", "same-site", "none"):  # the API's own docs page, a typed URL
            assert client.get(f"/predict/{ids[3]}", headers={"Sec-Fetch-Site": site}).status_code == 200
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        assert client.get(f"/predict/{ids[3]}", headers={**link, "Sec-Fetch-User": "?1"}).status_code == 200  # clicked
        assert client.get(f"/predict/{ids[3]}", headers=link).status_code == 403  # a page's script sent it there
        # The route's template as the dashboards and alerts know it, without the `:path` converter.
        assert 'endpoint="/predict/{customer_id}",method="GET",status="200"' in client.get("/metrics").text
        missing = client.get("/predict/nobody")
        assert missing.status_code == 404 and "'nobody'" in missing.json()["message"]
        for payload, status, words in (
            ({"customer_ids": []}, 422, "customer_ids"),
            ({"customer_ids": [""]}, 422, "customer_ids.0"),
            ({"customer_ids": ["x" * 129]}, 422, "customer_ids.0"),
            ({"customer_ids": [ids[0], "a\x00b"]}, 422, "customer_ids.1: contains a control character"),
            ({"ids": ids[:1]}, 422, "customer_ids"),
            ({"customer_ids": ids[:1] * 1001}, 413, "limit is 1000"),
            # Counted before the ids are validated: a million bad ones held the event loop for seconds, then 422
            ({"customer_ids": [1] * 200_000}, 413, "200000 customer ids in one request"),
            # Unknown fields too: pydantic named each of 360,000 (seconds of the event loop)
            ({"customer_ids": ids[:1], **{str(i): 0 for i in range(50_000)}}, 422,
             "(and 49995 more) (unknown fields only: the others were not checked)"),
        ):
            response = client.post("/predict/by-id", json=payload)
            assert (response.status_code, words in response.text) == (status, True), response.text
        unknown = {"customer_ids": [f"nobody-{i}" for i in range(1001)]}  # none scored: no later check
        for content, status in ((b"\xef\xbb\xbf" + json.dumps(unknown).encode(), 413),  # a BOM, or UTF-16,
                                (json.dumps(unknown).encode("utf-16"), 413),  # which FastAPI reads: counted too
                                (b"", 422)):  # fmt: skip
            sent = client.post("/predict/by-id", content=content, headers={"content-type": "application/json"})
            assert sent.status_code == status, sent.text[:300]
            assert status != 413 or "1001 customer ids in one request" in sent.text
        half_a_pair = client.post("/predict/by-id", content='{"customer_ids": ["a", "\\udcff"]}',
                                  headers={"content-type": "application/json"})  # fmt: skip
        assert half_a_pair.status_code == 422 and half_a_pair.json()["message"].startswith("customer_ids.1: ")
        assert client.get(f"/predict/{'x' * 129}").status_code == 422
        refused = client.get("/predict/a%00b")
        assert refused.status_code == 422 and "customer_id: contains a control character" in refused.json()["message"]

        # The store deleted and built again under the running API: Feast kept its connection to the
        # deleted file, and the API went on serving customers the new store does not hold.
        shutil.rmtree(settings.feature_store_dir)
        rebuilt = frame.head(3).assign(tenure=frame.tenure.head(3) + 1)
        rebuilt.assign(snapshot_time="2026-06-01").to_csv(tmp_path / "rebuilt.csv", index=False)
        feature_store.apply(settings)
        feature_store.ingest(settings, str(tmp_path / "rebuilt.csv"))
        feature_store.materialize(settings)
        deadline = time.monotonic() + 60
        while (answer := client.get(f"/predict/{ids[10]}")).status_code != 404:  # 503 while it reopens
            assert answer.status_code in (200, 503) and time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        again = client.post("/predict/single", json=data.to_records(rebuilt)[0]).json()
        assert client.get(f"/predict/{ids[0]}").json() == {**again, FEATURES_AS_OF: "2026-06-01T00:00:00Z"}
        # Deleted and not built again (decommissioned): the 404 of no store set up, as documented;
        # it was a 503 "replaced; reopening" for good, which pages (ChurnApi5xxRate).
        shutil.rmtree(settings.feature_store_dir)
        for _ in range(3):
            gone = client.get(f"/predict/{ids[0]}")
            assert gone.status_code == 404 and gone.json()["message"].startswith("no feature store: "), gone.text
        assert client.get("/ready").json()["feature_store"]["state"] == "not configured"
        feature_store.apply(settings)  # as it was, for what follows
        feature_store.ingest(settings, str(tmp_path / "rebuilt.csv"))
        feature_store.materialize(settings)
    # CHURN_FEATURES_MAX_AGE_DAYS: a snapshot older is that id's error, not a score.
    with TestClient(create_app(settings.model_copy(update={"features_max_age_days": 30}))) as client:
        wait_store_ready(client)
        stale = "its latest snapshot is from 2026-06-01T00:00:00Z, older than CHURN_FEATURES_MAX_AGE_DAYS (30 days)"
        body = client.post("/predict/by-id", json={"customer_ids": ids[:2]}).json()
        assert body["predictions"] == [] and [e["message"].startswith(stale) for e in body["errors"]] == [True, True]
        missing = client.get(f"/predict/{ids[0]}")
        assert missing.status_code == 404 and stale in missing.json()["message"]
    # A value the schema refuses, stored by an earlier release (a category since dropped): that
    # id's error, as /predict would refuse it, not a score that reads it as no category at all.
    store = feature_store.open_store(settings)
    bad = rebuilt.iloc[[1]].assign(internet_service="Fiber", snapshot_time=pd.Timestamp("2026-06-02", tz="UTC"))
    store.write_to_online_store(feature_store.FEATURE_VIEW, df=bad)
    with TestClient(create_app(settings)) as client:
        wait_store_ready(client)
        body = client.post("/predict/by-id", json={"customer_ids": ids[:2]}).json()
        assert [p["customer_id"] for p in body["predictions"]] == [ids[0]]
        refused = "the online store holds a value the schema refuses for it (Invalid enum value 'Fiber'"
        assert body["errors"][0]["customer_id"] == ids[1] and body["errors"][0]["message"].startswith(refused)
        got = client.get(f"/predict/{ids[1]}")
        assert got.status_code == 404 and "internet_service" in got.json()["message"]
    # Each row under its place among the ids sent (docs/api.md), "nobody" at 1 included: the
    # rows were numbered among the ids found.
    with sa.create_engine(settings.inference_log_url).connect() as conn:
        logged = conn.execute(sa.text("SELECT customer_id, row_index FROM inference_log WHERE request_id LIKE "
                                      "'by-id-places%' ORDER BY row_index")).all()  # fmt: skip
    assert [tuple(r) for r in logged] == [(ids[0], 0), *((i, n + 2) for n, i in enumerate(ids[1:]))]


ANY_UNKNOWN = "unknown customer id: the online store holds no features for it"


def wait_store_ready(client: TestClient) -> None:
    """The model loaded, then the feature store opened (in the background)."""
    wait_ready(client)
    deadline = time.monotonic() + 60
    while client.get("/ready").json()["feature_store"]["state"] != "ok":
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.2)


def _counter(client: TestClient, name: str) -> float:
    return float(re.search(rf"^{name} ([\d.e+]+)$", client.get("/metrics").text, re.M).group(1))


def test_a_misspelt_query_parameter_is_a_422_naming_it_not_ignored(api):
    """?explian=true answered 200 without explanations; ?stict=false wrote nothing of a batch
    the sender meant to be written in part."""
    one = customers_stub()
    response = api.post("/predict/single?explian=true&top_k=3", json=one)
    assert response.status_code == 422, response.text
    assert response.json()["message"] == "query.explian: Unknown query parameter; this route takes explain, top_k"
    assert api.post("/predict/single?explain=true&top_k=3", json=one).status_code == 200
    assert api.get("/predict/single?explain=true").status_code == 405  # a wrong method first
    typo = api.post("/outcomes?stict=false", json={"outcomes": [{"customer_id": "c1", "churned": "x"}]},
                    headers={"X-API-Key": KEY})  # fmt: skip
    assert typo.status_code == 422 and "query.stict: Unknown query parameter; this route takes strict" in typo.text
    assert api.post("/outcomes?stict=false", json={}).status_code == 401  # the key first, as before
    # The last one won: no explanation, and a strict upload for `?strict=false&strict=true`.
    twice = api.post("/predict/single?explain=true&explain=false", json=one)
    assert twice.status_code == 422 and twice.json()["message"] == "query.explain: given 2 times; give it once"
    strict = api.post("/outcomes?strict=false&strict=true", json={"outcomes": [{"customer_id": "c1", "churned": "x"}]},
                      headers={"X-API-Key": KEY})  # fmt: skip
    assert strict.status_code == 422 and "query.strict: given 2 times" in strict.text
    # /model answered for the version it serves, whatever version was asked for.
    asked = api.get("/model?version=2")
    assert asked.status_code == 422 and asked.json()["message"] == (
        "query.version: Unknown query parameter; this route takes none")


def test_a_utf16_body_is_scored_as_the_other_routes_read_it(api):
    """PowerShell 5 writes UTF-16: /outcomes and /predict/by-id took such a body, /predict
    answered 422 "expected value at line 1 column 1"."""
    one, declared = customers_stub(), {"content-type": "application/json"}
    expected = api.post("/predict/single", json=one).json()["churn_probability"]
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        for path, body in (("/predict/single", one), ("/predict", {"customers": [one]})):
            sent = api.post(path, content=json.dumps(body).encode(encoding), headers=declared)
            assert sent.status_code == 200, (encoding, sent.text)
            assert sent.json().get("predictions", [sent.json()])[0]["churn_probability"] == expected
    broken = api.post("/predict/single", content=b"\xff\xfe\x00\xd8{\x00", headers=declared)
    assert broken.status_code == 422 and "not UTF-16-LE (illegal UTF-16 surrogate at byte 2)" in broken.text


def test_outcomes_without_the_admin_key_are_refused_before_their_body_is_read(api):
    """FastAPI parsed a declared body before the key was checked: malformed JSON without a key
    was a 422 (telling a stranger about the body, not the key), and anyone could make the API
    parse 4 MB. Now the key comes first, whatever the body; with it, the body's problems as before."""
    too_many = json.dumps({"outcomes": [{}] * 10_001})
    bodies = {"not JSON": b'{"outcomes": [', "not UTF-8": b'{"outcomes": "\xe9"}', "too many": too_many.encode(),
              "empty": b"", "invalid": b'{"outcomes": [{"customer_id": 5}]}', "a list": b"[]"}  # fmt: skip
    for name, body in bodies.items():
        for headers, status in (({}, 401), ({"X-API-Key": "wrong"}, 403)):
            response = api.post("/outcomes", content=body, headers={"content-type": "application/json", **headers})
            assert response.status_code == status, (name, response.text)
    expected = {"not JSON": (422, "body: Invalid JSON: Expecting value at character 14"),
                "not UTF-8": (422, "body: Invalid JSON: not UTF-8 (invalid continuation byte at byte 14)"),
                "too many": (413, "10,001 outcomes in one request; the limit is 10,000"),
                "empty": (422, "body: Field required"),
                "invalid": (422, "outcomes.0.customer_id: Input should be a valid string"),
                "a list": (422, "body: Input should be a valid dictionary or object to extract fields from"),
                }  # fmt: skip
    for name, body in bodies.items():
        response = api.post("/outcomes", content=body, headers={"content-type": "application/json", "X-API-Key": KEY})
        assert (response.status_code, response.json()["message"]) == expected[name], name
    invalid = api.post("/outcomes", content=bodies["invalid"], headers={"content-type": "application/json",
                                                                      "X-API-Key": KEY}).json()  # fmt: skip
    assert invalid["detail"] == [{"loc": ["body", "outcomes", 0, "customer_id"], "type": "string_type",
                                  "msg": "Input should be a valid string"}]  # fmt: skip


def test_the_probes_answer_while_every_worker_thread_is_busy(api):
    """Liveness and readiness were plain def routes: they waited for a thread of the pool that
    blocking routes share (POST /outcomes on a database that is gone, a reload with ?wait=true),
    and the kubelet restarted a pod whose predictions still worked. /model and /metrics too:
    Prometheus' scrape timed out (up == 0) just during a registry incident."""
    import threading

    import anyio.to_thread

    api.portal.call(lambda: setattr(anyio.to_thread.current_default_thread_limiter(), "total_tokens", 1))
    answered: dict[str, int] = {}
    release = threading.Event()
    busy = api.portal.start_task_soon(anyio.to_thread.run_sync, release.wait)  # the pool's one thread
    try:
        time.sleep(0.5)
        probes = threading.Thread(target=lambda: answered.update({p: api.get(p).status_code for p in
                                                                 ("/health", "/ready", "/model", "/metrics")}),
                                  daemon=True)  # fmt: skip
        probes.start()
        probes.join(10)
        assert answered == {"/health": 200, "/ready": 200, "/model": 200, "/metrics": 200}
    finally:
        release.set()
    busy.result(10)
    # An uptime checker's HEAD is no 405 (uvicorn sends no body); not in the OpenAPI document,
    # where it repeated GET's operation id (clients generated from it collide).
    for path in ("/", "/health", "/ready", "/model"):
        head = api.head(path)
        assert (head.status_code, head.headers["content-type"]) == (200, "application/json"), path
    paths = api.get("/openapi.json").json()["paths"].values()
    operations = [operation["operationId"] for path in paths for operation in path.values()]
    assert len(operations) == len(set(operations))


def test_a_wrong_method_is_a_405_that_names_the_allowed_ones(api):
    response = api.put("/predict", json={})
    assert response.status_code == 405 and response.json()["message"] == "Method Not Allowed"
    assert response.headers["allow"] == "POST"  # HTTP requires it on a 405
    for path in ("/predict/single", "/predict/by-id"):  # not an unknown customer called 'single'
        response = api.get(path)
        assert (response.status_code, response.headers.get("allow")) == (405, "POST"), response.text


def test_a_post_with_a_trailing_slash_is_redirected_as_fastapi_redirects_any_other(api, telco_csv):
    """POST /predict/ matched GET /predict/{customer_id} with an empty id: 405, Allow: GET, which
    told the caller to GET what they meant to POST."""
    one = customers(telco_csv, 1)
    for path, body in (("/predict/", {"customers": one}), ("/predict/single/", one[0])):
        moved = api.post(f"{path}?explain=true", json=body, follow_redirects=False)
        assert moved.status_code == 307, moved.text
        assert moved.headers["location"] == f"http://testserver{path.rstrip('/')}?explain=true"
        followed = api.post(path, json=body)  # 307: the method and the body go again
        assert followed.status_code == 200, followed.text
    assert api.post("/predict/by-id/", json={"customer_ids": ["x"]}, follow_redirects=False).status_code == 307
    assert api.post("/predict/nobody", json={}).status_code == 405  # a customer's path takes GET only


def test_the_openapi_document_says_how_admin_routes_authenticate_and_answer(api):
    schema = api.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())
    reload = schema["paths"]["/admin/reload"]["post"]
    assert {"200", "202", "401", "403", "409"} <= set(reload["responses"]) and len(reload["security"]) == 2
    # Its examples show states it answers with ("failed" was none of them), for clients written from them.
    from typing import get_args

    from serving.holder import State

    examples = [reload["responses"][c]["content"]["application/json"]["example"] for c in ("200", "409")]
    assert [e["state"] for e in examples] == ["ready", "verification_failed"]
    assert {e["state"] for e in examples} <= set(get_args(State)) and all(e["message"] for e in examples)
    outcomes = schema["paths"]["/outcomes"]["post"]
    assert {"401", "403"} <= set(outcomes["responses"])
    # Its body is read after the key, so declared rather than inferred: still in the document.
    body = outcomes["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    item = schema["components"]["schemas"][body]["properties"]["outcomes"]["items"]["$ref"].rsplit("/", 1)[-1]
    assert set(schema["components"]["schemas"][item]["properties"]) == {"customer_id", "churned", "observed_at"}
    assert "security" not in schema["paths"]["/predict"]["post"]  # predictions need no key


def test_a_threshold_tag_that_is_not_a_probability_stops_the_version_from_serving(registry_uri):
    """Edited in the MLflow UI to 1.5, no customer would ever be flagged: the load fails instead,
    as a failed verification does, and the version serving keeps serving."""
    client = MlflowClient(registry_uri, registry_uri)
    before = client.get_model_version("churn", "2").tags["decision_threshold"]
    try:
        for bad in ("1.5", "-0.1", "half", "nan"):
            client.set_model_version_tag("churn", "2", "decision_threshold", bad)
            with pytest.raises(loading.VerificationFailed, match=f"decision_threshold='{bad}' is not between 0 and 1"):
                loading.load(client, "churn", 2, default_threshold=0.5, sample=0)
    finally:
        client.set_model_version_tag("churn", "2", "decision_threshold", before)


def test_a_client_gone_before_its_body_arrived_is_a_499_not_a_server_error(api, caplog):
    """It once counted as a 500 (feeding the 5xx alert) with a traceback in the log, or as a 400."""
    for path in ("/predict", "/predict/by-id", "/outcomes"):
        messages = iter([{"type": "http.request", "body": b'{"customers": [{"cust', "more_body": True},
                         {"type": "http.disconnect"}])  # fmt: skip

        async def receive(messages=messages):
            return next(messages)

        async def send(message):
            pass

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"host", b"testserver"), (b"x-api-key",
                             KEY.encode())],
                 "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}  # fmt: skip
        api.portal.call(api.app, scope, receive, send)
    counted = [line for line in api.get("/metrics").text.splitlines() if line.startswith("churn_api_requests_total{")]
    for path in ("/predict", "/predict/by-id", "/outcomes"):
        assert [line for line in counted if f'endpoint="{path}"' in line] == [
            f'churn_api_requests_total{{endpoint="{path}",method="POST",status="499"}} 1.0'
        ], counted
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text


def test_a_compressed_body_is_a_415_that_names_the_encoding(api, telco_csv):
    """A gzip body was read as JSON and called invalid at its first byte (422), naming nothing useful."""
    import gzip

    body = json.dumps({"customers": customers(telco_csv, 1)}).encode()
    zipped = {"content-type": "application/json", "content-encoding": "gzip"}
    response = api.post("/predict", content=gzip.compress(body), headers=zipped)
    assert response.status_code == 415
    assert response.json()["message"] == "unsupported content encoding 'gzip': send the body uncompressed"
    same = {"content-type": "application/json", "content-encoding": "identity"}
    assert api.post("/predict", content=body, headers=same).status_code == 200
    # Two headers: the last (identity) was the one read, and the gzip body a 422 "invalid JSON".
    twice = [("content-type", "application/json"), ("content-encoding", "gzip"), ("content-encoding", "identity")]
    response = api.post("/predict", content=gzip.compress(body), headers=httpx.Headers(twice))
    assert response.status_code == 415 and "unsupported content encoding 'gzip'" in response.text
    # A gzip transfer coding reaches the app still compressed (uvicorn undoes only chunked): 422 "invalid JSON".
    moved = {"content-type": "application/json", "transfer-encoding": "gzip, chunked"}
    response = api.post("/predict", content=gzip.compress(body), headers=moved)
    assert response.status_code == 415 and "unsupported content encoding 'gzip'" in response.text
    chunked = {"content-type": "application/json", "transfer-encoding": "chunked"}
    assert api.post("/predict", content=body, headers=chunked).status_code == 200


def test_metrics_add_up_over_several_workers(registry_uri, tmp_path, telco_csv):
    """`serve --workers 2`: each worker kept its own counters and /metrics answered from
    whichever took the connection, so counters jumped back and forth ([55, 45, 55, ...]):
    Prometheus saw resets, and rate() and the alerts read nonsense."""
    import glob

    from churn_platform.processes import free_port, start, wait_http, wait_ready
    from tests.services import BIN

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry_uri, "CHURN_INFERENCE_LOG_URL": f"sqlite:///{tmp_path}/log.db",
           "CHURN_INFERENCE_LOG_SPOOL_DIR": str(tmp_path / "spool"), "TMPDIR": str(tmp_path)}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [str(BIN / "churn-platform"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    api = start("api-workers", cmd, tmp_path, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(api, f"{url}/health", timeout=60)
        wait_ready(url, timeout=120)  # one worker ready
        deadline = time.monotonic() + 120  # every worker: the smallest of their ready gauges
        while not re.search(r"^churn_model_ready 1\.0$", httpx.get(f"{url}/metrics").text, re.M):
            assert time.monotonic() < deadline, "both workers never became ready"
            time.sleep(0.5)
        one = customers(telco_csv, 1)[0]
        for _ in range(100):  # a connection each: both workers answer some
            assert httpx.post(f"{url}/predict/single", json=one).status_code == 200
        scrapes = [httpx.get(f"{url}/metrics").text for _ in range(12)]
        scored = {re.search(r"^churn_rows_scored_total (\S+)$", text, re.M).group(1) for text in scrapes}
        assert scored == {"100.0"}, scored
        text = scrapes[-1]
        assert re.search(r"^churn_model_ready 1\.0$", text, re.M), text
        assert 'churn_model_info{model_name="churn",scorer="fast",version="1"} 1.0' in text
        assert len(glob.glob(f"{tmp_path}/churn-api-metrics-*")) == 1  # the workers' folder, made by serve
        assert len(glob.glob(f"{tmp_path}/churn-api-metrics-*/counter_*.db")) == 2  # one file per worker
    finally:
        api.stop()
    assert glob.glob(f"{tmp_path}/churn-api-metrics-*") == []  # and removed when it stops


def test_a_worker_killed_without_shutting_down_does_not_hold_ready_at_0(tmp_path):
    """uvicorn replaces a worker that died (SIGKILL, out of memory while loading): the dead
    one's 'ready 0' stayed in the folder, and the workers' minimum paged ChurnApiNotReady
    while every live worker served."""
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    died = "from serving.metrics import Metrics; import os; Metrics().model_ready.set(0); os._exit(9)"
    subprocess.run([sys.executable, "-c", died], env=env, check=False, timeout=60)
    assert list(tmp_path.glob("gauge_livemin_*.db"))  # what it left behind
    serving = "from serving.metrics import Metrics; m = Metrics(); m.model_ready.set(1); print(m.render().decode())"
    text = subprocess.run([sys.executable, "-c", serving], env=env, capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^churn_model_ready 1\.0$", text, re.M), text
