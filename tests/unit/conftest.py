from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from churn_platform import data, logs, registry
from churn_platform.settings import Settings
from churn_platform.training import TrainConfig, train
from tests.conftest import mlflow_uris_restored


@contextmanager
def embedded_registry(folder: Path) -> Iterator[tuple[str, Settings]]:
    """A SQLite registry in ``folder`` to train into, MLflow's URIs restored afterwards."""
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp, mlflow_uris_restored():
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        settings = Settings(tracking_uri=uri)
        registry.configure(settings)
        yield uri, settings


@pytest.fixture(scope="session")
def registry_uri(tmp_path_factory, telco_csv):
    """One embedded registry for the module: telco v1 in Production, synthetic v2 not."""
    with embedded_registry(tmp_path_factory.mktemp("registry")) as (uri, settings):
        train(TrainConfig(data=str(telco_csv), model_name="churn"), settings)
        train(TrainConfig(n_rows=800, model_name="churn", seed=3), settings)
        MlflowClient(uri, uri).set_registered_model_alias("churn", "Production", "1")
    return uri


@pytest.fixture
def customers(telco_csv) -> pd.DataFrame:
    """Real Telco customers as a campaign tool would export them: no label column (batch scoring)."""
    return data.load(telco_csv).drop(columns=["churn"])


@pytest.fixture
def json_lines():
    """What the API's JSON log handler writes, captured."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.WithContext())
    access = logging.getLogger("churn.access")
    level = access.level
    access.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logging.getLogger().removeHandler(handler)
    access.setLevel(level)
