"""The one settings object: every knob a user can turn, read from the environment.

Variables carry the ``CHURN_`` prefix, except the standard MLflow/AWS ones
(``MLFLOW_TRACKING_URI``, ``MLFLOW_S3_ENDPOINT_URL``, ``AWS_*``) which boto3 and the
MLflow client read themselves. Nothing is read at import time: call ``get_settings()``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from churn_platform.contract import PROBABILITY
from churn_platform.errors import SettingsError
from churn_platform.schema import ENUMERATED_FEATURES, FEATURE_NAMES

#: The embedded default: a SQLite registry in the working directory, no services needed.
EMBEDDED_TRACKING_URI = "sqlite:///mlflow.db"


#: The poll that brings every API worker to a new Production or rollout when ``serve --workers``
#: is above 1 and CHURN_RELOAD_POLL_S is unset (/admin/reload reaches one worker only).
MULTI_WORKER_POLL_S = 30.0


#: A scored row in the spool: its features with their names, as MessagePack (400 to 500 bytes).
_SPOOLED_ROW_BYTES = 500
#: Bounds of counts and sizes: past them a value overflowed a database integer or a
#: serializer later, mid-run (exit 70), where it is a typo at start-up.
_COUNT_MAX, _BYTES_MAX = 2**31 - 1, 2**62


class Settings(BaseSettings):
    # No setting means anything as inf or NaN (a drift threshold of inf would silence the monitor).
    model_config = SettingsConfigDict(env_prefix="CHURN_", extra="ignore", populate_by_name=True, allow_inf_nan=False)

    tracking_uri: str = Field(
        EMBEDDED_TRACKING_URI,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "CHURN_TRACKING_URI"),
        description="MLflow tracking server / registry URI.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "CHURN_S3_ENDPOINT_URL"),
        description="S3-compatible endpoint for s3:// data and artifacts (MinIO, moto).",
    )
    model_name: str = Field("churn", description="Registered model name.")
    registry_timeout_s: float = Field(10.0, gt=0, le=600, description="Seconds one registry HTTP request may take.")
    registry_max_retries: int = Field(
        1, ge=0, le=10, description="Retries of a failed registry request (MLflow default: 7)."
    )
    decision_threshold: float = Field(
        0.5, gt=0, lt=1,
        description="Probability at which a customer is predicted to churn: the default of a version's "
        "decision_threshold tag at training (and for a version without the tag).",
    )
    promotion_tolerance: float = Field(
        0.005,
        ge=0,
        le=0.1,  # a roc_auc difference, not a share: 0.5 would wave every candidate through
        description="How much lower a candidate's validation roc_auc may be than Production's (0 to 0.1).",
    )

    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as readable text or JSON lines (the image's default: json)."
    )
    access_log: bool = Field(
        False, description="The API logs one line per request (route, status, duration_ms); costs throughput."
    )

    # ---- serving
    api_host: str = Field("127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    admin_api_key: SecretStr | None = Field(
        None,
        description="Key for POST /admin/reload and POST /outcomes (header X-API-Key or Authorization: Bearer); "
        "unset disables both.",
        json_schema_extra={"secret": True},
    )
    max_batch_size: int = Field(1000, ge=1, le=_COUNT_MAX, description="Most customers in one POST /predict.")
    max_body_bytes: int = Field(4_000_000, ge=1024, le=_BYTES_MAX, description="Largest request body accepted.")
    risk_medium_from: float = Field(0.3, gt=0, lt=1, description="Probability where 'medium' risk starts.")
    risk_high_from: float = Field(0.6, gt=0, lt=1, description="Probability where 'high' risk starts.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS ('*' for any)."
    )
    reload_poll_s: float = Field(
        0, ge=0, le=86_400, description="Check the Production alias every N seconds and reload (0: never; "
        f"{MULTI_WORKER_POLL_S:g} when `serve --workers` is above 1 and it is unset)."
    )
    startup_backoff_max_s: float = Field(
        5, ge=0.1, le=86_400, description="Longest wait between attempts to load the model at startup."
    )
    verify_sample_rows: int = Field(
        500, ge=0, le=_COUNT_MAX, description="Reference rows the fast scorer is checked on before serving."
    )
    inference_log_url: str = Field(
        "sqlite:///inference_log.db",
        description="SQLAlchemy URL of the inference log (postgresql+psycopg2://... in production).",
        json_schema_extra={"secret": True},  # carries the database password
    )
    inference_log_batch_rows: int = Field(
        500, ge=1, le=_COUNT_MAX, description="Rows the API hands its log writer in one frame (the spool's unit; "
        "the database takes up to 20,000 a transaction)."
    )
    inference_log_flush_s: float = Field(
        1.0, ge=0.01, le=3600, description="Longest a scored row waits in the API before it goes to the log writer; "
        "its spool syncs to disk at least this often."
    )
    inference_log_queue_rows: int = Field(
        100_000, ge=1, le=_COUNT_MAX,
        description="Rows an API worker holds in memory for its log writer; beyond, rows are dropped."
    )
    inference_log_spool_dir: str = Field(
        "inference_log_spool",
        description="Folder where the log writer spools rows until the database has them (an emptyDir or PVC).",
    )
    inference_log_spool_max_bytes: int = Field(
        1 << 30, ge=1 << 20, le=_BYTES_MAX,
        description="Most bytes the spool may hold; past it, rows are dropped (and counted)."
    )

    # ---- feature store
    feature_store_url: str | None = Field(
        None,
        description="PostgreSQL URL holding the feature store's registry, offline source and online store; "
        "unset: an embedded store in CHURN_FEATURE_STORE_DIR.",
        json_schema_extra={"secret": True},  # carries the database password
    )
    feature_store_dir: str = Field(
        "feature_store", description="Folder of the embedded feature store (registry, SQLite online store, Parquet)."
    )
    features_max_age_days: float = Field(
        0, ge=0, le=3650, description="Oldest a customer's latest snapshot may be, in days, for a prediction by id "
        "(older: an error for that id; 0: any age). Each answer says when its snapshot was taken."
    )

    # ---- monitoring
    monitor_experiment: str = Field("churn-monitoring", description="MLflow experiment of monitoring runs.")
    monitor_drift_share: float = Field(
        0.15, gt=0, le=1, description="Share of drifted feature columns that means dataset drift."
    )
    monitor_column_threshold: float = Field(
        0.1, gt=0, description="Drift distance (Wasserstein / Jensen-Shannon) from which a column drifted."
    )
    monitor_column_thresholds: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Per-column overrides, e.g. 'tenure=0.05,contract=0.08' (churn_probability: the prediction's).",
    )
    monitor_critical_columns: Annotated[list[str], NoDecode] = Field(
        ["contract", "tenure"], description="Columns whose drift alone means drift (comma-separated)."
    )
    monitor_max_missing_share: float = Field(
        0.05, ge=0, le=1, description="Largest share of missing values a current column may have."
    )
    # Distances are biased upwards on small samples (docs/monitoring.md, **Drift**).
    monitor_min_rows: int = Field(
        1000, ge=1, le=_COUNT_MAX,
        description="Fewest rows worth comparing on each side (the window, the version's training rows); "
        "fewer is nothing to compare (exit 2).",
    )
    monitor_max_rows: int = Field(
        100_000,
        ge=100,
        le=_COUNT_MAX,
        description="Current rows (after the data checks) and training rows above this are sampled (seeded) "
        "before drift is compared; at least 1.1 x CHURN_MONITOR_MIN_ROWS.",
    )
    monitor_alert_webhook: str | None = Field(
        None,
        description="URL that receives the summary JSON (POST) on drift or data-quality failure (monitor) and "
        "degradation (performance).",
        json_schema_extra={"secret": True},  # a webhook's path is its secret (Slack, Teams, ...)
    )
    pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway the batch jobs push their results to (e.g. http://pushgateway:9091).",
    )

    # ---- outcomes and model performance
    outcome_horizon_days: int = Field(
        90, ge=1, le=3650,
        description="An outcome judges the customer's latest prediction made at most this many days before it.",
    )  # fmt: skip
    outcome_maturity_days: int = Field(
        0, ge=0, le=3650,
        description='A "no" outcome judges only a prediction made at least this many days before it (0: any); '
        "a churn judges any in the horizon. Under the horizon (docs/performance.md).",
    )  # fmt: skip
    performance_min_rows: int = Field(
        200, ge=1, le=_COUNT_MAX,
        description="Fewest labelled rows for a realized verdict (fewer: estimated quality only)."
    )
    retrain_min_rows: int = Field(
        500, ge=20, le=_COUNT_MAX,
        description="Fewest recent labelled customers a retrain needs (their latest outcome each); "
        "fewer: not retrained (exit 1). Its training part (all but the gate share) must also reach "
        "CHURN_MONITOR_MIN_ROWS: about 1,334 customers at the defaults, fewer with --base.",
    )
    performance_tolerance: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="ROC AUC below the training baseline minus this means the model degraded (a realized one also "
        "by more than chance: its 95% upper bound below the baseline).",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("monitor_critical_columns", mode="before")
    @classmethod
    def _critical(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("monitor_column_thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: Any) -> Any:
        return column_thresholds(value) if isinstance(value, str) else value

    @field_validator("monitor_critical_columns", mode="after")
    @classmethod
    def _critical_known(cls, value: list[str]) -> list[str]:
        return checked_features(value)

    @field_validator("monitor_column_thresholds", mode="after")
    @classmethod
    def _thresholds_known(cls, value: dict[str, float]) -> dict[str, float]:
        return checked_thresholds(value)

    @field_validator("monitor_column_threshold", mode="after")
    @classmethod
    def _default_reachable(cls, value: float) -> float:
        if value >= JS_DISTANCE_MAX:  # the default applies to the category columns too
            raise ValueError(f"{value} applies to the category columns too, whose drift distance (Jensen-Shannon) "
                             f"is at most {JS_DISTANCE_MAX:.4f}: it would never flag one; give a lower default "
                             "and a higher threshold per numeric column")  # fmt: skip
        return value

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, value: str) -> str:
        return checked_tracking_uri(value)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return checked_model_name(value)

    @field_validator("monitor_experiment")
    @classmethod
    def _experiment(cls, value: str) -> str:
        if not value.strip():  # MLflow refuses it only when the run is logged, after the whole check: exit 70
            raise ValueError("an experiment name cannot be blank")
        return value

    @field_validator("inference_log_url")
    @classmethod
    def _log_url(cls, value: str) -> str:
        return checked_log_url(value)

    @field_validator("feature_store_url", mode="before")
    @classmethod
    def _feature_store_url(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():  # set empty (compose's ${VAR:-}): the embedded store
            return None
        # Checked only when first used, a password's unescaped @ put the rest of it in /ready's
        # answer ("failed to resolve host 'word@db'"), and a port of 99999 was an outage (exit 3).
        from sqlalchemy.engine import make_url

        _database_url(value)
        if url_scheme(value) != "postgresql" or not make_url(value).database:
            raise ValueError("must be postgresql://user:password@host:port/database")
        return value

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _s3_endpoint(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # set empty: AWS's own endpoint, as when unset
            return None
        # `minio:9000` without a scheme was boto3's "Invalid endpoint", exit 70 mid-run.
        return checked_http_url(value) if isinstance(value, str) else value

    @field_validator("api_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip() or value != value.strip():  # uvicorn binds "" to every interface, silently
            raise ValueError("must be an address (127.0.0.1, 0.0.0.0, ::), not blank nor space-padded")
        return value

    @field_validator("inference_log_spool_dir", "feature_store_dir")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value.strip():  # the working directory, silently: the spool's segments among anything else
            raise ValueError("must name a folder, not be blank")
        return value

    @field_validator("reload_poll_s")
    @classmethod
    def _poll(cls, value: float) -> float:
        if 0 < value < 1:  # 0.001 asked the registry a thousand times a second
            raise ValueError("must be 0 (never) or at least 1 second")
        return value

    @field_validator("cors_origins", mode="after")
    @classmethod
    def _origins_checked(cls, value: list[str]) -> list[str]:
        for origin in value:
            # A browser sends `scheme://host[:port]`: anything else (no scheme, a path, a trailing
            # slash) never matched, and the site's calls failed CORS with nothing said here.
            if origin not in ("*", "null") and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is no origin: scheme://host[:port], without a path or slash, or '*'")
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        key = value.get_secret_value() if value else ""
        # Headers reach the API as latin-1 text, and HTTP trims their ends: a key with an "é" or
        # a trailing space never matched, and nothing said why every call was a 403.
        if key and not (key.isascii() and key.isprintable() and key == key.strip()):
            raise ValueError("must be printable ASCII, without spaces at either end (an HTTP header carries no "
                             "other key as it is set)")  # fmt: skip
        if key.lower().startswith("change-me"):  # .env.example's, public: anyone could post outcomes
            raise ValueError("is .env.example's placeholder: set a key of your own (openssl rand -hex 32)")
        return value

    @field_validator("monitor_alert_webhook")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        return checked_http_url(value) if value else value

    @field_validator("pushgateway_url")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        value = value.strip() if value else value  # blank: no pushes, as unset
        if value and "://" not in value:  # host:port, which prometheus_client takes as http://
            value = f"http://{value}"
        return checked_http_url(value) if value else None

    @model_validator(mode="after")
    def _pairs_in_order(self) -> Settings:
        if self.risk_medium_from >= self.risk_high_from:
            raise ValueError("CHURN_RISK_MEDIUM_FROM must be below CHURN_RISK_HIGH_FROM")
        if self.inference_log_queue_rows < self.max_batch_size:
            raise ValueError(
                f"CHURN_INFERENCE_LOG_QUEUE_ROWS ({self.inference_log_queue_rows}) must be at least "
                f"CHURN_MAX_BATCH_SIZE ({self.max_batch_size}): a full batch would never fit in the queue, "
                "and its rows were always dropped"
            )
        frame_rows = self.inference_log_batch_rows + self.max_batch_size  # a frame closes past batch_rows
        if frame_rows * _SPOOLED_ROW_BYTES > self.inference_log_spool_max_bytes:
            raise ValueError(
                f"CHURN_INFERENCE_LOG_SPOOL_MAX_BYTES ({self.inference_log_spool_max_bytes}) must hold a frame of "
                f"CHURN_INFERENCE_LOG_BATCH_ROWS + CHURN_MAX_BATCH_SIZE ({frame_rows}) rows at about "
                f"{_SPOOLED_ROW_BYTES} bytes each: a larger frame never fits, and its rows were always dropped"
            )
        if self.monitor_max_rows < 1.1 * self.monitor_min_rows:
            # The database's sample comes a few percent under its limit and rows with missing
            # values are dropped after it: every run would end with "fewer than the minimum".
            raise ValueError(
                f"CHURN_MONITOR_MAX_ROWS ({self.monitor_max_rows}) must be at least 1.1 x CHURN_MONITOR_MIN_ROWS "
                f"({self.monitor_min_rows}): the sample would never reach the minimum"
            )
        if self.outcome_maturity_days >= self.outcome_horizon_days:
            raise ValueError(
                f"CHURN_OUTCOME_MATURITY_DAYS ({self.outcome_maturity_days}) must be under "
                f"CHURN_OUTCOME_HORIZON_DAYS ({self.outcome_horizon_days}): a \"no\" would judge no prediction"
            )
        return self


def environment_variables() -> dict[str, tuple[object, str, bool]]:
    """Every variable the settings read: name -> (default, description, is secret).

    The README's configuration table and the deployment checks are derived from this.
    """
    out: dict[str, tuple[object, str, bool]] = {}
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, dict):
            default = ",".join(f"{k}={v}" for k, v in default.items())
        out[env_name(name)] = (default, field.description or "", bool(extra.get("secret")))
    return out


#: URI schemes MLflow's registry accepts (before any ``+driver``); '' is a local folder.
_TRACKING_SCHEMES = ("", "file", "http", "https", "postgresql", "mysql", "sqlite", "mssql")
#: MLflow's, which cannot hold this platform's models: every command failed with a traceback, exit 70.
_DATABRICKS_SCHEMES = ("databricks", "databricks-uc", "uc")
_DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")


@contextlib.contextmanager
def preserved_environment(*names: str) -> Iterator[None]:
    """Put ``names`` back as they were (set or not) after the block, whatever it set them to."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def url_scheme(uri: str) -> str:
    """A URI's scheme without its ``+driver``, lower-cased; '' for a plain path."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def redacted(uri: str) -> str:
    """``uri`` fit for a message or a log line: any password or token in it replaced by ``***``."""
    from urllib.parse import urlsplit

    try:
        bare, user, password = split_userinfo(uri)
        if user is None:
            return uri
        scheme, _, rest = bare.partition("://")
        if password is None:  # http://token@host: the user part is the secret (a database's user is not)
            return f"{scheme}://***@{rest}" if urlsplit(uri).scheme in ("http", "https") else uri
        return f"{scheme}://{urlsplit(uri).username}:***@{rest}"
    except ValueError:
        return f"{url_scheme(uri)}://***"


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without ``user:password@``, and the two (%-decoded; None when absent)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url, None, None
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return bare, unquote(parts.username), None if parts.password is None else unquote(parts.password)


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow store plugins (``azureml``, ...) add."""
    from importlib.metadata import entry_points

    groups = ("mlflow.tracking_store", "mlflow.model_registry_store")
    return {ep.name.lower() for group in groups for ep in entry_points(group=group)}


