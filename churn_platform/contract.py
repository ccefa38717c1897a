"""Names that several parts of the platform must spell the same way.

Training writes these artifacts, tags and metrics; serving, monitoring and the CLI read
them back; the inference log and batch outputs carry these columns; every command exits
with these codes. One module, so a rename is one edit and nobody imports ``training``
just for a constant.
"""

from __future__ import annotations

from datetime import timedelta
from enum import IntEnum

#: How far ahead of ours a sender's clock may run: an outcome's time, a snapshot time (a row's or
#: ``--as-of``) up to this far in the future is taken, and ``features materialize`` reaches as far.
CLOCK_AHEAD = timedelta(minutes=5)

# ---------------------------------------------------------------- registry aliases

#: The version that serves. MLflow 3.17's UI alias editor lowercases what it saves, so
#: ``production`` (and ``challenger``) are read as pending UI promotions.
PRODUCTION_ALIAS = "Production"
#: The version that passed the gate against Production and may replace it.
CHALLENGER_ALIAS = "Challenger"

# ---------------------------------------------------------------- run artifacts

MODEL_ARTIFACT = "model"
#: Training features, label and scores: what the drift monitor compares production with.
REFERENCE_ARTIFACT = "reference/reference.parquet"
VALIDATION_ARTIFACT = "validation/validation.parquet"
#: Each feature's mean absolute contribution on the validation rows (``/model`` serves it).
GLOBAL_IMPORTANCE_ARTIFACT = "explanations/global_importance.json"
GLOBAL_IMPORTANCE_PLOT = "explanations/global_importance.png"
#: Run tag saying why a run has no global importance (its explainer failed).
TAG_IMPORTANCE_UNAVAILABLE = "explanations.unavailable"

# ---------------------------------------------------------------- model version tags

TAG_DATA_DIGEST = "data_digest"
TAG_ROWS = "training_rows"
TAG_GIT_COMMIT = "git_commit"
TAG_ROC_AUC = "roc_auc"
TAG_THRESHOLD = "decision_threshold"
TAG_MODEL_TYPE = "model_type"
TAG_GATE = "gate"
#: Where the training rows came from: ``synthetic(seed=N)``, a file or s3:// URI, a feature-store
#: labels file, or the inference log (retraining). The gate never lets synthetic replace real.
TAG_TRAINING_DATA = "training_data"
#: The training gate's figures (JSON): both versions scored on the candidate's validation rows
#: (less those Production was trained on, when enough are left).
TAG_GATE_FIGURES = "gate_figures"
#: On a monitor or performance run that does not judge Production's latest traffic (a file, a
#: pinned version or alias, a window with an --until, --all-versions): which options made it so. Such a
#: run neither pushes the metrics alerts read nor counts toward a retrain's trigger.
TAG_ADHOC = "adhoc"
#: On a monitor or performance run: when the evidence it judged starts (ISO 8601, UTC), the
#: first row for drift, the window's start for performance. After a retrain the gate refused,
#: only runs whose evidence starts after it count toward the next.
TAG_WINDOW_START = "window.start"
#: Registered-model tags of the audit trail: ``<prefix><ns>-<random>``.
AUDIT_TAG_PREFIX = "churn_platform.audit."

# ---------------------------------------------------------------- metrics and models

#: The validation metric the promotion gate compares.
GATE_METRIC = "roc_auc"
#: Run metric: how many rows a version was validated on (its gate's figure came from them).
VALIDATION_ROWS = "validation_rows"
#: Validation metrics shown beside a version (status, /model).
HEADLINE_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "f1")
#: Every validation metric a training run logs (``model.evaluate``): the performance job's baseline.
VALIDATION_METRICS: tuple[str, ...] = (
    "roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "precision", "recall", "f1",
)  # fmt: skip
#: Model types training can build (``model.build_pipeline``).
MODEL_TYPES: tuple[str, ...] = ("logistic", "hist_gradient_boosting")

# ---------------------------------------------------------------- prediction columns

PROBABILITY = "churn_probability"
WILL_CHURN = "will_churn"
RISK = "risk"
#: A prediction's explanation (``explain=true``): base log-odds and per-feature contributions.
EXPLANATION = "explanation"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORED_AT = "scored_at"
#: When a customer's features read from the online store were snapshotted (predictions by id).
FEATURES_AS_OF = "features_as_of"
#: Risk bands, lowest first; CHURN_RISK_MEDIUM_FROM and CHURN_RISK_HIGH_FROM separate them.
RISK_BANDS: tuple[str, ...] = ("low", "medium", "high")

# ---------------------------------------------------------------- the inference log

INFERENCE_LOG_TABLE = "inference_log"
REQUEST_ID = "request_id"
ROW_INDEX = "row_index"
#: Which arm of a rollout scored the row: ``production``, ``canary`` or ``shadow``.
ARM = "arm"
ARMS: tuple[str, ...] = ("production", "canary", "shadow")
#: A shadow or canary row's request id is the request's id plus this and its arm, so the two
#: scores of one customer pair up by (request id before the separator, row index).
ARM_SEPARATOR = "~"
#: What each logged row carries besides the customer's id, features and score
#: (``inference_log.COLUMNS`` lists them all; this module imports nothing of ours).
#: Milliseconds the model took to score the request (its part of it, in a canary), on each of its rows.
SCORING_MS = "scoring_ms"
INFERENCE_LOG_META: tuple[str, ...] = (REQUEST_ID, ROW_INDEX, SCORED_AT, MODEL_NAME, MODEL_VERSION, ARM, SCORING_MS)


# ---------------------------------------------------------------- outcomes (what customers did)

OUTCOMES_TABLE = "outcomes"
CHURNED = "churned"
OBSERVED_AT = "observed_at"
OUTCOME_SOURCE = "source"
INGESTED_AT = "ingested_at"


# ---------------------------------------------------------------- exit codes


class ExitCode(IntEnum):
    """Exit codes of every ``churn-platform`` command (and the jobs in the image)."""

    OK = 0
    #: A gate refused the change, or the monitor found drift.
    REFUSED = 1
    #: Batch scoring: some rows failed the schema and went to the rejects file.
    REJECTED_ROWS = 1
    #: Bad usage or input, a model, version, alias, file or window that does not exist, or access
    #: refused (registry credentials or permission, a database grant).
    USAGE = 2
    #: The registry, the object store or the inference-log database cannot be reached.
    UNREACHABLE = 3
    #: The current data failed the monitor's quality checks: no verdict on it.
    DATA_QUALITY = 4
    #: An unexpected failure (a bug, or an error no check foresaw): never read as a verdict.
    CRASHED = 70  # EX_SOFTWARE


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 a verdict against (gate refused, drift, degraded, no retrain; scored or feature rows "
    "rejected); 2 bad usage, bad input, not found or access refused; "
    "3 registry, storage or database unreachable; 4 bad data (no verdict; outcome rows rejected); "
    "70 unexpected failure (a bug)."
)

# ---------------------------------------------------------------- rollout

#: Registered-model tag holding the rollout state (JSON): every replica reads it.
ROLLOUT_TAG = "churn_platform.rollout"
#: The share of customers (percent) a canary may send to the Challenger: at least one, never all.
CANARY_PERCENT = (1, 99)
#: Audit-event actions of rollout changes (they never move Production themselves).
ROLLOUT_ACTIONS: tuple[str, ...] = ("rollout-start", "rollout-stop")
