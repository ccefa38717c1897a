"""Wrong command-line input gets one line naming the option and the problem, and the right
exit code: never a traceback, never a silent fallback, never a half-done job."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from churn_platform import data
from churn_platform.cli import main
from churn_platform.settings import get_settings

BANDS = (0.3, 0.6)
DEAD = "http://127.0.0.1:9"  # nothing listens: a command that got past its checks fails with 3


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("CHURN_MODEL_NAME", "CHURN_INFERENCE_LOG_URL", "CHURN_MONITOR_ALERT_WEBHOOK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "--version", "99999999999999999999"], "'--version': 99999999999999999999 is not in the range"),
        (["rollback", "--to", "3000000000"], "'--to': 3000000000 is not in the range 1<=x<=2147483647"),
        (["history", "--model-name", "a/b"], "'--model-name': 'a/b': a model name cannot contain '/'"),
        (["history", "--model-name", ""], "'--model-name': a model name cannot be empty"),
        (["history", "--model-name", 'o\'brien "x"'], "'--model-name': 'o\\'brien \"x\"': a model name cannot"),
        (["history", "--tracking-uri", "postgresql://:::"], "'--tracking-uri': not a valid postgresql:// URL"),
        (["history", "--tracking-uri", "foo://bar"], "'--tracking-uri': unsupported scheme 'foo'"),
        (["history", "--tracking-uri", "htp:/bad"], "'--tracking-uri': unsupported scheme 'htp'"),  # was exit 70
        (["history", "--tracking-uri", "mlruns"], "which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true"),
        (["history", "--tracking-uri", "file:///tmp/x"], "is a folder (MLflow's file store)"),
        (["history", "--tracking-uri", ""], "'--tracking-uri': empty (an unset shell variable?)"),
        (["status", "--tracking-uri", "sqlite:////no/such/dir/m.db"], "no folder /no/such/dir for the SQLite registry"),
        # Both were tracebacks, exit 70.
        (["status", "--tracking-uri", "mysql://u@127.0.0.1:9/x"], "driver 'mysql' is not installed"),
        # SQLAlchemy and MLflow do not expand ~: a ./~/ registry was made past the check.
        (["status", "--tracking-uri", "sqlite:///~/mlflow.db"], "~ is not expanded in a SQLite URI"),
        (["status", "--tracking-uri", f"sqlite:///{Path(__file__).resolve()}"], "is not a SQLite database"),
        (["monitor", "--rows", "99999999999999"], "'--rows': 99999999999999 is not in the range"),
        # Too few to leave 5 churners on the validation side: every such run is refused after generating.
        (["train", "--n-rows", "100"], "n_rows must be from 200 to 10,000,000 (synthetic customers), got 100"),
        (["monitor", "--alert-webhook", "http://:::"], "'--alert-webhook': not a valid URL"),
        (["monitor", "--current", "x.csv", "--rows", "10"], "--rows choose inference-log rows; not with --current"),
        (["monitor", "--current", "x.csv", "--last-hours", "2"], "--last-hours choose inference-log rows; not with"),
        (["monitor", "--since", "2026-02-01", "--last-hours", "2"], "give --since or --last-hours, not both"),
        (["monitor", "--last-hours", "0"], "'--last-hours': 0 is not in the range"),
        # nan passed click's range (every comparison with it is false): drift by share never fired.
        (["monitor", "--drift-share", "nan"], "'--drift-share': 'nan' is not a number"),
        (["retrain", "--gate-share", "NaN"], "'--gate-share': 'NaN' is not a number"),
        (["monitor", "--rows", "100"], "--rows 100 is below CHURN_MONITOR_MIN_ROWS (1000): never judged"),
        (["monitor", "--since", "2026-02-01", "--until", "2026-01-01"], "--since 2026-02-01 00:00:00 is not before"),
        (["performance", "--last-days", "99999999"], "'--last-days': 99999999 is not in the range 1<=x<=36500"),
        (["rollout", "status", "--inference-log-url", "postgresql://h:x/d"], "not a valid postgresql:// URL"),
        (["outcomes", "ingest", "x.csv", "--inference-log-url", "mysql://u@h/d"], "must be a postgresql:// or sqlite"),
        (["promote", "--version", "1", "--actor", "eve\nv9 -> v1"], "'--actor': must be a name on one line"),
        (["rollback", "--reason", "x" * 100_000], "'--reason': at most 2000 characters, got 100000"),
        (["rollback", "--reason", "caf\udce9"], "'--reason': is not valid UTF-8 text"),  # Latin-1 in UTF-8
        (["rollback", "--actor", "Jos\udce9"], "'--actor': is not valid UTF-8 text"),
        (["train", "--seed", "-1"], "seed must be from 0 to 2**32 - 1"),
        # Accepted, and logged as the run's data: the training set was the feature store's.
        (["train", "--from-features", "--labels", "l.csv", "--data", "synthetic"],
         "--data cannot be given with --from-features: its training rows"),
        (["train", "--from-features", "--labels", "l.csv", "--n-rows", "5000", "--data", "c.csv"],
         "--data and --n-rows cannot be given with --from-features"),
        # Ignored in silence: the run asked for 1000 rows trained on every row of the file.
        (["train", "--data", "c.csv", "--n-rows", "1000"], "--n-rows is read only with --data synthetic (generated"),
        (["demo", "--data", "c.csv", "--n-rows", "1500"], "training on c.csv uses every row it holds; cut the file"),
        (["train", "--c", "inf"], "c must be a finite number above 0, got inf"),
        (["train", "--model-name", "a:b"], "a model name cannot contain '/', ':'"),
        # Registered, then its versions could never be loaded: models:/a?b/3 names the logged model `a`.
        (["train", "--model-name", "a?b"], "'a?b': a model name cannot contain '/', ':', '?'"),
        (["score", "--input", "c.csv", "--output", "s.parquet", "--format", "csv"], "does not match --output"),
        # Parquet bytes under .txt, exit 0: every reader fooled.
        (["score", "--input", "c.csv", "--output", "s.txt"], "s.txt: files are written as CSV or Parquet here, not"),
        (["score", "--input", "c.csv", "--output", "s.csv", "--rejects", "r.json"], "r.json: files are written as"),
        (["score", "--input", "c.csv", "--output", "s.TSV"], "not .tsv; name a .csv or"),
        (["score", "--input", "c.csv", "--output", "s.parquet", "--top-k", "3"], "--top-k is read only with --explain"),
        (["score", "--input", "c.csv", "--output", "s.parquet", "--max-reject-share", "1"], "'--max-reject-share': 1"),
        (["score", "--input", "c.csv", "--output", "s.parquet", "--max-reject-share", "nan"], "is not a number"),
        # Found out after the work, as a traceback (exit 70), or an OverflowError:
        (["monitor", "--output-dir", "/dev/null/r"], "'--output-dir': /dev/null/r: /dev/null is not a folder"),
        (["performance", "--output-dir", "/dev/null"], "'--output-dir': /dev/null: /dev/null is not a folder"),
        # A parent the user may not enter (root enters all: a name too long fails the same way):
        # PermissionError while click read the options, a traceback and exit 1, read as "drift".
        (["monitor", "--output-dir", f"/tmp/{'x' * 300}/r"], f"/tmp/{'x' * 300}/r: File name too long"),
        (["performance", "--output-dir", f"/tmp/{'x' * 300}"], f"/tmp/{'x' * 300}: File name too long"),
        (["monitor", "--until", "0001-01-01", "--last-hours", "1"], "--last-hours 1 reaches before the year 1 from"),
        (["performance", "--until", "0001-01-01", "--last-days", "1"], "--last-days 1 reaches before the year 1 from"),
        (["monitor", "--inference-log-url", "postgresql+asyncpg://u@h/d"], "driver 'postgresql+asyncpg' is asynchr"),
        (["performance", "--inference-log-url", "postgresql+pg8000://u@h/d"], "driver 'postgresql+pg8000' is not inst"),
        # "is a folder (MLflow's file store)": a SQLite file named without sqlite:///.
        (["status", "--tracking-uri", "/tmp/x/mlflow.db"], "is a path, not a URI: name the SQLite file as sqlite:////tmp"),
        # A traceback (exit 70), and "output folder does not exist: .../example.com".
        (["outcomes", "ingest", "."], "data path is a directory, not a file: ."),
        (["outcomes", "ingest", "https://example.com/a.csv"], "read from a local path or an s3:// URI"),
        (["outcomes", "ingest", ""], "no data file named: the path is empty"),  # was "a directory, not a file: "
        # A traceback and exit 1 ("degraded"): before the year 1 once in UTC.
        (["performance", "--since", "0001-01-01T00:30:00+01:00"], "'--since': '0001-01-01T00:30:00+01:00' is out of"),
        (["features", "ingest", "c.csv", "--as-of", "0001-01-01T00:30:00+01:00"], "is out of range in UTC (years 1"),
        (["score", "--input", "", "--output", "s.parquet"], "no data file named"),  # read the current folder
        (["features", "ingest", ".", "--as-of", "modified"], "data path is a directory, not a file: ."),  # "not found"
        # The version was judged and --alias dropped in silence (score refuses the pair).
        (["performance", "--alias", "nosuch", "--version", "1"], "give --alias or --version, not both"),
        (["monitor", "--alias", "Staging", "--version", "2"], "give --alias or --version, not both"),
        # `--alias "$ALIAS"` with the variable unset: Production scored in silence.
        (["score", "--input", "c.csv", "--output", "s.parquet", "--alias", ""], "an alias cannot be empty"),
        (["monitor", "--alias", " "], "'--alias': an alias cannot be empty"),
        (["performance", "--alias", ""], "'--alias': an alias cannot be empty"),
        # Every row rejected one by one, exit 1, for a time no snapshot may have.
        (["features", "ingest", "c.csv", "--as-of", "1900-01-01"], "--as-of 1900-01-01T00:00:00+00:00 is before 1970"),
    ],
)
def test_wrong_input_is_one_clear_line_and_exit_2(args, message):
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, message in result.output) == (2, True), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@pytest.mark.timeout(120)  # a named pipe opened to be checked blocked for ever
def test_an_output_never_replaces_a_database_or_a_file_no_such_job_wrote(tmp_path):
    """A mistyped --rejects (or --output) replaced the inference log, the MLflow registry or a
    customer export, and said so only after: refused before anything is read or written. Nor a
    device or a pipe: as root, ``--output /dev/null`` replaced the device with the scores."""
    sqlite3.connect(tmp_path / "log.db").execute("CREATE TABLE inference_log (x)").connection.commit()
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "crm.csv").write_text("customer_id,churned\nz,Yes\n")
    (tmp_path / "c.csv").write_text("customer_id,tenure\nz,3\n")  # listed by score before its outputs are checked
    before = {name: (tmp_path / name).read_bytes() for name in ("log.db", "crm.csv")}
    database, foreign = "is a SQLite database (the MLflow registry, the inference log?)", "already holds a file"
    for args, message in (
        (["outcomes", "ingest", "c.csv", "--rejects", "log.db"], database),
        (["outcomes", "ingest", "c.csv", "--rejects", "crm.csv"], "(no row, reason columns)"),
        (["features", "ingest", "c.csv", "--as-of", "now", "--rejects", "log.db"], database),
        (["features", "ingest", "c.csv", "--as-of", "now", "--rejects", "crm.csv"], f"{foreign} this job"),
        (["score", "--input", "c.csv", "--output", "log.db"], database),
        (["score", "--input", "c.csv", "--output", "crm.csv"], "(no churn_probability column)"),
        (["score", "--input", "c.csv", "--output", "s.parquet", "--rejects", "crm.csv"], "(no row, reason columns)"),
        (["score", "--input", "c.csv", "--output", "pipe"], "--output pipe is not a regular file (a device or a pipe)"),
        (["outcomes", "ingest", "c.csv", "--rejects", "pipe"], "--rejects pipe is not a regular file"),
    ):
        result = CliRunner().invoke(main, args)
        assert (result.exit_code, message in result.output) == (2, True), (args, result.output)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_bad_variable_is_named_before_anything_runs(monkeypatch):
    monkeypatch.setenv("CHURN_INFERENCE_LOG_URL", "postgresql://u:secret@h:x/d")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2 and "CHURN_INFERENCE_LOG_URL: not a valid postgresql:// URL" in result.output
    assert "secret" not in result.output  # the URL carries the password: never echoed


def test_a_misspelt_variable_is_named_with_the_setting_it_meant(monkeypatch, caplog):
    """A typo (CHURN_MAX_BATCH_SZE) was ignored in silence: the default stayed in force."""
    monkeypatch.setenv("CHURN_MAX_BATCH_SZE", "5")
    monkeypatch.setenv("CHURN_ROLE", "api")  # the image's entrypoint reads it
    result = CliRunner().invoke(main, ["promote", "--help"])
    said = result.output + caplog.text
    assert result.exit_code == 0, said
    assert "CHURN_MAX_BATCH_SZE is no setting of this release and is ignored (did you mean CHURN_MAX_BATCH_SIZE?)" \
        in said
    assert "CHURN_ROLE" not in said


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # The password's @ made the rest of it the host, printed in the "unreachable" message, exit 3.
        ("MLFLOW_TRACKING_URI", "postgresql://u:pass@word99@127.0.0.1:1/x", "not a valid postgresql:// URL"),
        ("CHURN_INFERENCE_LOG_URL", "postgresql://u:pass@word99@127.0.0.1:1/x", "not a valid postgresql:// URL"),
        ("CHURN_MONITOR_EXPERIMENT", " ", "an experiment name cannot be blank"),  # monitor ran, then exit 70
        ("CHURN_PUSHGATEWAY_URL", "http://:::", "not a valid URL"),  # was never checked
        ("CHURN_PUSHGATEWAY_URL", "http://pushgateway:0", "not a valid URL"),  # every push failed, logged
        # httpx raised UnicodeError resolving it: a drift verdict became exit 70.
        ("CHURN_MONITOR_ALERT_WEBHOOK", "https://hooks..example.com/T0/B0/word99", "not a valid URL: its host has"),
        # The parser's own words quoted the password up to an unescaped / or ?
        ("CHURN_PUSHGATEWAY_URL", "http://admin:word99/x@pushgateway:9091", "not a valid URL"),
        ("MLFLOW_TRACKING_URI", "https://admin:word99?x@mlflow:5000", "not a valid URL"),
        # Headers arrive as latin-1 text: every call with it was a 403 "wrong API key".
        ("CHURN_ADMIN_API_KEY", "clé-word99", "must be printable ASCII"),
        ("CHURN_ADMIN_API_KEY", "word99 ", "must be printable ASCII, without spaces at either end"),
        # .env.example's own, public: compose started the API with it, and anyone could post outcomes.
        ("CHURN_ADMIN_API_KEY", "change-me-admin-key-word99", "is .env.example's placeholder"),
        # Each was accepted, then: the API on every interface; the password's tail in /ready's answer;
        # exit 70 (boto3, an integer overflow); a registry gone with the process; a thousand registry
        # calls a second; CORS calls that never matched; a spool in the working directory; rows
        # spooled for ever to a folder that does not exist.
        ("CHURN_API_HOST", "", "must be an address"),
        ("CHURN_FEATURE_STORE_URL", "postgresql://u:s3cr@word99@nohost/f", "not a valid postgresql:// URL"),
        ("CHURN_FEATURE_STORE_URL", "postgresql://u:word99@db:99999/f", "not a valid postgresql:// URL"),
        ("CHURN_FEATURE_STORE_URL", "mysql://u:word99@db/f", "must be postgresql://user:password@host:port/database"),
        ("MLFLOW_S3_ENDPOINT_URL", "minio:9000", "must be an http:// or https:// URL with a host"),
        ("CHURN_MONITOR_MAX_ROWS", "99999999999999999999", "Input should be less than or equal to 2147483647"),
        ("CHURN_INFERENCE_LOG_SPOOL_MAX_BYTES", "99999999999999999999", "Input should be less than or equal to"),
        ("MLFLOW_TRACKING_URI", "sqlite:///:memory:", "an in-memory SQLite registry keeps nothing"),
        ("CHURN_RELOAD_POLL_S", "0.001", "must be 0 (never) or at least 1 second"),
        ("CHURN_INFERENCE_LOG_FLUSH_S", "0.000001", "Input should be greater than or equal to 0.01"),
        ("CHURN_CORS_ORIGINS", "https://app.example,localhost:3000", "'localhost:3000' is no origin"),
        ("CHURN_INFERENCE_LOG_SPOOL_DIR", " ", "must name a folder"),
    ],
)
def test_a_bad_setting_is_refused_at_start_up_without_echoing_it(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2 and f"{variable}: {message}" in result.output, result.output
    assert "word99" not in result.output


def test_origins_of_apps_that_are_not_websites_are_origins_too():
    """A hybrid mobile app (capacitor://localhost) or a sandboxed page (null) sends these."""
    from churn_platform.settings import load_settings

    origins = ["https://app.example:8443", "capacitor://localhost", "chrome-extension://abcdef", "null", "*"]
    assert load_settings(cors_origins=",".join(origins)).cors_origins == origins


@pytest.mark.integration
def test_a_registry_database_that_does_not_exist_is_not_found_not_unreachable():
    """The server answered, naming the database: exit 3 had a scheduler retry a typo."""
    from tests.services import PG_HOST, PG_PORT, PG_USER

    uri = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/churn_no_such_registry"
    result = CliRunner().invoke(main, ["history", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert 'database "churn_no_such_registry" does not exist; check MLFLOW_TRACKING_URI' in result.output


def test_a_monitor_sample_limit_under_its_minimum_is_refused_at_start_up(monkeypatch):
    """Every monitor run sampled 500 rows, then ended "at least 1000 are needed", naming the wrong setting."""
    monkeypatch.setenv("CHURN_MONITOR_MAX_ROWS", "1050")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2, result.output
    assert "CHURN_MONITOR_MAX_ROWS (1050) must be at least 1.1 x CHURN_MONITOR_MIN_ROWS (1000)" in result.output


def test_a_log_queue_smaller_than_a_batch_is_refused_at_start_up(monkeypatch):
    """Every batch larger than the queue was dropped, however empty the queue."""
    monkeypatch.setenv("CHURN_INFERENCE_LOG_QUEUE_ROWS", "500")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2, result.output
    assert "CHURN_INFERENCE_LOG_QUEUE_ROWS (500) must be at least CHURN_MAX_BATCH_SIZE (1000)" in result.output


def test_a_maturity_as_long_as_the_horizon_is_refused_at_start_up(monkeypatch):
    """A "no" would then judge no prediction: every realized figure would rest on churns alone."""
    monkeypatch.setenv("CHURN_OUTCOME_HORIZON_DAYS", "30")
    monkeypatch.setenv("CHURN_OUTCOME_MATURITY_DAYS", "30")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2, result.output
    assert "CHURN_OUTCOME_MATURITY_DAYS (30) must be under CHURN_OUTCOME_HORIZON_DAYS (30)" in result.output


def test_a_spool_cap_smaller_than_a_frame_is_refused_at_start_up(monkeypatch):
    """A frame of 2,600 rows is over 1 MiB: with that cap it never fitted, and every such frame
    was dropped with the spool empty and the database up."""
    monkeypatch.setenv("CHURN_INFERENCE_LOG_SPOOL_MAX_BYTES", str(1 << 20))
    monkeypatch.setenv("CHURN_MAX_BATCH_SIZE", "5000")
    monkeypatch.setenv("CHURN_INFERENCE_LOG_QUEUE_ROWS", "100000")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2, result.output
    assert ("CHURN_INFERENCE_LOG_SPOOL_MAX_BYTES (1048576) must hold a frame of CHURN_INFERENCE_LOG_BATCH_ROWS + "
            "CHURN_MAX_BATCH_SIZE (5500) rows") in result.output  # fmt: skip
    monkeypatch.setenv("CHURN_MAX_BATCH_SIZE", "1000")  # the defaults fit the smallest cap
    get_settings.cache_clear()
    assert "SPOOL_MAX_BYTES" not in CliRunner().invoke(main, ["history"]).output


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:log?mode=memory&uri=true", "sqlite:///file::memory:?cache=shared&uri=true"]
)
def test_an_in_memory_inference_log_is_refused(monkeypatch, url):
    """The writer kept the rows in its own memory: counted as written, readable by no one."""
    monkeypatch.setenv("CHURN_INFERENCE_LOG_URL", url)
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2, result.output
    assert "CHURN_INFERENCE_LOG_URL" in result.output and "in-memory SQLite" in result.output


@pytest.mark.parametrize("name", ["CHURN_INFERENCE_LOG_FLUSH_S", "CHURN_RELOAD_POLL_S", "CHURN_REGISTRY_TIMEOUT_S"])
def test_a_wait_too_long_for_a_timer_is_refused_by_name(monkeypatch, name):
    """1e10 s passed `gt=0` and then raised OverflowError in the thread that waits on it."""
    monkeypatch.setenv(name, "1e10")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2, result.output
    assert name in result.output and "less than or equal" in result.output


def test_an_infinite_setting_is_refused_by_name(monkeypatch):
    """A drift threshold of inf passed `gt=0`: the monitor could never report drift again."""
    monkeypatch.setenv("CHURN_MONITOR_COLUMN_THRESHOLD", "inf")
    result = CliRunner().invoke(main, ["history"])
    assert result.exit_code == 2 and "CHURN_MONITOR_COLUMN_THRESHOLD" in result.output, result.output
    assert "finite number" in result.output and "Traceback" not in result.output


def test_the_demo_promotes_with_its_own_settings_not_the_callers(monkeypatch, tmp_path):
    """Its children dropped the caller's CHURN_* but its own promote step read them: a
    production shell's tolerance changed the demo's gate verdicts."""
    from churn_platform.demo import Demo

    monkeypatch.setenv("CHURN_PROMOTION_TOLERANCE", "0.1")
    monkeypatch.setenv("CHURN_REGISTRY_TIMEOUT_S", "99")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    demo = Demo(folder=tmp_path, data="synthetic", n_rows=200, traffic=100, keep_running=False,
                env={"MLFLOW_TRACKING_URI": uri, "CHURN_REGISTRY_MAX_RETRIES": "1"})  # fmt: skip
    _, _, settings = demo.registry()
    assert (settings.promotion_tolerance, settings.registry_timeout_s) == (0.005, 10.0)
    assert (settings.tracking_uri, settings.registry_max_retries) == (uri, 1)


def test_json_output_is_strict_json_when_a_metric_is_nan(embedded):
    """A metric logged as NaN was printed as NaN: not JSON to any parser but Python's."""
    import mlflow
    from mlflow import MlflowClient

    with mlflow.start_run() as run:
        mlflow.log_metrics({"roc_auc": 0.8, "f1": float("nan")})
    client = MlflowClient()
    client.create_registered_model("churn")
    client.create_model_version("churn", source=run.info.artifact_uri, run_id=run.info.run_id)
    client.set_registered_model_alias("churn", "Production", "1")

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for command in ("status", "versions"):
        result = CliRunner().invoke(main, [command, "--json"])
        assert result.exit_code == 0, result.output
        text = result.stdout[result.stdout.index("{") :]
        assert '"f1": null' in text and json.loads(text, parse_constant=refuse), command


@contextlib.contextmanager
def answering(code: int, body: bytes) -> Iterator[str]:
    """A web server that is not MLflow, answering every GET with ``code`` and ``body``."""
    import http.server

    from tests.services import http_server

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Other) as url:
        yield url


@pytest.mark.parametrize(("code", "body"), [(404, b"Not Found"), (200, b'{"status": "ok"}')])
def test_a_tracking_uri_naming_another_server_says_so(code, body):
    """A plain web server (or the API's port) made every registry call a 404: exit 70. It
    answered, so the URI is to mend: exit 2, not a retry."""
    with answering(code, body) as uri:
        result = CliRunner().invoke(main, ["status", "--tracking-uri", uri, "--json"])
    assert result.exit_code == 2, result.output
    assert f"{uri} is not an MLflow tracking server (GET /health answered HTTP {code}" in result.output
    assert json.loads(result.stdout)["exit_code"] == 2


def test_a_redirect_from_health_is_left_to_the_mlflow_client():
    """An ingress to HTTPS or a login proxy redirects; the MLflow client follows it, as before."""
    from churn_platform import registry
    from churn_platform.settings import Settings

    with answering(308, b"") as uri:
        assert registry.check_reachable(Settings(tracking_uri=uri)) is None


def test_a_misspelt_sqlite_registry_is_named_missing_and_never_made(tmp_path):
    """MLflow made an empty 950 KB registry for the typo and said the model did not exist."""
    typo = tmp_path / "mlfow.db"
    data.generate(5, seed=1).drop(columns=["churn"]).to_csv(tmp_path / "in.csv", index=False)  # headers pass
    for command in (["status"], ["history"], ["rollback"], ["rollout", "status"],
                    ["score", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")],
                    ["monitor"], ["performance"]):  # fmt: skip
        result = CliRunner().invoke(main, [*command, "--tracking-uri", f"sqlite:///{typo}"])
        assert result.exit_code == 2 and f"no MLflow registry at {typo}: train a model first" in result.output
    assert not typo.exists()
    # A reused --output-dir: yesterday's verdict must not read as this run's (it did, the
    # registry being checked before the old report was cleared).
    for command in ("monitor", "performance"):
        old = tmp_path / command
        old.mkdir()
        (old / "summary.json").write_text('{"model_name": "churn", "model_version": 1, "created_at": "t"}')
        (old / "report.html").write_text("<html><head></head>ok</html>")  # an earlier release's: no mark
        result = CliRunner().invoke(main, [command, "--tracking-uri", f"sqlite:///{typo}", "--output-dir", str(old)])
        assert result.exit_code == 2 and sorted(old.iterdir()) == [], (result.output, sorted(old.iterdir()))


@pytest.mark.timeout(120)  # a named pipe opened to be checked blocks for ever
def test_a_reused_output_dir_keeps_files_no_monitoring_run_wrote(tmp_path):
    """``--output-dir .`` removed the user's own summary.json and report.html before the run
    (and overwrote them after): refused, both kept. A run's own files are replaced."""
    from monitoring.runs import GENERATOR

    foreign = {"summary.json": '{"accounts": 3}', "report.html": "<html><head></head>Q3 board pack</html>"}
    for name, text in foreign.items():
        for command in ("monitor", "performance"):
            folder = tmp_path / f"{command}-{name}"
            folder.mkdir()
            (folder / name).write_text(text)
            result = CliRunner().invoke(main, [command, "--output-dir", str(folder)])
            assert result.exit_code == 2, result.output
            assert f"it holds a {name} that no monitoring run wrote; choose another folder" in result.output
            assert (folder / name).read_text() == text
    (tmp_path / "piped").mkdir()
    os.mkfifo(tmp_path / "piped" / "summary.json")  # opened to be read, it would block for ever
    result = CliRunner().invoke(main, ["performance", "--output-dir", str(tmp_path / "piped")])
    assert result.exit_code == 2 and "summary.json is not a regular file" in result.output, result.output
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "report.html").write_text(f"<html><head>{GENERATOR}</head>drift</html>")  # its summary was not written
    result = CliRunner().invoke(main, ["monitor", "--output-dir", str(ours),
                                       "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])  # fmt: skip
    assert "--output-dir" not in result.output and sorted(ours.iterdir()) == [], result.output


def test_a_sqlite_file_that_is_no_registry_is_refused_and_left_as_it_was(tmp_path):
    """Two swapped URLs: MLflow made its 66 tables in the inference log, and the API said the
    model's Production alias was missing. An empty file is no registry to read either."""
    log = tmp_path / "inference_log.db"
    sqlite3.connect(log).execute("CREATE TABLE inference_log (x)").connection.commit()
    (tmp_path / "empty.db").touch()
    before = log.read_bytes()
    for args in (["status"], ["train", "--n-rows", "300"], ["history"]):
        result = CliRunner().invoke(main, [*args, "--tracking-uri", f"sqlite:///{log}"])
        assert result.exit_code == 2, result.output
        assert f"{log} is a SQLite database without MLflow's tables (it holds inference_log: the inference log)" \
            in result.output
    assert log.read_bytes() == before
    result = CliRunner().invoke(main, ["status", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 2 and "(an empty file): train a model first" in result.output, result.output
    assert (tmp_path / "empty.db").stat().st_size == 0
    # MLflow's first tables, while another process sets the registry up (registered_models
    # comes seconds later, in a migration): a registry, not a foreign file.
    from churn_platform.registry import refuse_foreign_sqlite

    starting = sqlite3.connect(tmp_path / "starting.db")
    starting.executescript("CREATE TABLE alembic_version (x); CREATE TABLE experiments (x);")
    starting.close()
    refuse_foreign_sqlite(f"sqlite:///{tmp_path / 'starting.db'}", existing=True)


@pytest.mark.timeout(120)
def test_a_locked_sqlite_registry_is_unreachable_exit_3_not_a_bug(tmp_path):
    """Another process holding the file (a migration, a backup): exit 70, "a bug", and in the
    API a broken model that ended the canary on the replica that met it."""
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert CliRunner().invoke(main, ["train", "--n-rows", "300", "--tracking-uri", registry]).exit_code == 0
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = CliRunner().invoke(main, ["status", "--tracking-uri", registry])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 3, result.output
    assert f"MLflow registry at {registry} is unreachable: (sqlite3.OperationalError) database is locked" \
        in result.output



def test_a_failed_launched_job_tags_its_run_but_never_makes_a_registry(tmp_path, monkeypatch):
    """Under `mlflow run`, a failed job tags its run with the error. Not in a registry file
    that is not there (a typo, a relative path): MLflow made one (950 KB) to hold the tag."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///typo.db")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2 and "no MLflow registry at" in result.output, result.output
    assert not (tmp_path / "typo.db").exists()
    # A registry that is there: the launched run gets the error; an answer (exit 1) is no error.
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(registry)
    run = client.create_run(client.create_experiment("jobs")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry)
    try:
        from churn_platform import registry as registry_mod

        registry_mod.note_failure("not retrained: not needed", 1)
        assert "error" not in client.get_run(run).data.tags
        result = CliRunner().invoke(main, ["promote", "--version", "7"])
    finally:
        mlflow.set_tracking_uri(before)
    assert result.exit_code == 2, result.output
    assert client.get_run(run).data.tags["error"].startswith("exit 2: error: "), client.get_run(run).data.tags

def test_a_promotion_tolerance_that_would_wave_every_candidate_through_is_refused(monkeypatch):
    """A roc_auc difference of 0.5 (read as "half a percent", say) promoted a worse model, exit 0."""
    monkeypatch.setenv("CHURN_PROMOTION_TOLERANCE", "0.5")
    result = CliRunner().invoke(main, ["promote", "--version", "2"])
    assert result.exit_code == 2 and "CHURN_PROMOTION_TOLERANCE" in result.output, result.output
    assert "0.1" in result.output and "Traceback" not in result.output


def test_a_registry_database_that_is_down_is_exit_3_in_seconds_naming_it_without_the_password():
    result = CliRunner().invoke(main, ["history", "--tracking-uri", "postgresql://churn:secret@127.0.0.1:1/registry"])
    assert result.exit_code == 3, result.output
    assert "registry database at postgresql://churn:***@127.0.0.1:1/registry is unreachable" in result.output


def test_messages_and_logs_never_carry_a_password_or_a_webhook_path(caplog):
    from monitoring.runs import send_alert

    result = CliRunner().invoke(main, ["history", "--tracking-uri", "http://ops:s3cret@127.0.0.1:9"])
    assert result.exit_code == 3 and "http://ops:***@127.0.0.1:9" in result.output and "s3cret" not in result.output
    with caplog.at_level("INFO"):
        send_alert("http://127.0.0.1:9/hooks/T0KEN/B1ND", {"verdict": "drift"})
    assert "alert to 127.0.0.1 failed: ConnectError" in caplog.text and "T0KEN" not in caplog.text


def test_under_json_an_error_is_a_json_document_on_stdout():
    result = CliRunner().invoke(main, ["promote", "--version", "1", "--json"])
    assert result.exit_code == 3
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["exit_code"] == 3 and "unreachable" in payload["error"]
    # Two options that do not go together, found once they are read: JSON too, beside click's usage.
    times = ["--ingested-since", "2026-11-02", "--ingested-until", "2026-11-01"]
    result = CliRunner().invoke(main, ["outcomes", "delete", "--source", "crm.csv", *times, "--json"])
    assert result.exit_code == 2 and "Usage:" in result.stderr
    assert json.loads(result.stdout) == {"error": "--ingested-since is not before --ingested-until", "exit_code": 2}


def test_rollout_figures_from_a_log_that_is_down_are_an_error_naming_it_not_an_empty_table(tmp_path):
    from churn_platform import rollout
    from churn_platform.errors import StorageUnreachable

    state = rollout.RolloutState(mode="shadow", production_version=1, challenger_version=2,
                                 started_at="2026-01-01T00:00:00+00:00")  # fmt: skip
    with pytest.raises(StorageUnreachable, match=r"inference log at postgresql://churn:\*\*\*@127.0.0.1:1/log"):
        rollout.compare("postgresql://churn:secret@127.0.0.1:1/log", "churn", state, thresholds={}, band_edges=BANDS)
    empty = rollout.compare(f"sqlite:///{tmp_path / 'new.db'}", "churn", state, thresholds={}, band_edges=BANDS)
    assert empty.note.startswith("no inference log yet") and empty.arms == []
    assert not (tmp_path / "new.db").exists()  # said, not made


def test_serve_with_a_spool_folder_it_cannot_write_stops_in_one_line_before_uvicorn(tmp_path, monkeypatch):
    (tmp_path / "taken").write_text("a file where the spool folder should be")
    monkeypatch.setenv("CHURN_INFERENCE_LOG_SPOOL_DIR", str(tmp_path / "taken"))
    result = CliRunner().invoke(main, ["serve", "--port", "18999"])
    assert result.exit_code == 2 and "CHURN_INFERENCE_LOG_SPOOL_DIR=" in result.output, result.output
    assert "cannot write there" in result.output and "Traceback" not in result.output


def test_monitor_with_its_object_store_down_is_exit_3_not_drift(tmp_path, monkeypatch):
    """Artifacts read from S3 directly (a database tracking URI): botocore's connection error is
    'unreachable' (3), never an uncaught traceback exiting 1, which a CronJob would read as drift."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("training", artifact_location="s3://models/training")
    run = client.create_run(experiment)
    client.create_registered_model("churn")
    client.create_model_version("churn", f"s3://models/training/{run.info.run_id}/artifacts/model", run.info.run_id)
    # A mistyped file is said before the reference is fetched (which fails here, and takes seconds when it works).
    result = CliRunner().invoke(main, ["monitor", "--version", "1", "--current", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "no current rows" in result.output and "x.csv" in result.output, result.output
    data.generate(50, seed=1).to_csv(tmp_path / "x.csv", index=False)
    result = CliRunner().invoke(main, ["monitor", "--version", "1", "--current", str(tmp_path / "x.csv")])
    assert result.exit_code == 3, result.output
    assert "the artifact store is unreachable" in result.output and "Traceback" not in result.output


def test_an_unexpected_failure_exits_70_never_a_verdicts_code():
    """Python's own exit 1 for an uncaught exception reads as "drift", "degraded" or "not
    needed" to a scheduler: a crashed monitor looked like an alarm, a crashed retrain like a
    quiet day."""
    import click
    from click.testing import CliRunner

    from churn_platform.cli import handles_errors

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--how", default="crash")
    @handles_errors
    def job(as_json: bool, how: str) -> None:
        if how == "usage":
            raise click.BadParameter("not that", param_hint="'--how'")
        if how == "ctrl-c":
            raise KeyboardInterrupt
        raise KeyError("reference")

    crashed = CliRunner().invoke(job, [])
    assert crashed.exit_code == 70
    assert "Traceback" in crashed.stderr and "KeyError" in crashed.stderr
    assert crashed.stderr.strip().splitlines()[-1].startswith("error: unexpected KeyError: 'reference' (a bug")
    as_json = CliRunner().invoke(job, ["--json"])
    assert json.loads(as_json.stdout)["exit_code"] == 70
    usage = CliRunner().invoke(job, ["--how", "usage"])  # click's own errors keep click's exit 2
    assert usage.exit_code == 2 and "Invalid value for '--how': not that" in usage.stderr
    # Ctrl-C was click's "Aborted!", exit 1: `score`'s "some rows rejected (the rest written)".
    stopped = CliRunner().invoke(job, ["--how", "ctrl-c"])
    assert stopped.exit_code == 130 and stopped.stderr.strip() == "error: interrupted; nothing more was done"
    assert json.loads(CliRunner().invoke(job, ["--how", "ctrl-c", "--json"]).stdout)["exit_code"] == 130


def test_rollout_figures_hold_only_this_rollouts_arms(tmp_path):
    """A replica that has not polled since the rollout changed logs the old one's Challenger
    (or shadow rows after a switch to canary): they were blended into this rollout's figures."""
    from datetime import datetime

    import sqlalchemy as sa

    from churn_platform import inference_log, rollout

    url = f"sqlite:///{tmp_path}/log.db"
    engine = sa.create_engine(url)
    inference_log.upgrade(engine)
    at = datetime(2026, 1, 2)  # SQLite keeps UTC wall time
    rows = [{"request_id": f"{arm}-{version}-{i}", "row_index": 0, "scored_at": at, "model_name": "churn",
             "model_version": version, "arm": arm, "churn_probability": score}
            for arm, version, n, score in (("production", 1, 30, 0.2), ("canary", 3, 10, 0.4),
                                           ("canary", 2, 5, 0.9), ("shadow", 3, 4, 0.9))
            for i in range(n)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(inference_log.table(sa.MetaData()).insert(), rows)
    engine.dispose()
    state = rollout.RolloutState(mode="canary", percent=20, production_version=1, challenger_version=3,
                                 started_at="2026-01-01T00:00:00+00:00")  # fmt: skip
    figures = rollout.compare(url, "churn", state, thresholds={}, band_edges=BANDS)
    assert [(a.arm, a.model_version, a.rows) for a in figures.arms] == [("production", 1, 30), ("canary", 3, 10)]
    assert figures.arms[1].mean_score == pytest.approx(0.4)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_rollout_figures_computed_in_the_database_are_those_of_the_rows(tmp_path, database):
    """The figures come from histograms and a join in the database (a rollout held for weeks
    has hundreds of millions of rows); they must be what the rows say, on both databases."""
    from contextlib import nullcontext
    from datetime import datetime

    import numpy as np
    import sqlalchemy as sa
    from scipy.stats import wasserstein_distance

    from churn_platform import inference_log, rollout
    from tests.services import postgres_database

    rng = np.random.default_rng(11)
    n = 3000
    production, shadow = rng.beta(2, 5, n), rng.beta(2, 4, n)
    ms = rng.uniform(1, 20, n // 10)
    rows = [{"request_id": f"r{i // 10}{suffix}", "row_index": i % 10, "scored_at": datetime(2026, 1, 2),
             "model_name": "churn", "model_version": version, "arm": arm, "churn_probability": float(scores[i]),
             "scoring_ms": float(ms[i // 10])}
            for arm, version, suffix, scores in (("production", 1, "", production), ("shadow", 2, "~shadow", shadow))
            for i in range(n)]  # fmt: skip
    rows[5]["model_version"] = 9  # another version's row: not this rollout's
    if database == "postgresql":  # which stores a NaN score (SQLite refuses it): no score, not a failed read
        rows.append({**rows[6], "request_id": "nan", "churn_probability": float("nan")})
    with postgres_database() if database == "postgresql" else nullcontext(f"sqlite:///{tmp_path}/log.db") as url:
        engine = sa.create_engine(url)
        inference_log.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(inference_log.table(sa.MetaData()).insert(), rows)
        engine.dispose()
        state = rollout.RolloutState(mode="shadow", production_version=1, challenger_version=2,
                                     started_at="2026-01-01T00:00:00+00:00")  # fmt: skip
        figures = rollout.compare(url, "churn", state, thresholds={1: 0.3, 2: 0.4}, band_edges=BANDS)
    got = {a.arm: a for a in figures.arms}
    kept = np.delete(production, 5)
    assert (got["production"].rows, got["shadow"].rows, got["shadow"].requests) == (n - 1, n, n // 10)
    assert got["production"].mean_score == pytest.approx(kept.mean(), abs=1e-9)
    bands = np.searchsorted(np.array(BANDS), shadow, side="right")
    assert list(got["shadow"].risk_bands.values()) == pytest.approx([(bands == i).mean() for i in range(3)])
    exact = wasserstein_distance(shadow, kept) / np.std(kept)
    assert got["shadow"].score_distance == pytest.approx(exact, abs=2e-3)
    pairs = np.delete(np.arange(n), 5)  # the other version's row pairs with nothing
    assert got["shadow"].agreement == pytest.approx(((shadow[pairs] >= 0.4) == (production[pairs] >= 0.3)).mean())
    assert got["shadow"].p50_scoring_ms == pytest.approx(np.percentile(ms, 50), abs=0.2)
    assert got["shadow"].p99_scoring_ms == pytest.approx(np.percentile(ms, 99), abs=0.3)


def test_a_reader_that_stops_early_gets_no_traceback(registry_uri):
    """`history | head -1`: the write after head exits was a BrokenPipeError traceback, exit 70."""
    import subprocess
    import sys

    reader = subprocess.Popen([sys.executable, "-m", "churn_platform.cli", "history", "--tracking-uri", registry_uri],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    reader.stdout.close()  # gone before the command writes
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 141 and b"Traceback" not in err, err.decode()[-2000:]


def test_the_actor_from_the_environment_is_checked_as_the_option_is(monkeypatch):
    from churn_platform import promotion
    from churn_platform.errors import SettingsError

    monkeypatch.setenv("CHURN_ACTOR", "caf\udce9")  # a Latin-1 byte in a UTF-8 environment
    with pytest.raises(SettingsError, match="CHURN_ACTOR: is not valid UTF-8 text"):
        promotion.default_actor()
    monkeypatch.setenv("CHURN_ACTOR", "eve\x1b[31m\nv9 -> v1")  # history prints it as it is
    assert promotion.default_actor().startswith("eve[31m v9 -> v1@")
    # A container's UID with no passwd entry (OpenShift) and no CHURN_ACTOR: a traceback, it was.
    monkeypatch.delenv("CHURN_ACTOR")
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # getpass reads these first
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("pwd.getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(f"uid not found: {uid}")))
    assert promotion.default_actor().startswith(f"uid {os.getuid()}@")


def test_a_roc_auc_tag_typed_by_hand_is_no_figure_not_a_crash():
    """One such tag broke `versions` and `promote` for the whole model (exit 70)."""
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    from churn_platform import promotion

    typed = ModelVersion("churn", "6", 0, run_id=None, tags=[ModelVersionTag("roc_auc", "0.91 (holdout)")])
    assert promotion._metrics(None, typed) == {}
    tagged = ModelVersion("churn", "7", 0, run_id=None, tags=[ModelVersionTag("roc_auc", "0.91")])
    assert promotion._metrics(None, tagged) == {"roc_auc": 0.91}


def test_serve_on_a_port_in_use_is_exit_2_at_once():
    """uvicorn found out after the app had loaded the model, then exited 3, which a supervisor
    retries for ever."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output


def test_serve_without_its_sqlite_registry_is_exit_2_and_makes_none(tmp_path, monkeypatch):
    """MLflow made an empty registry (950 KB, in a folder with no trained model or for a typo)
    and the API waited on "no version holds Production" for ever; every later command then
    read "model 'churn' does not exist" where it said "no MLflow registry"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    from churn_platform.processes import free_port

    result = CliRunner().invoke(main, ["serve", "--port", str(free_port())])
    assert result.exit_code == 2, result.output
    assert f"no MLflow registry at {tmp_path / 'mlflow.db'}: train a model first" in result.output
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """`churn-platform serve ARGS` as far as uvicorn.run, which calls ``seen()`` instead; the
    signal handlers serve sets are undone afterwards."""
    import signal

    import uvicorn

    from churn_platform.processes import free_port

    monkeypatch.setenv("CHURN_INFERENCE_LOG_SPOOL_DIR", str(tmp_path / "spool"))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def invoke(seen, *args: str):
        monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen())
        return CliRunner().invoke(main, ["serve", "--port", str(free_port()), *args])

    yield invoke
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_serve_gives_its_workers_a_metrics_folder_and_empties_only_metric_files(tmp_path, monkeypatch, serve):
    """The folder prometheus_client's workers share: serve's own (made and removed), or yours,
    emptied of metric files only: '*.db' also took the registry and the log named '.'."""
    seen = []

    def folder():
        seen.append(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert serve(folder, "--workers", "2").exit_code == 0
    assert seen[0] and "churn-api-metrics-" in seen[0] and not os.path.exists(seen[0])  # made, then removed
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # and unset: this process's later servers ran into it
    for name in ("mlflow.db", "inference_log.db", "counter_12.db", "gauge_livemin_12.db", "histogram_12.db"):
        (tmp_path / name).write_bytes(b"SQLite format 3\x00")  # the settings check the log is one
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert serve(folder).exit_code == 0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["inference_log.db", "mlflow.db"]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mlflow.db"))  # a file: exit 70 in the worker
    refused = serve(folder)
    assert refused.exit_code == 2 and "mlflow.db is not a folder this user may write in" in refused.output
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    # A SQLite log in a folder that does not exist: the API was "ready" and spooled every row for ever.
    monkeypatch.setenv("CHURN_INFERENCE_LOG_URL", "sqlite:////nonexist/dir/x.db")
    get_settings.cache_clear()
    refused = serve(folder)
    assert refused.exit_code == 2, refused.output
    assert "CHURN_INFERENCE_LOG_URL: no folder /nonexist/dir for the SQLite inference log" in refused.output
    assert "CHURN_INFERENCE_LOG_URL" not in CliRunner().invoke(main, ["history"]).output  # never opens the log


def test_several_workers_poll_the_registry_so_a_reload_reaches_them_all(monkeypatch, serve):
    """/admin/reload reaches the worker that takes it; without a poll the others served the
    old Production (and the old rollout) for good."""
    from churn_platform.settings import get_settings

    polls = []

    def poll():
        polls.append(get_settings().reload_poll_s)

    monkeypatch.setenv("CHURN_RELOAD_POLL_S", "0")
    monkeypatch.delenv("CHURN_RELOAD_POLL_S")  # unset, and unset again after the test
    get_settings.cache_clear()
    try:
        assert serve(poll).exit_code == 0
        assert serve(poll, "--workers", "2").exit_code == 0
        assert "CHURN_RELOAD_POLL_S" not in os.environ  # for the workers only, not this process's next command
        monkeypatch.setenv("CHURN_RELOAD_POLL_S", "0")  # said on purpose: kept, and warned about
        get_settings.cache_clear()
        said = serve(poll, "--workers", "2")
        assert said.exit_code == 0 and "reach one worker only" in said.output
        assert polls == [0, 30, 0]
    finally:
        get_settings.cache_clear()


def test_databricks_registries_are_refused_by_name_not_taken_for_folders():
    """The workspace registry has no aliases: every command was a traceback, exit 70 (and
    docs/batch.md said they worked the same way)."""
    from churn_platform.settings import checked_tracking_uri

    for uri in ("databricks", "databricks-uc", "databricks://profile", "databricks-uc://profile"):
        with pytest.raises(ValueError, match="Databricks' registries cannot serve this platform: the workspace"):
            checked_tracking_uri(uri)
    result = CliRunner().invoke(main, ["status", "--tracking-uri", "databricks"])
    assert (result.exit_code, "'--tracking-uri': 'databricks': Databricks' registries" in result.output) == (2, True)


def test_a_log_url_naming_a_file_that_is_no_database_is_a_usage_error_naming_it(registry_uri, tmp_path, monkeypatch):
    """``sqlite:///`` pointed at a CSV: SQLite's 'file is not a database' was an uncaught
    DatabaseError (exit 70, 'a bug: please report it') in every job that reads the log, then an
    outage (exit 3, retried); the settings say so before anything runs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry_uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outcomes.csv").write_text("customer_id,churned\n3845-FXCYS,Yes\n")
    url = f"sqlite:///{tmp_path}/outcomes.csv"
    for command in (["performance", "--output-dir", "p"], ["monitor", "--output-dir", "m"],
                    ["retrain", "--if", "always"], ["outcomes", "ingest", "outcomes.csv"]):  # fmt: skip
        result = CliRunner().invoke(main, [*command, "--inference-log-url", url])
        assert result.exit_code == 2, (command, result.output)
        assert "outcomes.csv is not a SQLite database" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLFLOW_TRACKING_SERVER_CERT_PATH": "/nowhere/ca.pem"}, "check MLFLOW_TRACKING_SERVER_CERT_PATH"),
        ({"MLFLOW_TRACKING_SERVER_CERT_PATH": "/nowhere/ca.pem", "MLFLOW_TRACKING_INSECURE_TLS": "true"},
         "MLflow's TLS settings"),
        ({"MLFLOW_TRACKING_INSECURE_TLS": "yes"}, "MLflow's TLS settings"),  # MLflow takes true/false only
    ],
)
def test_tls_settings_that_cannot_work_are_a_usage_error_not_a_traceback(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["status", "--tracking-uri", "https://127.0.0.1:1"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_a_misspelt_sqlite_inference_log_is_named_missing_and_never_made(registry_uri, tmp_path):
    """The monitor and the performance job made an empty database for the typo, and said the
    log had no rows yet."""
    typo = tmp_path / "inference_lgo.db"
    for command in (["monitor"], ["performance"]):
        result = CliRunner().invoke(main, [*command, "--tracking-uri", registry_uri, "--inference-log-url",
                                           f"sqlite:///{typo}", "--output-dir", str(tmp_path / "r")])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert f"no inference log at {typo} (no such file): point CHURN_INFERENCE_LOG_URL" in result.output
    # Nor do the other readers make it: nothing to delete is said as for a log without outcomes.
    deleted = CliRunner().invoke(main, ["outcomes", "delete", "--source", "api", "--inference-log-url",
                                        f"sqlite:///{typo}"])  # fmt: skip
    assert deleted.exit_code == 2 and "Traceback" not in deleted.output, deleted.output
    assert not typo.exists()


def test_the_rollout_and_retraining_readers_never_make_a_missing_sqlite_log(tmp_path):
    """Once any reader had made the typo's file, the monitor read it as a log with no rows yet."""
    import sqlite3

    import sqlalchemy as sa

    from churn_platform import inference_log, retraining, rollout
    from churn_platform.errors import DataValidationError

    typo = f"sqlite:///{tmp_path / 'inference_lgo.db'}"
    state = rollout.RolloutState(mode="shadow", challenger_version=2, production_version=1,
                                 started_at="2026-12-01T00:00:00+00:00")  # fmt: skip
    assert rollout.compare(typo, "churn", state, thresholds={}, band_edges=(0.3, 0.6)).arms == []
    # Retraining said "only 0 labelled rows: ingest more outcomes", exit 1: a normal answer to
    # the CronJob and its alert, so the typo never surfaced.
    with pytest.raises(DataValidationError, match="no inference log at .*inference_lgo.db .no such file."):
        retraining.labelled(typo, "churn", None, 30)
    assert not (tmp_path / "inference_lgo.db").exists()
    other = tmp_path / "other.db"  # a database, but not the API's log
    sqlite3.connect(other).close()
    with pytest.raises(DataValidationError, match="no inference_log table in sqlite:///.*other.db: the API makes it"):
        retraining.labelled(f"sqlite:///{other}", "churn", None, 30)
    inference_log.upgrade(sa.create_engine(f"sqlite:///{other}"))  # the API's, no outcome ingested yet
    assert retraining.labelled(f"sqlite:///{other}", "churn", None, 30).empty


@pytest.mark.parametrize(("given", "flags"), [({"n_rows": 300}, "--n-rows"), ({"data": "c.csv"}, "--data"),
                                              ({"data": "c.csv", "n_rows": 300}, "--data and --n-rows")])  # fmt: skip
def test_training_from_python_refuses_data_options_beside_the_feature_store(given, flags, tmp_path):
    """`TrainConfig(from_features=True, n_rows=300)` was taken, its n_rows ignored unsaid."""
    from churn_platform.errors import DataValidationError
    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    config = TrainConfig(from_features=True, labels="l.csv", **given)
    with pytest.raises(DataValidationError, match=f"^{flags} cannot be given with --from-features"):
        train(config, Settings(tracking_uri=f"sqlite:///{tmp_path}/never.db"))
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(("given", "flags"), [({"n_rows": 300}, "--n-rows is"), ({"drift": True}, "drift is"),
                                              ({"n_rows": 300, "drift": True}, "--n-rows and drift are")])
def test_training_from_python_refuses_generator_options_beside_a_file(given, flags, tmp_path):
    """`TrainConfig(data="c.csv", n_rows=300)` trained on every row of the file, unsaid."""
    from churn_platform.errors import DataValidationError
    from churn_platform.settings import Settings
    from churn_platform.training import TrainConfig, train

    with pytest.raises(DataValidationError, match=f"^{flags} read only with --data synthetic"):
        train(TrainConfig(data="c.csv", **given), Settings(tracking_uri=f"sqlite:///{tmp_path}/never.db"))
    assert not (tmp_path / "never.db").exists()


def test_artifacts_stored_through_a_server_read_from_its_database_say_so(tmp_path, monkeypatch):
    """After `make demo`, its registry's database read directly: the monitor said "no reference
    data" and score quoted MLflow's paragraph, cut short; neither said to go through a server."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    client = MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("proxied", artifact_location="mlflow-artifacts:/proxied"))
    client.create_registered_model("m")
    client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("m", "Production", "1")
    data.generate(300, seed=1).drop(columns=["churn"]).to_csv(tmp_path / "c.csv", index=False)
    why = "its artifacts are stored through an MLflow server (mlflow-artifacts:/): point --tracking-uri"
    for args in (["monitor", "--current", str(tmp_path / "c.csv"), "--output-dir", str(tmp_path / "o")],
                 ["score", "--input", str(tmp_path / "c.csv"), "--output", str(tmp_path / "s.parquet")]):  # fmt: skip
        result = CliRunner().invoke(main, [*args, "--model-name", "m"])
        assert result.exit_code == 2 and why in result.output and "Traceback" not in result.output, result.output
