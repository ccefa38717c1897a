from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before scikit-learn loads OpenMP: two xdist workers on two cores, each boosting fit's OpenMP
# threads took both cores and spun waiting on the other worker's (a Telco fit with its five
# out-of-fold fits: 67 s, against 16 s with one thread per worker).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from churn_platform.settings import get_settings  # noqa: E402
from tests.services import REPO, ServiceError, Stack, full_stack

# The real Telco customers, committed with the project (source and licence: data/README.md).
SHARED_CSV = REPO / "data" / "telco_churn.csv"


def pytest_configure(config: pytest.Config) -> None:
    """The tests' own MLflow calls skip Feast's plugin too: its import would set
    PROMETHEUS_MULTIPROC_DIR here, and every API process a test starts would inherit it."""
    from churn_platform import registry

    registry.skip_feast_plugin()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the apps a test builds in this process would share its files
        raise pytest.UsageError("unset PROMETHEUS_MULTIPROC_DIR to run the tests (serve --workers sets its own)")


#: What the project's commands write into the folder they run in (all behind .gitignore, so
#: unseen): a test run from the checkout must leave none of it there. Two tests wrote ./mlruns
#: for days before anyone looked.
_LEFT_BEHIND = ("mlruns", "mlartifacts", "mlflow.db", "inference_log.db", "inference_log_spool", "feature_store",
                "reports", "scores.parquet", "scores.csv")  # fmt: skip
_PRESENT = pytest.StashKey[set[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_PRESENT] = {name for name in _LEFT_BEHIND if (REPO / name).exists()}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run (once, in xdist's controller) when the tests left files in the checkout."""
    if hasattr(session.config, "workerinput"):
        return
    present = session.config.stash.get(_PRESENT, set(_LEFT_BEHIND))
    left = sorted(n for n in _LEFT_BEHIND if (REPO / n).exists() and n not in present)
    if left:
        if session.exitstatus == pytest.ExitCode.OK:  # an interrupted run or a usage error keeps its own
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"the tests left {', '.join(left)} in the checkout ({REPO}): some test wrote into its "
                   "working folder instead of its tmp_path (monkeypatch.chdir); remove it and run the test "
                   "modules one by one to find which")  # fmt: skip
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(f"ERROR: {message}", red=True, bold=True)


@pytest.fixture(scope="session")
def telco_csv() -> Path:
    """The real Telco data. A missing file fails the test (never skips): it is part of the repo."""
    if not SHARED_CSV.is_file():
        pytest.fail(f"the Telco data is missing: {SHARED_CSV} (committed as data/telco_churn.csv)", pytrace=False)
    return SHARED_CSV


@pytest.fixture(scope="session", autouse=True)
def spool_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every API the tests start (in process or as a child) spools its inference log here,
    not into ./inference_log_spool of the checkout; each database gets its own subfolder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHURN_INFERENCE_LOG_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))
        yield


@pytest.fixture(autouse=True)
def mlflow_uris_do_not_leak() -> Iterator[None]:
    """Commands run in-process (``registry.configure``) set MLflow's process-wide tracking and
    registry URIs, and MLflow copies them into ``os.environ``: a later test's subprocess
    (``mlflow run``, the CLI) would inherit ``MLFLOW_REGISTRY_URI`` and register its model in
    an earlier test's registry. Each test ends with both as they were before it."""
    with mlflow_uris_restored():
        yield


@pytest.fixture(autouse=True)
def no_heap_settling_in_the_test_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """An API built in this process settles the heap after each load (``serving.heap``): a full
    collection over this whole process, every earlier test's objects with it, not one API's.
    It was most of such tests' time, and grew with each module a worker had run. APIs started
    as processes still settle theirs; tests/unit/test_heap.py tests the function."""
    for module in ("serving.holder", "serving.features"):
        if module in sys.modules:
            monkeypatch.setattr(f"{module}.settle_heap", lambda: None)


@contextmanager
def mlflow_uris_restored() -> Iterator[None]:
    """Leave MLflow's process-wide URIs, and their copies in ``os.environ``, as they were."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # back to "read the environment"
        registry_utils._registry_uri = None  # no public reset; set_registry_uri("") would pin ""
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The real full stack, once per test session. Fails (never skips) when it cannot start."""
    try:
        with full_stack(tmp_path_factory.mktemp("services")) as running:
            yield running
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def stack_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Point this process's settings and MLflow client at the full stack."""
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield stack
    get_settings.cache_clear()


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set variables for this test's settings: they are read once per process, so the cache
    is cleared when they change and again when the test ends."""

    def set_variables(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    yield set_variables
    get_settings.cache_clear()


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The embedded default in a temporary folder: SQLite registry, local artifacts."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()


@dataclass
class Ran:
    """A CLI command run in this process, read as a process's would be."""

    returncode: int
    stdout: str
    stderr: str  # what the command wrote there, and the log lines it emitted


@pytest.fixture
def cli_in_process(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Ran]]:
    """Run ``churn-platform ARGS`` here with ``env``'s variables set (those it maps to None
    unset) for that command alone: a CLI process spends ~10 s importing before it works. Only
    where the process itself is not what a test is about; MLflow's client reads its credentials
    and TLS settings from the environment at each request, so each command gets its own. Its
    log lines (tracebacks included) go to pytest's capture: they are read back into ``stderr``."""
    from click.testing import CliRunner

    from churn_platform.cli import main

    def run(env: dict[str, str | None], *args: str) -> Ran:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                if value is None:
                    patch.delenv(key, raising=False)
                else:
                    patch.setenv(key, value)
            get_settings.cache_clear()
            caplog.clear()
            result = CliRunner().invoke(main, list(args))
        get_settings.cache_clear()
        return Ran(result.exit_code, result.stdout, result.stderr + caplog.text)

    yield run
    get_settings.cache_clear()


@pytest.fixture
def model_name() -> str:
    """A registered-model name no other test uses."""
    return f"churn-{uuid.uuid4().hex[:8]}"


def damage_first_page(path: Path) -> None:
    """Flip bytes inside the Parquet file's first data page, its footer intact: the file opens
    and names its columns, and fails only when that page's rows are read."""
    import pyarrow.parquet as pq

    raw = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    raw[start + 20 : start + 60] = bytes(b ^ 0xFF for b in raw[start + 20 : start + 60])
    path.write_bytes(raw)


def stop_spark() -> None:
    """End this process's Spark session and its JVM (~500 MB), so the next test that needs Spark
    starts a new JVM with its own settings (jars join the classpath only when a JVM starts)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession() or SparkSession._instantiatedSession  # noqa: SLF001
    if session is not None:
        session.stop()
    if SparkContext._gateway is not None:  # noqa: SLF001 - the JVM outlives its context unless shut down
        SparkContext._gateway.shutdown()  # noqa: SLF001
        SparkContext._gateway = SparkContext._jvm = None  # noqa: SLF001


def spark_s3_jars() -> str:
    """hadoop-aws and its AWS SDK, fetched by scripts/ensure-spark-jars.sh (`make test` runs it)."""
    jars = sorted((REPO / ".tools" / "spark-jars").glob("*.jar"))
    if len(jars) != 2:
        raise ServiceError("s3a jars missing: run scripts/ensure-spark-jars.sh (make test does)")
    return ",".join(str(j) for j in jars)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP endpoint for alert webhooks: its URL, and the JSON bodies posted to it."""
    import json
    from http.server import BaseHTTPRequestHandler

    from tests.services import http_server

    posted: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http_server(Hook) as url:
        yield f"{url}/hook", posted
