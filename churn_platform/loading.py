"""Load a registered version for serving: the sklearn pipeline, its fast scorer, and proof
that the two agree before anyone is served by it."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model
from sklearn.pipeline import Pipeline

from churn_platform import explanation, object_store, registry
from churn_platform.contract import (
    CHALLENGER_ALIAS,
    GLOBAL_IMPORTANCE_ARTIFACT,
    HEADLINE_METRICS,
    PRODUCTION_ALIAS,
    REFERENCE_ARTIFACT,
    TAG_THRESHOLD,
)
from churn_platform.errors import ChurnPlatformError, NotFoundError, StorageUnreachable
from churn_platform.explanation import Explainer, ExplanationUnavailable
from churn_platform.schema import FEATURE_NAMES
from churn_platform.scorer import FastScorer, SklearnScorer, UnsupportedPipeline, max_difference

log = logging.getLogger(__name__)

#: Largest difference from sklearn's predict_proba a scorer may show and still serve.
PARITY_TOLERANCE = 1e-6


class VerificationFailed(ChurnPlatformError):
    """The scorer disagrees with the registered sklearn model; the version must not serve."""


class ModelUnloadable(ChurnPlatformError):
    """The version's artifacts are missing or do not load here (a cleaned-up run, another
    scikit-learn): the version's problem, not a bug of ours, and not a connection failure."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to score. Immutable: a reload builds a new one."""

    name: str
    version: int
    run_id: str | None
    pipeline: Pipeline
    scorer: FastScorer | SklearnScorer
    scorer_kind: str
    decision_threshold: float
    input_schema: list[dict[str, Any]]
    metrics: dict[str, float]
    max_abs_difference: float
    verified_rows: int
    #: None when this version cannot explain its scores (``explanations`` says why).
    explainer: Explainer | None = None
    #: How explanations are made and were verified, or why there are none; the training
    #: run's global importance (``/model``).
    explanations: dict[str, Any] = field(default_factory=dict)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def resolve(client: MlflowClient, name: str, alias: str = PRODUCTION_ALIAS) -> int:
    """The version number ``alias`` points at, or ``NotFoundError``. The platform's own two
    aliases are read as ``status`` reads them: a ``challenger`` the MLflow UI saved wins, and
    ``--alias production`` (the UI's spelling) means ``Production`` once a command adopted it."""
    platform = {a.lower(): a for a in (PRODUCTION_ALIAS, CHALLENGER_ALIAS)}
    if alias.lower() in platform:
        version = registry.aliased(client, name, platform[alias.lower()])
    else:
        version = registry.version_by_alias(client, name, alias)
    if version is None:
        raise NotFoundError(f"no version of model {name!r} holds the alias {alias!r}")
    return int(version.version)


class ReferenceUnreadable(Exception):
    """The reference file is there but its rows cannot be read (damaged): no reference point."""


class ReferenceIncomplete(ValueError):
    """The reference file lacks features: the version was trained under another schema."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"the reference rows lack the features {missing}")
        self.missing = missing


class Reference:
    """The training run's reference rows, on local disk and read batch by batch: serving needs
    only a sample of them (verification) and their column means (the linear explainer). As one
    DataFrame (about 1 KB a row) a version trained on a million customers would not fit the
    API's memory limit."""

    def __init__(self, path: Path) -> None:
        self._path = path
        with pq.ParquetFile(path) as file:
            self.columns, self._rows = tuple(file.schema_arrow.names), file.metadata.num_rows
        if missing := [c for c in FEATURE_NAMES if c not in self.columns]:
            raise ReferenceIncomplete(missing)

    def __len__(self) -> int:
        return self._rows

    def batches(self, columns: Sequence[str] = FEATURE_NAMES) -> Iterator[pd.DataFrame]:
        try:
            with pq.ParquetFile(self._path) as file:
                for batch in file.iter_batches(batch_size=explanation.CHUNK_ROWS, columns=list(columns)):
                    yield batch.to_pandas()
        except (OSError, ValueError) as exc:  # pyarrow's: a damaged page, past the footer read at opening
            raise ReferenceUnreadable(f"reference rows cannot be read ({type(exc).__name__}: {exc})"[:300]) from exc

    def sample(self, rows: int, *, seed: int = 0, columns: Sequence[str] = FEATURE_NAMES) -> pd.DataFrame:
        """``rows`` of them at random (the same ones for a seed), in file order."""
        chosen = np.sort(np.random.default_rng(seed).choice(len(self), size=min(rows, len(self)), replace=False))
        picked, start = [], 0
        for batch in self.batches(columns):
            inside = chosen[(chosen >= start) & (chosen < start + len(batch))] - start
            picked.append(batch.iloc[inside])
            start += len(batch)
        return pd.concat(picked, ignore_index=True) if picked else pd.DataFrame(columns=list(columns))


