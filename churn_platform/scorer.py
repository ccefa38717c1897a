"""A fast, exact scorer compiled from a fitted churn pipeline.

sklearn's ``Pipeline.predict_proba`` spends most of a single-row call in pandas and in
the ColumnTransformer's bookkeeping (about a millisecond). This scorer does the same
arithmetic on plain float64 NumPy arrays: the power transform and standardisation with
the fitted lambdas, means and scales, in SciPy's and sklearn's own order of operations;
one-hot encoding as a dictionary lookup; then the
classifier's own decision on the numeric matrix (a dot product for logistic regression,
the fitted trees flattened into arrays and walked level by level for gradient boosting).
It stays in float64 throughout, so it agrees with sklearn to ~1e-12; ``verify`` proves
that on real rows before the serving layer trusts it, and sklearn remains the fallback.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, repeat
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PowerTransformer, StandardScaler

from churn_platform.schema import FEATURE_NAMES


class UnsupportedPipeline(TypeError):
    """The pipeline has a step the fast scorer does not know; use sklearn instead."""


def _numeric_transform(step: Any) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(Yeo-Johnson lambdas or None, mean, scale) of a fitted numeric transformer."""
    if isinstance(step, PowerTransformer):
        if step.method != "yeo-johnson":
            raise UnsupportedPipeline(f"power transform method {step.method!r}")
        n = len(step.lambdas_)
        if step.standardize:
            return step.lambdas_.astype(float), step._scaler.mean_, step._scaler.scale_
        return step.lambdas_.astype(float), np.zeros(n), np.ones(n)
    if isinstance(step, StandardScaler):
        n = step.n_features_in_
        mean = step.mean_ if step.with_mean else np.zeros(n)
        scale = step.scale_ if step.with_std else np.ones(n)
        return None, mean, scale
    raise UnsupportedPipeline(f"numeric step {type(step).__name__}")


def _yeo_johnson(x: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """``scipy.stats.yeojohnson`` for all columns at once, with SciPy's formulas and order.

    Bit-identical results matter for trees: a last-bit difference can cross a split. The
    common case (no negative value, no zero lambda) takes four ufunc calls; the general
    one computes both branches and picks per element.
    """
    eps = np.finfo(float).eps
    if not (np.abs(lambdas) < eps).any() and x.min(initial=0.0) >= 0:
        return np.expm1(lambdas * np.log1p(x)) / lambdas
    lmbda = np.broadcast_to(lambdas, x.shape)
    with np.errstate(all="ignore"):  # both branches are computed; each is used where valid
        positive = np.where(np.abs(lmbda) < eps, np.log1p(x), np.expm1(lmbda * np.log1p(x)) / lmbda)
        negative = np.where(
            np.abs(lmbda - 2) > eps,
            -np.expm1((2 - lmbda) * np.log1p(-x)) / (2 - lmbda),
            -np.log1p(-x),
        )
    return np.where(x >= 0, positive, negative)


class _Trees:
    """A binary HistGradientBoostingClassifier's trees as flat arrays.

    sklearn predicts tree by tree from Python (about 12 us a tree: 3.7 ms for one customer
    through 300 trees); here every tree takes one step per level in a few array operations
    (0.1 ms for one customer). Past ``WALK_ROWS`` rows sklearn's per-tree Cython loop wins
    and is used. Leaves point at themselves, so walking ``depth`` levels lands
    every row on its leaf whatever the tree's own depth; leaf values are summed in tree
    order after the baseline, as sklearn adds them, so the raw score is bit-identical.
    """

    #: Fewer rows than this are walked here; more go through sklearn (measured crossover ~185).
    WALK_ROWS = 128

    def __init__(self, classifier: Any) -> None:
        trees = [iteration[0] for iteration in classifier._predictors]
        if classifier.n_trees_per_iteration_ != 1 or not trees:
            raise UnsupportedPipeline("gradient boosting with more than one tree per iteration")
        nodes = [t.nodes for t in trees]
        if any(n["is_categorical"].any() for n in nodes):
            raise UnsupportedPipeline("gradient boosting with native categorical splits")
        offsets = np.cumsum([0] + [len(n) for n in nodes])[:-1]
        flat = np.concatenate(nodes)
        index = np.arange(len(flat))
        leaf = flat["is_leaf"].astype(bool)
        self.roots = offsets
        self.feature = np.where(leaf, 0, flat["feature_idx"])
        self.threshold = np.where(leaf, np.inf, flat["num_threshold"])
        self.missing_left = flat["missing_go_to_left"].astype(bool)
        offset_of = np.repeat(offsets, [len(n) for n in nodes])
        self.left = np.where(leaf, index, flat["left"] + offset_of)
        self.right = np.where(leaf, index, flat["right"] + offset_of)
        self.value = flat["value"]
        self.depth = int(flat["depth"].max())
        self.baseline = float(np.ravel(classifier._baseline_prediction)[0])
        self._classifier = classifier

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The classifier's raw score (log-odds) for each row."""
        if len(x) >= self.WALK_ROWS:
            return self._classifier._raw_predict(x)[:, 0]
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots)))
        nan = np.isnan(x).any()
        for _ in range(self.depth):
            values = x[rows, self.feature[node]]
            go_left = values <= self.threshold[node]
            if nan:
                go_left |= np.isnan(values) & self.missing_left[node]
            node = np.where(go_left, self.left[node], self.right[node])
        leaves = np.concatenate([np.full((len(x), 1), self.baseline), self.value[node]], axis=1)
        return np.cumsum(leaves, axis=1)[:, -1]  # cumsum adds left to right, as sklearn does


