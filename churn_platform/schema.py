"""The customer schema: the single source of truth for columns, types and categories.

Everything else derives from ``FEATURES``: the pandas dtypes used when loading, the
model's preprocessing, the MLflow signature, the API request model, the Evidently data
definition and the synthetic generator. Adding a column is a change to this file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from churn_platform.errors import DataValidationError

Kind = Literal["category", "integer", "float"]

#: Largest whole number a feature may hold: the inference log stores integer features in
#: 32-bit columns, so a larger value would be refused there after it was already scored.
INTEGER_MAX = 2**31 - 1
#: Largest charge: an overflow guard, far past any real bill (a value this size is a unit or
#: parsing error) and far below where the model's power transform overflows (training on
#: 1e200 crashed with a traceback).
CHARGE_MAX = 10**12

ID_COLUMN = "customer_id"
#: Longest customer id the API accepts and the inference log stores.
ID_MAX_LENGTH = 128
#: What an id may not hold, as a regex character range: control characters (C0, DEL, C1)
#: and the Unicode line and paragraph separators. PostgreSQL cannot store NUL at all, a tab
#: or newline in an id is a bug upstream, and the others are line breaks or invisible in a
#: log line (U+0085 alone was trimmed to no id after its prediction was answered under one).
ID_CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
ID_CONTROL_PROBLEM = "contains a control character (tab, newline, NUL...)"
#: How exports and clients spell an id they do not have (compared in lower case). Such a row
#: names no customer: scored, stored or joined as customer "NULL", it could only ever match
#: another row missing its id.
ID_PLACEHOLDERS = frozenset({"nan", "none", "null", "nil", "na", "n/a", "#n/a", "<na>", "undefined"})
ID_PLACEHOLDER_PROBLEM = "a placeholder for a missing id (NULL, N/A, nan...), no customer's"
LABEL_COLUMN = "churn"
#: Positive / negative label spellings accepted in files (the data set writes Yes/No).
LABEL_VALUES = {"yes": 1, "no": 0, "1": 1, "0": 0, "true": 1, "false": 0}

_YES_NO = ("Yes", "No")
_INTERNET_ADDON = ("Yes", "No", "No internet service")


@dataclass(frozen=True)
class Feature:
    """One model input column."""

    name: str
    kind: Kind
    description: str
    allowed: tuple[str, ...] | tuple[int, ...] | None = None
    minimum: float | None = None
    #: A float's largest value (an integer's is INTEGER_MAX).
    upper: int | None = None

    @property
    def maximum(self) -> int | None:
        return INTEGER_MAX if self.kind == "integer" else self.upper

    @property
    def is_numeric(self) -> bool:
        # senior_citizen is an integer flag: the model sees it as a number, not a category.
        return self.kind != "category"


FEATURES: tuple[Feature, ...] = (
    Feature("gender", "category", "Customer gender.", ("Female", "Male")),
    Feature("senior_citizen", "integer", "1 if the customer is 65 or older.", (0, 1)),
    Feature("partner", "category", "Has a partner.", _YES_NO),
    Feature("dependents", "category", "Has dependents.", _YES_NO),
    Feature("tenure", "integer", "Months as a customer (0 for new customers).", minimum=0),
    Feature("phone_service", "category", "Has phone service.", _YES_NO),
    Feature("multiple_lines", "category", "Has several phone lines.", ("Yes", "No", "No phone service")),
    Feature("internet_service", "category", "Internet service type.", ("DSL", "Fiber optic", "No")),
    Feature("online_security", "category", "Online security add-on.", _INTERNET_ADDON),
    Feature("online_backup", "category", "Online backup add-on.", _INTERNET_ADDON),
    Feature("device_protection", "category", "Device protection add-on.", _INTERNET_ADDON),
    Feature("tech_support", "category", "Tech support add-on.", _INTERNET_ADDON),
    Feature("streaming_tv", "category", "Streaming TV add-on.", _INTERNET_ADDON),
    Feature("streaming_movies", "category", "Streaming movies add-on.", _INTERNET_ADDON),
    Feature("contract", "category", "Contract term.", ("Month-to-month", "One year", "Two year")),
    Feature("paperless_billing", "category", "Uses paperless billing.", _YES_NO),
    Feature(
        "payment_method",
        "category",
        "How the customer pays.",
        (
            "Electronic check",
            "Mailed check",
            "Bank transfer (automatic)",
            "Credit card (automatic)",
        ),
    ),
    Feature("monthly_charges", "float", "Current monthly charge.", minimum=0, upper=CHARGE_MAX),
    Feature(
        "total_charges",
        "float",
        "Charges to date. Blank in the IBM file for tenure-0 customers: loaded as 0.0.",
        minimum=0,
        upper=CHARGE_MAX,
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
NUMERIC_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.is_numeric)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if not f.is_numeric)
#: Features of a fixed set of values (the categories and the integer flags): what the drift
#: monitor compares as categories, and the thresholds' check bounds as such.
ENUMERATED_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.allowed is not None)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
ALL_COLUMNS: tuple[str, ...] = (ID_COLUMN, *FEATURE_NAMES, LABEL_COLUMN)

#: pandas dtypes of validated frames.
PANDAS_DTYPES: dict[str, str] = {
    f.name: {"category": "object", "integer": "int64", "float": "float64"}[f.kind] for f in FEATURES
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_CANONICAL_BY_KEY: dict[str, str] = {_key(c): c for c in ALL_COLUMNS}


def canonical_column(name: str) -> str:
    """Map any spelling of a known column to its snake_case name; unknown names pass through.

    ``customerID``, ``customerid`` and ``customer_id`` all become ``customer_id``.
    """
    return _CANONICAL_BY_KEY.get(_key(name), str(name).strip())


def normalise_columns(columns: list[str], where: str = "") -> list[str]:
    """Canonical names for a header, refusing headers where two columns collide, except unnamed
    ones: a spreadsheet's export ends each line with ``,,``. (Callers read names beyond the
    schema's, such as ``observed_at``: any other collision is refused.) ``where``, the file,
    starts the message: a folder holds hundreds."""
    out = [canonical_column(c) for c in columns]
    seen: dict[str, str] = {}
    for original, new in zip(columns, out, strict=True):
        if new in seen and new:
            raise DataValidationError(f"{f'{where}: ' if where else ''}columns {seen[new]!r} and {original!r} "
                                      f"both mean {new!r}; keep only one")  # fmt: skip
        seen[new] = original
    return out
