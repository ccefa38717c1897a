"""The inference log's table: one row per scored customer, one column per schema feature.

Declared once here: the API writes it, the monitor reads it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from churn_platform.contract import (
    ARM,
    INFERENCE_LOG_META,
    INFERENCE_LOG_TABLE,
    MODEL_NAME,
    MODEL_VERSION,
    PROBABILITY,
    REQUEST_ID,
    ROW_INDEX,
    SCORED_AT,
    SCORING_MS,
    ExitCode,
)
from churn_platform.errors import ChurnPlatformError, DataValidationError, SettingsError, StorageUnreachable
from churn_platform.schema import FEATURE_NAMES, FEATURES, ID_COLUMN, ID_MAX_LENGTH
from churn_platform.settings import sqlite_file

log = logging.getLogger(__name__)

#: Every column the writer inserts, in order.
COLUMNS: tuple[str, ...] = (*INFERENCE_LOG_META, ID_COLUMN, *FEATURE_NAMES, PROBABILITY)

#: Indexes for the monitor's and the performance job's windows, BRIN on PostgreSQL (B-trees
#: on SQLite): rows arrive roughly in time order, so a block range's min/max selects a window,
#: and keeping it up is cheap: PostgreSQL spends 5-10 % less CPU per logged row than with
#: B-trees, for a tenth less space (benchmarks/inference_log.py). Rows loaded out of order (a
#: replayed spool) only widen the ranges they land in. Same names as the B-trees of releases
#: before 2026-12, which ``upgrade`` converts.
BRIN_INDEXES = {"ix_inference_log_scored_at": SCORED_AT, "ix_inference_log_model_version": MODEL_VERSION}

_SA_TYPES = {"category": sa.String(64), "integer": sa.Integer(), "float": sa.Float()}


def table(metadata: sa.MetaData) -> sa.Table:
    """The ``inference_log`` table: one column per schema feature, so monitoring can read it back."""
    return sa.Table(
        INFERENCE_LOG_TABLE,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column(REQUEST_ID, sa.String(64), nullable=False),
        sa.Column(ROW_INDEX, sa.Integer(), nullable=False),
        sa.Column(SCORED_AT, sa.DateTime(timezone=True), nullable=False),
        sa.Column(MODEL_NAME, sa.String(256), nullable=False),
        sa.Column(MODEL_VERSION, sa.Integer(), nullable=False),
        sa.Column(ARM, sa.String(16), nullable=False, server_default="production"),
        sa.Column(SCORING_MS, sa.Float()),
        sa.Column(ID_COLUMN, sa.String(ID_MAX_LENGTH), index=True),  # the outcomes join
        *(sa.Column(f.name, _SA_TYPES[f.kind]) for f in FEATURES),
        sa.Column(PROBABILITY, sa.Float(), nullable=False),
        sa.UniqueConstraint(REQUEST_ID, ROW_INDEX, name="uq_inference_log_request_row"),
        *(sa.Index(name, column, postgresql_using="brin", postgresql_with={"autosummarize": "on"})
          for name, column in BRIN_INDEXES.items()),
    )  # fmt: skip


#: Columns added since the first release, with their DDL: a table from an earlier release gains them.
_ADDED = {ARM: "VARCHAR(16) NOT NULL DEFAULT 'production'", SCORING_MS: "FLOAT"}


def upgrade(engine: sa.Engine) -> None:
    """Create the table, or add what a table from an earlier release lacks and convert its indexes."""
    with schema_change(engine) as conn:
        table(sa.MetaData()).metadata.create_all(conn)
        columns = {c["name"] for c in sa.inspect(conn).get_columns(INFERENCE_LOG_TABLE)}
        exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
        for name in (name for name in _ADDED if name not in columns):
            try:
                conn.execute(sa.text(f"ALTER TABLE {INFERENCE_LOG_TABLE} ADD COLUMN{exists} {name} {_ADDED[name]}"))
            except sa.exc.OperationalError as exc:  # SQLite: another process added it since we looked
                if "duplicate column" not in str(exc):
                    raise
        converted = _convert_to_brin(conn) if conn.dialect.name == "postgresql" else []
    if converted:
        log.info("inference log: indexes %s converted to BRIN", ", ".join(converted))


#: How long converting an index may wait for the table: DROP INDEX needs it to itself, and
#: while it waits, PostgreSQL queues every other reader and writer behind it. Long enough for
#: another writer's COPY transaction to end, far shorter than a monitor's query.
CONVERT_LOCK_TIMEOUT = "1s"
_NOT_BRIN = sa.text(
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
    "WHERE i.indrelid = to_regclass(:t) AND c.relname = ANY(:names) AND a.amname <> 'brin'"
)
#: PostgreSQL's SQLSTATE for a role lacking a privilege.
INSUFFICIENT_PRIVILEGE = "42501"
#: Why a conversion may be left for later: the table stayed busy, or this role does not own it
#: (a writer granted INSERT only; its B-trees serve as before).
_NOT_NOW = {
    "55P03": f"the table stayed busy for {CONVERT_LOCK_TIMEOUT}; a later start tries again",
    INSUFFICIENT_PRIVILEGE: (
        "this database role does not own the table; its owner can convert them (docs/operations.md)"
    ),
}


def sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's error code: psycopg 3's ``sqlstate``, psycopg2's ``pgcode``, pg8000's ``C``;
    of SQLAlchemy's error or of the driver's own (a raw cursor's COPY)."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], dict):
        code = orig.args[0].get("C")
    return code


def refused_user(exc: BaseException) -> bool:
    """Whether PostgreSQL refused this user (a grant the operator must give, not an outage): a
    missing privilege, or CONNECT refused, which comes at connect with no SQLSTATE."""
    return sqlstate(exc) == INSUFFICIENT_PRIVILEGE or "permission denied for database" in str(getattr(exc, "orig", exc))


#: How PostgreSQL refuses a login at connect, with no SQLSTATE: a wrong password, role or
#: database name in the URL, a role without LOGIN, a pg_hba.conf that has no line for this
#: host or rejects it, or no password where one is asked. The URL's (or the server's
#: configuration) to mend, not an outage (retried as one, a job failed the same way until
#: someone looked).
_BAD_LOGIN = re.compile(
    r'.*(FATAL:\s+(\w+ authentication failed|no pg_hba\.conf entry|pg_hba\.conf rejects|(role|database) "[^"]*" '
    r"does not exist|role \S+ is not permitted to log in)|fe_sendauth: no password supplied).*"
)


def refused_login(exc: BaseException) -> str | None:
    """The line saying PostgreSQL refused to log this URL in (its user, password or database is
    wrong), or None: libpq tries each address of a host, and the first line may be another's."""
    found = _BAD_LOGIN.search(str(getattr(exc, "orig", None) or exc))
    return found[0].strip() if found else None


