"""Real services for the integration tests: a fresh PostgreSQL database, moto_server as the
S3-compatible store and an ``mlflow server`` process, each on a free loopback port.

Only processes started here are stopped here; the machine's PostgreSQL server is used, not
managed. A service that cannot be had fails the test run: it is never a skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from churn_platform import processes
from churn_platform.processes import Process, ProcessFailed, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_HOST = os.environ.get("CHURN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("CHURN_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("CHURN_TEST_PG_USER", "postgres")
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ServiceError(RuntimeError):
    pass


def start_process(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    return processes.start(name, cmd, log_dir, env=env, cwd=REPO)


def wait_http(process: Process, url: str, timeout: float = 120) -> None:
    try:
        processes.wait_http(process, url, timeout)
    except ProcessFailed as exc:
        raise ServiceError(str(exc)) from exc


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    import psycopg2

    name = f"churn_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise ServiceError(
            f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}. "
            "Start it (scripts/ensure-postgres.sh) - integration tests are never skipped."
        ) from exc
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@dataclass
class Stack:
    """The full stack of the integration tests and the environment a client needs for it."""

    tracking_uri: str
    s3_endpoint: str
    bucket: str
    backend_uri: str
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(S3_KEYS)
        env.update(
            {
                "MLFLOW_TRACKING_URI": self.tracking_uri,
                # Named too: an in-process command earlier in the session may have left another in os.environ.
                "MLFLOW_REGISTRY_URI": self.tracking_uri,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "CHURN_REGISTRY_MAX_RETRIES": "1",
                "CHURN_REGISTRY_TIMEOUT_S": "20",
                # the same for raw `mlflow` commands (the `mlflow run` launcher)
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        return env

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_keys())


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_KEYS["AWS_DEFAULT_REGION"],
    }


def start_moto(log_dir: Path) -> tuple[Process, str]:
    port = free_port()
    proc = start_process("moto_server", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url, timeout=60)
    return proc, url


def start_mlflow(
    log_dir: Path,
    backend_uri: str,
    artifacts: str,
    s3_endpoint: str,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> tuple[Process, str]:
    port = port or free_port()
    env = dict(os.environ)
    env.update(S3_KEYS)
    env.update(extra_env or {})
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # GenAI job workers: five idle processes we never use
    cmd = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts,
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", *extra_args,
    ]  # fmt: skip
    proc = start_process(f"mlflow_server_{port}", cmd, log_dir, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/health", timeout=180)
    return proc, url


@contextmanager
def full_stack(log_dir: Path) -> Iterator[Stack]:
    """PostgreSQL database + moto_server bucket + mlflow server, torn down in reverse."""
    started: list[Process] = []
    with postgres_database() as backend_uri:
        try:
            moto, s3_endpoint = start_moto(log_dir)
            started.append(moto)
            bucket = f"mlflow-{secrets.token_hex(4)}"
            import boto3

            boto3.client("s3", endpoint_url=s3_endpoint, **_boto_keys()).create_bucket(Bucket=bucket)
            server, tracking_uri = start_mlflow(log_dir, backend_uri, f"s3://{bucket}/artifacts", s3_endpoint)
            started.append(server)
            yield Stack(tracking_uri, s3_endpoint, bucket, backend_uri, {"moto": moto, "mlflow": server})
        finally:
            for proc in reversed(started):
                proc.stop()


def start_api(env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    """A real `churn-platform serve` (uvicorn) process on a free port, answering /health."""
    try:
        return processes.start_api(env, log_dir, BIN, cwd=REPO)
    except ProcessFailed as exc:
        raise ServiceError(str(exc)) from exc


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on a free local port, answering with ``handler``: its base URL.
    Shut down and its socket closed afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def wait_ready(url: str, timeout: float = 60) -> None:
    try:
        processes.wait_ready(url, timeout)
    except ProcessFailed as exc:
        raise ServiceError(str(exc)) from exc


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster of our own, so a test may stop and restart it.

    The machine's server is shared by the whole run; this one belongs to one test.
    """

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        log = self.folder / "pg.log"
        try:
            self._pg("pg_ctl", "-D", str(self.folder / "data"), "-l", str(log), "-w",
                     "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
        except subprocess.CalledProcessError as exc:  # pg_ctl's own words too: once it failed leaving no log line
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
            said = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
            raise ServiceError(f"private PostgreSQL on port {self.port} did not start: pg_ctl exited "
                               f"{exc.returncode}: {said.strip()}\n{tail}") from None  # fmt: skip

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


PG_BIN = Path(os.environ.get("CHURN_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A cluster in a folder of its own under the temp root, not pytest's: the postgres user
    must reach it, and any pytest starting meanwhile (another run on the machine) makes
    ``/tmp/pytest-of-root`` private again, so a restart mid-test failed "Permission denied"."""
    if not (PG_BIN / "initdb").exists():
        raise ServiceError(f"PostgreSQL server binaries not found in {PG_BIN} (set CHURN_TEST_PG_BIN)")
    folder = Path(tempfile.mkdtemp(prefix="churn-test-pg-"))
    os.chmod(folder, 0o777)
    pg = PrivatePostgres(folder, free_port())
    try:
        pg._pg("initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust")
        pg.start()
        try:
            yield pg
        finally:
            try:
                pg.stop()
            except subprocess.SubprocessError:
                pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)