def _database_url(url: str) -> None:
    """Parse a SQLAlchemy URL; the message never quotes the URL nor the parser (which may
    echo part of a password that holds an unescaped ``@`` or ``:``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        if "@" in (parsed.host or ""):  # a password's unescaped @: the rest of it was read as the host, and shown
            raise ValueError("host holds @")
        if parsed.port is not None and not 1 <= parsed.port <= 65535:  # 99999 was an outage (exit 3), 0 a default
            raise ValueError("port out of range")
    except (ArgumentError, ValueError):
        raise ValueError(
            f"not a valid {url_scheme(url) or url.split(':', 1)[0]}:// URL: check the host and port (1 to 65535), and "
            "%-escape any @, : or / in the password"
        ) from None


def checked_http_url(url: str) -> str:
    """An http(s) URL with a host and a valid port: the client library would fail on it later, mid-job."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.port == 0:  # the parser takes it; no server listens there
            raise ValueError
    except ValueError:  # never the URL nor the parser's words, which quote a password cut at an unescaped / ? #
        raise ValueError("not a valid URL: check the host and port (a port is 1 to 65535), and %-escape any "
                         "@, :, /, ? or # in the password") from None  # fmt: skip
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.hostname.encode("idna")  # as resolving it does, mid-job
    except UnicodeError:
        raise ValueError("not a valid URL: its host has an empty part (..) or one over 63 characters") from None
    return url