def _reference(run_id: str | None, folder: Path) -> Reference | None:
    """The training run's features (the reference data), if the version has a run."""
    if not run_id:
        return None
    return Reference(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT,
                                                              dst_path=str(folder))))  # fmt: skip


def _verification_rows(sampled: pd.DataFrame | None, example: Any) -> pd.DataFrame:
    frames = []
    if isinstance(example, pd.DataFrame):
        frames.append(example)
    if sampled is not None:
        frames.append(sampled)
    if not frames:
        raise VerificationFailed("no input example and no reference rows to verify the scorer on")
    return pd.concat([f.loc[:, list(FEATURE_NAMES)] for f in frames], ignore_index=True)


def unreachable(exc: BaseException) -> bool:
    """The registry or the artifact store did not answer, or an S3 store asked to be asked later
    (a 503 SlowDown, whose words no connection hint holds)."""
    cause = exc.__cause__ or exc.__context__
    return registry.is_connection_error(exc) or object_store.unreachable(exc) or (
        cause is not None and object_store.unreachable(cause)
    )


def store_unreachable(client: MlflowClient, run_id: str, exc: BaseException) -> str | None:
    """Why reading one of the run's artifacts failed with ``exc`` because the registry or its
    artifact store did not answer, or None when they answer (the artifact is missing or bad).
    An artifact read from the store directly fails as "failed to download" whether the file is
    missing or the store is down (MLflow keeps the cause to itself): a listing tells them apart."""
    if unreachable(exc):
        return str(exc)
    try:
        client.list_artifacts(run_id)
    except Exception as probe:  # noqa: BLE001 - botocore, azure, gcs: whatever the store's client raises
        return str(probe) if unreachable(probe) else None
    return None


def _outage(client: MlflowClient, run_id: str, exc: BaseException, what: str) -> StorageUnreachable | None:
    """``exc``, reading ``what`` of the run, as the outage it is (the load is tried again), or None."""
    why = store_unreachable(client, run_id, exc)
    if why is None:
        return None
    return StorageUnreachable(f"cannot read {what} of run {run_id}: the registry or its artifact store is "
                              f"unreachable: {why}"[:500])  # fmt: skip


def _global_importance(client: MlflowClient, run_id: str | None) -> list[dict[str, Any]] | None:
    """The training run's global importance; None for a version trained before it was logged."""
    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=GLOBAL_IMPORTANCE_ARTIFACT, dst_path=tmp
            )
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)["features"]
    except Exception as exc:  # noqa: BLE001 - optional: an older run has none, and it never stops serving
        if outage := _outage(client, run_id, exc, "the global importance"):  # not "trained before it existed"
            raise outage from exc
        log.info("run %s: no global importance (%s)", run_id, str(exc)[:200])
        return None


