"""The one settings object: every knob a user can turn, read from the environment.

Variables carry the ``CHURN_`` prefix, except the standard MLflow/AWS ones
(``MLFLOW_TRACKING_URI``, ``MLFLOW_S3_ENDPOINT_URL``, ``AWS_*``) which boto3 and the
MLflow client read themselves. Nothing is read at import time: call ``get_settings()``.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The embedded default: a SQLite registry in the working directory, no services needed.
EMBEDDED_TRACKING_URI = "sqlite:///mlflow.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHURN_", extra="ignore", populate_by_name=True)

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
    registry_timeout_s: float = Field(10.0, gt=0, description="Seconds one registry HTTP request may take.")
    registry_max_retries: int = Field(
        1, ge=0, le=10, description="Retries of a failed registry request (MLflow default: 7)."
    )
    decision_threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability at which a customer is predicted to churn."
    )
    promotion_tolerance: float = Field(
        0.005,
        ge=0,
        description="How much lower a candidate's validation roc_auc may be than Production's.",
    )


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