def checked_tracking_uri(uri: str) -> str:
    """A URI MLflow can open: MLflow itself would fail with a traceback on a typo, at the first call."""
    from urllib.parse import urlsplit

    if not uri.strip():  # read as the current folder: "'' is a folder (MLflow's file store)"
        raise ValueError("empty (an unset shell variable?); give the registry's URI, e.g. http://mlflow:5000")
    # MLflow reads a scheme before a single slash too (`htp:/host`); one letter is a Windows drive.
    scheme = url_scheme(uri) if "://" in uri else urlsplit(uri).scheme.lower()
    scheme = "" if len(scheme) == 1 else scheme
    if not scheme and uri.strip().lower() in ("databricks", "databricks-uc"):  # MLflow's bare forms
        scheme = uri.strip().lower()
    if scheme in _DATABRICKS_SCHEMES:
        raise ValueError(f"{scheme!r}: Databricks' registries cannot serve this platform: the workspace registry "
                         "has no aliases (Production, Challenger), and Unity Catalog is a registry, not a tracking "
                         "server; point it at an MLflow server (http(s)://) or its database")  # fmt: skip
    if scheme not in _TRACKING_SCHEMES and scheme not in _plugin_schemes():
        raise ValueError(f"unsupported scheme {scheme!r}; MLflow takes http(s)://, postgresql://, "
                         "mysql:// or sqlite:///")  # fmt: skip
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")
    if scheme in ("", "file") and not allowed:
        path = Path(urlsplit(uri).path if scheme else uri).expanduser()
        if path.is_file() or path.suffix in (".db", ".sqlite", ".sqlite3"):  # a SQLite file named as a path
            raise ValueError(f"{uri!r} is a path, not a URI: name the SQLite file as sqlite:///{path.absolute()} "
                             "(four slashes before an absolute path)")  # fmt: skip
        raise ValueError(f"{uri!r} is a folder (MLflow's file store), which MLflow 3 refuses unless "
                         "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///mlflow.db for a registry on this machine")
    if scheme in ("http", "https"):
        checked_http_url(uri)
    elif scheme in _DATABASE_SCHEMES:
        _database_url(uri)
        # mysql:// without its driver was a ModuleNotFoundError traceback, exit 70
        _sync_driver(uri, "install it into this environment, or use postgresql+psycopg2:// (or sqlite:///)")
        if scheme == "sqlite":
            if _in_memory(uri):  # `train` registered a version, exit 0, into a registry gone with the process
                raise ValueError("an in-memory SQLite registry keeps nothing past this process: name a file, "
                                 "sqlite:///mlflow.db")  # fmt: skip
            _checked_sqlite_file(uri)
    return uri


