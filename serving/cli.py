"""``churn-platform serve``: registered by this package (entry point ``churn_platform.commands``)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import click

from churn_platform.cli import handles_errors
from churn_platform.errors import SettingsError
from churn_platform.settings import MULTI_WORKER_POLL_S, checked_log_file, get_settings


def _check_port(host: str, port: int) -> None:
    """The address is free: uvicorn found out only after the app had loaded the model (seconds),
    then exited 3 ("unreachable"), which a supervisor retries for ever."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (CHURN_API_HOST, "
                                "CHURN_API_PORT or --host/--port)") from None  # fmt: skip


@click.command()
@click.option("--host", default=None, help="Bind address (default: CHURN_API_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: CHURN_API_PORT or 8000).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help=f"uvicorn worker processes (with several, CHURN_RELOAD_POLL_S defaults to {MULTI_WORKER_POLL_S:g}).")
@click.option("--access-log", is_flag=True, help="Log every request (CHURN_ACCESS_LOG; costs throughput).")
@handles_errors
def serve(host: str | None, port: int | None, workers: int, access_log: bool) -> None:
    """Run the prediction API with uvicorn (model from MLFLOW_TRACKING_URI's Production alias)."""
    import uvicorn

    if access_log:  # the app reads it (in each worker process), not uvicorn: its lines carry the request id
        os.environ["CHURN_ACCESS_LOG"] = "true"
        get_settings.cache_clear()
    from pathlib import Path

    from churn_platform import tracing
    from serving.inference_log import check_spool_dir

    settings = get_settings()  # a bad variable fails here, before uvicorn starts workers
    try:  # a SQLite log in a folder that does not exist: every row spooled for ever, the API "ready"
        checked_log_file(settings.inference_log_url)
    except ValueError as exc:
        raise SettingsError(f"CHURN_INFERENCE_LOG_URL: {exc}") from None
    tracing.check()
    check_spool_dir(Path(settings.inference_log_spool_dir), settings.inference_log_url)  # one line, not one per worker
    host, port = host or settings.api_host, port or settings.api_port
    _check_port(host, port)
    from churn_platform import registry

    # A SQLite registry that is not there: MLflow made an empty one (a folder without a trained
    # model, a typo) and the API waited on "no version holds Production" for ever.
    registry.require_existing(settings)
    polls = False
    if workers > 1 and settings.reload_poll_s == 0:
        # /admin/reload reaches the one worker that takes it; the others follow a new
        # Production, or a rollout, only by polling: without it they would serve the old one.
        if "CHURN_RELOAD_POLL_S" in os.environ:
            click.echo(f"warning: CHURN_RELOAD_POLL_S=0 with {workers} workers: /admin/reload and a rollout "
                       "change reach one worker only", err=True)  # fmt: skip
        else:
            os.environ["CHURN_RELOAD_POLL_S"], polls = str(MULTI_WORKER_POLL_S), True
            get_settings.cache_clear()
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is done.
    # A completed graceful stop is a success: exit 0, as Kubernetes and systemd expect.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # Several workers count in one folder, which /metrics adds up (serving/metrics.py); set
    # before the workers start, which read it when they import prometheus_client.
    own_folder = None
    if given := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # yours: its metric files emptied, as asked
        if not (os.path.isdir(given) and os.access(given, os.W_OK | os.X_OK)):  # was FileNotFoundError, exit 70
            raise SettingsError(f"PROMETHEUS_MULTIPROC_DIR: {given} is not a folder this user may write in")
        for kind in ("counter", "gauge", "histogram", "summary"):
            for stale in Path(given).glob(f"{kind}_*.db"):
                stale.unlink(missing_ok=True)
    elif workers > 1:
        own_folder = tempfile.mkdtemp(prefix="churn-api-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_folder
    try:
        uvicorn.run(
            "serving.app:create_app",  # an import string: uvicorn's worker processes build their own app
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_graceful_shutdown=20,
            access_log=False,
            log_config=None,  # uvicorn's lines go through our logging (text or JSON, CHURN_LOG_FORMAT)
            log_level="info",
        )
    finally:
        if polls:  # for these workers only, not what this process does next
            os.environ.pop("CHURN_RELOAD_POLL_S", None)
            get_settings.cache_clear()
        if own_folder:  # gone with its folder: nothing started later in this process may count there
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(own_folder, ignore_errors=True)
