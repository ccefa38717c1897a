"""Access to the MLflow Model Registry that fails fast and speaks plainly.

The registry's ``Production`` alias is the only truth about what is in production.
Alias names are case-sensitive in MLflow, but its UI lowercases what it saves: both
spellings are read (``production_version``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds

from churn_platform.contract import CHALLENGER_ALIAS, PRODUCTION_ALIAS
from churn_platform.errors import (
    NotFoundError,
    RegistryNotFound,
    RegistryRefused,
    RegistryUnreachable,
    SettingsError,
    StorageUnreachable,
)
from churn_platform.settings import Settings, preserved_environment, redacted, sqlite_file, url_scheme

log = logging.getLogger(__name__)
#: MLflow 3's UI alias editor lowercases every alias it saves: adding `Production` there
#: creates `production` (and rewrites `Challenger` as `challenger`). A lowercase alias is
#: therefore a change made in the UI, newer than anything our commands set.
UI_SPELLINGS = {PRODUCTION_ALIAS.lower(): PRODUCTION_ALIAS, CHALLENGER_ALIAS.lower(): CHALLENGER_ALIAS}

_CONNECTION_HINTS = (
    "max retries exceeded",
    "connection refused",
    "failed to establish",
    "timed out",
    "read timeout",
    "name or service not known",
    "connectionerror",
    "failed with error code 5",  # the server answered 5xx: its store or artifact backend is down
    # A SQLite registry another process holds (a migration, a backup): a broken model, it ended
    # a canary on the replica that met it and fired the wrong alerts.
    "database is locked",
)


def skip_feast_plugin() -> None:
    """Keep Feast's MLflow plugin out of this process.

    Feast registers an ``mlflow.request_header_provider`` entry point, so MLflow imports all
    of Feast (about 9 s here) the first time any process talks to a tracking server, and
    that import sets PROMETHEUS_MULTIPROC_DIR, which turns prometheus-client's multi-process
    mode on for every child the process starts. Its headers only matter inside Feast's own
    MLflow calls, which we do not make. Must run before MLflow's header registry is first
    imported (MLflow imports it lazily, on the first request).
    """
    from mlflow.utils import plugins

    if getattr(plugins.get_entry_points, "skips_feast", False):
        return
    original = plugins.get_entry_points

    def get_entry_points(group: str) -> list:
        return [e for e in original(group) if not e.value.startswith("feast.")]

    get_entry_points.skips_feast = True  # type: ignore[attr-defined]
    plugins.get_entry_points = get_entry_points


def configure(settings: Settings) -> None:
    """Point MLflow at the registry and make an unreachable server fail in seconds.

    MLflow's client retries a dead server for minutes by default. CHURN_REGISTRY_MAX_RETRIES
    and CHURN_REGISTRY_TIMEOUT_S are the one knob for that: they overwrite MLflow's own
    variables (with a warning when those were set to something else), so no forgotten
    ``MLFLOW_HTTP_REQUEST_*`` in a manifest silently decides.
    """
    import mlflow

    skip_feast_plugin()
    ours = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.registry_max_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(settings.registry_timeout_s))),
    }
    for name, value in ours.items():
        if os.environ.get(name, value) != value:
            log.warning("%s=%s is replaced by %s (from CHURN_REGISTRY_*)", name, os.environ[name], value)
        os.environ[name] = value
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def _check_database(uri: str, timeout_s: float) -> None:
    """Raise ``RegistryUnreachable`` unless a PostgreSQL registry database takes a connection.

    MLflow's own store retries a database that is down for about two minutes, then fails
    with a traceback.
    """
    import sqlalchemy as sa

    url = sa.engine.make_url(uri)
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in ("psycopg2", "psycopg"):
        return  # other drivers (pg8000, MySQL's) are not ours to install; MLflow reports on them itself
    engine = sa.create_engine(url, connect_args={"connect_timeout": max(1, round(timeout_s))}, poolclass=sa.NullPool)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if re.search(r'database ".*" does not exist', reason):  # the server answered: a name to mend, not a retry
            raise RegistryNotFound(f"MLflow registry database at {url.render_as_string(hide_password=True)}: {reason}; "
                                "check MLFLOW_TRACKING_URI") from None  # fmt: skip
        raise RegistryUnreachable(
            f"MLflow registry database at {url.render_as_string(hide_password=True)} is unreachable ({reason}); "
            "check MLFLOW_TRACKING_URI and that the database is running"
        ) from None
    finally:
        engine.dispose()


def check_reachable(settings: Settings) -> None:
    """Raise ``RegistryUnreachable`` unless the registry answers: an HTTP tracking server's
    health check, or a connection to its database."""
    uri, scheme = settings.tracking_uri, url_scheme(settings.tracking_uri)
    if scheme == "postgresql":
        return _check_database(uri, settings.registry_timeout_s)
    if scheme not in ("http", "https"):
        return  # an embedded store (SQLite, a folder) or another database is opened on first use
    # As MLflow's own calls go (requests, with its TLS settings: MLFLOW_TRACKING_INSECURE_TLS,
    # MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_CLIENT_CERT_PATH, REQUESTS_CA_BUNDLE): a
    # server behind a private CA was "unreachable" here, and every command and the API stopped.
    try:
        creds = get_default_host_creds(uri)
    except (MlflowException, ValueError) as exc:  # insecure beside a CA path; MLFLOW_TRACKING_INSECURE_TLS=yes
        raise SettingsError(f"MLflow's TLS settings: {getattr(exc, 'message', exc)}") from None
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=settings.registry_timeout_s,
                                verify=creds.verify, cert=creds.client_cert_path, allow_redirects=False)  # fmt: skip
    except requests.RequestException as exc:
        hint = ("; for a private CA set MLFLOW_TRACKING_SERVER_CERT_PATH to its certificate" if
                "CERTIFICATE_VERIFY_FAILED" in str(exc) else "")  # fmt: skip
        raise RegistryUnreachable(
            f"MLflow tracking server at {redacted(uri)} is unreachable ({type(exc).__name__}: {exc}); "
            f"check MLFLOW_TRACKING_URI and that the server is running{hint}"
        ) from exc
    except OSError as exc:  # not a request's failure (those are OSErrors too): a certificate file that is not there
        raise SettingsError(
            f"cannot read a TLS certificate for {redacted(uri)} ({exc}); check "
            "MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_CLIENT_CERT_PATH and REQUESTS_CA_BUNDLE"
        ) from None
    if response.status_code >= 500:
        raise RegistryUnreachable(
            f"MLflow tracking server at {redacted(uri)} is unhealthy (HTTP {response.status_code})"
        )
    # MLflow answers "OK". A proxy asking for credentials or redirecting (to HTTPS, to a login)
    # is left to the requests that follow, as before; no such route, or another server's answer
    # (the API's port, a path prefix left out), made every registry call a 404 and exit 70.
    wrong = response.status_code in (404, 405) or (response.status_code == 200 and response.text.strip() != "OK")
    if wrong:  # the server answered: a URI to mend (exit 2), not a retry
        raise RegistryNotFound(
            f"{redacted(uri)} is not an MLflow tracking server (GET /health answered HTTP {response.status_code}"
            f"{'' if response.status_code != 200 else ', not OK: another service, or a proxy page in front'}); "
            "check MLFLOW_TRACKING_URI: its port, and the path prefix if the server has one"
        )


def require_existing(settings: Settings) -> None:
    """``RegistryNotFound`` for a SQLite registry file that does not exist, before MLflow makes
    an empty one (950 KB, for a typo) and reports the model missing from it."""
    refuse_foreign_sqlite(settings.tracking_uri, existing=True)


#: Tables MLflow makes first (``registered_models`` comes seconds later, in a migration): a
#: registry another process is setting up is one.
_MLFLOW_TABLES = frozenset({"registered_models", "alembic_version", "experiments"})


def refuse_foreign_sqlite(uri: str, *, existing: bool = False) -> None:
    """``RegistryNotFound`` for a SQLite file that is no registry: MLflow made its 66 tables in
    any file it was pointed at (the inference log, for two swapped URLs), and reported the
    model's alias missing. With ``existing``, a missing or empty one too."""
    path = sqlite_file(uri) if url_scheme(uri) == "sqlite" else None
    if path is None:
        return
    point = "point --tracking-uri (MLFLOW_TRACKING_URI) at the registry"
    if not path.exists():
        if existing:
            raise RegistryNotFound(f"no MLflow registry at {path.resolve()}: train a model first, or {point}")
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return  # locked, or not readable now: MLflow's own call says which
    except sqlite3.DatabaseError:
        raise RegistryNotFound(f"{path.resolve()} is no SQLite database, so no MLflow registry: {point}") from None
    if tables & _MLFLOW_TABLES:
        return
    if tables:
        shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        which = ": the inference log" if "inference_log" in tables else ""  # the platform's other SQLite file
        raise RegistryNotFound(f"{path.resolve()} is a SQLite database without MLflow's tables (it holds {shown}"
                               f"{which}), not an MLflow registry: {point}")  # fmt: skip
    if existing:
        raise RegistryNotFound(f"no MLflow registry at {path.resolve()} (an empty file): train a model first, "
                               f"or {point}")  # fmt: skip


