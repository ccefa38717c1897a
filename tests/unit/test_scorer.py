"""The fast scorer equals sklearn's predict_proba on real data, for every model type."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from churn_platform import data, model
from churn_platform.contract import MODEL_TYPES
from churn_platform.scorer import FastScorer, SklearnScorer, UnsupportedPipeline, max_difference


@pytest.fixture(scope="module")
def telco(telco_csv):
    return data.split(data.load(telco_csv), 0.25, 42)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_fast_scorer_matches_sklearn_on_real_and_drifted_rows(telco, model_type):
    train, valid = telco
    pipeline = model.build_pipeline(model_type).fit(model.features(train), train.churn)
    scorer = FastScorer(pipeline)
    assert max_difference(pipeline, scorer, valid) <= 1e-9
    assert max_difference(pipeline, scorer, data.generate(3000, seed=1, drift=True)) <= 1e-9
    one = model.features(valid).head(1).to_dict(orient="records")
    expected = pipeline.predict_proba(model.features(valid).head(1))[:, 1]
    np.testing.assert_allclose(scorer.score(one), expected, atol=1e-12)


def test_the_parity_check_runs_the_small_request_paths_too(telco, monkeypatch):
    """Verification scored its rows in one call: the paths a single customer or a small batch
    takes (their own matrix builder, the tree walker) were never checked before a swap."""
    train, valid = telco
    pipeline = model.build_pipeline("hist_gradient_boosting").fit(model.features(train), train.churn)
    scorer = FastScorer(pipeline)
    whole = scorer.score

    def off_when_small(records):  # a bug in the small-request path only
        return whole(records) + (0.01 if len(records) < 32 else 0.0)

    monkeypatch.setattr(scorer, "score", off_when_small)
    assert max_difference(pipeline, scorer, valid.head(500)) == pytest.approx(0.01)

    def off_by_attribute(records):  # a bug in reading the API's structs (by attribute) only
        return whole(records) + (0.0 if isinstance(records[0], dict) else 0.01)

    monkeypatch.setattr(scorer, "score", off_by_attribute)
    assert max_difference(pipeline, scorer, valid.head(500)) == pytest.approx(0.01)


def test_unknown_pipelines_are_refused_and_sklearn_is_the_fallback(telco):
    train, valid = telco
    base = model.build_pipeline("logistic")
    pipeline = Pipeline([base.steps[0], ("classifier", RandomForestClassifier(n_estimators=5, random_state=0))])
    pipeline.fit(model.features(train), train.churn)
    scorer = FastScorer(pipeline)  # any classifier with predict_proba works behind our preprocessing
    assert max_difference(pipeline, scorer, valid) == 0
    with pytest.raises(UnsupportedPipeline):
        FastScorer(Pipeline([("classifier", pipeline.steps[-1][1])]))
    assert max_difference(pipeline, SklearnScorer(pipeline), valid) == 0


@pytest.mark.parametrize("signs", ["non-negative", "mixed"])
def test_yeo_johnson_is_scipys_bit_for_bit(signs):
    """Both code paths (the fast non-negative one and the general one), including the
    special lambdas 0 and 2, must give SciPy's exact bits: a last-bit difference can cross a
    tree split."""
    from scipy import stats

    from churn_platform.scorer import _yeo_johnson

    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 40.0, size=(500, 4))
    if signs == "mixed":
        x -= 60.0
    for lambdas in (np.array([0.7, -0.3, 1.4, 2.6]), np.array([0.0, 2.0, 0.5, -1.2])):
        expected = np.column_stack([stats.yeojohnson(x[:, j], lmbda=lam) for j, lam in enumerate(lambdas)])
        assert np.array_equal(_yeo_johnson(x, lambdas), expected)


def test_walking_the_trees_gives_sklearns_raw_scores_bit_for_bit(telco):
    """Small inputs walk the flattened trees, large ones go through sklearn: both must give
    sklearn's exact raw scores (a last-bit difference would move a probability at a threshold)."""
    train, _ = telco
    pipeline = model.build_pipeline("hist_gradient_boosting").fit(model.features(train), train.churn)
    scorer = FastScorer(pipeline)
    x = scorer.matrix(model.features(train).to_dict(orient="records"))
    expected = pipeline.steps[-1][1]._raw_predict(x)[:, 0]
    walked = np.concatenate([scorer._trees.raw(x[i : i + 100]) for i in range(0, len(x), 100)])
    assert np.array_equal(walked, expected)
    with_missing = x[:50].copy()
    with_missing[::3, 0] = np.nan  # sklearn's missing-value direction is followed too
    assert np.array_equal(scorer._trees.raw(with_missing), pipeline.steps[-1][1]._raw_predict(with_missing)[:, 0])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_column_path_gives_the_record_paths_bits(telco, model_type):
    train, valid = telco
    pipeline = model.build_pipeline(model_type).fit(model.features(train), train.churn)
    scorer = FastScorer(pipeline)
    frame = model.features(valid).reset_index(drop=True)
    frame.loc[3, "contract"] = "Three year"  # an unknown category is ignored by both, as by the encoder
    by_columns = scorer.frame_matrix(frame)
    assert np.array_equal(by_columns, scorer.matrix(frame.to_dict(orient="records")))
    assert np.array_equal(scorer.probabilities(by_columns), scorer.score(frame.to_dict(orient="records")))


def test_the_logistic_gather_path_equals_the_matrix_path(telco):
    train, valid = telco
    pipeline = model.build_pipeline("logistic").fit(model.features(train), train.churn)
    scorer = FastScorer(pipeline)
    frame = model.features(valid).reset_index(drop=True)
    frame.loc[5, "payment_method"] = "Cheque"  # unknown: adds nothing, as the encoder's all-zero block
    numbers = frame[list(scorer.numeric_features)].to_numpy(dtype=float)
    codes = [scorer.codes(frame[c], c) for c in scorer.categories]
    gathered = scorer.columns_probabilities(numbers.copy(), codes)
    np.testing.assert_allclose(gathered, scorer.probabilities(scorer.frame_matrix(frame)), rtol=0, atol=1e-12)
    assert max_difference(pipeline, scorer, frame) <= 1e-9