def sqlite_file(uri: str) -> Path | None:
    """The file a ``sqlite:///`` URI opens, as SQLAlchemy and MLflow open it (relative to the
    working directory, ``~`` not expanded); None for an in-memory or ``file:`` database."""
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _checked_sqlite_file(uri: str, what: str = "registry") -> None:
    """A SQLite registry's (or log's) folder exists, and a file there is a SQLite database:
    MLflow makes the folders and an empty registry for a mistyped path, even for `status`,
    which then reports a model that does not exist; another file was a traceback. A mistyped
    log was an outage: the API spooled its rows for ever, a job exit 3."""
    path = sqlite_file(uri)
    if path is not None:
        if str(path).startswith("~"):  # SQLAlchemy and MLflow do not expand it: ./~/ would be made
            raise ValueError(f"{str(path)!r}: ~ is not expanded in a SQLite URI; give the full path")
        if not path.parent.is_dir():
            raise ValueError(f"no folder {path.parent} for the SQLite {what} (a typo?)"
                             + ("; MLflow would make an empty one" if what == "registry" else ""))  # fmt: skip
        try:
            with path.open("rb") as file:
                header = file.read(16)
        except FileNotFoundError:
            return  # a new registry
        except OSError as exc:
            raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
        if header and header != b"SQLite format 3\x00":
            raise ValueError(f"{path} is not a SQLite database")