def connect(settings: Settings, *, existing: bool = False) -> MlflowClient:
    """A registry client, after making sure the registry answers; with ``existing``, one that
    must already be there (a command that reads a model), never made for a mistyped path."""
    refuse_foreign_sqlite(settings.tracking_uri, existing=existing)
    configure(settings)
    check_reachable(settings)
    with translate_errors(settings):  # an embedded store is opened here: a locked file fails now
        return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def is_connection_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(hint in text for hint in _CONNECTION_HINTS)


@contextmanager
def translate_errors(settings: Settings) -> Iterator[None]:
    """Turn MLflow's connection failures into ``RegistryUnreachable``, and its refusals of
    this user into ``RegistryRefused``, with the URI named."""
    try:
        yield
    except MlflowException as exc:
        if exc.error_code == "PERMISSION_DENIED":  # the server knows the user: credentials are not the problem
            user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this user"
            raise RegistryRefused(
                f"MLflow registry at {redacted(settings.tracking_uri)} refused the request (PERMISSION_DENIED): "
                f"{user} lacks the permission it needs on the model (EDIT to record events and move aliases, "
                "MANAGE to delete; READ on the experiment of its runs); ask an MLflow admin"
            ) from exc
        if exc.error_code == "UNAUTHENTICATED" or "authenticate" in str(exc):
            raise RegistryRefused(
                f"MLflow registry at {redacted(settings.tracking_uri)} refused the request ({exc.error_code}): "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a server in basic-auth mode"
            ) from exc
        if is_connection_error(exc):
            raise RegistryUnreachable(
                f"MLflow registry at {redacted(settings.tracking_uri)} is unreachable: "
                + exc.message.replace(settings.tracking_uri.rstrip("/"), redacted(settings.tracking_uri))[:300]
            ) from exc
        raise
    except Exception as exc:
        # An experiment whose artifact root is s3:// uploads from this process, through boto3:
        # a store that does not answer is botocore's error, not MLflow's (it was exit 70).
        if type(exc).__module__.startswith(("botocore", "boto3")) and is_connection_error(exc):
            where = settings.s3_endpoint_url or "AWS S3"
            raise StorageUnreachable(f"artifact store at {where} is unreachable: {str(exc)[:300]}") from exc
        # An embedded (SQLite) registry another process holds: SQLAlchemy's error, not MLflow's.
        if type(exc).__module__.startswith("sqlalchemy") and is_connection_error(exc):
            raise RegistryUnreachable(f"MLflow registry at {redacted(settings.tracking_uri)} is unreachable: "
                                      f"{str(exc).splitlines()[0][:300]}") from exc  # fmt: skip
        raise


