"""The ``churn-platform`` command line.

Commands that belong to an app (``serve`` in ``serving``, ``monitor`` in ``monitoring``)
are registered by that package under the entry-point group ``churn_platform.commands``
(see pyproject.toml) and loaded only when asked for, so the core library never imports
the apps. Exit codes are the same for every command: ``contract.ExitCode``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cache, wraps
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from churn_platform import job_metrics
from churn_platform.contract import (
    CANARY_PERCENT,
    CLOCK_AHEAD,
    EXIT_CODES_HELP,
    MODEL_TYPES,
    PRODUCTION_ALIAS,
    ExitCode,
)
from churn_platform.errors import ChurnPlatformError, DataSourceError, NotFoundError
from churn_platform.schema import FEATURE_NAMES
from churn_platform.settings import (
    Settings,
    checked_log_file,
    checked_model_name,
    checked_tracking_uri,
    get_settings,
    preserved_environment,
    unknown_variables,
)
from churn_platform.training_config import TrainConfig

if TYPE_CHECKING:
    from churn_platform.promotion import VersionInfo
    from churn_platform.rollout import RolloutState

#: Entry-point group through which the apps add their commands.
COMMANDS_GROUP = "churn_platform.commands"


def settings_for(tracking_uri: str | None, model_name: str | None = None) -> Settings:
    """The environment's settings with the command line's overrides."""
    overrides: dict[str, Any] = {}
    if tracking_uri:
        overrides["tracking_uri"] = tracking_uri
    if model_name:
        overrides["model_name"] = model_name
    return get_settings().model_copy(update=overrides)


@contextlib.contextmanager
def _mlflow_links_suppressed() -> Iterator[None]:
    """MLflow prints a run's links on stdout when it ends it; the caller's setting is back after."""
    name = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    with preserved_environment(name):
        os.environ[name] = "true"
        yield


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a platform error as one readable line and exit with its code, no traceback.

    Under ``--json`` the error is also a JSON object on stdout, so a script parsing stdout
    gets one document either way. Anything else is a bug: its traceback, then exit 70, which
    no verdict uses (Python's own exit 1 would read as "drift" or "degraded" to a scheduler).
    """

    def fail(message: str, code: int, prefix: str = "error: ", details: dict[str, Any] | None = None) -> NoReturn:
        click.echo(f"{prefix}{message}", err=True)
        if os.environ.get("MLFLOW_RUN_ID"):  # a run `mlflow run` launched: say why on it
            from churn_platform import registry

            registry.note_failure(f"{prefix}{message}", code)
        context = click.get_current_context(silent=True)
        if context is not None and context.params.get("as_json"):
            echo_json({"error": message, "exit_code": code, **(details or {})})
        sys.exit(code)

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context(silent=True)
        quiet = context is not None and context.params.get("as_json")  # MLflow's run links would precede the JSON
        try:
            with job_metrics.sigterm_exits(), _mlflow_links_suppressed() if quiet else contextlib.nullcontext():
                return func(*args, **kwargs)
        except ChurnPlatformError as exc:
            fail(str(exc), int(exc.exit_code), exc.prefix, exc.details)
        except click.UsageError as exc:  # two options that do not go together: met once they are read
            if quiet:
                echo_json({"error": exc.format_message(), "exit_code": exc.exit_code})
            raise  # click's usage lines on stderr, as for any usage error
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors (exit 2) and deliberate exits
        except KeyboardInterrupt as exc:  # click's Abort is exit 1, which `score` says means "some rows rejected"
            fail(str(exc) or "interrupted; nothing more was done", 130)  # as a shell reports SIGINT
        except BrokenPipeError as exc:  # `history | head`: the reader has what it wanted; no traceback
            with contextlib.suppress(OSError, ValueError):  # the exit's flush of stdout would fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            # One line, on stderr: a closed socket inside a job (Spark's gateway) raises this too.
            click.echo(f"error: {exc.strerror or 'broken pipe'}: the output or a connection closed early", err=True)
            sys.exit(141)  # as a tool killed by SIGPIPE: a pipeline with pipefail still sees output was cut
        except Exception as exc:  # noqa: BLE001 - reported as what it is, with its traceback
            traceback.print_exc()
            fail(f"unexpected {type(exc).__name__}: {exc} (a bug: please report it with the traceback above)"[:2000],
                 int(ExitCode.CRASHED))  # fmt: skip

    return wrapper


#: A registered version number (MLflow keeps it in a 32-bit column): a larger one is a typo.
VERSION = click.IntRange(1, 2**31 - 1)
#: A count of rows or events: beyond anything real, below what SQL or Python overflows on.
COUNT = click.IntRange(1, 2**31 - 1)
#: An option typed on the command line, at its default or not: "given", for the refusals of
#: options that do not apply (click's default cannot say "not given").
_TYPED = click.core.ParameterSource.COMMANDLINE


def _refuse_rows_beside_a_file(data: str) -> None:
    """``--n-rows`` typed beside a ``--data`` file (train, demo): it counts generated customers,
    and every row of the file would be trained on."""
    from churn_platform.training_config import SYNTHETIC, generated_only

    if data != SYNTHETIC and click.get_current_context().get_parameter_source("n_rows") is _TYPED:
        raise generated_only(["n_rows"], data)


#: A date, or a date and time with an optional zone: the shapes the snapshot_time column takes.
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[zZ]|[+-]\d{2}(?::?\d{2})?)?)?")
_ISO_SHAPES = "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], with a zone (Z, +02:00) or in UTC"


