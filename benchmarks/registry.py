"""The benchmarks' throwaway registry: a fresh embedded one whose Production is the default
model trained on the project's Telco customers (synthetic ones when the file is missing)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def production_registry(prefix: str) -> tuple[Path, str]:
    """A new folder (the working directory from now on) and the URI of its registry, which
    this process and its children use (``MLFLOW_TRACKING_URI``)."""
    from mlflow import MlflowClient

    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    uri = f"sqlite:///{folder}/mlflow.db"
    telco = REPO / "data" / "telco_churn.csv"
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    result = train(TrainConfig(data=str(telco) if telco.exists() else "synthetic"), Settings(tracking_uri=uri))
    MlflowClient(uri, uri).set_registered_model_alias("churn", "Production", str(result.version))
    return folder, uri
