"""Explanations through the API (FastAPI's TestClient on real registries): additivity on real
customers for both model types, what one feature's change moves, and every parameter error."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn_platform import data
from churn_platform.schema import CATEGORICAL_FEATURES, FEATURE_NAMES, NUMERIC_FEATURES
from churn_platform.training import TrainConfig, signature, train
from serving.app import create_app
from tests.conftest import damage_first_page, mlflow_uris_restored
from tests.unit.conftest import embedded_registry
from tests.unit.test_api import customers_stub, make_settings, wait_ready


@pytest.fixture(scope="module")
def tree_registry(tmp_path_factory, telco_csv):
    """A registry whose Production is gradient boosting trained on the real customers."""
    with embedded_registry(tmp_path_factory.mktemp("tree-registry")) as (uri, settings):
        result = train(
            TrainConfig(data=str(telco_csv), model_name="churn", model_type="hist_gradient_boosting"), settings
        )
        MlflowClient(uri, uri).set_registered_model_alias("churn", "Production", str(result.version))
    return uri


@pytest.fixture(params=["logistic", "hist_gradient_boosting"])
def served(request, registry_uri, tree_registry, tmp_path):
    uri = registry_uri if request.param == "logistic" else tree_registry
    with TestClient(create_app(make_settings(uri, tmp_path))) as client:
        wait_ready(client)
        yield request.param, client


@pytest.fixture
def api(registry_uri, tmp_path):
    """The logistic Production (v1 of the session registry)."""
    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as client:
        wait_ready(client)
        yield client


def real_customers(telco_csv, n: int, skip: int = 0) -> list[dict]:
    frame = data.load(telco_csv).iloc[skip : skip + n]
    return data.to_records(frame.drop(columns=["churn"]))


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def test_explanations_add_up_to_the_score_on_1000_real_customers(served, telco_csv):
    kind, api = served
    rows = real_customers(telco_csv, 1000)
    plain = api.post("/predict", json={"customers": rows})
    response = api.post("/predict?explain=true&top_k=19", json={"customers": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    worst = 0.0
    for row, prediction, without in zip(rows, predictions, plain.json()["predictions"], strict=True):
        assert prediction["churn_probability"] == without["churn_probability"]  # explaining changes no score
        explanation = prediction["explanation"]
        contributions = explanation["contributions"]
        assert sorted(c["feature"] for c in contributions) == sorted(FEATURE_NAMES)
        sizes = [abs(c["contribution"]) for c in contributions]
        assert sizes == sorted(sizes, reverse=True)
        assert all(c["value"] == row[c["feature"]] for c in contributions)
        total = explanation["base"] + sum(c["contribution"] for c in contributions)
        worst = max(worst, abs(total - logit(prediction["churn_probability"])))
    assert worst <= 1e-6, f"{kind}: additivity off by {worst:.3g}"
    # The explanations say something: the largest contribution is not the same feature for everyone.
    assert len({p["explanation"]["contributions"][0]["feature"] for p in predictions}) > 1


def test_single_and_batch_give_the_same_explanation(served, telco_csv):
    _, api = served
    rows = real_customers(telco_csv, 200, skip=1000)  # a batch past the tree walk's small-input path
    batch = api.post("/predict?explain=true&top_k=19", json={"customers": rows}).json()["predictions"]
    for row, in_batch in zip(rows[:5], batch[:5], strict=True):
        single = api.post("/predict/single?explain=true&top_k=19", json=row).json()
        assert single["churn_probability"] == pytest.approx(in_batch["churn_probability"], abs=1e-12)
        assert single["explanation"]["base"] == in_batch["explanation"]["base"]
        got = {c["feature"]: c["contribution"] for c in single["explanation"]["contributions"]}
        expected = {c["feature"]: c["contribution"] for c in in_batch["explanation"]["contributions"]}
        assert got == pytest.approx(expected, abs=1e-9)


def test_without_explain_the_response_is_unchanged_top_k_alone_is_refused_and_trims_the_list(api, telco_csv):
    row = real_customers(telco_csv, 1)[0]
    plain = api.post("/predict/single", json=row).json()
    assert set(plain) == {"customer_id", "churn_probability", "will_churn", "risk", "model_version"}
    # top_k alone was ignored, a 200 without what was asked for: the CLI refuses --top-k alone too.
    for query in ("top_k=3", "top_k=3&explain=false"):
        alone = api.post(f"/predict/single?{query}", json=row)
        assert alone.status_code == 422 and "top_k goes with explain=true" in alone.json()["message"], alone.text
        assert alone.json()["detail"][0]["loc"] == ["query", "top_k"]
    default = api.post("/predict/single?explain=true", json=row).json()
    assert {k: v for k, v in default.items() if k != "explanation"} == plain
    assert len(default["explanation"]["contributions"]) == 5
    one = api.post("/predict/single?explain=true&top_k=1", json=row).json()["explanation"]["contributions"]
    assert one == default["explanation"]["contributions"][:1]


def test_for_the_linear_model_one_changed_feature_changes_only_its_contribution(api, telco_csv):
    row = real_customers(telco_csv, 1, skip=7)[0]
    changes = {
        "contract": "Two year" if row["contract"] != "Two year" else "Month-to-month",
        "tenure": row["tenure"] + 24,
        "monthly_charges": row["monthly_charges"] + 30.0,
        "payment_method": "Mailed check" if row["payment_method"] != "Mailed check" else "Electronic check",
    }

    def contributions(customer: dict) -> dict[str, float]:
        body = api.post("/predict/single?explain=true&top_k=19", json=customer).json()
        return {c["feature"]: c["contribution"] for c in body["explanation"]["contributions"]}

    before = contributions(row)
    for feature, value in changes.items():
        after = contributions(row | {feature: value})
        assert after[feature] != pytest.approx(before[feature], abs=1e-6), feature
        others = {k: v for k, v in after.items() if k != feature}
        assert others == pytest.approx({k: v for k, v in before.items() if k != feature}, abs=1e-12), feature


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("explain=true&top_k=0", "query.top_k: Input should be greater than or equal to 1"),
        ("explain=true&top_k=20", "query.top_k: Input should be less than or equal to 19"),
        ("explain=true&top_k=five", "query.top_k: Input should be a valid integer"),
        ("explain=maybe", "query.explain: Input should be a valid boolean"),
    ],
)
def test_bad_explanation_parameters_get_422_naming_them(api, telco_csv, query, words):
    row = real_customers(telco_csv, 1)[0]
    for path, body in (("/predict/single", row), ("/predict", {"customers": [row]})):
        response = api.post(f"{path}?{query}", json=body)
        assert response.status_code == 422, response.text
        assert words in response.json()["message"]


def test_model_says_how_it_explains_and_serves_the_global_importance(api):
    explanations = api.get("/model").json()["explanations"]
    assert explanations["available"] is True and explanations["method"] == "linear"
    assert explanations["verified"]["rows"] >= 200 and explanations["verified"]["max_additivity_error"] <= 1e-6
    importance = explanations["global_importance"]
    assert sorted(i["feature"] for i in importance) == sorted(FEATURE_NAMES)
    values = [i["mean_abs_contribution"] for i in importance]
    assert values == sorted(values, reverse=True) and values[0] > 0


def test_openapi_documents_the_parameters_and_the_explanation(api):
    schema = api.get("/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/predict"]["post"]["parameters"]}
    assert (
        parameters["top_k"]["schema"]["maximum"] == len(FEATURE_NAMES) and parameters["top_k"]["schema"]["minimum"] == 1
    )
    assert parameters["explain"]["schema"]["type"] == "boolean"
    components = schema["components"]["schemas"]
    assert "explanation" in components["Prediction"]["properties"]
    example = components["Explanation"]["examples"][0]
    assert example["contributions"][0]["feature"] in FEATURE_NAMES
    assert "409" in schema["paths"]["/predict/single"]["post"]["responses"]


def test_a_version_that_cannot_explain_answers_409_and_still_predicts(tmp_path, telco_csv, monkeypatch):
    """A pipeline the fast scorer does not know is served by sklearn, without explanations."""
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifacts go to ./mlruns: not the checkout's
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    frame = data.load(telco_csv)
    pipeline = Pipeline([
        ("preprocess", ColumnTransformer([
            ("numeric", StandardScaler(), list(NUMERIC_FEATURES)),
            ("categorical", OneHotEncoder(drop="first", handle_unknown="ignore"), list(CATEGORICAL_FEATURES)),
        ])),
        ("classifier", LogisticRegression(max_iter=1000)),
    ]).fit(frame[list(FEATURE_NAMES)], frame.churn)  # fmt: skip
    with mlflow_uris_restored():
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                signature=signature(),
                input_example=frame[list(FEATURE_NAMES)].head(5),
                pyfunc_predict_fn="predict_proba",
                serialization_format="cloudpickle",
            )
        version = mlflow.register_model(info.model_uri, "churn").version
        MlflowClient(uri, uri).set_registered_model_alias("churn", "Production", version)
    settings = make_settings(uri, tmp_path, verify_sample_rows=0)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        row = real_customers(telco_csv, 1)[0]
        response = client.post("/predict/single?explain=true", json=row)
        assert response.status_code == 409
        assert "serves without explanations" in response.json()["message"] and "sklearn" in response.json()["message"]
        # By id, whatever the ids: the answer must not depend on which the online store holds.
        response = client.post("/predict/by-id?explain=true", json={"customer_ids": ["nobody"]})
        assert response.status_code == 409 and "serves without explanations" in response.json()["message"]
        response = client.get("/predict/nobody?explain=true")  # not 404 or 503 first
        assert response.status_code == 409 and "serves without explanations" in response.json()["message"]
        assert client.post("/predict/single", json=row).status_code == 200
        described = client.get("/model").json()
        assert described["scorer"] == "sklearn" and described["explanations"]["available"] is False


@pytest.mark.parametrize("sample", [0, 200])
def test_a_store_that_does_not_answer_is_an_outage_not_a_version_without_a_reference(
    registry_uri, tmp_path, monkeypatch, sample
):  # fmt: skip
    """MLflow reports an artifact it could not read from the store as "failed to download",
    whether the file is missing or the store is down. Verified (the default), a version whose
    reference the store could not send was refused as unloadable (exit 2 in batch); unverified
    (CHURN_VERIFY_SAMPLE_ROWS=0, which that refusal suggests) it served without explanations
    for as long as it ran, each 409 saying it had "no training run", and a blip reading its
    global importance showed none. The store is now asked, and an outage is tried again."""
    from botocore.exceptions import EndpointConnectionError

    from churn_platform import loading

    download, listing = mlflow.artifacts.download_artifacts, MlflowClient.list_artifacts
    down = {"reference": True, "importance": True}  # each read fails once, as if the store were down
    asked = []

    def store(**kwargs):
        for what, artifact in (("reference", loading.REFERENCE_ARTIFACT),
                               ("importance", loading.GLOBAL_IMPORTANCE_ARTIFACT)):  # fmt: skip
            if kwargs.get("artifact_path") == artifact and down[what]:
                down[what] = False
                asked.append(what)
                raise mlflow.MlflowException(f"Failed to download artifacts from path {artifact!r}, "
                                             "please ensure that the path is correct.")  # fmt: skip
        return download(**kwargs)

    def probed(self, run_id, path=None):
        if asked:  # the store is still down when asked
            asked.pop()
            raise EndpointConnectionError(endpoint_url="http://minio:9000/mlflow")
        return listing(self, run_id, path)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", store)
    monkeypatch.setattr(MlflowClient, "list_artifacts", probed)
    settings = make_settings(registry_uri, tmp_path, verify_sample_rows=sample, startup_backoff_max_s=0.2)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        explanations = client.get("/model").json()["explanations"]
        metrics = client.get("/metrics").text
    assert down == {"reference": False, "importance": False} and not asked
    # An outage, for the outage's alert and runbook; not "its artifacts are missing or do not load here".
    assert 'churn_model_reloads_total{outcome="registry_unreachable"} 2.0' in metrics, metrics
    assert 'churn_model_reloads_total{outcome="load_failed"} 0.0' in metrics
    assert explanations["available"] is True and explanations["global_importance"], explanations


def test_unverified_a_reference_that_cannot_be_read_is_named(registry_uri, tmp_path, monkeypatch):
    """It was "the version has no training run", which it has."""
    from churn_platform import loading

    download = mlflow.artifacts.download_artifacts

    def missing(**kwargs):
        if kwargs.get("artifact_path") == loading.REFERENCE_ARTIFACT:
            raise mlflow.MlflowException(f"Failed to download artifacts from path {loading.REFERENCE_ARTIFACT!r}")
        return download(**kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", missing)  # the store answers: the file is gone
    with TestClient(create_app(make_settings(registry_uri, tmp_path, verify_sample_rows=0))) as client:
        wait_ready(client)
        explanations = client.get("/model").json()["explanations"]
        assert explanations["available"] is False and "no training run" not in explanations["reason"]
        assert "reference rows cannot be read (MlflowException: Failed to download" in explanations["reason"]
        response = client.post("/predict/single?explain=true", json=customers_stub())
        assert response.status_code == 409 and "reference rows cannot be read" in response.json()["message"]


@pytest.mark.parametrize("sample", [0, 200])
def test_a_reference_damaged_past_its_footer_is_named_as_unreadable(registry_uri, monkeypatch, sample):
    """Read batch by batch, a damaged page is found after the file opened: unverified, it was
    "the explainer failed" with a traceback, not the reason the unreadable file gives."""
    from churn_platform import loading

    download = mlflow.artifacts.download_artifacts

    def damaged(**kwargs):
        path = download(**kwargs)
        if kwargs.get("artifact_path") == loading.REFERENCE_ARTIFACT:
            damage_first_page(Path(path))
        return path

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry_uri)
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", damaged)
    client = MlflowClient(registry_uri, registry_uri)
    if sample:  # verification needs those rows: the version does not serve
        with pytest.raises(loading.ModelUnloadable, match="the reference rows that verify its scorer cannot be read"):
            loading.load(client, "churn", 1, default_threshold=0.5, sample=sample)
        return
    loaded = loading.load(client, "churn", 1, default_threshold=0.5, sample=sample)
    assert loaded.explainer is None
    assert loaded.explanations["reason"].startswith("its training run's reference rows cannot be read ("), loaded


def test_a_confident_customer_does_not_make_exact_explanations_fail_their_check():
    """At 30 log-odds a float64 probability holds its log-odds only to about 1e-3: one such
    verification row made every explanation of the version a 409."""
    import numpy as np
    from scipy.special import expit

    from churn_platform.explanation import ADDITIVITY_TOLERANCE, Explained, additivity_error

    def error(true: list[float], explained: list[float]) -> float:
        contributions = np.zeros((len(true), len(FEATURE_NAMES)))
        contributions[:, 0] = np.array(explained) + 1.5  # the base is -1.5
        return additivity_error(Explained(expit(np.array(true)), -1.5, contributions))

    log_odds = [-2.0, 0.3, 25.0, 30.0, -31.0, 40.0, -800.0]  # 40: p is 1.0; -800: p is 0.0
    assert error(log_odds, log_odds) <= ADDITIVITY_TOLERANCE
    # Still caught: a moderate row off by 1e-3, and confident ones explained far from their score.
    assert error([0.3], [0.301]) > ADDITIVITY_TOLERANCE
    assert error([25.0], [14.0]) > ADDITIVITY_TOLERANCE
    assert error([-21.0], [-300.0]) > ADDITIVITY_TOLERANCE
    assert error([40.0], [-3.0]) > ADDITIVITY_TOLERANCE


def test_a_reference_read_batch_by_batch_gives_the_means_and_sample_of_the_whole(tmp_path, monkeypatch):
    """An API read the training run's whole reference into one DataFrame at each load (about
    1 KB a customer): a version trained on a million customers would not fit its memory limit.
    Read batch by batch, it must still give the linear explainer the same reference point, and
    the verification a sample of distinct training rows."""
    import numpy as np

    from churn_platform import explanation, loading, model
    from churn_platform.scorer import FastScorer

    monkeypatch.setattr(explanation, "CHUNK_ROWS", 700)  # several batches from a small file
    frame = data.generate(3000, seed=5)
    pipeline = model.build_pipeline("logistic").fit(model.features(frame), frame.churn)
    frame.to_parquet(tmp_path / "reference.parquet", index=False, row_group_size=1000)
    reference = loading.Reference(tmp_path / "reference.parquet")
    sizes = [len(b) for b in reference.batches()]
    assert len(reference) == sum(sizes) == 3000 and max(sizes) == 700

    scorer = FastScorer(pipeline)
    whole = explanation.Explainer(scorer, model.features(frame))
    batched = explanation.Explainer(scorer, reference.batches())
    assert batched.base == pytest.approx(whole.base, abs=1e-12)
    by_records = scorer.matrix(data.to_records(model.features(frame))).mean(axis=0)  # how the means were taken
    assert np.allclose(explanation.training_means(scorer, reference.batches()), by_records, rtol=0, atol=1e-12)
    customers = data.to_records(model.features(frame.head(50)))
    assert np.allclose(batched.explain(customers).contributions, whole.explain(customers).contributions, atol=1e-12)

    sample = reference.sample(200)
    assert len(sample) == 200 and list(sample.columns) == list(FEATURE_NAMES)
    rows = frame.loc[:, list(FEATURE_NAMES)].astype(str).agg("|".join, axis=1)
    assert sample.astype(str).agg("|".join, axis=1).isin(set(rows)).all()  # training rows, none made up
    assert sample.equals(reference.sample(200))  # the same rows at every load
    assert len(reference.sample(5000)) == 3000  # a reference smaller than the sample: all of it

    frame.drop(columns=["tenure"]).to_parquet(tmp_path / "old.parquet", index=False)
    with pytest.raises(ValueError, match=r"lack the features \['tenure'\]"):
        loading.Reference(tmp_path / "old.parquet")
