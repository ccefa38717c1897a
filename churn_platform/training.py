"""A training run: load and validate data, fit, evaluate, log, register, gate.

Everything that can fail on the user's input (data, parameters, the registry being
reachable) is checked before the run logs anything, and the new version is registered
only after every artifact is stored, so a failed run never leaves a registered version
that points at missing files.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from churn_platform import data as data_mod
from churn_platform import explanation, registry
from churn_platform import gate as gate_mod
from churn_platform import model as model_mod
from churn_platform.contract import (
    GATE_METRIC,
    GLOBAL_IMPORTANCE_ARTIFACT,
    GLOBAL_IMPORTANCE_PLOT,
    MODEL_ARTIFACT,
    PROBABILITY,
    REFERENCE_ARTIFACT,
    TAG_DATA_DIGEST,
    TAG_GATE,
    TAG_GATE_FIGURES,
    TAG_GIT_COMMIT,
    TAG_IMPORTANCE_UNAVAILABLE,
    TAG_MODEL_TYPE,
    TAG_ROC_AUC,
    TAG_ROWS,
    TAG_THRESHOLD,
    TAG_TRAINING_DATA,
    VALIDATION_ARTIFACT,
    VALIDATION_ROWS,
)
from churn_platform.errors import DataValidationError, RegistryUnreachable
from churn_platform.gate import GateVerdict, figures_tag
from churn_platform.schema import FEATURE_NAMES, FEATURES, ID_COLUMN, LABEL_COLUMN
from churn_platform.scorer import FastScorer
from churn_platform.settings import Settings, checked_model_name
from churn_platform.training_config import (
    DATA_OPTIONS,
    GENERATOR_OPTIONS,
    SYNTHETIC,
    TrainConfig,
    check_parameter,
    data_with_features,
    generated_only,
)

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: int
    metrics: dict[str, float]
    gate: GateVerdict

    @property
    def challenger(self) -> bool:
        """Whether training set ``Challenger`` on the version: a pass against a Production."""
        return self.gate.passed and self.gate.checked

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "gate": self.gate.model_dump(mode="json", by_alias=True), "challenger": self.challenger}


def signature() -> ModelSignature:
    """The model's MLflow signature, derived from the customer schema."""
    mlflow_type = {"category": "string", "integer": "long", "float": "double"}
    inputs = Schema([ColSpec(mlflow_type[f.kind], f.name) for f in FEATURES])
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1, 2))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def load_training_data(config: TrainConfig, settings: Settings) -> pd.DataFrame:
    if config.data in ("", SYNTHETIC):
        return data_mod.generate(config.n_rows, seed=config.seed, drift=config.drift)
    return data_mod.load(config.data, settings.s3_endpoint_url)


def _check_config(config: TrainConfig) -> None:
    for key, value in asdict(config).items():
        check_parameter(key, value)
    try:  # the settings' rule: MLflow would refuse the name only at registration, after training
        checked_model_name(config.model_name)
    except ValueError as exc:
        raise DataValidationError(f"model_name: {exc}") from None
    if config.from_features and not config.labels:
        raise DataValidationError("--from-features needs --labels: a file of customer_id, label_time and churn")
    if config.labels and not config.from_features:
        raise DataValidationError("--labels is read only with --from-features")
    defaults = TrainConfig()
    if config.from_features:  # the CLI refuses them typed at their defaults too
        if given := [k for k in DATA_OPTIONS if getattr(config, k) not in ("", getattr(defaults, k))]:
            raise data_with_features(given)
    elif config.data not in ("", SYNTHETIC):  # as the CLI does
        if given := [k for k in GENERATOR_OPTIONS if getattr(config, k) != getattr(defaults, k)]:
            raise generated_only(given, config.data)


def _dataset_source(uri: str) -> str:
    """The data's location as MLflow records it: a local file as a ``file://`` URI.

    MLflow reads the text before a colon in a plain path (``customers:v2.csv``) as a URI
    scheme, finds no resolver for it and fails the run after the model is fit.
    """
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def _git_commit() -> str | None:
    """churn-platform's own commit, when it runs from its checkout; none when installed (git
    would find the repository of a .venv's parent folder), nor that of the folder the user
    runs the command in."""
    package = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True, cwd=package)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    top, _, commit = out.stdout.strip().partition("\n")
    return commit.strip() or None if Path(top).resolve() == package.parent else None