def checked_log_url(url: str) -> str:
    """The inference log's database: PostgreSQL or SQLite, as a SQLAlchemy URL."""
    if url_scheme(url) not in ("postgresql", "sqlite"):
        raise ValueError(f"must be a postgresql:// or sqlite:/// URL, got scheme {url_scheme(url)!r}")
    _database_url(url)
    _sync_driver(url)
    if url_scheme(url) == "sqlite" and _in_memory(url):  # the writer's own, private: every row "written", none kept
        raise ValueError("an in-memory SQLite database keeps nothing another process can read: name a file, "
                         "sqlite:///path/inference_log.db")  # fmt: skip
    return url


def checked_log_file(url: str) -> str:
    """``checked_log_url``, and a SQLite log's folder exists and its file is a database: asked
    where the log is used (``serve``, ``--inference-log-url``), not by every command's settings
    (a laptop promoting with the API host's .env has no such folder, and needs none)."""
    checked_log_url(url)
    if url_scheme(url) == "sqlite":
        _checked_sqlite_file(url, "inference log")
    return url


def _in_memory(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    return not database or ":memory:" in database or "mode=memory" in database or parsed.query.get("mode") == "memory"


def _sync_driver(url: str, instead: str = "use postgresql+psycopg:// (or sqlite:///)") -> None:
    """A driver this install has and can use synchronously: ``postgresql+asyncpg://`` passed
    the scheme check, then failed at the first query as a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError

    parsed = make_url(url)
    driver = parsed.drivername
    try:
        dialect = parsed.get_dialect()
        if getattr(dialect, "is_async", False):
            raise ValueError(f"driver {driver!r} is asynchronous; use postgresql+psycopg:// (or sqlite:///)")
        dialect.import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise ValueError(f"driver {driver!r} is not installed; {instead}") from None


def checked_model_name(name: str) -> str:
    """A registered-model name MLflow accepts (it would refuse one only at registration, after training)."""
    import posixpath

    if not name.strip():
        raise ValueError("a model name cannot be empty")
    # '?' too: `models:/a?b/3` is read as a URL with a query, the logged model `a`.
    if any(c in name for c in "/:?") or any(ord(c) < 32 for c in name):
        raise ValueError(f"{name!r}: a model name cannot contain '/', ':', '?' or control characters")
    if posixpath.normpath(name) != name or name == "." or name.startswith(".."):
        raise ValueError(f"{name!r}: not a valid model name (MLflow refuses names that are relative paths)")
    if len(name) > 256:
        raise ValueError(f"a model name has at most 256 characters, got {len(name)}")
    if "'" in name and '"' in name:  # MLflow's search filters have no escape character
        raise ValueError(f"{name!r}: a model name cannot contain both ' and \" (MLflow's filters cannot quote it)")
    return name


def split_list(text: str) -> list[str]:
    """``'a, b,,c'`` -> ``['a', 'b', 'c']``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def checked_features(names: list[str]) -> list[str]:
    """``names`` if each is a feature column (the settings and the monitor's options share this rule)."""
    unknown = sorted(set(names) - set(FEATURE_NAMES))
    if unknown:
        raise ValueError(f"unknown columns {unknown}; features: {list(FEATURE_NAMES)}")
    return names


def checked_thresholds(thresholds: dict[str, float]) -> dict[str, float]:
    """Per-column drift thresholds: known columns, finite and above 0 (0 would make a column
    always drift, NaN never). The prediction's too: its drift alone is a drift verdict."""
    unknown = sorted(set(thresholds) - {*FEATURE_NAMES, PROBABILITY})
    if unknown:
        raise ValueError(f"unknown columns {unknown}; features: {list(FEATURE_NAMES)}, and {PROBABILITY} "
                         "(the prediction)")  # fmt: skip
    bad = {k: v for k, v in thresholds.items() if not 0 < v < float("inf")}
    if bad:
        raise ValueError(f"thresholds must be numbers above 0, got {bad}")
    if unreachable := {k: v for k, v in thresholds.items() if k in ENUMERATED_FEATURES and v >= JS_DISTANCE_MAX}:
        raise ValueError(f"{unreachable}: a category column's drift distance (Jensen-Shannon) is at most "
                         f"{JS_DISTANCE_MAX:.4f}, so that threshold never flags it; give a lower one")  # fmt: skip
    return thresholds


#: Evidently's Jensen-Shannon distance (natural log) between two distributions with nothing in
#: common: the most a category column can drift. A threshold at or above it turns its check off.
JS_DISTANCE_MAX = math.sqrt(math.log(2))


def column_thresholds(text: str) -> dict[str, float]:
    """``'tenure=0.05,contract=0.08'`` -> ``{'tenure': 0.05, 'contract': 0.08}``."""
    out: dict[str, float] = {}
    for part in split_list(text):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not column=number")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value.strip()!r} is not a number") from None
    return out


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return _env_names(field)[0]