def _convert_to_brin(conn: sa.Connection) -> list[str]:
    """Rebuild an earlier release's B-tree under a ``BRIN_INDEXES`` name as the BRIN this
    release declares (a scan of the table, seconds per ten million rows, during which its
    readers and writers wait; the API's rows wait in the spool). Returns the indexes rebuilt.
    A table busy past ``CONVERT_LOCK_TIMEOUT`` (a long query), or owned by another role,
    keeps its B-trees, which answer the same queries."""
    stale = list(conn.execute(_NOT_BRIN, {"t": INFERENCE_LOG_TABLE, "names": list(BRIN_INDEXES)}).scalars())
    if not stale:
        return []
    declared = {i.name: i for i in table(sa.MetaData()).indexes}
    try:
        with conn.begin_nested():  # one wait for the table, however many indexes
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{CONVERT_LOCK_TIMEOUT}'"))
            for name in stale:
                conn.execute(sa.text(f"DROP INDEX {name}"))
                conn.execute(sa.schema.CreateIndex(declared[name]))
            conn.execute(sa.text("SET LOCAL lock_timeout = DEFAULT"))
    except sa.exc.DBAPIError as exc:
        why = _NOT_NOW.get(sqlstate(exc) or "")
        if why is None:
            raise
        log.warning("inference log: indexes %s not converted to BRIN: %s", ", ".join(stale), why)
        return []
    return stale


#: Serialises schema changes on one PostgreSQL database: processes creating the same tables at
#: once (the replicas of a first deploy) collide in PostgreSQL's catalog (a unique violation on
#: pg_type, or DuplicateTable), and a writer that hit that dropped a batch of rows.
_SCHEMA_LOCK = 0x6368726E