def _pip_requirements() -> list[str]:
    """What the model needs to load, pinned to what trained it.

    Stated rather than inferred: MLflow's inference reloads the model in a subprocess and
    costs several seconds per run.
    """
    names = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
    return [f"{name}=={dist_version(name)}" for name in names]


def _plot(y_true: np.ndarray, proba: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y_true, proba)
    frac_pos, mean_pred = calibration_curve(y_true, proba, n_bins=10, strategy="quantile")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    ax1.plot(fpr, tpr, label="model")
    ax1.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax1.set(title="ROC (validation)", xlabel="false positive rate", ylabel="true positive rate")
    ax1.legend()
    ax2.plot(mean_pred, frac_pos, "o-", label="model")
    ax2.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax2.set(title="Calibration (validation)", xlabel="predicted", ylabel="observed churn rate")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _unseen_categories(train_df: pd.DataFrame) -> dict[str, list[str]]:
    """Each category feature's allowed values that no training row has (a segment's file, a
    filtered export): the encoder learns its columns from the rows, not the schema."""
    unseen = {}
    for feature in FEATURES:
        if feature.kind == "category" and feature.allowed:
            present = set(train_df[feature.name].astype(str).unique())
            if missing := [str(v) for v in feature.allowed if str(v) not in present]:
                unseen[feature.name] = missing
    return unseen


#: Validation rows the global importance averages over at most (a seeded sample beyond): tree
#: SHAP takes about 90 s a million rows, for a summary of 19 means.
IMPORTANCE_ROWS = 20_000