def _iso_utc(value: str) -> datetime:
    """``value`` in UTC, read as the snapshot_time column reads times (a zone or ``Z``;
    without one, UTC): every time option takes the same shapes. ``ValueError`` for another
    shape, ``OverflowError`` for a time out of range once in UTC (0001-01-01T00:30+01:00)."""
    text = value.strip()
    if not _ISO_TIME.fullmatch(text):  # fromisoformat alone takes 2026-06-30+02:00 as 02:00
        raise ValueError(value)
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class _UtcTime(click.ParamType):
    """A time as ``_iso_utc`` reads it: the window options refused a zone that ``--as-of``, the
    snapshot_time column and the docs write."""

    name = "utc_time"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "YYYY-MM-DD[THH:MM[:SS][Z|+HH:MM]]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        try:
            return _iso_utc(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time: {_ISO_SHAPES}", param, ctx)
        except OverflowError:  # it was a traceback and exit 1, which a scheduler reads as a verdict
            self.fail(f"{value!r} is out of range in UTC (years 1 to 9999)", param, ctx)


#: A time given on the command line: YYYY-MM-DD[THH:MM[:SS]], with a zone or in UTC.
UTC_TIME = _UtcTime()


class _Alias(click.ParamType):
    """A registry alias: an empty one (``--alias "$ALIAS"``, the variable unset) scored with
    Production in silence."""

    name = "alias"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not str(value).strip():
            self.fail("an alias cannot be empty (an unset shell variable?)", param, ctx)
        return value


ALIAS = _Alias()


#: The master URLs Spark's launcher takes (local-cluster is Spark's own test mode).
_SPARK_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|(spark|k8s)://\S+")


class Share(click.FloatRange):
    """A share in (0, 1] (or (0, 1) with ``max_open``): click's range let ``nan`` through (every
    comparison with it is false), and a drift share of nan never found drift."""

    def __init__(self, *, max_open: bool = False) -> None:
        super().__init__(0, 1, min_open=True, max_open=max_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


def checked(rule: Callable[[str], str]) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback applying the rule of the matching setting, so an option and its variable
    refuse the same values (and the option's error names the option)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        try:
            return None if value is None else rule(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


tracking_option = click.option(
    "--tracking-uri", default=None, callback=checked(checked_tracking_uri),
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).",
)  # fmt: skip
model_name_option = click.option("--model-name", default=None, callback=checked(checked_model_name),
                                  help="Registered model name (default: CHURN_MODEL_NAME, else churn).")  # fmt: skip


#: Longest --reason and --actor: an audit event is one registry tag, and MLflow caps a tag's value.
REASON_MAX, ACTOR_MAX = 2000, 200


def _text(value: str) -> str:
    """Text a registry tag can hold: a byte that is not UTF-8 (typed in another locale) reaches
    Python as a lone surrogate, which no database driver encodes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8 text (typed in another encoding?)") from None
    return value


def _actor(value: str) -> str:
    _text(value)
    if any(ord(c) < 32 for c in value) or len(value) > ACTOR_MAX:
        raise ValueError(f"must be a name on one line, without control characters, at most {ACTOR_MAX} characters")
    return value.strip() and value  # blank: the default actor, as the docs promise


def _reason(value: str) -> str:
    _text(value)
    if len(value) > REASON_MAX:
        raise ValueError(f"at most {REASON_MAX} characters, got {len(value)}")
    # As the tag stores it (JSON escapes quotes, backslashes and control characters): the
    # registry's database column holds 5000 characters in all.
    if (stored := len(json.dumps(value, ensure_ascii=False)) - 2) > REASON_MAX:
        raise ValueError(f"at most {REASON_MAX} characters as stored, where quotes, backslashes and control "
                         f"characters count double or more; this one takes {stored}")  # fmt: skip
    return value


#: Who made a change, as the audit trail records it (one line: `history` prints one per event).
actor_option = click.option("--actor", default=None, callback=checked(_actor),
                            help="Who (default: CHURN_ACTOR or the OS user, @ this host).")  # fmt: skip
reason_option = click.option("--reason", default="", callback=checked(_reason),
                             help="Why (recorded in the audit trail).")  # fmt: skip


def inference_log_option(text: str = "Inference-log database (default: CHURN_INFERENCE_LOG_URL).") -> Any:
    """The ``--inference-log-url`` option, checked as ``CHURN_INFERENCE_LOG_URL`` is."""
    return click.option("--inference-log-url", default=None, callback=checked(checked_log_file), help=text)


def echo_json(payload: Any) -> None:
    """Strict JSON: a metric logged as NaN printed ``NaN``, which JSON parsers other than
    Python's refuse; a figure that is no number is ``null``."""
    click.echo(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@cache
def _registered_commands() -> dict[str, Any]:
    """The apps' commands, read once per process (a lookup per command would reread the metadata)."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)} or _declared_commands()


def _declared_commands() -> dict[str, EntryPoint]:
    """The same commands from pyproject.toml, which the entry points are built from, when the
    project runs from its checkout without being installed: the MLproject's conda environment
    installs its dependencies only, and `monitor` was "No such command"."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    table = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("entry-points", {})
    return {name: EntryPoint(name, value, COMMANDS_GROUP) for name, value in table.get(COMMANDS_GROUP, {}).items()}


class PluginGroup(click.Group):
    """A group that also offers the commands the apps register as entry points."""

    def _plugins(self) -> dict[str, Any]:
        return _registered_commands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self._plugins():
            command = self._plugins()[cmd_name].load()
        return command


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train, promote, serve and monitor churn models in an MLflow Model Registry."""
    from churn_platform import logs

    try:
        log_format = get_settings().log_format
    except Exception:  # noqa: BLE001 - a bad variable is reported by the command that reads it
        log_format = "text"
    logs.configure(logging.DEBUG if verbose else logging.INFO, log_format)
    for line in unknown_variables(os.environ):
        logging.getLogger("churn_platform.settings").warning(line)


@main.command()
@click.option(
    "--data",
    default=TrainConfig.data,
    show_default=True,
    help="CSV/Parquet path or s3:// URI; 'synthetic' generates customers.",
)
@click.option(
    "--n-rows",
    type=int,
    default=TrainConfig.n_rows,
    show_default=True,
    help="Customers to generate when --data is synthetic.",
)
@click.option(
    "--model-type",
    type=click.Choice(MODEL_TYPES),
    default=TrainConfig.model_type,
    show_default=True,
)
@click.option(
    "--c",
    "c",
    type=float,
    default=TrainConfig.c,
    show_default=True,
    help="Inverse regularisation strength (logistic).",
)
@click.option(
    "--learning-rate",
    type=float,
    default=TrainConfig.learning_rate,
    show_default=True,
    help="Boosting learning rate (hist_gradient_boosting).",
)
@click.option(
    "--max-iter",
    type=int,
    default=TrainConfig.max_iter,
    show_default=True,
    help="Boosting iterations (hist_gradient_boosting); logistic's solver cap, at least 1000.",
)
@click.option(
    "--max-depth",
    type=int,
    default=TrainConfig.max_depth,
    show_default=True,
    help="Tree depth (hist_gradient_boosting).",
)
@click.option(
    "--from-features",
    is_flag=True,
    help="Build the training set from the feature store, point in time, for the --labels (docs/features.md).",
)
@click.option("--labels", default=TrainConfig.labels, help="With --from-features: customer_id, label_time, churn.")
@click.option("--validation-size", type=float, default=TrainConfig.validation_size, show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@model_name_option
@click.option(
    "--decision-threshold",
    type=float,
    default=None,
    help="Churn probability threshold (default: CHURN_DECISION_THRESHOLD or 0.5).",
)
@tracking_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def train(tracking_uri: str | None, model_name: str | None, as_json: bool, **params: Any) -> None:
    """Train a model and register it as a new version."""
    from churn_platform.training import train as run_training
    from churn_platform.training_config import DATA_OPTIONS, SYNTHETIC, data_with_features

    source = click.get_current_context().get_parameter_source
    if params["from_features"]:
        if given := [name for name in DATA_OPTIONS if source(name) is _TYPED]:
            raise data_with_features(given)
    else:
        _refuse_rows_beside_a_file(params["data"] or SYNTHETIC)  # training reads "" as synthetic
    settings = settings_for(tracking_uri, model_name)
    config = TrainConfig(model_name=settings.model_name, **params)
    result = run_training(config, settings)
    if as_json:
        return echo_json(result.to_json())
    click.echo(f"registered {result.model_name} version {result.version} (run {result.run_id})")
    click.echo("  " + "  ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    if result.challenger:
        verdict = "passed -> Challenger"
    elif result.gate.passed:  # not checked: with no Production there is nothing to challenge
        verdict = "passed, no Challenger (promote it by number)"
    else:
        verdict = "not passed"
    click.echo(f"  gate: {verdict}: {result.gate.reason}")


# --------------------------------------------------------------------------- registry commands


def registry_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Shared options of the registry commands; the wrapped function gets a connected client."""

    @tracking_option
    @model_name_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @wraps(func)
    def wrapper(tracking_uri: str | None, model_name: str | None, as_json: bool, **kwargs: Any) -> Any:
        from churn_platform import registry

        settings = settings_for(tracking_uri, model_name)
        client = registry.connect(settings, existing=True)  # every registry command reads a model
        with registry.translate_errors(settings):
            return func(client=client, settings=settings, as_json=as_json, **kwargs)

    return handles_errors(wrapper)


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "-"


def _fmt_version(info: VersionInfo | None) -> str:
    if info is None:
        return "none"
    line = f"v{info.version}  run {info.run_id}  {_fmt_metrics(info.metrics)}  data {info.data_digest or '-'}"
    if info.promoted_at:
        line += f"\n    promoted {info.promoted_at} by {info.promoted_by} via {info.promoted_via}"
    return line


@main.command()
@registry_command
def status(client: Any, settings: Settings, as_json: bool) -> None:
    """What is in Production and Challenger, with metrics and who promoted it."""
    from churn_platform import promotion

    info = promotion.status(client, settings.model_name)
    if as_json:
        return echo_json(info.model_dump(mode="json"))
    click.echo(f"model {info.model}")
    click.echo(f"  Production: {_fmt_version(info.production)}")
    click.echo(f"  Challenger: {_fmt_version(info.challenger)}")


@main.command()
@registry_command
def versions(client: Any, settings: Settings, as_json: bool) -> None:
    """Every version, newest first."""
    from churn_platform import promotion

    rows = promotion.versions(client, settings.model_name)
    if as_json:
        return echo_json({"model": settings.model_name, "versions": [r.model_dump(mode="json") for r in rows]})
    click.echo(f"{'version':>7}  {'status':<8} {'aliases':<22} {'created':<25} {'data':<16}  metrics")
    for row in rows:
        click.echo(
            f"{row.version:>7}  {row.status:<8} {','.join(row.aliases) or '-':<22} "
            f"{row.created_at:<25} {row.data_digest or '-':<16}  {_fmt_metrics(row.metrics)}"
        )


@main.command()
@click.option("--version", "version", type=VERSION, required=True, help="Version to promote.")
@reason_option
@actor_option
@click.option("--force", is_flag=True, help="Promote even if the roc_auc gate refuses.")
@registry_command
def promote(
    client: Any, settings: Settings, as_json: bool, version: int, reason: str, actor: str | None, force: bool
) -> None:
    """Move Production to a version, if its validation roc_auc passes the gate."""
    from churn_platform import promotion

    result = promotion.promote(
        client, settings.model_name, version, reason=reason, actor=actor, force=force,
        tolerance=settings.promotion_tolerance,
    )  # fmt: skip
    if as_json:
        return echo_json(result.to_json())
    click.echo(result.message if not result.changed else f"{result.message} ({settings.model_name})")
    _echo_unusual_gate(result)


def _echo_unusual_gate(result: Any) -> None:
    """A gate forced past or not checked, said as --json says it (a passed one goes without saying)."""
    gate = result.gate
    if not result.changed or gate is None or (gate.passed and gate.checked):
        return
    click.echo(f"  gate: {'refused, forced past it' if not gate.passed else 'not checked'}: {gate.reason}")


@main.command()
@click.option("--to", "to", type=VERSION, default=None, help="An earlier Production version.")
@reason_option
@actor_option
@registry_command
def rollback(client: Any, settings: Settings, as_json: bool, to: int | None, reason: str, actor: str | None) -> None:
    """Move Production back to the version that held it before the current one."""
    from churn_platform import promotion

    result = promotion.rollback(client, settings.model_name, to=to, reason=reason, actor=actor)
    if as_json:
        return echo_json(result.to_json())
    click.echo(f"{result.message} ({settings.model_name})")


@main.command()
@click.option("--limit", type=COUNT, default=None, help="Show the K newest events.")
@registry_command
def history(client: Any, settings: Settings, as_json: bool, limit: int | None) -> None:
    """Promotions, rollbacks and rollout changes, newest first."""
    from churn_platform import promotion
    from churn_platform.contract import ROLLOUT_ACTIONS

    events = promotion.history(client, settings.model_name, limit)
    if as_json:
        return echo_json({"model": settings.model_name, "events": [e.to_json() for e in events]})
    if not events:
        click.echo(f"no promotions of {settings.model_name} recorded")
    for e in events:
        # A rollout moves nothing: it serves the Challenger beside Production.
        sign = "+" if e.action in ROLLOUT_ACTIONS else "->"
        moved = f"v{e.from_version or '-'} {sign} v{e.to_version or '-'}"
        why = f"  {' '.join(e.reason.split())}" if e.reason else ""  # a multi-line reason, on one line
        click.echo(f"{e.at}  {e.action:<13} {moved:<12} by {' '.join(e.actor.split())} via {e.via}{why}")


@main.group()
def features() -> None:
    """The feature store (Feast): customer features by id, for predictions by id and training.

    Embedded by default (CHURN_FEATURE_STORE_DIR); PostgreSQL with CHURN_FEATURE_STORE_URL.
    """


@features.command("apply")
@handles_errors
def features_apply() -> None:
    """Register the entity and the feature view (generated from the customer schema)."""
    from churn_platform import feature_store

    names = feature_store.apply(get_settings())
    click.echo(f"registered {', '.join(names)} in project {feature_store.PROJECT!r}")


#: ``--as-of modified``: the file's own time, resolved once the file is known.
MODIFIED = "modified"


class _SnapshotTime(click.ParamType):
    """A snapshot time, ``now``, or ``modified`` (the file's last write: what a scheduled job
    loading a daily export means, without dating a stale export as today's). ISO 8601 as the
    file's column takes it (a zone or ``Z``; without one, UTC)."""

    name = "snapshot_time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            converted = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        elif value.strip().lower() == "now":
            return datetime.now(UTC)
        elif value.strip().lower() == MODIFIED:
            return MODIFIED
        else:
            try:
                converted = _iso_utc(value)
            except ValueError:
                self.fail(f"{value!r} is not 'now', 'modified' nor an ISO 8601 time: {_ISO_SHAPES}", param, ctx)
            except OverflowError:
                self.fail(f"{value!r} is out of range in UTC (years 1 to 9999)", param, ctx)
        if converted > datetime.now(UTC) + CLOCK_AHEAD:
            self.fail(f"{value!r} is in the future; a snapshot is of what is known now or before", param, ctx)
        return converted


def _as_of(as_of: datetime | str | None, source: str, settings: Settings) -> dict[str, datetime | None]:
    """``--as-of`` as ``ingest``'s arguments: ``modified`` is the source file's last write, which
    ingest checks again once the file is read (``written_at``)."""
    if not isinstance(as_of, str):  # a time, or none given
        return {"as_of": as_of}
    from churn_platform import data

    when = data.modified_time(source, settings.s3_endpoint_url)
    if when > datetime.now(UTC) + CLOCK_AHEAD:
        raise click.UsageError(f"--as-of modified: {source} was last written at {when:%Y-%m-%d %H:%M:%S} UTC, in "
                               "the future; a snapshot is of what is known now or before")  # fmt: skip
    return {"as_of": when, "written_at": when}


def _snapshot_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
        click.argument("source"),
        click.option("--as-of", type=_SnapshotTime(), default=None,
                     help="Snapshot time (UTC, 'now', or 'modified': the file's last write) of each row without "
                          "one (no snapshot_time column, or blank)."),
        click.option("--rejects", default=None,
                     help="Where bad rows go, a path or s3:// key (default: SOURCE's name + .rejects.parquet, here)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    )):  # fmt: skip
        func = option(func)
    return func


def _materialized(end: datetime) -> str:
    """What was published; an end ahead of now is the margin for a sender's fast clock, said
    so: "up to" a time minutes away read like a bug."""
    from churn_platform.contract import CLOCK_AHEAD
    from churn_platform.feature_store import FEATURE_VIEW

    ahead = end > datetime.now(UTC)
    margin = f" (now, and {CLOCK_AHEAD.seconds // 60} min ahead for clocks that run fast)" if ahead else ""
    return f"materialized {FEATURE_VIEW!r} up to {end:%Y-%m-%d %H:%M:%S} UTC{margin}"


def _ingested(summary: Any, as_json: bool, materialized_to: datetime | None = None) -> None:
    """Print what was loaded; exit 1 when rows were rejected (the good ones are loaded), as `score` does."""
    from churn_platform.contract import ExitCode

    if as_json:
        echo_json(asdict(summary) | ({"materialized_to": materialized_to} if materialized_to else {}))
    else:
        click.echo(str(summary))
        if materialized_to:
            click.echo(_materialized(materialized_to))
    if summary.rejected:
        sys.exit(ExitCode.REJECTED_ROWS)


@features.command("ingest")
@_snapshot_options
@handles_errors
def features_ingest(source: str, as_of: datetime | str | None, rejects: str | None, as_json: bool) -> None:
    """Add customer snapshots (CSV/Parquet, a path or s3://bucket/key) to the offline source.

    Exit 1 when some rows were rejected (the others are loaded), as `score` does.
    """
    from churn_platform import feature_store

    settings = get_settings()
    _ingested(feature_store.ingest(settings, source, rejects=rejects, **_as_of(as_of, source, settings)), as_json)


@features.command("materialize")
@handles_errors
def features_materialize() -> None:
    """Copy each customer's latest snapshot into the online store (what predictions by id read)."""
    from churn_platform import feature_store

    click.echo(_materialized(feature_store.materialize(get_settings())))


@features.command("delete")
@click.option("--snapshot-time", "at", required=True,
              type=UTC_TIME,
              help="The snapshots' time (UTC), as the ingest summary prints it: to the second, every snapshot "
                   "within that second.")  # fmt: skip
@click.option("--yes", is_flag=True, help="Delete them; without it, only say what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@handles_errors
def features_delete(at: datetime, yes: bool, as_json: bool) -> None:
    """Delete the snapshots of one time: undo an export ingested by mistake or with a wrong --as-of.

    Customers whose online features came from them get their previous snapshot back (or
    are unknown ids when they have none). Without --yes nothing is deleted. Exit 2 when no
    snapshot has that time (the latest stored are listed).
    """
    from churn_platform import feature_store

    found = feature_store.delete(get_settings(), at, apply=yes)
    when = f"{at:%Y-%m-%d %H:%M:%S}{f'.{at.microsecond:06d}' if at.microsecond else ''} UTC"
    if as_json:
        echo_json(asdict(found))
    elif not found.rows:
        stored = ", ".join(f"{t:%Y-%m-%d %H:%M:%S.%f}" for t in found.stored) or "none"
        click.echo(f"features: no snapshot taken at {when}; the latest stored: {stored} (UTC)", err=True)
    elif found.deleted:
        click.echo(f"features: deleted {found.rows} snapshots taken at {when}; online, {found.republished} customers "
                   f"are back on their previous snapshot and {found.removed} have none left")  # fmt: skip
    else:
        click.echo(f"features: {found.rows} snapshots were taken at {when}; nothing deleted: add --yes to delete them "
                   f"(online, {found.republished} customers would go back to their previous snapshot and "
                   f"{found.removed} would have none left)")  # fmt: skip
    if not found.rows:  # not found, as for any command: a typo must not pass for done
        sys.exit(ExitCode.USAGE)


@features.command("refresh")
@_snapshot_options
@job_metrics.pushes("features")
@handles_errors
def features_refresh(source: str, as_of: datetime | str | None, rejects: str | None, as_json: bool) -> None:
    """apply, ingest SOURCE, materialize: the scheduled job's one command.

    The good rows are loaded and materialized even when some are rejected; exit 1 then.
    """
    from churn_platform import feature_store

    settings = get_settings()
    feature_store.apply(settings)
    summary = feature_store.ingest(settings, source, rejects=rejects, **_as_of(as_of, source, settings))
    job_metrics.record("churn_job_rows", summary.ingested, outcome="loaded")
    job_metrics.record("churn_job_rows", summary.rejected, outcome="rejected")
    # An ETL that stopped leaves yesterday's export: loaded again, the run succeeds, the data ages.
    job_metrics.record("churn_features_snapshot_timestamp_seconds", summary.last.timestamp() if summary.last else None)
    # From the earliest snapshot just loaded (or the last run's end): the scan stays one day's.
    # Up to as far ahead as ingest takes snapshots, as `materialize` does: a window ending at now
    # left out a snapshot a source dated a minute ahead, already online, and put the customer's
    # older one back. Nothing loaded (an empty export, or every row rejected: exit 1): nothing new.
    materialized = feature_store.materialize(settings, start=summary.first) if summary.ingested else None
    _ingested(summary, as_json, materialized_to=materialized)


@main.group()
def rollout() -> None:
    """Serve the Challenger beside Production (shadow or canary), then promote or stop."""


def _fmt_rollout(state: RolloutState) -> str:
    if state.mode == "off":
        return "rollout: off (Production serves every customer)" + (f"\n  {state.reason}" if state.reason else "")
    share = f" {state.percent}% of customers" if state.mode == "canary" else " (scored for every customer, logged only)"
    line = f"rollout: {state.mode}: Challenger v{state.challenger_version}{share}"
    line += f" beside Production v{state.production_version}\n  started {state.started_at} by {state.started_by}"
    return line + (f": {state.reason}" if state.reason else "")


@rollout.command("start")
@click.option("--mode", type=click.Choice(["shadow", "canary"]), required=True, help="How the Challenger serves.")
@click.option("--percent", type=int, default=None,
              help=f"Canary: share of customers ({CANARY_PERCENT[0]}-{CANARY_PERCENT[1]}) the Challenger answers.")
@click.option("--version", "version", type=VERSION, default=None,
              help="Default: the running rollout's Challenger, else the Challenger alias.")
@reason_option
@actor_option
@registry_command
def rollout_start(client: Any, settings: Settings, as_json: bool, mode: str, percent: int | None,
                  version: int | None, reason: str, actor: str | None) -> None:  # fmt: skip
    """Start (or change) a rollout; API replicas follow within CHURN_RELOAD_POLL_S or on /admin/reload."""
    from churn_platform import rollout as rollout_mod

    state = rollout_mod.start(client, settings.model_name, mode=mode, percent=percent, version=version,  # type: ignore[arg-type]
                              reason=reason, actor=actor)  # fmt: skip
    echo_json(state.model_dump(mode="json")) if as_json else click.echo(_fmt_rollout(state))


@rollout.command("status")
@inference_log_option()
@registry_command
def rollout_status(client: Any, settings: Settings, as_json: bool, inference_log_url: str | None) -> None:
    """The rollout state in the registry and, while one runs, each arm's figures from the inference log."""
    from churn_platform import loading, promotion
    from churn_platform import registry as registry_mod
    from churn_platform import rollout as rollout_mod
    from churn_platform.contract import TAG_THRESHOLD

    state = rollout_mod.current(client, settings.model_name, promotion.current_production(client, settings.model_name))
    comparison, failed = None, None
    if state.mode != "off":
        try:
            thresholds, deleted = {}, None
            for version in (state.production_version, state.challenger_version):
                if version is not None:
                    try:
                        tags = registry_mod.get_version(client, settings.model_name, version).tags
                    except NotFoundError as exc:  # deleted mid-rollout: its rows in the log are the evidence why
                        tags, deleted = {}, exc
                    thresholds[version] = loading.decision_threshold(tags.get(TAG_THRESHOLD),
                                                                     settings.decision_threshold, version)  # fmt: skip
            comparison = rollout_mod.compare(
                inference_log_url or settings.inference_log_url, settings.model_name, state, thresholds=thresholds,
                band_edges=(settings.risk_medium_from, settings.risk_high_from),
                horizon_days=settings.outcome_horizon_days, maturity_days=settings.outcome_maturity_days,
            )  # fmt: skip
            if deleted is not None:
                note = f"{deleted}: agreement for that version uses CHURN_DECISION_THRESHOLD"
                comparison = comparison.model_copy(update={"note": "; ".join(filter(None, [note, comparison.note]))})
                failed = deleted
        except ChurnPlatformError as exc:
            # The state still stands: an on-call user in an incident (the log down, the Challenger
            # deleted, bad rows) must see what is running; the exit code still says what failed.
            comparison, failed = rollout_mod.Comparison(since=state.started_at, arms=[], note=str(exc)), exc
    if as_json:
        payload = state.model_dump(mode="json")
        payload["comparison"] = comparison.model_dump(mode="json") if comparison else None
        if failed is not None:  # the documented error keys beside the state that still stands
            payload |= {"error": str(failed), "exit_code": int(failed.exit_code)}
        echo_json(payload)
    else:
        _echo_rollout(state, comparison)
    if failed is not None:
        click.echo(f"error: {failed}", err=True)
        sys.exit(int(failed.exit_code))


def _echo_rollout(state: Any, comparison: Any) -> None:
    click.echo(_fmt_rollout(state))
    if comparison is not None and comparison.note and not comparison.arms:
        click.echo(f"  no comparison: {comparison.note}")
    elif comparison is not None and not comparison.arms:  # a header over nothing read as a broken table
        click.echo("  no comparison yet: no rows logged since the rollout started (the API logs each arm's rows "
                   "once it serves the rollout)")  # fmt: skip
    elif comparison is not None:
        click.echo(f"  {'arm':<11}{'version':>8}{'requests':>10}{'rows':>9}{'mean score':>12}{'distance':>10}"
                   f"{'agreement':>11}{'p50 ms':>8}{'p99 ms':>8}{'labelled':>10}{'roc_auc':>9}"
                   "  risk low/med/high")  # fmt: skip
        for a in comparison.arms:
            fmt = lambda v, digits=3: "-" if v is None else f"{v:.{digits}f}"  # noqa: E731
            bands = "/".join(f"{v:.0%}" for v in a.risk_bands.values())
            click.echo(f"  {a.arm:<11}{a.model_version:>8}{a.requests:>10}{a.rows:>9}{fmt(a.mean_score):>12}"
                       f"{fmt(a.score_distance):>10}{fmt(a.agreement):>11}{fmt(a.p50_scoring_ms, 2):>8}"
                       f"{fmt(a.p99_scoring_ms, 2):>8}{a.labelled_rows:>10}{fmt(a.realized_roc_auc):>9}"
                       f"  {bands}")  # fmt: skip
        if comparison.note:  # a caveat on the figures shown
            click.echo(f"  note: {comparison.note}")


@rollout.command("stop")
@reason_option
@actor_option
@registry_command
def rollout_stop(client: Any, settings: Settings, as_json: bool, reason: str, actor: str | None) -> None:
    """End the rollout: Production serves every customer again."""
    from churn_platform import rollout as rollout_mod

    state = rollout_mod.stop(client, settings.model_name, reason=reason, actor=actor)
    echo_json(state.model_dump(mode="json")) if as_json else click.echo(_fmt_rollout(state))


@rollout.command("promote")
@reason_option
@actor_option
@click.option("--force", is_flag=True, help="Promote even if the roc_auc gate refuses.")
@registry_command
def rollout_promote(client: Any, settings: Settings, as_json: bool, reason: str, actor: str | None,
                    force: bool) -> None:  # fmt: skip
    """Move Production to the rollout's Challenger (same gate as promote), then end the rollout."""
    from churn_platform import rollout as rollout_mod

    result = rollout_mod.promote(client, settings.model_name, reason=reason, actor=actor, force=force,
                                 tolerance=settings.promotion_tolerance)  # fmt: skip
    if as_json:
        return echo_json(result.to_json())
    click.echo(f"{result.message} ({settings.model_name}); rollout ended")
    _echo_unusual_gate(result)


@main.command(epilog=EXIT_CODES_HELP)
@click.option("--if", "trigger", type=click.Choice(["drift", "performance", "always"]), default="always",
              show_default=True, help="Retrain only when Production's last monitoring runs flagged this.")
@click.option("--of", type=COUNT, default=3, show_default=True,
              help="How many of Production's latest monitoring runs to read (one per UTC day for "
                   "performance, per hour for drift).")
@click.option("--at-least", type=COUNT, default=2, show_default=True,
              help="How many of them must have flagged the trigger.")
@click.option("--since", type=UTC_TIME, default=None,
              help="Use outcomes observed from then on (UTC; default: all).")
@click.option("--base", default=None, help="A labelled dataset (CSV/Parquet/s3://) to train on beside the recent rows.")
@click.option("--gate-share", type=Share(max_open=True), default=0.25,
              show_default=True, help="Share of recent customers held out to gate the candidate against Production.")
@click.option("--model-type", type=click.Choice(MODEL_TYPES), default=None, help="Instead of Production's.")
@click.option("--rollout", "rollout_mode", type=click.Choice(["shadow", "canary"]), default=None,
              help="Start a rollout of the new Challenger when it passes the gate.")
@click.option("--percent", type=click.IntRange(*CANARY_PERCENT), default=None,
              help="Canary percent (with --rollout canary).")
@inference_log_option("Database of the inference log and outcomes (default: CHURN_INFERENCE_LOG_URL).")
@job_metrics.pushes("retrain")
@registry_command
def retrain(client: Any, settings: Settings, as_json: bool, trigger: str, of: int, at_least: int,
            since: Any, base: str | None, gate_share: float, model_type: str | None, rollout_mode: str | None,
            percent: int | None, inference_log_url: str | None) -> None:  # fmt: skip
    """Train the next Challenger on the inference log joined with outcomes (and --base), gated
    against Production on held-out recent customers; never moves Production.

    Exit 0 retrained (a version registered), 1 not needed or not possible (the reason is printed).
    """
    from churn_platform.retraining import retrain as run_retrain

    if percent is not None and rollout_mode != "canary":
        raise click.UsageError("--percent goes with --rollout canary")
    if rollout_mode == "canary" and percent is None:
        raise click.UsageError(f"--rollout canary needs --percent ({CANARY_PERCENT[0]} to {CANARY_PERCENT[1]})")
    if since is not None and since >= datetime.now(UTC):  # it said "ingest more outcomes" (exit 1, a normal answer)
        raise click.UsageError(f"--since {since.isoformat()} is not in the past: no outcome is observed after now")
    # 0 unless this run registers a version: a run that declines (exit 1) must not leave the last
    # version ever registered on the Pushgateway, where the dashboard reads it as this run's.
    job_metrics.record("churn_retrain_registered_version", 0)
    result = run_retrain(
        settings, trigger=trigger, of=of, at_least=at_least,  # type: ignore[arg-type]
        since=since,
        base=base, inference_log_url=inference_log_url, gate_share=gate_share,
        parameters={"model_type": model_type} if model_type else None,
        rollout_mode=rollout_mode, percent=percent,  # type: ignore[arg-type]
    )  # fmt: skip
    job_metrics.record("churn_retrain_registered_version", result.version)
    if as_json:
        return echo_json(result.model_dump(mode="json"))
    gate = result.gate or {}
    click.echo(f"retrained: {result.decision.reason}")
    trained = result.recent_rows - result.gate_rows  # the gate's rows are held out of the recent ones
    click.echo(f"  v{result.version} trained on {trained} recent labelled rows (+{result.base_rows} base), "
               f"gated on {result.gate_rows} others held out")  # fmt: skip
    click.echo(f"  gate: {gate.get('reason', '-')}")
    click.echo(f"  {'Challenger: v' + str(result.version) if result.challenger else 'not Challenger'}; "
               f"Production stays v{result.production_version}")  # fmt: skip
    if result.rollout:
        click.echo(f"  rollout started: {result.rollout['mode']} (churn-platform rollout status)")
    elif result.rollout_not_started:
        click.echo(f"  rollout: {result.rollout_not_started}")


@main.command(epilog=EXIT_CODES_HELP)
@click.option("--input", "source", required=True,
              help="CSV or Parquet: a file, a folder, a glob, or an s3:// key, prefix or glob.")
@click.option("--output", required=True, help="Where the scores go: a path or s3://bucket/key.")
@click.option("--alias", type=ALIAS, default=None,
              help="Score with the version this alias points at (default: Production).")
@click.option("--version", "version", type=VERSION, default=None, help="Score with this version.")
@click.option("--format", "output_format", type=click.Choice(["parquet", "csv"]), default=None,
              help="Output format (default: from --output's suffix, else parquet).")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="local: this process, streaming in chunks; spark: Apache Spark (the 'spark' extra).")
@click.option("--spark-master", default=None,
              help="Spark master URL (default: spark-submit's, else local[*]).")
@click.option("--spark-conf", "spark_conf", multiple=True, metavar="KEY=VALUE",
              help="A Spark setting, e.g. spark.jars.packages=org.apache.hadoop:hadoop-aws:3.4.1 (repeatable).")
@click.option("--rejects", default=None,
              help="Where bad rows go (default: OUTPUT's name without its suffix + .rejects.parquet, beside it).")
@click.option("--explain", is_flag=True, help="Add each customer's top contributions as columns.")
@click.option("--top-k", type=click.IntRange(1, len(FEATURE_NAMES)), default=None,
              help="Contributions per row, with --explain (default: 5).")
@click.option("--with-features", is_flag=True,
              help="Also write each customer's features, so `churn-platform monitor --current` can read the file.")
@click.option("--chunk-rows", type=COUNT, default=100_000, show_default=True,
              help="Rows scored at a time (memory grows with it, not with the input).")
@click.option("--max-reject-share", type=Share(max_open=True), default=None,
              help="Keep the previous output (exit 2) when more than this share of the rows is rejected.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@tracking_option
@model_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@job_metrics.pushes("score")
@handles_errors
def score(source: str, output: str, alias: str | None, version: int | None, output_format: str | None, engine: str,
          spark_master: str | None, spark_conf: tuple[str, ...], rejects: str | None, explain: bool, top_k: int | None,
          with_features: bool, chunk_rows: int, max_reject_share: float | None, no_progress: bool,
          tracking_uri: str | None, model_name: str | None, as_json: bool) -> None:  # fmt: skip
    """Score every customer in --input with a registered version into --output.

    Output columns: customer_id, churn_probability, will_churn, risk, model_name,
    model_version, scored_at (and explanation_* with --explain). The output appears only
    when complete. Rows that fail the schema go to the rejects file with their row number
    and reasons. Exit 0 when every row was scored, 1 when some were rejected, 2 on bad
    usage or an unreadable input (or none scored, or more rejected than --max-reject-share),
    3 when the registry or object store is unreachable.
    """
    from churn_platform import batch_scoring
    from churn_platform.contract import ExitCode
    from churn_platform.errors import DataValidationError

    if reason := job_metrics.adhoc(alias or PRODUCTION_ALIAS, version):  # another model than the schedule's
        job_metrics.not_pushed(reason)
    if alias and version:
        raise DataValidationError("give --alias or --version, not both")
    if top_k is not None and not explain:
        raise DataValidationError("--top-k is read only with --explain")
    if engine == "local" and (spark_master or spark_conf):
        raise DataValidationError("--spark-master and --spark-conf need --engine spark")
    # Spark's launcher printed its stack trace for a scheme it does not know, after the model's download.
    if spark_master is not None and not _SPARK_MASTER.fullmatch(spark_master):
        raise DataValidationError(f"--spark-master {spark_master!r}: Spark takes local, local[N], local[*], "
                                  "spark://HOST:PORT, k8s://https://HOST:PORT or yarn")  # fmt: skip
    conf = {}
    for item in spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataValidationError(f"--spark-conf takes KEY=VALUE, got {item!r}")
        conf[key.strip()] = value
    settings = settings_for(tracking_uri, model_name)
    options: dict[str, Any] = {"alias": alias, "version": version, "output_format": output_format, "rejects": rejects,
                               "explain_top_k": (top_k or 5) if explain else None, "with_features": with_features,
                               "chunk_rows": chunk_rows, "progress": not no_progress and not as_json,
                               "max_reject_share": max_reject_share}  # fmt: skip
    run_id = batch_scoring.launched_run_id(settings)
    if engine == "spark":
        from churn_platform import spark_scoring

        summary = spark_scoring.score(settings, source, output, master=spark_master, conf=conf, **options)
    else:
        summary = batch_scoring.score(settings, source, output, **options)
    if run_id:
        batch_scoring.record_on_run(settings, run_id, summary)
    job_metrics.record("churn_job_rows", summary.scored, outcome="scored")
    job_metrics.record("churn_job_rows", summary.rejected, outcome="rejected")
    if as_json:
        echo_json(summary.to_json())
    else:
        click.echo(summary.line())
    if summary.rejected:
        sys.exit(ExitCode.REJECTED_ROWS)


@main.group()
def outcomes() -> None:
    """What customers actually did: the labels that judge the predictions."""


@outcomes.command("ingest")
@click.argument("source")
@click.option("--rejects", "rejects_path", default=None,
              help="Where to write the bad rows (CSV; default: NAME.rejects.csv next to a local input, "
                   "in the current folder for s3://).")
@click.option("--strict", is_flag=True, help="Write nothing when any row is bad.")
@inference_log_option("Database of the inference log, where outcomes are kept (default: CHURN_INFERENCE_LOG_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@handles_errors
def outcomes_ingest(source: str, rejects_path: str | None, strict: bool, inference_log_url: str | None,
                    as_json: bool) -> None:  # fmt: skip
    """Load outcomes (customer_id, churned, observed_at) from a CSV/Parquet path or s3:// URI.

    Idempotent: the same file twice changes nothing; a new label for the same customer and
    observed_at replaces the old one. Bad rows are listed with their row number and reason
    and written to a rejects file; the good ones are written unless --strict. Exit 0 when
    every row was good, 4 when some were rejected.
    """
    from pathlib import Path

    import sqlalchemy as sa

    from churn_platform import data
    from churn_platform import outcomes as outcomes_mod
    from churn_platform.contract import ExitCode
    from churn_platform.inference_log import make_engine, read_failure, require_log
    from churn_platform.settings import redacted

    settings = get_settings()
    data.require_named(source)
    if "://" in source and not source.startswith("s3://"):  # read as a local path: "folder does not exist"
        raise DataSourceError(f"{source}: outcomes are read from a local path or an s3:// URI")
    named = Path(source.split("://")[-1])
    if not named.name:  # ".", "/": no file to name the rejects after
        raise DataSourceError(f"data path is a directory, not a file: {source}")
    # Where bad rows would go is settled, and refused if unwritable, before anything is stored.
    if rejects_path is None:
        rejects_path = f"{named.with_suffix('')}.rejects.csv"
        if source.startswith("s3://"):
            rejects_path = Path(rejects_path).name  # the input's name, in this folder
    data.refuse_overwrite(source, rejects=rejects_path)
    data.local_target(rejects_path)
    data.refuse_foreign_output("--rejects", rejects_path, data.REJECT_MARKER)
    outcomes_mod.check_source(source)  # before a large file is read
    url = inference_log_url or settings.inference_log_url
    engine = make_engine(url)
    try:  # beside the predictions they judge: not in a typo's file, nor in MLflow's database
        require_log(engine)
    except sa.exc.SQLAlchemyError as exc:
        raise read_failure(exc, redacted(url)) from None
    finally:
        engine.dispose()
    frame = data.read_table(source, settings.s3_endpoint_url, empty=True)  # a day without outcomes: 0 rows, exit 0
    result = outcomes_mod.ingest(frame, url, source=source, strict=strict)
    rejects = result.checked.rejects
    if len(rejects):
        try:
            rejects.to_csv(rejects_path, index=False)
        except OSError as exc:  # the summary below still says what was stored; exit 4 as for any reject
            click.echo(f"error: writing the rejected rows to {rejects_path} failed: {exc.strerror or exc}", err=True)
            rejects_path = None
    else:  # an earlier run's rejects at that path would read as this run's (fixed rows reported bad)
        outcomes_mod.remove_earlier_rejects(Path(rejects_path))
        rejects_path = None
    if as_json:
        echo_json(result.to_json(rejects_path))
    else:
        written = result.written
        if written is None:
            click.echo(f"outcomes: {result.checked.rows} rows read, nothing written (--strict: {len(rejects)} bad)")
        else:
            click.echo(f"outcomes: {result.checked.rows} rows read, {written.inserted} new, {written.replaced} "
                       f"replaced, {written.unchanged} unchanged, {len(rejects)} rejected")  # fmt: skip
        if result.checked.dated_now:
            click.echo(f"  note: {result.checked.dated_now} rows had no observed_at and were dated now; ingesting "
                       "them again adds them again (give observed_at to make a file safe to re-run)", err=True)
        for row in rejects.head(10).itertuples():
            click.echo(f"  row {row.row}: {row.reason}", err=True)
        if len(rejects):
            more = f" (and {len(rejects) - 10} more)" if len(rejects) > 10 else ""
            where = f"written to {rejects_path}" if rejects_path else "not written (see the error above)"
            click.echo(f"  rejected rows{more} {where}", err=True)
    if len(rejects):
        sys.exit(ExitCode.DATA_QUALITY)


@outcomes.command("delete")
@click.option("--source", required=True,
              help="Whose outcomes: the file as it was given to `outcomes ingest`, or 'api' (POST /outcomes).")
@click.option("--ingested-since", "since", type=UTC_TIME, default=None,
              help="Only outcomes written from then on (UTC): one push of many under the same source.")
@click.option("--ingested-until", "until", type=UTC_TIME, default=None,
              help="Only outcomes written before then (UTC).")
@click.option("--yes", is_flag=True, help="Delete them; without it, only say what would be deleted.")
@inference_log_option("Database of the inference log, where outcomes are kept (default: CHURN_INFERENCE_LOG_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@handles_errors
def outcomes_delete(source: str, since: datetime | None, until: datetime | None, yes: bool,
                    inference_log_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Delete the outcomes a source wrote last: undo a file of wrong labels or times.

    Ingesting a corrected file replaces labels at the same customer and observed_at only;
    outcomes at wrong times stay beside the right ones. Without --yes nothing is deleted.
    Exit 2 when the source wrote none (the sources stored are listed).
    """
    from churn_platform import outcomes as outcomes_mod

    if since and until and since >= until:
        raise click.UsageError("--ingested-since is not before --ingested-until")
    found = outcomes_mod.delete(inference_log_url or get_settings().inference_log_url, source, apply=yes,
                                ingested=(since, until))  # fmt: skip
    written = "".join(f" {word} {t:%Y-%m-%d %H:%M:%S}" for word, t in (("from", since), ("before", until)) if t)
    if as_json:
        echo_json(dataclasses.asdict(found))
    elif not found.rows:
        known = ", ".join(f"{s!r} ({n})" for s, n in found.sources.items()) or "none"
        click.echo(f"outcomes: none were last written by {source!r}{written}; sources stored: {known}", err=True)
    else:
        span = (f"observed {found.first} to {found.last}, written {found.written_first} to {found.written_last} "
                "UTC")  # fmt: skip
        if found.deleted:
            click.echo(f"outcomes: deleted {found.rows} last written by {source!r}{written} ({span})")
        else:
            click.echo(f"outcomes: {found.rows} were last written by {source!r}{written} ({span}); nothing deleted: "
                       "add --yes to delete them")  # fmt: skip
    if not found.rows:  # not found, as for any command: a typo must not pass for done
        sys.exit(ExitCode.USAGE)


@main.command()
@click.option("--data", default="synthetic", show_default=True, help="Training data ('synthetic' or a CSV/Parquet).")
@click.option("--n-rows", type=click.IntRange(min=200), default=5000, show_default=True, help="Synthetic customers.")
@click.option("--traffic", type=click.IntRange(min=100), default=1000, show_default=True, help="Customers per window.")
@click.option("--folder", type=click.Path(file_okay=False), default="demo", show_default=True,
              help="Working folder (wiped first if the demo made it; a folder of other files is refused).")  # fmt: skip
@click.option("--keep-running", is_flag=True, help="Leave the MLflow UI and the API up afterwards.")
@handles_errors
def demo(data: str, n_rows: int, traffic: int, folder: str, keep_running: bool) -> None:
    """Run the whole platform end to end on the embedded default (no services needed)."""
    from pathlib import Path

    from churn_platform.demo import run_demo
    _refuse_rows_beside_a_file(data)
    run_demo(Path(folder), data, n_rows, traffic, keep_running)


if __name__ == "__main__":  # pragma: no cover
    main()
