"""Parameters of a training run, kept apart from the training code so the CLI loads fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from churn_platform.contract import MODEL_TYPES
from churn_platform.errors import DataValidationError

#: ``--data`` value that generates customers instead of reading a file.
SYNTHETIC = "synthetic"


@dataclass
class TrainConfig:
    """Parameters of one training run (the MLproject ``train`` entry point's parameters)."""

    data: str = SYNTHETIC
    n_rows: int = 5000
    drift: bool = False
    model_type: str = "logistic"
    c: float = 1.0
    learning_rate: float = 0.05
    max_iter: int = 100
    max_depth: int = 3
    validation_size: float = 0.25
    seed: int = 42
    model_name: str = "churn"
    decision_threshold: float | None = None
    #: Build the training set from the feature store: ``labels`` (customer_id, label_time,
    #: churn) joined point-in-time to the features each customer had at the label's time.
    from_features: bool = False
    labels: str = ""


#: The options that choose the training rows, which ``--from-features`` chooses instead.
DATA_OPTIONS: tuple[str, ...] = ("data", "n_rows")
#: The options of generated customers, which a file's rows make meaningless.
GENERATOR_OPTIONS: tuple[str, ...] = ("n_rows", "drift")


#: TrainConfig fields no command takes (Python callers only): named as fields, not as flags.
_NO_FLAG = frozenset({"drift"})


def option_flag(name: str) -> str:
    """A TrainConfig field's command-line flag: ``n_rows`` -> ``--n-rows``; a field without
    one keeps its name (``drift``)."""
    return name if name in _NO_FLAG else f"--{name.replace('_', '-')}"


def data_with_features(given: list[str]) -> DataValidationError:
    """The refusal of data options (``given``: their names, of ``DATA_OPTIONS``) beside ``--from-features``."""
    flags = " and ".join(option_flag(name) for name in given)
    return DataValidationError(f"{flags} cannot be given with --from-features: its training rows "
                               "are the labelled customers, their features from the store")  # fmt: skip


def generated_only(given: list[str], data: str) -> DataValidationError:
    """The refusal of generator options (``n_rows``, ``drift``) beside a file: they were
    ignored in silence, and a run of 1000 rows asked for trained on the whole file."""
    flags = " and ".join(option_flag(name) for name in given)
    verb = "is" if len(given) == 1 else "are"
    return DataValidationError(f"{flags} {verb} read only with --data {SYNTHETIC} (generated customers): "
                               f"training on {data} uses every row it holds; cut the file to train on "
                               "fewer")  # fmt: skip


def check_parameter(key: str, value: Any) -> None:
    """Refuse a value no training run could use, naming the parameter: sklearn would refuse
    most of them only after the data is loaded, with a traceback."""
    if key == "model_type" and value not in MODEL_TYPES:
        raise DataValidationError(f"model_type {value!r} is not supported; choose one of {list(MODEL_TYPES)}")
    # 200: fewer leaves the validation side short of 5 churners at the default split (data.split).
    if key == "n_rows" and not 200 <= value <= 10_000_000:
        raise DataValidationError(f"n_rows must be from 200 to 10,000,000 (synthetic customers), got {value}")
    if key == "seed" and not 0 <= value < 2**32:
        raise DataValidationError(f"seed must be from 0 to 2**32 - 1 (numpy's range), got {value}")
    if key == "validation_size" and not 0 < value < 1:
        raise DataValidationError(f"validation_size must be between 0 and 1, got {value}")
    if key == "decision_threshold" and value is not None and not 0 < value < 1:
        raise DataValidationError(f"decision_threshold must be between 0 and 1, got {value}")
    if key == "c" and not 0 < value < float("inf"):
        raise DataValidationError(f"c must be a finite number above 0, got {value}")
    if key == "learning_rate" and not 0 < value <= 1:
        raise DataValidationError(f"learning_rate must be in (0, 1], got {value}")
    if key in ("max_iter", "max_depth") and not 1 <= value <= 100_000:
        raise DataValidationError(f"{key} must be from 1 to 100,000, got {value}")