def served_artifacts(exc: BaseException) -> str | None:
    """The cause in one line when artifacts stored through an MLflow server (``mlflow-artifacts:/``,
    the demo's and compose's) are read with the server's database as the tracking URI: MLflow's
    own message is a paragraph, cut short, and the monitor called it "no reference data"."""
    if "mlflow-artifacts URI was supplied" not in str(exc):
        return None
    return ("its artifacts are stored through an MLflow server (mlflow-artifacts:/): point --tracking-uri "
            "(MLFLOW_TRACKING_URI) at that server's http(s) address, not at its database")


def launched_run(client: MlflowClient, run_id: str) -> Run:
    """The run ``mlflow run`` made for this process (``MLFLOW_RUN_ID``), before any work. With
    a relative ``sqlite:///`` URI and a project run from another folder, the launcher made it
    in one file and this process (in the project's folder) opened another: the fit ran, then
    MLflow's "Run ... not found" was an exit-70 "bug", and an empty registry was left behind."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        uri = str(client.tracking_uri)
        local = sqlite_file(uri) if url_scheme(uri) == "sqlite" else None
        why = ("; a relative sqlite:/// MLFLOW_TRACKING_URI opens a file in the project's folder here and another "
               "where `mlflow run` started: give the absolute path (sqlite:////path/to/mlflow.db)"
               if local is not None and not local.is_absolute() else "")  # fmt: skip
        raise SettingsError(f"MLFLOW_RUN_ID={run_id}, the run `mlflow run` made, is not in the tracking store "
                            f"{redacted(uri)}{why}") from None


#: The launched run's tag that says why its job failed (MLflow only marks it FAILED).
ERROR_TAG = "error"


def note_failure(message: str, exit_code: int) -> None:
    """Under ``mlflow run``, tag the launched run with why the job failed: the UI showed a
    FAILED run, and only the launcher's output said why. One quick try, never for exit 3 (an
    unreachable service may be the registry) nor exit 1 (an answer); a failure here changes
    nothing."""
    from churn_platform.contract import ExitCode

    run_id = os.environ.get("MLFLOW_RUN_ID")
    # Exit 1 is an answer ("not retrained", a gate's refusal), not an error; exit 3 a registry
    # that may not answer this either.
    if not run_id or exit_code in (ExitCode.REFUSED, ExitCode.UNREACHABLE):
        return
    import mlflow

    try:  # a registry file that is not there (a typo, a relative path): MLflow would make one
        refuse_foreign_sqlite(mlflow.get_tracking_uri(), existing=True)
    except RegistryNotFound:
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    with preserved_environment(*quick):
        os.environ.update(quick)
        try:
            MlflowClient().set_tag(run_id, ERROR_TAG, f"exit {exit_code}: {message}"[:5000])
        except Exception as exc:  # noqa: BLE001 - the job's own error is the one to report
            log.debug("could not tag run %s with its error: %s", run_id, exc)


def live_experiment(
    client: MlflowClient, name: str | None = None, setting: str = "MLFLOW_EXPERIMENT_NAME"
) -> str | None:
    """The id of the experiment a run of this process will go to (``name``, else MLflow's
    environment variables, else Default), None when a launcher made the run or ``name`` is
    yet to be created. A deleted one is refused before any work: MLflow refuses a run in it
    only at ``start_run``, after the fit or the drift check, as an exit-70 "bug"."""
    if run_id := os.environ.get("MLFLOW_RUN_ID"):
        launched_run(client, run_id)
        return None  # under `mlflow run`: the launcher chose the experiment and made the run
    from_env = not name
    if from_env and "MLFLOW_EXPERIMENT_NAME" in os.environ and not os.environ["MLFLOW_EXPERIMENT_NAME"].strip():
        # compose's ${VAR} with VAR unset: MLflow would create an experiment named '' after the fit (exit 70)
        raise SettingsError("MLFLOW_EXPERIMENT_NAME is set but empty: name an experiment, or unset it for Default")
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    given = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if name:
        found, variable = client.get_experiment_by_name(name), setting
        if from_env and given and found is not None and found.experiment_id != given:  # start_run refuses both
            raise SettingsError(f"MLFLOW_EXPERIMENT_NAME={name} is experiment {found.experiment_id}, but "
                                f"MLFLOW_EXPERIMENT_ID={given}: set one of them")  # fmt: skip
    else:
        try:
            found = client.get_experiment(given or "0")  # Default, with neither variable set
            variable = "MLFLOW_EXPERIMENT_ID" if given else "MLFLOW_EXPERIMENT_NAME"
        except MlflowException as exc:
            if not is_missing(exc):
                raise
            if not given:
                return None
            raise SettingsError(f"MLFLOW_EXPERIMENT_ID={given}: no such MLflow experiment") from None
    if found is not None:
        refuse_deleted(found, variable)
    return found.experiment_id if found is not None else None


def refuse_deleted(experiment: Experiment, variable: str, why: str = "") -> None:
    """``SettingsError`` for an experiment deleted in the UI (``why``: what it holds), naming
    the setting that chose it: its runs cannot be made, nor should its runs be read."""
    if experiment.lifecycle_stage == "deleted":
        raise SettingsError(
            f"MLflow experiment '{experiment.name}' (id {experiment.experiment_id}){why} is deleted: restore it in "
            f"the MLflow UI (Experiments, show deleted) or name another with {variable}"
        )


def is_missing(exc: MlflowException) -> bool:
    """MLflow's answer for a model, version, run, experiment or alias that does not exist."""
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise


