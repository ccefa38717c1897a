"""Request and response bodies, generated from the customer schema (one source of truth)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from churn_platform.data import generate
from churn_platform.schema import FEATURES, ID_COLUMN, Feature


def _field(feature: Feature) -> tuple[Any, Any]:
    if feature.allowed is not None:
        return Literal[feature.allowed], Field(description=feature.description)  # type: ignore[valid-type]
    kind = int if feature.kind == "integer" else float
    return kind, Field(
        description=feature.description, ge=feature.minimum, allow_inf_nan=False, strict=kind is int
    )


def _example() -> dict[str, Any]:
    row = generate(1, seed=7).iloc[0].to_dict()
    row.pop("churn")
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


EXAMPLE_CUSTOMER = _example()

Customer = create_model(
    "Customer",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_CUSTOMER]}),
    **{ID_COLUMN: (str | None, Field(None, max_length=128, description="Your id; echoed back."))},
    **{f.name: _field(f) for f in FEATURES},
)


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"customers": [EXAMPLE_CUSTOMER]}]}
    )

    customers: list[Customer] = Field(min_length=1, description="1 to CHURN_MAX_BATCH_SIZE customers.")  # type: ignore[valid-type]


class Prediction(BaseModel):
    customer_id: str | None = None
    churn_probability: float = Field(ge=0, le=1)
    will_churn: bool
    risk: Literal["low", "medium", "high"]
    model_version: int


class BatchResponse(BaseModel):
    predictions: list[Prediction]
    model_version: int
    model_name: str


class Problem(BaseModel):
    """Every error body: what went wrong, in words, and where."""

    detail: str | list[dict[str, Any]]
    message: str