#: A categorical column as the column paths take it: the code of each distinct value (-1:
#: unknown), and each row's index into them. Arrow's dictionaries and pandas' factorize give
#: both, so the per-row codes are never built where a gather of coefficients does without them.
Codes = tuple[np.ndarray, np.ndarray]


class FastScorer:
    """Churn probabilities from records (dicts of feature values, or objects holding them as
    attributes, such as the API's decoded structs), in float64."""

    def __init__(self, pipeline: Pipeline) -> None:
        preprocess, classifier = pipeline.steps[0][1], pipeline.steps[-1][1]
        if len(pipeline.steps) != 2 or not hasattr(preprocess, "transformers_"):
            raise UnsupportedPipeline("expected a (ColumnTransformer, classifier) pipeline")
        self._numeric: list[str] = []
        self._categorical: list[str] = []
        self._lookup: list[dict[str, int]] = []
        offset_after_numeric = 0
        for name, step, columns in preprocess.transformers_:
            if name == "remainder" or step == "drop":
                continue
            if isinstance(step, OneHotEncoder):
                if step.drop is not None:
                    raise UnsupportedPipeline("one-hot encoder with drop")
                self._categorical = list(columns)
                self._lookup = [{str(c): i for i, c in enumerate(cats)} for cats in step.categories_]
            else:
                if self._categorical:
                    raise UnsupportedPipeline("numeric columns must come before categorical ones")
                self._numeric = list(columns)
                self._lambdas, self._mean, self._scale = _numeric_transform(step)
                offset_after_numeric = len(columns)
        if sorted(self._numeric + self._categorical) != sorted(FEATURE_NAMES):
            raise UnsupportedPipeline("pipeline columns differ from the schema's features")
        self._offsets = np.cumsum([offset_after_numeric] + [len(m) for m in self._lookup])[:-1]
        self._width = offset_after_numeric + sum(len(m) for m in self._lookup)
        self._encoders = list(zip(self._lookup, self._offsets.tolist(), strict=True))
        # Records are dicts, or the API's decoded structs (read by attribute: no dict per customer).
        self._numeric_values = _getter(self._numeric, operator.itemgetter)
        self._categorical_values = _getter(self._categorical, operator.itemgetter)
        self._numeric_attributes = _getter(self._numeric, operator.attrgetter)
        self._categorical_attributes = _getter(self._categorical, operator.attrgetter)
        #: The schema feature each column of ``matrix`` belongs to (one-hot columns repeat it).
        one_hot = (name for name, lookup in zip(self._categorical, self._lookup, strict=True) for _ in lookup)
        self.column_features: tuple[str, ...] = (*self._numeric, *one_hot)
        self.classifier = classifier
        #: (coefficients, intercept) of a logistic classifier, else None.
        self.linear: tuple[np.ndarray, float] | None = None
        self._trees: _Trees | None = None
        if isinstance(classifier, LogisticRegression):
            if classifier.coef_.shape[0] != 1:
                raise UnsupportedPipeline("multi-class logistic regression")
            self.linear = classifier.coef_[0].astype(float), float(classifier.intercept_[0])
        elif isinstance(classifier, HistGradientBoostingClassifier):
            self._trees = _Trees(classifier)
        elif not hasattr(classifier, "predict_proba"):
            raise UnsupportedPipeline(f"classifier {type(classifier).__name__}")

    def matrix(self, records: Sequence[Any]) -> np.ndarray:
        """The classifier's input matrix for ``records``: mappings of feature values, or objects
        holding them as attributes (the API's decoded msgspec structs)."""
        n = len(records)
        mappings = by_key(records)
        numeric_values = self._numeric_values if mappings else self._numeric_attributes
        categorical_values = self._categorical_values if mappings else self._categorical_attributes
        # itemgetter/attrgetter, map and chain run the per-record loops in C: no Python frame per value.
        k = len(self._numeric)
        numbers = np.fromiter(chain.from_iterable(map(numeric_values, records)), dtype=float, count=n * k)
        numbers = numbers.reshape(n, k)
        x = np.zeros((n, self._width))
        # The same operations in the same order as sklearn's transform, so the result is
        # bit-identical: for trees a last-bit difference can cross a split threshold.
        x[:, : len(self._numeric)] = self._transformed(numbers)
        if n < 32:  # per-record lookups and one assignment are cheapest for the single-customer path
            rows, columns = [], []
            for i, record in enumerate(records):
                for value, (lookup, offset) in zip(categorical_values(record), self._encoders, strict=True):
                    index = lookup.get(value)
                    if index is not None:  # unknown categories are ignored, as the encoder does
                        rows.append(i)
                        columns.append(offset + index)
            x[rows, columns] = 1.0
            return x
        rows = np.arange(n)
        flat = list(chain.from_iterable(map(categorical_values, records)))  # row by row; column j: flat[j::m]
        m = len(self._lookup)
        for j, (lookup, offset) in enumerate(self._encoders):
            index = np.fromiter(map(lookup.get, flat[j::m], repeat(-1, n)), dtype=np.intp, count=n)
            known = index >= 0
            x[rows[known], offset + index[known]] = 1.0
        return x

    @property
    def categories(self) -> dict[str, dict[str, int]]:
        """Each categorical feature's known values and their code (position in its one-hot block)."""
        return dict(zip(self._categorical, self._lookup, strict=True))

    @property
    def numeric_features(self) -> tuple[str, ...]:
        return tuple(self._numeric)

    def codes(self, values: Any, column: str) -> Codes:
        """A categorical column's ``Codes``, looking each distinct value up once."""
        lookup = self.categories[column]
        inverse, uniques = pd.factorize(values)
        mapped = np.fromiter((lookup.get(str(u), -1) for u in uniques), dtype=np.intp, count=len(uniques))
        return np.append(mapped, -1), inverse  # a missing value's -1 picks the -1 appended: unknown

    def frame_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """``matrix`` from a validated DataFrame, column by column: batch scoring's path, with no
        dict per row (the numeric operations are the same, so the bits are too)."""
        numbers = frame[self._numeric].to_numpy(dtype=float, copy=True).reshape(len(frame), len(self._numeric))
        return self.columns_matrix(numbers, [self.codes(frame[c], c) for c in self._categorical])

    def columns_matrix(self, numbers: np.ndarray, codes: Sequence[Codes]) -> np.ndarray:
        """``matrix`` from the numeric features (rows x numeric_features, modified in place) and
        each categorical feature's ``Codes``, in ``categories`` order."""
        n = len(numbers)
        x = np.zeros((n, self._width))
        x[:, : len(self._numeric)] = self._transformed(numbers)
        rows = np.arange(n)
        for (distinct, indices), offset in zip(codes, self._offsets, strict=True):
            column_codes = distinct.take(indices)
            known = column_codes >= 0  # unknown categories are ignored, as the encoder does
            x[rows[known], offset + column_codes[known]] = 1.0
        return x

    def columns_probabilities(self, numbers: np.ndarray, codes: Sequence[Codes]) -> np.ndarray:
        """``probabilities`` from the same inputs as ``columns_matrix``. The logistic model
        skips the one-hot matrix: each category adds its coefficient, looked up once per
        distinct value, then gathered per row (one gather per column, not two)."""
        if self.linear is None:
            return self.probabilities(self.columns_matrix(numbers, codes))
        coef, intercept = self.linear
        k = len(self._numeric)
        z = self._transformed(numbers) @ coef[:k] + intercept
        for (distinct, indices), offset, lookup in zip(codes, self._offsets, self._lookup, strict=True):
            block = np.append(coef[offset : offset + len(lookup)], 0.0)  # code -1 (unknown) adds nothing
            z += block[distinct].take(indices)  # take: a third of fancy indexing's time on int32 indices
        return expit(z)

    def _transformed(self, numbers: np.ndarray) -> np.ndarray:
        if self._lambdas is not None:
            numbers = _yeo_johnson(numbers, self._lambdas)
        numbers -= self._mean
        numbers /= self._scale
        return numbers

    def score(self, records: Sequence[Any]) -> np.ndarray:
        """Probability of churn for each record (as ``matrix`` takes them)."""
        return self.probabilities(self.matrix(records))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Probability of churn for each row of a ``matrix``."""
        if self.linear is not None:
            coef, intercept = self.linear
            return expit(x @ coef + intercept)
        if self._trees is not None:
            return expit(self._trees.raw(x))
        return self.classifier.predict_proba(x)[:, 1]


def by_key(records: Sequence[Any]) -> bool:
    """Whether ``records`` are read by key (mappings, such as dicts) rather than by attribute
    (the API's decoded structs): the one rule every reader of a batch of records follows."""
    return not records or isinstance(records[0], Mapping)


def _getter(
    columns: Sequence[str], getter: Callable[..., Callable[[Any], Any]]
) -> Callable[[Any], tuple[Any, ...]]:
    """A record's values for ``columns`` (``getter``: itemgetter or attrgetter), always as a
    tuple (either getter of one name returns a scalar)."""
    if len(columns) == 1:
        one = getter(*columns)
        return lambda record: (one(record),)
    return getter(*columns)


class SklearnScorer:
    """The reference path: the pipeline itself on a DataFrame."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def score(self, records: Sequence[Any]) -> np.ndarray:
        """Probability of churn for each record (mappings, or objects holding the features as attributes)."""
        if not by_key(records):
            records = list(map(operator.attrgetter(*FEATURE_NAMES), records))
        frame = pd.DataFrame.from_records(list(records), columns=list(FEATURE_NAMES))
        return self._pipeline.predict_proba(frame)[:, 1]


def max_difference(pipeline: Pipeline, scorer: FastScorer | SklearnScorer, frame: pd.DataFrame) -> float:
    """Largest absolute difference between ``scorer`` and sklearn on ``frame``'s rows, scored
    whole and in the sizes that take the scorer's other paths (one customer, under 32 rows,
    under ``WALK_ROWS``): a single-customer request must not be the first to run its path."""
    features = frame.loc[:, list(FEATURE_NAMES)]
    expected = pipeline.predict_proba(features)[:, 1]
    if not len(expected):
        return 0.0
    records = features.to_dict(orient="records")
    # The API's decoded structs are read by attribute, through getters of their own.
    structs = [SimpleNamespace(**r) for r in records[: _Trees.WALK_ROWS - 1]]
    singles = [slice(i, i + 1) for i in range(min(8, len(records)))]
    parts = [(records, slice(None))] + [(rows, part) for rows in (records, structs)
                                        for part in (*singles, slice(31), slice(_Trees.WALK_ROWS - 1))]  # fmt: skip
    return max(float(np.max(np.abs(expected[part] - scorer.score(rows[part])))) for rows, part in parts)
