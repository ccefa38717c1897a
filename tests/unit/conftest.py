from __future__ import annotations

import io
import json
import logging
import shutil
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


def registry_copy(registry_uri: str, folder: Path) -> str:
    """The session's registry copied into ``folder``, for a test that writes to it (the others
    keep it as it was): the copy's URI."""
    copy = folder / "mlflow.db"
    shutil.copy(registry_uri.removeprefix("sqlite:///"), copy)
    return f"sqlite:///{copy}"


def trained_versions(folder: Path, name: str, count: int) -> dict[int, Path]:
    """SQLite registries in ``folder`` holding v1 to vN of ``name`` (N = 1 to ``count``; seeds
    1 to N, 300 synthetic customers, none promoted), trained once for a module: a test copies
    the one it needs over its ``embedded`` registry (training was most of such tests' time)."""
    copies = {}
    with embedded_registry(folder) as (_, settings):
        for seed in range(1, count + 1):
            train(TrainConfig(n_rows=300, seed=seed, model_name=name), settings)
            copies[seed] = Path(shutil.copy(folder / "mlflow.db", folder / f"v1-v{seed}.db"))
    return copies


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