def _global_importance(pipeline: Any, train_df: pd.DataFrame, valid_df: pd.DataFrame, folder: Path) -> None:
    """Log each feature's mean absolute contribution on the validation rows, as JSON and a bar plot.

    Optional, as serving treats explanations: an explainer that fails (shap, numba) is a
    warning and a run tag, never a failed run with nothing registered."""
    rows = valid_df if len(valid_df) <= IMPORTANCE_ROWS else valid_df.sample(IMPORTANCE_ROWS, random_state=0)
    try:
        explainer = explanation.Explainer(FastScorer(pipeline), model_mod.features(train_df))
        explained = explainer.explain_frame(model_mod.features(rows))
    except Exception as exc:  # noqa: BLE001 - shap refuses or breaks in many ways
        log.warning("no global importance for this run: %s: %s", type(exc).__name__, exc)
        mlflow.set_tag(TAG_IMPORTANCE_UNAVAILABLE, f"{type(exc).__name__}: {exc}"[:250])
        return
    importance = explanation.global_importance(explained)
    summary = {"method": explainer.method, "base": explainer.base, "rows": len(rows), "features": importance}
    json_path = folder / GLOBAL_IMPORTANCE_ARTIFACT.rsplit("/", 1)[1]
    json_path.write_text(json.dumps(summary, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [item["feature"] for item in reversed(importance)]
    values = [item["mean_abs_contribution"] for item in reversed(importance)]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.barh(names, values, color="#4c72b0")
    ax.set(title=f"Global importance ({explainer.method}, {len(rows)} validation rows)",
           xlabel="mean |contribution| to the log-odds of churn")  # fmt: skip
    fig.tight_layout()
    plot_path = folder / GLOBAL_IMPORTANCE_PLOT.rsplit("/", 1)[1]
    fig.savefig(plot_path, dpi=90)
    plt.close(fig)
    folder_name = GLOBAL_IMPORTANCE_ARTIFACT.rsplit("/", 1)[0]
    mlflow.log_artifact(str(json_path), folder_name)
    mlflow.log_artifact(str(plot_path), folder_name)


#: Fewest validation rows left once Production's own training rows are out to gate on them
#: alone: with fewer, an AUC's noise (about 0.05 on 90 rows) dwarfs the tolerance.
LEAST_UNSEEN_ROWS = 200


def _trained_on(production: ModelVersion, valid: pd.DataFrame) -> np.ndarray | None:
    """Which of ``valid`` Production learned from, matched on features; None when its run kept
    no readable training rows (the reference artifact) to match on. Not on the label too: in a
    retrain a customer's outcome may have changed since, and such rows stayed in, where
    Production, having learned the old label, got them wrong: the gate's slice was mostly them."""
    if not production.run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=production.run_id, artifact_path=REFERENCE_ARTIFACT,
                                                       dst_path=tmp)  # fmt: skip
            seen = pd.read_parquet(path, columns=list(FEATURE_NAMES))
        except Exception as exc:  # noqa: BLE001 - a version without the artifact (or another schema's): none left out
            if registry.is_connection_error(exc):
                raise
            return None
    return data_mod.row_keys(valid, label=False).isin(set(data_mod.row_keys(seen, label=False))).to_numpy()


def gated_frame(train: pd.DataFrame, gate_rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a version given its gate rows is trained and gated on: what its data digest hashes."""
    return pd.concat([train.reset_index(drop=True), gate_rows.reset_index(drop=True)], ignore_index=True)


def gate(
    client: mlflow.MlflowClient,
    model_name: str,
    valid: pd.DataFrame,
    candidate_proba: np.ndarray,
    tolerance: float,
    on: str = "this run's validation rows",
    *,
    candidate_tags: dict[str, str],
) -> GateVerdict:
    """Production and the candidate scored on the same validation rows, less those Production
    was trained on: a new seed, split or file puts some of them there, and Production scored
    on its own training rows refused a like-for-like boosting retrain by 0.02."""
    labels = valid[LABEL_COLUMN].to_numpy()
    production = registry.production_version(client, model_name)
    if production is None:
        candidate_auc = model_mod.evaluate(labels, candidate_proba, 0.5)[GATE_METRIC]
        return gate_mod.compare(candidate_auc, None, production_version=None, tolerance=tolerance, compared_on=on)
    refused = gate_mod.synthetic_over_real(candidate_tags, production.tags, int(production.version),
                                           tolerance=tolerance, compared_on=on)  # fmt: skip
    if refused:
        return refused
    try:
        seen = _trained_on(production, valid)
        keep = np.ones(len(valid), dtype=bool)
        if seen is None:  # said: the figures then favour Production by what it memorised
            on += (f" (none left out: Production v{production.version}'s run kept no readable {REFERENCE_ARTIFACT} "
                   "to tell its training rows by)")  # fmt: skip
        elif seen.any():
            left = int((~seen).sum())
            if left >= LEAST_UNSEEN_ROWS and gate_mod.judgeable(left, gate_mod.by_class(labels[~seen])):
                keep = ~seen
                on += f", less the {int(seen.sum())} Production v{production.version} was trained on ({left} left)"
            else:
                on += (f" ({int(seen.sum())} of them Production v{production.version}'s training rows, kept: "
                       f"{left} others are too few to judge on)")  # fmt: skip
        if few := gate_mod.too_few(int(keep.sum()), gate_mod.by_class(labels[keep]), int(production.version),
                                   tolerance=tolerance, compared_on=on):  # fmt: skip
            return few
        champion = mlflow.pyfunc.load_model(f"models:/{model_name}/{production.version}")
        champion_proba = np.asarray(champion.predict(model_mod.features(valid[keep])))[:, 1]
        champion_auc = model_mod.evaluate(labels[keep], champion_proba, 0.5)[GATE_METRIC]
    except Exception as exc:  # noqa: BLE001 - a champion we cannot score is a failed gate, not a crash
        if registry.is_connection_error(exc):  # a registry or store away is no verdict: register nothing, exit 3
            raise RegistryUnreachable(
                f"could not load Production v{production.version} to gate this run (nothing registered): "
                f"{str(exc)[:300]}"
            ) from exc
        return gate_mod.unscorable(int(production.version), exc, tolerance=tolerance, compared_on=on)
    candidate_auc = model_mod.evaluate(labels[keep], candidate_proba[keep], 0.5)[GATE_METRIC]
    return gate_mod.compare(
        candidate_auc, champion_auc, production_version=int(production.version), tolerance=tolerance, compared_on=on
    )


def train(
    config: TrainConfig,
    settings: Settings,
    *,
    frame: pd.DataFrame | None = None,
    gate_rows: pd.DataFrame | None = None,
    tags: dict[str, str] | None = None,
    built_from: dict[str, str] | None = None,
) -> TrainResult:
    """Run one training: the run becomes a new registered version of ``config.model_name``.

    Retraining hands in its own validated ``frame`` and the held-out ``gate_rows`` (recent
    customers, none of them in ``frame``) that validate the candidate and gate it against
    Production; ``tags`` go on the run and the version (trigger, window, row counts), and
    ``built_from`` describes where such a frame came from in the run's datasets (MLflow
    resolves no database URL as a source).
    """
    _check_config(config)
    described = CodeDatasetSource(built_from) if built_from else None  # a frame built here (retraining)
    source = _dataset_source(config.data) if config.data not in ("", SYNTHETIC) else f"synthetic(seed={config.seed})"
    if frame is None and config.from_features:
        from churn_platform import feature_store

        frame, used = feature_store.training_set(settings, config.labels)
        tags = {**used, **(tags or {})}
        source = _dataset_source(config.labels)  # the feature view and label times are in the tags
    elif frame is None:
        frame = load_training_data(config, settings)
    if gate_rows is None:
        train_df, valid_df = data_mod.split(frame, config.validation_size, config.seed)
    else:
        train_df, valid_df = frame.reset_index(drop=True), gate_rows.reset_index(drop=True)
        frame = gated_frame(train_df, valid_df)
    if len(train_df) < settings.monitor_min_rows:  # its training rows become the monitor's reference
        log.warning("training on %d rows: the drift monitor needs at least %d as its reference "
                    "(CHURN_MONITOR_MIN_ROWS) and will not judge this version once it serves",
                    len(train_df), settings.monitor_min_rows)  # fmt: skip
    if unseen := _unseen_categories(train_df):
        log.warning("no training row has %s: the model learns no weight for it, and the API, which accepts every "
                    "value the schema allows, scores such customers as if the feature were absent",
                    "; ".join(f"{name} {values}" for name, values in unseen.items()))  # fmt: skip
    client = registry.connect(settings)
    with registry.translate_errors(settings):
        registry.live_experiment(client)  # before the fit: a deleted experiment is refused at start_run
    threshold = config.decision_threshold or settings.decision_threshold

    pipeline = model_mod.build_pipeline(
        config.model_type,
        c=config.c,
        learning_rate=config.learning_rate,
        max_iter=config.max_iter,
        max_depth=config.max_depth,
        seed=config.seed,
    )
    pipeline.fit(model_mod.features(train_df), train_df[LABEL_COLUMN])
    valid_proba = pipeline.predict_proba(model_mod.features(valid_df))[:, 1]
    reference_proba = model_mod.out_of_fold(pipeline, model_mod.features(train_df), train_df[LABEL_COLUMN],
                                            data_mod.customer_keys(train_df), config.seed)  # fmt: skip
    if reference_proba is None:
        log.warning("one customer of a class among the training rows: the drift monitor's reference scores are "
                    "the model's own on its training rows, more confident than on new customers")  # fmt: skip
        reference_proba = pipeline.predict_proba(model_mod.features(train_df))[:, 1]
    metrics = model_mod.evaluate(valid_df[LABEL_COLUMN].to_numpy(), valid_proba, threshold)
    digest = data_mod.digest(frame)

    with registry.translate_errors(settings), mlflow.start_run() as run:
        run_id = run.info.run_id
        # Trained from the feature store, the data-generation parameters describe nothing that
        # was used; on the frame and gate rows retraining built (`data` says from what), neither
        # do the generator's nor the split's share.
        unused = {"decision_threshold", *((*DATA_OPTIONS, "drift") if config.from_features else ()),
                  *(("n_rows", "drift", "validation_size") if gate_rows is not None else ())}  # fmt: skip
        params = {k: v for k, v in asdict(config).items() if k not in unused}
        params["decision_threshold"] = threshold
        # Under `mlflow run` the launcher has logged the entry point's parameters already, as
        # typed (c=10, not 10.0): logging them again with another spelling is refused.
        given = mlflow.get_run(run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in given})
        mlflow.log_metrics(metrics)
        mlflow.log_metrics({"training_rows": len(train_df), VALIDATION_ROWS: len(valid_df)})  # the split's sizes
        # The threshold applied as a run tag too: under `mlflow run` its parameter reads '' (the default).
        mlflow.set_tags({TAG_DATA_DIGEST: digest, "model_name": config.model_name, TAG_THRESHOLD: str(threshold),
                         **(tags or {})})  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            reference = model_mod.features(train_df).assign(
                **{LABEL_COLUMN: train_df[LABEL_COLUMN].to_numpy(), PROBABILITY: reference_proba}
            )
            validation = valid_df.drop(columns=[ID_COLUMN], errors="ignore").assign(**{PROBABILITY: valid_proba})
            for frame_out, artifact in ((reference, REFERENCE_ARTIFACT), (validation, VALIDATION_ARTIFACT)):
                folder, file_name = artifact.rsplit("/", 1)
                # Row groups of a batch each: an API reads the reference batch by batch (loading.Reference).
                frame_out.to_parquet(tmp_path / file_name, index=False, row_group_size=explanation.CHUNK_ROWS)
                mlflow.log_artifact(str(tmp_path / file_name), folder)
            _plot(valid_df[LABEL_COLUMN].to_numpy(), valid_proba, tmp_path / "roc_calibration.png")
            mlflow.log_artifact(str(tmp_path / "roc_calibration.png"), "plots")
            _global_importance(pipeline, train_df, valid_df, tmp_path)

        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        mlflow.log_input(
            mlflow.data.from_pandas(train_df, source=described or source, name="train", targets=LABEL_COLUMN),
            context="training",
        )
        mlflow.log_input(
            mlflow.data.from_pandas(valid_df, source=described or source, name="validation", targets=LABEL_COLUMN),
            context="validation",
        )
        input_example = model_mod.features(valid_df).head(5)
        info = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_ARTIFACT,
            signature=signature(),
            input_example=input_example,
            pyfunc_predict_fn="predict_proba",
            serialization_format="skops",
            skops_trusted_types=model_mod.skops_trusted_types(pipeline),
            pip_requirements=_pip_requirements(),
        )
        run_tags = client.get_run(run_id).data.tags
        commit = run_tags.get("mlflow.source.git.commit") or _git_commit()
        version_tags = {
            TAG_DATA_DIGEST: digest,
            TAG_ROWS: str(len(frame)),
            TAG_ROC_AUC: f"{metrics[GATE_METRIC]:.6f}",
            TAG_THRESHOLD: str(threshold),
            TAG_MODEL_TYPE: config.model_type,
            TAG_TRAINING_DATA: (json.dumps(built_from) if built_from else source)[:500],
        }
        if commit:
            version_tags[TAG_GIT_COMMIT] = commit
        version_tags.update(tags or {})

        on = "this run's validation rows" if gate_rows is None else f"{len(valid_df)} held-out recent labelled rows"
        verdict = gate(client, config.model_name, valid_df, valid_proba, settings.promotion_tolerance, on,
                       candidate_tags=version_tags)  # fmt: skip
        mlflow.set_tags({"gate.passed": str(verdict.passed), "gate.reason": verdict.reason})
        version_tags[TAG_GATE] = verdict.reason[:250]
        if (figures := figures_tag(verdict)) is not None:  # promote prefers them while that Production holds
            version_tags[TAG_GATE_FIGURES] = figures
        # Register last, with every tag in the one call: only a run whose artifacts are stored and
        # whose gate was judged gets a version, and a failure cannot leave one without its
        # threshold (served at the default) or its training data (the synthetic guard off).
        version = int(mlflow.register_model(info.model_uri, config.model_name, tags=version_tags).version)
        # Checked too: with no Production there is nothing to challenge, and a Challenger set then
        # stayed on an unjudged version that `rollout start` served once a Production existed.
        result = TrainResult(run_id, config.model_name, version, metrics, verdict)
        if result.challenger:
            registry.set_challenger(client, config.model_name, version)
    log.info("registered %s v%s (%s %.4f)", config.model_name, version, GATE_METRIC, metrics[GATE_METRIC])
    return result