def quoted(value: str) -> str:
    """``value`` as a string literal in an MLflow search filter.

    MLflow's filter grammar has no escape character: a value holding ``'`` is quoted with
    ``"`` (``checked_model_name`` refuses a model name holding both).
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both ' and \": an MLflow search filter cannot quote it")


def get_model(client: MlflowClient, name: str) -> RegisteredModel:
    """A registered model (its tags and aliases), or ``NotFoundError`` naming it."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(f"registered model {name!r} does not exist") from exc
        raise


def get_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    """A model version, or ``NotFoundError`` naming what does not exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if is_missing(exc):
            raise NotFoundError(f"model {name!r} has no version {version}") from exc
        raise


def aliased(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` names: a pending UI change (``production``) wins over ``Production``."""
    return version_by_alias(client, name, alias.lower()) or version_by_alias(client, name, alias)


def production_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version in production, as the API serves it."""
    return aliased(client, name, PRODUCTION_ALIAS)


def set_challenger(client: MlflowClient, name: str, version: int) -> None:
    """Put ``Challenger`` on ``version``, deleting a ``challenger`` the UI saved first.

    This choice is newer than the UI's: left in place, the lower-case alias (which a UI
    promotion leaves on the promoted version) would be adopted next and move ``Challenger``
    back off ``version``.
    """
    try:
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS.lower())
    except MlflowException as exc:
        if not is_missing(exc) and exc.error_code != "PERMISSION_DENIED":  # EDIT may not delete: moved below
            raise
    move_alias(client, name, CHALLENGER_ALIAS, version)


def adopt_ui_aliases(client: MlflowClient, name: str) -> list[tuple[str, int]]:
    """Give aliases saved by the UI their canonical spelling; return what moved.

    MLflow lets a user with EDIT set an alias but deletes one only for MANAGE: such a user's
    UI spelling stays, on the same version, and ``move_alias`` moves it along from then on.
    """
    moved = []
    for spelled, canonical in UI_SPELLINGS.items():
        version = version_by_alias(client, name, spelled)
        if version is None:
            continue
        held = version_by_alias(client, name, canonical)
        settled = held is not None and held.version == version.version  # kept on an earlier run
        if not settled:
            # Read again just before: a command that stalled here (a registry retrying) once set
            # Production back on the UI's version after another command had adopted it and moved on.
            again = version_by_alias(client, name, spelled)
            if again is None or again.version != version.version:
                continue  # adopted (or changed) meanwhile: the next command sees what it is now
            client.set_registered_model_alias(name, canonical, version.version)
            moved.append((canonical, int(version.version)))
        try:
            client.delete_registered_model_alias(name, spelled)
        except MlflowException as exc:
            if exc.error_code != "PERMISSION_DENIED":
                raise
            if not settled:
                log.warning("kept the UI's alias %r on v%s beside %r: deleting an alias needs MLflow's MANAGE "
                            "permission on the model", spelled, version.version, canonical)  # fmt: skip
    return moved


def move_alias(client: MlflowClient, name: str, alias: str, version: int) -> None:
    """Set ``alias`` on ``version``, and a UI spelling of it that could not be deleted too:
    ``aliased`` prefers that spelling, so left behind it would keep serving the old version."""
    client.set_registered_model_alias(name, alias, str(version))
    if version_by_alias(client, name, alias.lower()) is not None:
        client.set_registered_model_alias(name, alias.lower(), str(version))