def _explainer(
    scorer: FastScorer | SklearnScorer, reference: Reference | None, rows: pd.DataFrame, no_reference: str
) -> tuple[Explainer | None, dict[str, Any]]:
    """An explainer proven additive on ``rows``, or None and the reason (``no_reference``: why a
    linear model has no reference point)."""
    try:
        if not isinstance(scorer, FastScorer):
            raise ExplanationUnavailable("the pipeline is served by sklearn, not the fast scorer")
        if reference is None and scorer.linear is not None:
            raise ExplanationUnavailable(no_reference)
        explainer = Explainer(scorer, reference.batches() if reference is not None else rows)
        error = explanation.verify(explainer, rows)
    except ExplanationUnavailable as exc:
        return None, {"available": False, "reason": str(exc)}
    except ReferenceUnreadable as exc:  # read only now when not verified on a sample of it
        return None, {"available": False, "reason": f"its training run's {exc}"}
    except Exception as exc:  # noqa: BLE001 - an explainer that breaks (shap, numba) never stops the version serving
        log.warning("explanations unavailable", exc_info=True)
        return None, {"available": False, "reason": f"the explainer failed: {type(exc).__name__}: {exc}"[:300]}
    return explainer, {
        "available": True,
        "method": explainer.method,
        "base": explainer.base,
        "verified": {"rows": len(rows), "max_additivity_error": error},
    }


@overload
def decision_threshold(tag: str | None, default: float, version: int) -> float: ...
@overload
def decision_threshold(tag: str | None, default: None, version: int) -> float | None: ...
def decision_threshold(tag: str | None, default: float | None, version: int) -> float | None:
    """The version's decision threshold (``default`` when it has no tag): a tag edited in the
    MLflow UI to 1.5 (no customer would ever be flagged) or to text must stop the version, as
    a failed verification does."""
    if tag is None:
        return default
    try:
        value = float(tag)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:  # as training accepts it; NaN fails too
        raise VerificationFailed(
            f"v{version}'s tag {TAG_THRESHOLD}={tag!r} is not between 0 and 1 (exclusive); correct it in the "
            "MLflow UI"
        )
    return value


def refreshed(client: MlflowClient, model: LoadedModel, *, default_threshold: float) -> LoadedModel:
    """``model`` with its version's decision threshold as the registry holds it now: a tag
    edited in the MLflow UI takes effect at the next reload, as it does for a replica that
    starts, batch scoring and ``rollout status``. ``model`` itself when nothing changed."""
    tag = registry.get_version(client, model.name, model.version).tags.get(TAG_THRESHOLD)
    threshold = decision_threshold(tag, default_threshold, model.version)
    if threshold == model.decision_threshold:
        return model
    log.info("%s v%s: decision threshold %s -> %s (its tag changed)", model.name, model.version,
             model.decision_threshold, threshold)  # fmt: skip
    return replace(model, decision_threshold=threshold)


@contextlib.contextmanager
def _unloadable(name: str, version: int) -> Iterator[None]:
    """A failure to download or load the version's artifacts as ``ModelUnloadable`` (exit 2),
    but a registry or store that does not answer, which stays what it is (exit 3)."""
    try:
        yield
    except Exception as exc:
        if registry.is_connection_error(exc):
            raise
        if why := registry.served_artifacts(exc):
            raise ModelUnloadable(f"{name} v{version}: {why}") from exc
        raise ModelUnloadable(f"{name} v{version}: its model artifacts cannot be read or do not load here "
                              f"({type(exc).__name__}: {exc})"[:600]) from exc  # fmt: skip


def check_servable(client: MlflowClient, found: ModelVersion) -> None:
    """Refuse what every replica's load would refuse, before an alias moves to it: a threshold
    tag out of range, and artifacts without an MLmodel file of the sklearn flavour (a cleaned-up
    run, a pyfunc registered by hand). Reads the MLmodel file only, not the model; the scorer's
    verification still waits for the load."""
    name, version = found.name, int(found.version)
    decision_threshold(found.tags.get(TAG_THRESHOLD), None, version)
    with _unloadable(name, version):
        flavors = Model.load(client.get_model_version_download_uri(name, str(version))).flavors
    if "sklearn" not in flavors:
        raise ModelUnloadable(f"{name} v{version}: its model is not a scikit-learn pipeline (flavours: "
                              f"{', '.join(flavors) or 'none'}); this platform serves only those")  # fmt: skip


