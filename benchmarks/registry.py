"""The benchmarks' throwaway registry: a fresh embedded one whose Production is the default
model trained on the project's Telco customers (synthetic ones when the file is missing)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def production_registry(prefix: str) -> tuple[Path, str]:
    """A new folder (the working directory from now on) and the URI of its registry, which
    this process and its children use (``MLFLOW_TRACKING_URI``). The caller removes the
    folder (``remove``); if training fails, it is removed here."""
    from mlflow import MlflowClient

    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        uri = f"sqlite:///{folder}/mlflow.db"
        telco = REPO / "data" / "telco_churn.csv"
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        result = train(TrainConfig(data=str(telco) if telco.exists() else "synthetic"), Settings(tracking_uri=uri))
        MlflowClient(uri, uri).set_registered_model_alias("churn", "Production", str(result.version))
    except BaseException:
        remove(folder)
        raise
    return folder, uri


def remove(folder: Path) -> None:
    """Delete a benchmark's throwaway folder, leaving it first if it is the working directory."""
    try:
        inside = Path.cwd().resolve().is_relative_to(folder.resolve())
    except OSError:  # the working directory is gone already
        inside = True
    if inside:
        os.chdir(REPO)
    shutil.rmtree(folder, ignore_errors=True)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that a benchmark's ``finally`` stops what it started.
    A ``SystemExit`` (status 128 + the signal), so no ``except Exception`` on the way swallows it."""


def terminate_raises() -> None:
    """Turn SIGTERM into ``Terminated`` (Ctrl-C is ``KeyboardInterrupt`` already)."""

    def handler(signum: int, frame: object) -> None:
        print(f"stopped by signal {signum}: stopping what this benchmark started", file=sys.stderr)
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
