"""Schemathesis against the API's own OpenAPI schema: no 5xx, every 4xx explains itself."""

from __future__ import annotations

import json
import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from churn_platform import data, feature_store
from serving.app import create_app
from tests.unit.test_api import KEY, make_settings, wait_ready


@pytest.fixture(scope="module")
def served(registry_uri, tmp_path_factory, telco_csv):
    folder = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(registry_uri, folder)
    # An embedded feature store with a few customers, so the by-id routes answer as in use.
    customers = data.load(telco_csv).head(20).drop(columns=["churn"]).assign(snapshot_time="2026-05-01")
    customers.to_csv(folder / "snapshot.csv", index=False)
    feature_store.apply(settings)
    feature_store.ingest(settings, str(folder / "snapshot.csv"))
    feature_store.materialize(settings)
    app = create_app(settings)
    with TestClient(app) as client:  # runs the lifespan: model loaded, log writer started
        wait_ready(client)
        deadline = time.monotonic() + 60
        while client.get("/ready").json()["feature_store"]["state"] != "ok":
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        yield app, client


def explained(response) -> str | None:
    """A 4xx must carry a JSON body with a message a person can read."""
    if 400 <= response.status_code < 500:
        try:
            body = json.loads(response.content)
        except ValueError:
            return f"{response.status_code} without a JSON body"
        if not isinstance(body, dict) or not str(body.get("message", "")).strip():
            return f"{response.status_code} body without a message: {body!r}"[:300]
    return None


def test_no_server_errors_and_every_4xx_explained(served):
    app, _ = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/predict/single", "/outcomes", "/admin/reload", "/model"}
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for operation, mode in ((op, mode) for op in operations for mode in modes):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=30, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def call(case):
            response = case.call(headers={"X-API-Key": KEY})
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            problem = explained(response)
            assert problem is None, (case.method, case.path, problem)

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break in a request without inputs


def test_the_openapi_examples_are_valid_requests(served):
    _, client = served
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    single = schemas["Customer"]["examples"][0]
    batch = schemas["BatchRequest"]["examples"][0]
    assert client.post("/predict/single", json=single).status_code == 200
    response = client.post("/predict", json=batch)
    assert response.status_code == 200 and len(response.json()["predictions"]) == len(batch["customers"])