def load_pipeline(name: str, version: int) -> Pipeline:
    """The version's scikit-learn pipeline alone (the monitor scoring a file), unverified."""
    with _unloadable(name, version):
        return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def load(client: MlflowClient, name: str, version: int, *, default_threshold: float, sample: int) -> LoadedModel:
    """Download, load and verify ``name`` version ``version``; raise if it must not serve."""
    with tempfile.TemporaryDirectory() as folder:  # the reference rows, read from there while loading
        return _load(client, name, version, default_threshold=default_threshold, sample=sample, folder=Path(folder))


def _load(
    client: MlflowClient, name: str, version: int, *, default_threshold: float, sample: int, folder: Path
) -> LoadedModel:
    found = registry.get_version(client, name, version)
    threshold = decision_threshold(found.tags.get(TAG_THRESHOLD), default_threshold, version)
    uri = f"models:/{name}/{version}"
    with _unloadable(name, version), tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        pipeline = mlflow.sklearn.load_model(local)
        meta = Model.load(local)
        example = meta.load_input_example(local)
    no_reference = "the version has no training run to take the reference point from"
    try:
        reference = _reference(found.run_id, folder)
        sampled = reference.sample(sample) if reference is not None and sample else None
    except Exception as exc:
        if outage := _outage(client, found.run_id, exc, "the reference rows"):  # not a version without them
            raise outage from exc
        if not sample:
            log.warning("v%s: no reference data; serving without explanations", version, exc_info=True)
            reference = sampled = None
            no_reference = f"its training run's reference rows cannot be read ({type(exc).__name__}: {exc})"[:300]
        else:  # the rows that verify the scorer: a load without them must fail
            raise ModelUnloadable(
                f"{name} v{version}: the reference rows that verify its scorer cannot be read from run "
                f"{found.run_id} ({type(exc).__name__}: {exc})"[:500] + "; CHURN_VERIFY_SAMPLE_ROWS=0 loads it "
                "unverified, without explanations"
            ) from exc
    rows = _verification_rows(sampled, example)
    try:
        scorer: FastScorer | SklearnScorer = FastScorer(pipeline)
        kind = "fast"
    except UnsupportedPipeline as exc:
        log.warning("v%s: fast scorer unavailable (%s); serving with sklearn", version, exc)
        scorer, kind = SklearnScorer(pipeline), "sklearn"
    difference = max_difference(pipeline, scorer, rows)
    if not difference <= PARITY_TOLERANCE:
        raise VerificationFailed(
            f"{name} v{version}: {kind} scorer differs from sklearn by {difference:.3g} "
            f"(> {PARITY_TOLERANCE}) on {len(rows)} rows; not serving it"
        )
    metrics = {}
    if found.run_id:
        run_metrics = client.get_run(found.run_id).data.metrics
        metrics = {k: run_metrics[k] for k in HEADLINE_METRICS if k in run_metrics}
    schema = meta.signature.inputs.to_dict() if meta.signature else []
    explainer, explained = _explainer(scorer, reference, rows, no_reference)
    if explainer is None:
        log.warning("v%s: served without explanations: %s", version, explained["reason"])
    explained["global_importance"] = _global_importance(client, found.run_id)
    return LoadedModel(
        name=name,
        version=int(version),
        run_id=found.run_id,
        pipeline=pipeline,
        scorer=scorer,
        scorer_kind=kind,
        decision_threshold=threshold,
        input_schema=schema,
        metrics=metrics,
        max_abs_difference=difference,
        verified_rows=len(rows),
        explainer=explainer,
        explanations=explained,
    )