def _env_names(field: str) -> list[str]:
    alias = Settings.model_fields[field].validation_alias
    return [str(a) for a in alias.choices] if isinstance(alias, AliasChoices) else [f"CHURN_{field.upper()}"]


#: ``CHURN_*`` variables that are no setting, read elsewhere: the image's role, the promotion
#: trail's actor, the overlays' training data, compose's image, the tests' PostgreSQL.
_READ_ELSEWHERE = frozenset({"CHURN_ROLE", "CHURN_ACTOR", "CHURN_DATA_URI", "CHURN_IMAGE", "CHURN_TEST_PG_HOST",
                             "CHURN_TEST_PG_PORT", "CHURN_TEST_PG_USER", "CHURN_TEST_PG_BIN"})  # fmt: skip


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A line for each ``CHURN_*`` variable in ``env`` that nothing reads, naming the setting it
    most likely meant: a misspelt one (``CHURN_MAX_BATCH_SZE``) was ignored in silence and left
    the default in force."""
    known = {name for field in Settings.model_fields for name in _env_names(field)} | _READ_ELSEWHERE
    lines = []
    for name in sorted(n for n in env if n.upper().startswith("CHURN_") and n.upper() not in known):
        meant = difflib.get_close_matches(name.upper(), sorted(known - _READ_ELSEWHERE), n=1, cutoff=0.75)
        hint = f" (did you mean {meant[0]}?)" if meant else ""
        lines.append(f"{name} is no setting of this release and is ignored{hint}")
    return lines


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings read from ``env`` alone, never this process's environment: the demo's own,
    whatever the shell that started it holds (a production promotion tolerance, say)."""
    values: dict[str, Any] = {}
    for field, info in Settings.model_fields.items():
        given = [env[name] for name in _env_names(field) if name in env]
        values[field] = given[0] if given else info.get_default(call_default_factory=True)
    return load_settings(**values)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (plus ``overrides``), or ``SettingsError`` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = str(error["loc"][0]) if error["loc"] else ""
            name = env_name(where) if where in Settings.model_fields else (where or "settings")
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {message}")
        raise SettingsError("bad configuration: " + "; ".join(problems)) from None


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return load_settings()
