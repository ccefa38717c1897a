"""Parameters of a training run, kept apart from the training code so the CLI loads fast."""

from __future__ import annotations

from dataclasses import dataclass

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