@contextlib.contextmanager
def schema_change(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that holds the project's schema lock on PostgreSQL until it commits."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        yield conn


def is_missing_table(exc: BaseException) -> bool:
    """The log's table does not exist yet (nothing logged): not the same as a database that is
    missing or down, whose message also says "does not exist" on PostgreSQL."""
    text = str(exc)
    return f"no such table: {INFERENCE_LOG_TABLE}" in text or f'relation "{INFERENCE_LOG_TABLE}" does not exist' in text


class BadLogData(DataValidationError):
    """The inference log holds what no model or schema of this release produces: no verdict on it."""

    exit_code = ExitCode.DATA_QUALITY


def read_failure(exc: sa.exc.SQLAlchemyError, where: str) -> ChurnPlatformError:
    """What a job says when reading the log at ``where`` failed. A table from an earlier
    release lacks columns until the upgraded API starts its writer, which adds them: run the
    job again after. A table lacking a feature of this schema was written for another one:
    bad data, no verdict. A missing grant is the operator's to give (exit 2: retried, it failed
    the same way until someone looked), as is a login it refused. Anything else (down, not a database at all):
    unreachable."""
    text = str(getattr(exc, "orig", exc)).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if refused_user(exc):
        return SettingsError(f"the inference log at {where} refused this job's database user: {line}; grant "
                             "it CONNECT on the database and SELECT on the log's tables (inference_log, "
                             "outcomes)")  # fmt: skip
    if login := refused_login(exc):
        return SettingsError(f"the inference log at {where} refused this job's login: {login}; check the user, "
                             "password and database name in its URL")  # fmt: skip
    if _missing_column(_ADDED, text):
        return StorageUnreachable(f"cannot read the inference log at {where}: {line}: the table is from an earlier "
                                  "release; the upgraded API adds the missing columns when it starts, so run this "
                                  "job again after it has")  # fmt: skip
    if missing := _missing_column(FEATURE_NAMES, text):
        return BadLogData(f"the inference log at {where} has no column {missing!r}: it was written for "
                          "another schema than this release's; read it with the release that wrote it")  # fmt: skip
    return StorageUnreachable(f"cannot read the inference log at {where}: {text or type(exc).__name__}")


def _missing_column(names: Iterable[str], text: str) -> str | None:
    """The one of ``names`` a database error says does not exist (SQLite's words, PostgreSQL's)."""
    alternatives = "|".join(map(re.escape, names))
    pattern = rf'no such column: (?:\w+\.)?({alternatives})\b|column "?(?:\w+\.)?({alternatives})"? does not exist'
    found = re.search(pattern, text)
    return (found.group(1) or found.group(2)) if found else None


#: libpq's TCP keepalives and user timeout: a server gone mid-statement (a failover, a lost node)
#: is noticed in about a minute, not TCP's fifteen; a COPY blocked meanwhile kept the log writer
#: "live", its rows neither stored nor said to be spooling. Options the URL sets win. The
#: feature store's connections set them too.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
              "tcp_user_timeout": 60_000}  # fmt: skip


def missing_file(url: str) -> str | None:
    """Why a job that only reads the log finds none there: a SQLite file that does not exist.
    Connecting would make an empty database for a typo, and report it as a log with no rows."""
    path = sqlite_file(url) if url.startswith("sqlite") else None
    if path is None or path.exists():
        return None
    return (f"no inference log at {path.resolve()} (no such file): point CHURN_INFERENCE_LOG_URL "
            "(--inference-log-url) at the API's log")  # fmt: skip


def no_table(where: str) -> str:
    """What a job says of a database without the log's table: the API makes it when it starts,
    so a running API writes elsewhere (MLflow's database, a typo) or never started."""
    return (f"no {INFERENCE_LOG_TABLE} table in {where}: the API makes it when it starts; point "
            "CHURN_INFERENCE_LOG_URL (--inference-log-url) at the API's log")  # fmt: skip


def require_log(engine: sa.Engine) -> None:
    """Refuse a place that holds no log (a typo's SQLite file, not made; MLflow's database): a
    job would read it as a log with nothing in it, or write outcomes there that nothing reads.
    Connects (a database error is the caller's to read, with ``read_failure``)."""
    if why := missing_file(engine.url.render_as_string(hide_password=False)):
        raise DataValidationError(why)
    if not sa.inspect(engine).has_table(INFERENCE_LOG_TABLE):
        raise DataValidationError(no_table(engine.url.render_as_string()))


def make_engine(url: str) -> sa.Engine:
    args: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        given = sa.make_url(url).query
        ours = {"connect_timeout": 3, **(KEEPALIVES if given.get("keepalives") != "0" else {})}
        args["connect_args"] = {k: v for k, v in ours.items() if k not in given}
    return sa.create_engine(url, **args)


def sqlite_time(at: datetime) -> str:
    """A UTC time as SQLAlchemy stores DateTime in SQLite, so typed queries compare correctly."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
