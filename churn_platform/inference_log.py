"""The inference log's table: one row per scored customer, one column per schema feature.

Declared once here: the API writes it, the monitor reads it.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import sqlalchemy as sa

from churn_platform.schema import FEATURES, ID_COLUMN, ID_MAX_LENGTH

_SA_TYPES = {"category": sa.String(64), "integer": sa.Integer(), "float": sa.Float()}


def table(metadata: sa.MetaData) -> sa.Table:
    """The ``inference_log`` table: one column per schema feature, so monitoring can read it back."""
    return sa.Table(
        "inference_log",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False, index=True),
        sa.Column(ID_COLUMN, sa.String(ID_MAX_LENGTH)),
        *(sa.Column(f.name, _SA_TYPES[f.kind]) for f in FEATURES),
        sa.Column("churn_probability", sa.Float(), nullable=False),
        sa.UniqueConstraint("request_id", "row_index", name="uq_inference_log_request_row"),
    )


def make_engine(url: str) -> sa.Engine:
    args: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        args["connect_args"] = {"connect_timeout": 3}
    return sa.create_engine(url, **args)


def sqlite_time(at: Any) -> str:
    """A UTC time as SQLAlchemy stores DateTime in SQLite, so typed queries compare correctly."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
