"""The customer features by id, in a Feast feature store.

Callers that know a customer's id but not their 19 features (a CRM, a campaign tool) get
them from here, and training sets join labels to the feature values a customer had at the
label's time, never later ones. The definitions (entity ``customer``, one feature view of
the schema's features) are generated from ``churn_platform.schema``, so the store cannot
drift from what the model reads.

Two layouts, chosen by settings:

* embedded (``CHURN_FEATURE_STORE_URL`` unset): Feast's local provider with a registry
  file, a SQLite online store and a Parquet offline source, all in
  ``CHURN_FEATURE_STORE_DIR``;
* full stack (``CHURN_FEATURE_STORE_URL=postgresql://...``): registry, offline source
  (table ``customer_snapshots``) and online store in that PostgreSQL database.

Feast is imported only inside these functions: it costs seconds to import, and the API
and jobs that never read features should not pay that.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_platform import batch_scoring, data
from churn_platform.contract import CLOCK_AHEAD, FEATURES_AS_OF
from churn_platform.errors import (
    ChurnPlatformError,
    DataSourceError,
    DataValidationError,
    NotFoundError,
    SettingsError,
    SourceChanging,
    StorageUnreachable,
)
from churn_platform.inference_log import KEEPALIVES, refused_login, refused_user
from churn_platform.schema import (
    FEATURE_NAMES,
    FEATURES,
    ID_COLUMN,
    LABEL_COLUMN,
)
from churn_platform.settings import Settings, preserved_environment

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

PROJECT = "churn"
ENTITY = "customer"
FEATURE_VIEW = "customer_features"
#: The offline source's event timestamp: when a snapshot of a customer was taken.
SNAPSHOT_TIME = "snapshot_time"
#: The full stack's offline source table (in the feature store's PostgreSQL database).
OFFLINE_TABLE = "customer_snapshots"
#: Every feature reference of the view, as Feast names them ("view:feature").
FEATURE_REFS = tuple(f"{FEATURE_VIEW}:{name}" for name in FEATURE_NAMES)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: What ``import feast`` sets in the environment (feast/metrics.py).
_FEAST_SETS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def _import_feast() -> None:
    """Import Feast, undoing what its import does to the environment: it sets
    PROMETHEUS_MULTIPROC_DIR, which would switch prometheus_client to multi-process mode in
    this process's later children (the inference-log writer) and make it warn here.
    prometheus_client is imported first: it chooses its value class once, at import, from the
    environment; chosen under Feast's variable, every metric made after it is unset again
    failed ("expected str ... not NoneType")."""
    import prometheus_client.values  # noqa: F401

    with preserved_environment(*_FEAST_SETS):
        import feast  # noqa: F401


def _embedded_dir(settings: Settings) -> Path:
    folder = Path(settings.feature_store_dir).resolve()
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"CHURN_FEATURE_STORE_DIR {folder} is a file; it must be a folder")
    return folder


def _offline_file(settings: Settings) -> Path:
    return _embedded_dir(settings) / "offline" / f"{OFFLINE_TABLE}.parquet"


#: The URL's TLS files, as libpq names them, and as Feast's connection fields do.
_TLS_FILES = {"sslrootcert": "sslrootcert_path", "sslcert": "sslcert_path", "sslkey": "sslkey_path"}


def _postgres(url: str) -> dict[str, Any]:
    """Feast's PostgreSQL connection fields from a URL (any SQLAlchemy driver suffix). A URL
    option none of the three connections (Feast's, ours, the API's) can take is refused: a
    dropped ``sslrootcert`` made ``verify-full`` look for ``~/.postgresql/root.crt``."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises several types for a bad URL
        raise SettingsError(f"CHURN_FEATURE_STORE_URL is not a database URL: {exc}") from None
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        raise SettingsError("CHURN_FEATURE_STORE_URL must be postgresql://user:password@host:port/database")
    if unknown := sorted(set(parsed.query) - {"sslmode", *_TLS_FILES}):
        raise SettingsError(f"CHURN_FEATURE_STORE_URL: the feature store's connections take only the options "
                            f"sslmode, {', '.join(_TLS_FILES)}; not {', '.join(unknown)}")  # fmt: skip
    return {
        "host": parsed.host or "localhost", "port": parsed.port or 5432, "database": parsed.database,
        "user": parsed.username or "postgres", "password": parsed.password or "",
        "sslmode": str(parsed.query.get("sslmode", "prefer")),
        **{field: str(parsed.query[option]) for option, field in _TLS_FILES.items() if option in parsed.query},
    }  # fmt: skip


def _tls(pg: dict[str, Any]) -> dict[str, str]:
    """libpq's TLS options of Feast's connection fields."""
    return {"sslmode": pg["sslmode"], **{option: pg[field] for option, field in _TLS_FILES.items() if field in pg}}


def _url(pg: dict[str, Any], driver: str) -> Any:
    """A SQLAlchemy URL for Feast's connection fields (credentials escaped), with our timeouts."""
    from sqlalchemy.engine import URL

    return URL.create(driver, username=pg["user"], password=pg["password"] or None, host=pg["host"],
                      port=pg["port"], database=pg["database"],
                      query={**_tls(pg), **{k: str(v) for k, v in _TIMEOUTS.items()}})  # fmt: skip


#: Every connection of ours (the registry's, the offline table's, the API's reads): a database
#: that accepts but never answers (a failover's old address) held the API's store "opening",
#: its by-id routes a 503 saying so, for as long as TCP waited.
_TIMEOUTS = {"connect_timeout": 5, **KEEPALIVES}
#: The schema Feast's connections see (its ``db_schema``, left at its default): the offline table is
#: made there too. On the server's default path, a user with a schema of its own name made it
#: there, which Feast's materialize and training then could not find ("unavailable", exit 3).
_FEAST_DB_SCHEMA = "public"
_FEAST_SCHEMA = {"options": f"-c search_path={_FEAST_DB_SCHEMA}"}


#: Materialize asks the offline store for each customer's latest snapshot in the window: Feast's
#: default fetches every snapshot and keeps the latest in pandas, a whole history in memory
#: for a manual `features materialize` (which starts at 1970).
_LATEST_ONLY = {"pull_latest_features": True}
#: Customers per online write while materializing. Feast's default is the whole window in one
#: batch, about 12 KB of protobufs a customer (upb gives each message its own arena): 100,000
#: customers peaked at 1.8 GiB (embedded) and 2.0 GiB (PostgreSQL), 0.7 GiB in batches of this.
ONLINE_WRITE_ROWS = 10_000


def config(settings: Settings) -> Any:
    """The Feast ``RepoConfig`` for these settings (no feature_store.yaml to keep in step)."""
    _import_feast()
    from feast import RepoConfig

    url = settings.feature_store_url
    if not url:
        folder = _embedded_dir(settings)
        return RepoConfig(
            project=PROJECT, provider="local", repo_path=folder,
            registry={"registry_type": "file", "path": str(folder / "registry.db"), "cache_ttl_seconds": 60},
            online_store={"type": "sqlite", "path": str(folder / "online.db")},
            offline_store={"type": "file"}, entity_key_serialization_version=3,
            materialization_config={**_LATEST_ONLY, "online_write_batch_size": ONLINE_WRITE_ROWS},
        )  # fmt: skip
    pg = _postgres(url)
    registry_url = _url(pg, "postgresql+psycopg").render_as_string(hide_password=False)
    return RepoConfig(
        project=PROJECT, provider="local",
        registry={"registry_type": "sql", "path": registry_url, "cache_ttl_seconds": 60},
        # Feast's own connections take no connect timeout; the keepalives' idle time they do.
        online_store={"type": "postgres", **pg, "keepalives_idle": KEEPALIVES["keepalives_idle"]},
        offline_store={"type": "postgres", **pg, "keepalives_idle": KEEPALIVES["keepalives_idle"]},
        entity_key_serialization_version=3,
        materialization_config={**_LATEST_ONLY, "online_write_batch_size": ONLINE_WRITE_ROWS},
    )  # fmt: skip


def definitions(settings: Settings) -> list[Any]:
    """The entity and the feature view, generated from the customer schema."""
    _import_feast()
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    kinds = {"category": String, "integer": Int64, "float": Float64}
    if settings.feature_store_url:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        source: Any = PostgreSQLSource(name=OFFLINE_TABLE, table=OFFLINE_TABLE, timestamp_field=SNAPSHOT_TIME)
    else:
        source = FileSource(name=OFFLINE_TABLE, path=str(_offline_file(settings)), timestamp_field=SNAPSHOT_TIME)
    customer = Entity(name=ENTITY, join_keys=[ID_COLUMN], value_type=ValueType.STRING, description="A customer.")
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[customer],
        ttl=timedelta(0),  # a customer's last snapshot stays valid until the next one
        schema=[Field(name=f.name, dtype=kinds[f.kind], description=f.description) for f in FEATURES],
        source=source,
        online=True,
        description="The model's 19 inputs per customer (churn_platform.schema).",
    )
    return [customer, view]


def open_store(settings: Settings, create: bool = False) -> FeatureStore:
    """A Feast store for these settings; a missing or unreachable database is a clear error.
    Only ``apply`` creates the embedded folder: a misspelt one stays a clear "not registered"."""
    _import_feast()
    from feast import FeatureStore

    logging.getLogger("feast").setLevel(logging.WARNING)  # not a line per registry refresh
    if not settings.feature_store_url:
        folder = _embedded_dir(settings)
        if not create and not folder.is_dir():  # Feast would make it, and its registry
            raise SettingsError(f"feature view {FEATURE_VIEW!r} is not registered: no feature store at {folder} "
                                "(CHURN_FEATURE_STORE_DIR): run `churn-platform features apply` first")  # fmt: skip
        if not folder.parent.is_dir():  # made with its parents, a typo put a store anywhere, exit 0
            raise SettingsError(f"CHURN_FEATURE_STORE_DIR: no folder {folder.parent} to make {folder.name} in (a "
                                "typo?); create it first")  # fmt: skip
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"CHURN_FEATURE_STORE_DIR cannot be created: {exc}") from None
    try:
        return FeatureStore(config=config(settings))
    except SettingsError:
        raise
    except Exception as exc:  # noqa: BLE001 - Feast wraps driver errors in many types
        raise unavailable(exc) from None


def unavailable_message(exc: BaseException) -> str:
    """A store error in one line, without its traceback or SQL."""
    text = str(exc).strip().splitlines()
    return f"feature store unavailable: {type(exc).__name__}: {text[0] if text else ''}"[:330]


def unavailable(exc: BaseException) -> ChurnPlatformError:
    """The store's failure as the CLI reports it: a missing privilege, or CONNECT refused, is
    the operator's to grant and a refused login the URL's to mend (exit 2), not an outage to
    retry (exit 3)."""
    if isinstance(exc, PermissionError):  # the embedded store's files
        return SettingsError(f"the feature store's files refused this user: {exc}")
    seen: BaseException | None = exc
    while seen is not None:  # Feast wraps the driver's error in its own
        line = str(getattr(seen, "orig", None) or seen).strip().splitlines()[:1]
        if refused_user(seen):
            return SettingsError(f"the feature store's database refused its user a privilege: {''.join(line)}; "
                                 "grant it (docs/deploy.md)")  # fmt: skip
        if login := refused_login(seen):
            return SettingsError(f"the feature store's database refused the login: {login}; check the user, "
                                 "password and database name in CHURN_FEATURE_STORE_URL")  # fmt: skip
        seen = seen.__cause__ or seen.__context__
    return StorageUnreachable(unavailable_message(exc))


def apply(settings: Settings) -> list[str]:
    """Register the definitions (idempotent); the names of what is registered."""
    store = open_store(settings, create=True)
    objects = definitions(settings)
    if settings.feature_store_url:
        _offline_table(settings)
    try:
        store.apply(objects)
    except Exception as exc:  # noqa: BLE001
        raise unavailable(exc) from None
    return [o.name for o in objects]


# --------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class IngestSummary:
    source: str
    rows: int
    ingested: int
    rejected: int
    #: The rejects file, None when none was written (no bad row, and none asked for).
    rejects: str | None
    customers: int
    first: datetime | None
    last: datetime | None
    #: Rows that repeat another of the same file: the same customer, snapshot time and values.
    repeated: int = 0
    #: The first rejected rows' reasons ("row 4: tenure: ..."), so a terminal shows why without
    #: reading the Parquet rejects file.
    first_reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        span = f" (snapshots {self.first:%Y-%m-%d %H:%M:%S} .. {self.last:%Y-%m-%d %H:%M:%S} UTC)" if self.first else ""
        rejected = f", {self.rejected} rejected -> {self.rejects}" if self.rejected else ""
        repeated = f", {self.repeated} repeated (same customer, time and values)" if self.repeated else ""
        why = f". The first: {' | '.join(self.first_reasons)}" if self.first_reasons else ""
        return (f"ingested {self.ingested} of {self.rows} rows for {self.customers} customers{span}{rejected}"
                f"{repeated}{why}")  # fmt: skip


def _names_a_snapshot_time(column: str) -> bool:
    """``snapshotTime``, ``Snapshot Date``, Feast's ``event_timestamp``: the snapshot's time under
    another name. Not any time (``signup_date``, ``created_at`` describe the customer)."""
    key = re.sub(r"[^a-z]", "", column.lower())
    return ("snapshot" in key and data.names_a_time(column)) or key in ("eventtimestamp", "asof", "asoftime")


def snapshots(raw: pd.DataFrame, as_of: datetime | None) -> tuple[pd.DataFrame, pd.Series]:
    """Customer snapshots ready for the offline source, and each bad row's reasons.

    Checked as batch scoring checks customers, plus a customer id (the entity key) and a
    snapshot time (the ``snapshot_time`` column, ``as_of`` where it is blank or missing). Rows
    of one customer and time in one file are one snapshot if their values agree, else rejected.
    """
    one_column = len(raw.columns) == 1  # a CSV cut by another character: said below, not a misnamed time
    if SNAPSHOT_TIME not in raw.columns and not one_column and (
        timed := [c for c in raw.columns if _names_a_snapshot_time(str(c))]
    ):
        # Dated by --as-of instead, an export's history (`snapshotTime`) was stored as one time.
        raise DataValidationError(f"no {SNAPSHOT_TIME} column, and {timed} is not read: rename the snapshots' "
                                  f"time to {SNAPSHOT_TIME}, or drop {timed} to date every row by --as-of")  # fmt: skip
    missing = data.missing_features(list(raw.columns))
    if ID_COLUMN not in raw.columns:
        missing.insert(0, ID_COLUMN)
    if as_of is None and SNAPSHOT_TIME not in raw.columns:
        missing.append(f"{SNAPSHOT_TIME} (or give --as-of)")
    if missing:
        raise DataValidationError(f"missing required columns: {missing} (found: {list(raw.columns)})"
                                  f"{data.separator_hint([str(c) for c in raw.columns])}")  # fmt: skip
    raw = raw.reset_index(drop=True)
    good, reasons = data.split_rejects(raw)  # the ids' checks among them
    extra: dict[int, list[str]] = {}
    ids = raw[ID_COLUMN].astype("string").str.strip()
    given = None if as_of is None else pd.Timestamp(as_of, tz=None if as_of.tzinfo else UTC).tz_convert(UTC)
    if SNAPSHOT_TIME not in raw.columns:
        times = pd.Series(given, index=raw.index)
    else:
        times = data.iso_times(raw[SNAPSHOT_TIME])
        shown = raw[SNAPSHOT_TIME].astype("string").str.strip()  # an epoch in Parquet: 1700000000, not np.int64(...)
        blank = (shown.isna() | (shown == "")).fillna(True).to_numpy(dtype=bool)
        if given is not None:  # --as-of stands in for a blank cell as for a missing column
            times = times.mask(blank, given)
        for row in times.index[times.isna()]:
            extra.setdefault(row, []).append(
                f"{SNAPSHOT_TIME}: missing (--as-of stands in for blank times)" if blank[row]
                else f"{SNAPSHOT_TIME}: {shown.at[row]!r} is not an ISO-8601 time"
            )
    # A snapshot from the future would be every later training set's "latest" row for its customer.
    now = pd.Timestamp.now(tz=UTC)
    for row in times.index[(times > now + CLOCK_AHEAD).fillna(False)]:
        extra.setdefault(row, []).append(f"{SNAPSHOT_TIME}: in the future (now is {now:%Y-%m-%d %H:%M:%S} UTC)")
    # Before 1970 (a year typo): joined into training sets, never materialized (the online
    # store's window starts there), so by-id answered "unknown customer" after a success.
    for row in times.index[(times < pd.Timestamp(_EPOCH)).fillna(False)]:
        extra.setdefault(row, []).append(f"{SNAPSHOT_TIME}: {times.at[row]:%Y-%m-%d} is before 1970")
    good = good.drop(index=[r for r in extra if r in good.index])
    good[ID_COLUMN] = ids.loc[good.index]
    good[SNAPSHOT_TIME] = times.loc[good.index].astype("datetime64[us, UTC]")
    good = good[[ID_COLUMN, SNAPSHOT_TIME, *FEATURE_NAMES]]
    for row, problem in _conflicts(good).items():
        extra.setdefault(row, []).append(problem)
    if extra:
        merged = {row: "; ".join(filter(None, [reasons.get(row), *problems])) for row, problems in extra.items()}
        reasons = pd.concat([reasons.drop(list(merged), errors="ignore"), pd.Series(merged, dtype="object")])
        reasons = reasons.sort_index()
    good = good.drop(index=[r for r in extra if r in good.index]).drop_duplicates([ID_COLUMN, SNAPSHOT_TIME])
    return good.reset_index(drop=True), reasons


def _conflicts(good: pd.DataFrame) -> dict[int, str]:
    """Rows of one customer and snapshot time whose values differ, each with its reason.

    Which one is true is the sender's to say, so none is stored, as for outcomes; the same
    row twice is one snapshot."""
    keys = [ID_COLUMN, SNAPSHOT_TIME]
    distinct = good.drop_duplicates()
    clash = distinct.loc[distinct.duplicated(keys, keep=False), keys].drop_duplicates()
    if clash.empty:
        return {}
    hit = good[keys].rename_axis("at").reset_index().merge(clash, on=keys)
    found: dict[int, str] = {}
    for _, rows in hit.groupby(keys)["at"]:
        listed = ", ".join(str(row + 1) for row in sorted(rows))  # numbered as in the rejects file
        for row in rows:
            found[int(row)] = f"different values for one {ID_COLUMN} and {SNAPSHOT_TIME} (rows {listed})"
    return found


def ingest(
    settings: Settings, uri: str, as_of: datetime | None = None, rejects: str | None = None, *,
    written_at: datetime | None = None,
) -> IngestSummary:  # fmt: skip
    """Add a file of customer snapshots (CSV or Parquet, local or s3://) to the offline source.

    Bad rows go to ``rejects`` (Parquet, batch scoring's rejects layout) and never stop the
    rest. A customer and snapshot time ingested again replace the stored row, so ingesting
    a file twice changes nothing. The online store changes only with ``materialize``.
    ``written_at``: the file's last write that ``as_of`` was taken from (``--as-of modified``),
    checked again once the file is read.
    """
    if as_of is not None and as_of.replace(tzinfo=as_of.tzinfo or UTC) < _EPOCH:  # each row refused for it, one by one
        raise DataValidationError(f"--as-of {as_of.isoformat()} is before 1970, when snapshot times begin")
    asked = rejects is not None
    rejects = rejects or f"{Path(uri.split('?')[0]).stem}.rejects.parquet"
    batch_scoring.output_kind(rejects, None)  # a compressed name: refused before the export is read
    data.refuse_overwrite(uri, rejects=rejects)
    if not settings.feature_store_url and not rejects.startswith("s3://"):
        folder = _embedded_dir(settings)
        if Path(rejects).resolve().is_relative_to(folder):  # it replaced online.db, then registry.db: a dead store
            raise DataValidationError(f"--rejects {rejects} is inside the feature store's folder {folder} (its "
                                      "online store, registry and offline source); name a file outside it")  # fmt: skip
    data.refuse_foreign_output("--rejects", rejects, data.REJECT_MARKER)
    # A misspelt CHURN_FEATURE_STORE_DIR would otherwise take the snapshots into a new folder no one reads.
    _require_applied(open_store(settings), settings)
    raw = data.read_table(uri, settings.s3_endpoint_url)
    if written_at is not None and (now := data.modified_time(uri, settings.s3_endpoint_url)) != written_at:
        # Replaced between the time's read and the file's: its new rows were dated by the old
        # file's write, before the labels they would then join in training sets.
        raise SourceChanging(f"{uri} was written again while it was read (at {written_at:%Y-%m-%d %H:%M:%S}, "
                             f"then {now:%Y-%m-%d %H:%M:%S} UTC): nothing loaded; run again once its writer is done")
    raw = raw.drop(columns=[LABEL_COLUMN], errors="ignore")  # labels are not features
    try:
        good, reasons = snapshots(raw, as_of)
    except DataValidationError as exc:  # a CronJob's log shows which export lacked the column
        raise DataValidationError(f"{uri}: {exc}") from None
    # A rejects file that was asked for is written every run, empty when no row was bad (as batch
    # scoring does), so one at a fixed place is always this run's; the default only when needed.
    written = asked or bool(len(reasons))
    if written:
        if not rejects.startswith("s3://"):
            try:
                Path(rejects).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file on the way, /proc: nothing is loaded yet
                raise DataSourceError(f"--rejects {rejects}: its folder cannot be made: {exc}") from None
        # The columns the rejects file holds: an extra one of bytes (a row hash) failed as text, exit 70.
        shown = raw[[c for c in (ID_COLUMN, *FEATURE_NAMES, SNAPSHOT_TIME) if c in raw.columns]]
        table = batch_scoring.rejects_table(shown.astype("string"), reasons, first_row=1, extra=(SNAPSHOT_TIME,))
        batch_scoring.write_rejects(rejects, table, settings.s3_endpoint_url)
    if len(good):
        if settings.feature_store_url:
            _append_postgres(settings, good)
        else:
            _append_parquet(_offline_file(settings), good)
    first = good[SNAPSHOT_TIME].min().to_pydatetime() if len(good) else None
    last = good[SNAPSHOT_TIME].max().to_pydatetime() if len(good) else None
    first_reasons = tuple(f"row {row + 1}: {why}" for row, why in reasons.sort_index().head(3).items())
    return IngestSummary(uri, len(raw), len(good), len(reasons), rejects if written else None,
                         good[ID_COLUMN].nunique(), first, last,
                         repeated=len(raw) - len(good) - len(reasons),  # every row read is accounted for
                         first_reasons=first_reasons)


def _append_parquet(path: Path, snapshots: pd.DataFrame) -> None:
    """Merge into the offline file and swap it in atomically: a crash leaves the old file whole.

    Under an exclusive lock: two ingests at once (the scheduled refresh and a manual one) each
    read the same file, and the second swap dropped the first one's rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _offline_lock(path):
        _merge_into(path, snapshots)


@contextlib.contextmanager
def _offline_lock(path: Path) -> Iterator[None]:
    """The embedded offline file's writers, one at a time (a lock file beside it)."""
    lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing releases the lock


def _merge_into(path: Path, snapshots: pd.DataFrame) -> None:
    merged = snapshots
    if path.exists():
        stored = pd.read_parquet(path)
        merged = pd.concat([stored, snapshots], ignore_index=True)
        merged = merged.drop_duplicates([ID_COLUMN, SNAPSHOT_TIME], keep="last")
    _replace(path, merged.sort_values([SNAPSHOT_TIME, ID_COLUMN], kind="stable").reset_index(drop=True))


def _replace(path: Path, snapshots: pd.DataFrame) -> None:
    """Write the offline file whole, and swap it in atomically."""
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
    os.close(handle)
    try:
        pq.write_table(pa.Table.from_pandas(snapshots, preserve_index=False), temp)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def _engine(settings: Settings) -> Any:
    import sqlalchemy as sa

    return sa.create_engine(_url(_postgres(settings.feature_store_url or ""), "postgresql+psycopg2"),
                            connect_args=_FEAST_SCHEMA)  # fmt: skip


def _ensure_offline_table(conn: Any) -> None:
    """The offline table, on a connection that is in a transaction."""
    columns = ",\n".join(
        f"{f.name} {'TEXT' if f.kind == 'category' else 'BIGINT' if f.kind == 'integer' else 'DOUBLE PRECISION'} "
        "NOT NULL"
        for f in FEATURES
    )
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {OFFLINE_TABLE} (\n{ID_COLUMN} TEXT NOT NULL,\n"
        f"{SNAPSHOT_TIME} TIMESTAMPTZ NOT NULL,\n{columns},\nPRIMARY KEY ({ID_COLUMN}, {SNAPSHOT_TIME}))"
    )
    conn.exec_driver_sql(ddl)
    found = dict(conn.exec_driver_sql(
        "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = %s "
        "AND table_schema = current_schema()", (OFFLINE_TABLE,),
    ).all())  # fmt: skip
    names = (ID_COLUMN, SNAPSHOT_TIME, *FEATURE_NAMES)
    if missing := [name for name in names if name not in found]:
        # CREATE ... IF NOT EXISTS kept a table made for another schema: its COPY failed as "unavailable".
        raise DataValidationError(f"the feature store's table {OFFLINE_TABLE} has no column {missing}: it was made "
                                  "for another schema than this release's; add the column (with the stored "
                                  "snapshots' values) or use a new database")  # fmt: skip
    if dropped := sorted(name for name, nullable in found.items() if name not in names and nullable == "NO"):
        # A feature an earlier release had: new snapshots cannot fill it (a not-null violation, "unavailable").
        raise DataValidationError(
            f"the feature store's table {OFFLINE_TABLE} has column {dropped}, which this release's schema has not, "
            f"NOT NULL: new snapshots cannot fill it; keep the stored values with ALTER TABLE {OFFLINE_TABLE} "
            f"ALTER COLUMN {dropped[0]} DROP NOT NULL (each such column), or drop it"
        )
    # Materialize selects by time alone: without this, each daily run scanned the whole history.
    # Only when missing: CREATE INDEX takes a SHARE lock even when the index exists, and two
    # ingests holding it deadlocked on their INSERTs.
    index = f"{OFFLINE_TABLE}_{SNAPSHOT_TIME}"
    # In the table's schema (a same-named index elsewhere on the search_path is not this one's).
    if conn.exec_driver_sql("SELECT to_regclass(format('%%I.%%I', current_schema(), %s))", (index,)).scalar() is None:
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {index} ON {OFFLINE_TABLE} ({SNAPSHOT_TIME})")


def _offline_table(settings: Settings, load: Any = None) -> None:
    """Create the offline table if needed, then run ``load(conn)`` in the same transaction."""
    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            _ensure_offline_table(conn)
            if load is not None:
                load(conn)
    except DataValidationError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise unavailable(exc) from None
    finally:
        engine.dispose()


def _append_postgres(settings: Settings, snapshots: pd.DataFrame) -> None:
    """Upsert into the offline table in one transaction: all rows or none."""
    names = [ID_COLUMN, SNAPSHOT_TIME, *FEATURE_NAMES]
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in FEATURE_NAMES)

    def load(conn: Any) -> None:
        with conn.connection.dbapi_connection.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE staging ON COMMIT DROP AS SELECT * FROM {OFFLINE_TABLE} WITH NO DATA")
            buffer = snapshots[names].to_csv(index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
            cur.copy_expert(f"COPY staging ({', '.join(names)}) FROM STDIN WITH (FORMAT csv)", io.StringIO(buffer))
            cur.execute(
                f"INSERT INTO {OFFLINE_TABLE} SELECT * FROM staging "
                f"ON CONFLICT ({ID_COLUMN}, {SNAPSHOT_TIME}) DO UPDATE SET {updates}"
            )

    _offline_table(settings, load)


# --------------------------------------------------------------------------- materialize and read


def materialize(settings: Settings, end: datetime | None = None, start: datetime | None = None) -> datetime:
    """Load each customer's latest snapshot up to ``end`` (default: ``CLOCK_AHEAD`` from now,
    as far as ingest takes them) into the online store.

    ``start`` narrows the scan of the offline source to snapshots from then on (``refresh``
    passes the earliest it just loaded): customers without a snapshot in the window keep
    their online values, and the others get their latest, which is in the window. The
    window also reaches back to where the last materialization ended (less ``CLOCK_AHEAD``),
    so what a manual ``ingest`` added since is published too, not only this file's rows.
    """
    store = open_store(settings)
    view = _require_applied(store, settings)
    _require_online(settings)
    _require_snapshots(settings)
    with _one_at_a_time(settings):  # the window from here: one that waited for another run ends after it
        end = end or datetime.now(UTC) + CLOCK_AHEAD
        if start is not None:
            last = view.most_recent_end_time
            start = min(start, last - CLOCK_AHEAD) if last else None  # never materialized: everything
        start = min(start, end) if start else _EPOCH  # a snapshot dated later than `end` waits for a later run
        try:
            # Feast prints its progress to stdout: stderr keeps a command's stdout (--json) parseable,
            # and in a log (a CronJob's) without its terminal colours.
            with contextlib.redirect_stdout(sys.stderr if sys.stderr.isatty() else _Uncoloured(sys.stderr)):
                store.materialize(start_date=start, end_date=end, feature_views=[FEATURE_VIEW])
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None
    return end


#: The PostgreSQL advisory lock one materialization holds at a time (any number, project-wide).
_MATERIALIZE_LOCK = 0x63687572_6E6D6174  # "churnmat"


@contextlib.contextmanager
def _one_at_a_time(settings: Settings) -> Iterator[None]:
    """One materialization at a time. Two at once on PostgreSQL deadlocked in Feast's upserts
    (the loser's snapshots never went online, exit 3); the one that waits then copies a window
    that holds the other's rows too, so the latest of each customer wins either way."""
    waiting = "waiting for another materialization of this store to finish"  # a hung one holds every later run
    if not settings.feature_store_url:
        lock = os.open(_embedded_dir(settings) / "materialize.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning(waiting)
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing releases the lock
        return
    import sqlalchemy as sa

    engine = _engine(settings)
    try:
        # Outside a transaction: a session idle in one may be ended by the server mid-run.
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        key = {"key": _MATERIALIZE_LOCK}
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar_one():
            log.warning(waiting)
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
    except Exception as exc:  # noqa: BLE001
        engine.dispose()
        raise unavailable(exc) from None
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the session's end releases the lock anyway
            conn.close()
        engine.dispose()


# --------------------------------------------------------------------------- delete


@dataclass(frozen=True)
class DeleteSummary:
    """What ``delete`` found at a snapshot time, and what it did to the online store."""

    snapshot_time: datetime
    #: Stored snapshots at that time (one per customer).
    rows: int
    deleted: bool
    #: Customers the online store now serves their previous snapshot (theirs was deleted);
    #: without ``deleted``, those it would.
    republished: int = 0
    #: Customers with no snapshot left: no longer in the online store (an unknown id to the
    #: API); without ``deleted``, those it would take out.
    removed: int = 0
    #: When none was found: the latest snapshot times stored, newest first.
    stored: tuple[datetime, ...] = ()


def _span(at: datetime) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The snapshot times ``at`` names: the whole second when it has no fraction (as the ingest
    summary prints times, while ``--as-of now`` stores microseconds), else that instant."""
    start = pd.Timestamp(at).tz_convert(UTC)
    return start, start + (pd.Timedelta(seconds=1) if start.microsecond == 0 else pd.Timedelta(microseconds=1))


def delete(settings: Settings, at: datetime, apply: bool = False) -> DeleteSummary:
    """Delete the snapshots taken at ``at`` (an export ingested by mistake, or with a wrong
    ``--as-of``) from the offline source, and put each customer whose online features came
    from them back on their previous snapshot, or out of the online store when none is left.

    Without ``apply`` only counts (what would change online too). Materialize only adds and
    replaces: the wrong snapshot stayed every customer's latest, in the API and in every
    later training join. The online store changes first: should a step fail, the snapshots
    are still there, and the same call again does what is left.
    """
    store = open_store(settings)
    _require_applied(store, settings)
    _require_online(settings)
    _require_snapshots(settings)
    with _one_at_a_time(settings):  # a materialization meanwhile would publish the rows being deleted
        try:
            # Read under the lock: a materialization that held it has moved the end since. What
            # is online is each customer's latest snapshot up to that end.
            view = store.get_feature_view(FEATURE_VIEW)
            end = None if view.most_recent_end_time is None else _utc_stamp(view.most_recent_end_time)
            remove = _delete_postgres if settings.feature_store_url else _delete_parquet
            return remove(settings, store, view, at, _span(at), end, apply)
        except ChurnPlatformError:
            raise
        except Exception as exc:  # noqa: BLE001 - Feast, the driver, the disk
            raise unavailable(exc) from None


def _online_fix(
    snapshots: pd.DataFrame, doomed: pd.Series, span: tuple[pd.Timestamp, pd.Timestamp], end: pd.Timestamp | None,
    online_at: Callable[[list[str]], list[float | None]],
) -> tuple[pd.DataFrame, list[str]]:
    """From the snapshots of the customers losing one (``doomed`` marks the rows to delete):
    the previous snapshots to publish again, and the customers to take out of the online
    store. Only customers whose online features are a deleted snapshot's change.
    ``online_at``: the times of the ids' online features (whole seconds, None: none)."""
    if end is None or span[0] > end:  # never materialized, or not as far: nothing deleted is online
        return snapshots.iloc[0:0], []
    published = snapshots[snapshots[SNAPSHOT_TIME] <= end]
    latest = published.sort_values(SNAPSHOT_TIME).groupby(ID_COLUMN).tail(1)
    hit = set(latest.loc[doomed.loc[latest.index], ID_COLUMN])  # whose latest online is one being deleted
    # A later snapshot dated before the end but ingested after that materialization is not
    # online: the deleted one stayed, said "0 back on their previous snapshot". What is online says.
    kept = ~doomed.loc[published.index]
    unsure = sorted((set(published.loc[~kept, ID_COLUMN])
                     & set(published.loc[kept & (published[SNAPSHOT_TIME] >= span[1]), ID_COLUMN])) - hit)  # fmt: skip
    if unsure:
        start = span[0].floor("s")
        hit |= {c for c, at in zip(unsure, online_at(unsure), strict=True)
                if at is not None and start <= pd.Timestamp(at, unit="s", tz=UTC) < span[1]}  # fmt: skip
    left = published[kept & published[ID_COLUMN].isin(hit)]
    previous = left.sort_values(SNAPSHOT_TIME).groupby(ID_COLUMN).tail(1)
    return previous.reset_index(drop=True), sorted(hit - set(previous[ID_COLUMN]))


def _online_times(store: FeatureStore) -> Callable[[list[str]], list[float | None]]:
    return lambda ids: [None if got is None else got[FEATURES_AS_OF] for got in online(store, ids)]


def _republish(store: FeatureStore, previous: pd.DataFrame) -> None:
    if len(previous):
        with contextlib.redirect_stdout(sys.stderr):  # Feast's progress output, as for materialize
            store.write_to_online_store(FEATURE_VIEW, df=previous)


def _online_keys(store: FeatureStore, view: Any, customer_ids: list[str]) -> tuple[str, list[bytes]]:
    from feast.infra.online_stores.helpers import compute_table_id

    version = store.config.entity_key_serialization_version
    return compute_table_id(PROJECT, view), [_entity_key(c, version) for c in customer_ids]


def _stored_times(times: pd.Series) -> tuple[datetime, ...]:
    latest = pd.Series(times.unique()).sort_values(ascending=False).head(5)
    return tuple(t.to_pydatetime() for t in latest)


def _delete_parquet(
    settings: Settings, store: FeatureStore, view: Any, at: datetime,
    span: tuple[pd.Timestamp, pd.Timestamp], end: pd.Timestamp | None, apply: bool,
) -> DeleteSummary:  # fmt: skip
    import sqlite3

    path = _offline_file(settings)
    with _offline_lock(path):  # as ingest: no merge of another file meanwhile
        stored = pd.read_parquet(path)
        times = stored[SNAPSHOT_TIME].dt.tz_convert(UTC)
        doomed = (times >= span[0]) & (times < span[1])
        if not doomed.any():
            return DeleteSummary(at, 0, False, stored=_stored_times(times))
        affected = stored[stored[ID_COLUMN].isin(stored.loc[doomed, ID_COLUMN])]
        previous, removed = _online_fix(affected, doomed.loc[affected.index], span, end, _online_times(store))
        if apply:
            _republish(store, previous)
            if removed:
                table, keys = _online_keys(store, view, removed)
                with contextlib.closing(sqlite3.connect(_embedded_dir(settings) / "online.db")) as conn, conn:
                    conn.executemany(f'DELETE FROM "{table}" WHERE entity_key = ?', [(k,) for k in keys])
            _replace(path, stored[~doomed].reset_index(drop=True))
    return DeleteSummary(at, int(doomed.sum()), apply, republished=len(previous), removed=len(removed))


def _delete_postgres(
    settings: Settings, store: FeatureStore, view: Any, at: datetime,
    span: tuple[pd.Timestamp, pd.Timestamp], end: pd.Timestamp | None, apply: bool,
) -> DeleteSummary:  # fmt: skip
    names = ", ".join([ID_COLUMN, SNAPSHOT_TIME, *FEATURE_NAMES])
    window = f"{SNAPSHOT_TIME} >= %(start)s AND {SNAPSHOT_TIME} < %(until)s"
    bounds = {"start": span[0].to_pydatetime(), "until": span[1].to_pydatetime()}
    engine = _engine(settings)
    try:
        # One transaction: our own online DELETE and the offline one commit together (Feast
        # writes the previous snapshots on its own connection, first).
        with engine.begin() as conn:
            locked = " FOR UPDATE" if apply else ""  # a count needs no more than SELECT
            ids = sorted({row[0] for row in conn.exec_driver_sql(
                f"SELECT {ID_COLUMN} FROM {OFFLINE_TABLE} WHERE {window}{locked}", bounds)})  # fmt: skip
            if not ids:
                latest = conn.exec_driver_sql(f"SELECT DISTINCT {SNAPSHOT_TIME} FROM {OFFLINE_TABLE} ORDER BY 1 DESC "
                                              "LIMIT 5").scalars()  # fmt: skip
                return DeleteSummary(at, 0, False, stored=tuple(t.astimezone(UTC) for t in latest))
            rows = conn.exec_driver_sql(f"SELECT {names} FROM {OFFLINE_TABLE} WHERE {ID_COLUMN} = ANY(%(ids)s)",
                                        {"ids": ids}).fetchall()  # fmt: skip
            affected = pd.DataFrame(rows, columns=[ID_COLUMN, SNAPSHOT_TIME, *FEATURE_NAMES])
            affected[SNAPSHOT_TIME] = pd.to_datetime(affected[SNAPSHOT_TIME], utc=True)
            times = affected[SNAPSHOT_TIME]
            doomed = (times >= span[0]) & (times < span[1])
            previous, removed = _online_fix(affected, doomed, span, end, _online_times(store))
            if apply:
                _republish(store, previous)
                if removed:
                    table, keys = _online_keys(store, view, removed)
                    conn.exec_driver_sql(f'DELETE FROM "{table}" WHERE entity_key = ANY(%(keys)s)', {"keys": keys})
                # The rows counted, by key: one an ingest added to that second since is not taken unseen.
                gone = affected[doomed]
                conn.exec_driver_sql(
                    f"DELETE FROM {OFFLINE_TABLE} t USING unnest(%(ids)s::text[], %(times)s::timestamptz[]) "
                    f"AS d(i, at) WHERE t.{ID_COLUMN} = d.i AND t.{SNAPSHOT_TIME} = d.at",
                    {"ids": gone[ID_COLUMN].tolist(), "times": [t.to_pydatetime() for t in gone[SNAPSHOT_TIME]]},
                )
    finally:
        engine.dispose()
    return DeleteSummary(at, int(doomed.sum()), apply, republished=len(previous), removed=len(removed))


def _utc_stamp(at: Any) -> pd.Timestamp:
    """A time in UTC: Feast hands back naive UTC times from PostgreSQL, zoned ones from files."""
    stamp = pd.Timestamp(at)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def _utc_text(at: Any) -> str:
    """A time as ISO 8601 in UTC, zone written: Feast's PostgreSQL job hands back times without
    their zone, its file job with it, and the same labels were tagged two ways."""
    return _utc_stamp(at).isoformat()


class _Uncoloured(io.TextIOBase):
    """A text stream that drops terminal colour codes (``ESC [ ... m``) on the way to another."""

    _CODES = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, target: IO[str]) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._target.write(self._CODES.sub("", text))
        return len(text)

    def flush(self) -> None:
        self._target.flush()


def _require_applied(store: FeatureStore, settings: Settings) -> Any:
    """The registered feature view, registered for this folder's offline file (embedded): the
    registry holds that file's absolute path, so a copied store read the original's snapshots
    and a moved one failed as unreachable."""
    try:
        view = store.get_feature_view(FEATURE_VIEW)
    except Exception as exc:  # noqa: BLE001 - FeatureViewNotFoundException, or a registry that is down
        if type(exc).__name__ == "FeatureViewNotFoundException":
            raise SettingsError(
                f"feature view {FEATURE_VIEW!r} is not registered: run `churn-platform features apply` first"
            ) from None
        raise unavailable(exc) from None
    registered = getattr(view.batch_source, "path", None)
    if not settings.feature_store_url and registered and Path(registered) != _offline_file(settings):
        raise SettingsError(f"the feature store in {_embedded_dir(settings)} was registered with the snapshots at "
                            f"{registered} (copied or moved since?): run `churn-platform features apply` to "
                            "register this folder's own")  # fmt: skip
    return view


def missing_online_store(settings: Settings) -> str | None:
    """Why the embedded online store cannot be read (its file gone: deleted, or not copied with
    the folder), else None. Feast would make an empty one, whose missing table then read as an
    unreachable store (exit 3, retried), where `features apply` makes it again."""
    if settings.feature_store_url or (online := _embedded_dir(settings) / "online.db").exists():
        return None
    return (f"the embedded online store {online} is missing (deleted, or not copied with the folder): run "
            "`churn-platform features apply`, then `features materialize` (which fills it from the snapshots)")


def _require_online(settings: Settings) -> None:
    if (missing := missing_online_store(settings)) is not None:
        raise SettingsError(missing)


def _require_snapshots(settings: Settings) -> None:
    """Exit 2 naming the step, on both stores: not Feast's FileNotFoundError as an unreachable
    store (exit 3) on files, nor a materialize that copies nothing and says done on PostgreSQL."""
    if settings.feature_store_url:
        # Read only: training may run as a user that can read the table but not create one.
        engine = _engine(settings)
        try:
            with engine.connect() as conn:
                made = conn.exec_driver_sql("SELECT to_regclass(%s)", (OFFLINE_TABLE,)).scalar() is not None
                if made and conn.exec_driver_sql(f"SELECT 1 FROM {OFFLINE_TABLE} LIMIT 1").first() is not None:
                    return
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None
        finally:
            engine.dispose()
    elif _offline_file(settings).exists():
        return
    raise NotFoundError("no customer snapshots ingested yet: run `churn-platform features ingest FILE` first")


class PostgresOnlineReader:
    """Reads Feast's PostgreSQL online table in one query per batch, about 14x faster than
    ``get_online_features`` (whose Python decoding of 19 protobufs per customer costs ~250 ms
    per 1000 ids).

    The table and the entity keys (Feast's own ``serialize_entity_key``) are Feast's. The
    values come from ``value_text``, the text form that Feast (0.66 and later) writes beside
    each ``Value`` protobuf (``str()`` of the number, the string itself): PostgreSQL gathers
    each customer's into one JSON object, and msgspec parses those and types each feature as
    the schema says in C. Tests check it returns what ``get_online_features`` returns, a
    missing feature row and a null value included.

    The API reads with ``aread``, on its event loop through a pool of async connections (a
    thread hop per request would cost more than the read). Calling the reader is the same
    read on a connection of its own, for the API's check when it opens the store, and tests.
    """

    # One JSON object per customer: PostgreSQL escapes the strings, so any value reads back whole,
    # and a feature with no row is simply absent (read as missing, as Feast reads it). A value
    # without its text (a row an older Feast wrote) becomes [], which no feature's type accepts:
    # the read fails naming it, instead of reading the value as missing. The schema's features
    # only: a feature dropped since keeps its old rows. Feast writes its UTC times naive into a
    # timestamptz, read in the session's zone: `AT TIME ZONE` takes them back as written (whole
    # seconds, as Feast's own read gives them).
    _QUERY = """
        SELECT entity_key, json_object_agg(feature_name, CASE
            WHEN value_text IS NOT NULL OR coalesce(length(value), 0) = 0 THEN to_json(value_text)
            ELSE '[]'::json END)::text,
            floor(extract(epoch FROM max(event_ts) AT TIME ZONE current_setting('TimeZone')))::float8
        FROM {table} WHERE entity_key = ANY(%b) AND feature_name = ANY(%s) GROUP BY entity_key
    """

    def __init__(self, store: FeatureStore, settings: Settings) -> None:
        from feast.infra.online_stores.helpers import compute_table_id
        from psycopg import sql
        from psycopg.conninfo import make_conninfo

        pg = _postgres(settings.feature_store_url or "")
        table = compute_table_id(PROJECT, store.get_feature_view(FEATURE_VIEW))
        # As a string, rendered once: psycopg caches a string's conversion, a Composed it renders each time.
        # Named with its schema, not by a startup option, which a pooler (PgBouncer) may refuse.
        self._query = sql.SQL(self._QUERY).format(table=sql.Identifier(_FEAST_DB_SCHEMA, table)).as_string()
        self._version = store.config.entity_key_serialization_version
        # Keywords, not a URL: SQLAlchemy renders a space in the password as is, and psycopg refused
        # the URL ("unexpected spaces"): every read by id a 503.
        self._conninfo = make_conninfo("", host=pg["host"], port=pg["port"], dbname=pg["database"], user=pg["user"],
                                       password=pg["password"] or None, **_tls(pg), **_TIMEOUTS)  # fmt: skip
        self._pool: Any = None  # made by the first aread, on the event loop it belongs to

    def _key(self, customer_id: str) -> bytes:
        return _entity_key(customer_id, self._version)

    def _keys(self, customer_ids: list[str]) -> tuple[list[bytes], list[bytes]]:
        """Each id's entity key, and the distinct keys the query asks for."""
        keys = [self._key(i) for i in customer_ids]
        return keys, list(dict.fromkeys(keys))

    def __call__(self, customer_ids: list[str]) -> list[dict[str, Any] | None]:
        import psycopg

        keys, distinct = self._keys(customer_ids)
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            rows = conn.cursor(binary=True).execute(self._query, (distinct, _NAMES)).fetchall()
        return _customers(customer_ids, keys, rows)

    async def aread(self, customer_ids: list[str]) -> list[dict[str, Any] | None]:
        """The same read, on the running event loop, within ``_READ_TIMEOUT_S`` (a connection
        whose peer vanished would otherwise hang until TCP gives up). The pool connects in the
        background: while the database is down, reads fail (a 503) after the pool's 5 s wait.
        A pooled connection that a restart broke fails at once; the pool drops it and the read
        moves to the next one, so once the database is back no request fails on a dead
        connection (checking each one before use would cost a round trip per read)."""
        from psycopg import OperationalError
        from psycopg_pool import AsyncConnectionPool

        keys, distinct = self._keys(customer_ids)
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._conninfo, min_size=1, max_size=_POOL_SIZE, open=False,
                kwargs={"autocommit": True},
            )  # fmt: skip
            await self._pool.open(wait=False)
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                for attempt in range(_POOL_SIZE + 1):
                    async with self._pool.connection(timeout=5) as conn:  # PoolTimeout: the database is down
                        try:
                            cursor = await conn.cursor(binary=True).execute(self._query, (distinct, _NAMES))
                            rows = await cursor.fetchall()
                        except OperationalError:
                            if not conn.broken or attempt == _POOL_SIZE:  # a timeout, a query error: no retry
                                raise
                            continue
                    return _customers(customer_ids, keys, rows)
        except TimeoutError:
            raise TimeoutError(f"no answer within {_READ_TIMEOUT_S:g} s") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def aclose(self) -> None:
        """Close the pool's connections (on the event loop that made them)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


class UnreadableFeatures(DataValidationError):
    """The online table holds values the reader cannot type as the schema says."""


def _customers(customer_ids: list[str], keys: list[bytes], rows: list[Any]) -> list[dict[str, Any] | None]:
    """Each id's features from the query's (key, JSON object, snapshot time) rows; None for an
    id with none."""
    # All customers' objects parsed in one call: "15" becomes the int 15, "19.65" the float.
    try:
        parsed = msgspec.to_builtins(_ROWS.decode(b"[%s]" % ",".join(text for _, text, _ in rows).encode()))
    except msgspec.ValidationError as exc:
        raise UnreadableFeatures(
            f"the online store holds a value that is not what the schema says ({exc}): "
            "materialize again with this version (`churn-platform features materialize`)"
        ) from None
    found = {bytes(key): {**row, FEATURES_AS_OF: at} for (key, _, at), row in zip(rows, parsed, strict=True)
             if any(v is not None for v in row.values())}  # fmt: skip
    return [{ID_COLUMN: customer_id, **found[key]} if key in found else None
            for customer_id, key in zip(customer_ids, keys, strict=True)]  # fmt: skip


def _feature_row() -> type:
    """A msgspec struct of the schema's features, each optional, typed as Feast stores it."""
    kinds = {"category": str, "integer": int, "float": float}
    return msgspec.defstruct("FeatureRow", [(f.name, kinds[f.kind] | None, None) for f in FEATURES])


#: The features the online reader asks for.
_NAMES = list(FEATURE_NAMES)
#: Connections the API's parallel by-id reads may hold.
_POOL_SIZE = 8
#: Seconds a by-id read may take in all (1000 ids take ~20 ms).
_READ_TIMEOUT_S = 10.0
#: Non-strict: numbers arrive as their text, which msgspec converts exactly (as int() and float()).
_ROWS = msgspec.json.Decoder(list[_feature_row()], strict=False)  # type: ignore[valid-type]


@functools.lru_cache(maxsize=1 << 16)  # ids repeat across requests; Feast's encoding costs ~9 us each
def _entity_key(customer_id: str, version: int) -> bytes:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    entity = EntityKey(join_keys=[ID_COLUMN], entity_values=[Value(string_val=customer_id)])
    return serialize_entity_key(entity, version)


def online_reader(store: FeatureStore, settings: Settings) -> Any:
    """What the API reads ids with: the direct reader on PostgreSQL, Feast's own call embedded."""
    if settings.feature_store_url:
        return PostgresOnlineReader(store, settings)
    return functools.partial(online, store)


#: Ids per online read: Feast reads the embedded store with one ``IN (...)`` of them, and
#: SQLite takes 250,000 variables at most (a larger CHURN_MAX_BATCH_SIZE read as an outage).
ONLINE_CHUNK = 10_000


def online(store: FeatureStore, customer_ids: list[str]) -> list[dict[str, Any] | None]:
    """Each id's latest materialized features (None for an id the store does not hold)."""
    if len(customer_ids) > ONLINE_CHUNK:
        return [got for i in range(0, len(customer_ids), ONLINE_CHUNK)
                for got in online(store, customer_ids[i : i + ONLINE_CHUNK])]  # fmt: skip
    response = store.get_online_features(features=list(FEATURE_REFS), entity_rows={ID_COLUMN: customer_ids})
    columns = response.to_dict(include_event_timestamps=True)  # whole seconds
    out: list[dict[str, Any] | None] = []
    for i, customer_id in enumerate(customer_ids):
        values = {name: columns[name][i] for name in FEATURE_NAMES}
        if all(v is None for v in values.values()):
            out.append(None)
        else:
            at = float(columns[f"{FEATURE_NAMES[0]}__ts"][i])  # Feast reads one time per customer
            out.append({ID_COLUMN: customer_id, **values, FEATURES_AS_OF: at})
    return out


def training_frame(store: FeatureStore, labels: pd.DataFrame, label_time: str = "label_time") -> pd.DataFrame:
    """Labels joined point-in-time to the features each customer had at the label's time.

    ``labels`` holds ``customer_id``, ``label_time`` and ``churn``; a customer with no
    snapshot at or before their label time is left out (no later value leaks in).
    """
    entity = labels.rename(columns={label_time: "event_timestamp"})
    entity[ID_COLUMN] = entity[ID_COLUMN].astype("string")  # the dtype the offline source is read with
    entity["event_timestamp"] = data.iso_times(entity["event_timestamp"])
    job = store.get_historical_features(entity_df=entity, features=list(FEATURE_REFS))
    frame = job.to_df()
    frame[ID_COLUMN] = frame[ID_COLUMN].astype(object)  # plain str, as every other frame of customers holds ids
    frame = frame.dropna(subset=list(FEATURE_NAMES), how="all")
    return frame.rename(columns={"event_timestamp": label_time}).sort_values([label_time, ID_COLUMN]).reset_index(
        drop=True
    )


#: Columns of a labels file for ``train --from-features``.
LABEL_TIME = "label_time"


def training_set(settings: Settings, labels_uri: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The validated training frame for a labels file, and the tags that say where it came
    from (feature view, store, label time range, labels left without features)."""
    raw = data.read_table(labels_uri, settings.s3_endpoint_url)
    missing = [c for c in (ID_COLUMN, LABEL_TIME, LABEL_COLUMN) if c not in raw.columns]
    if missing:
        raise DataValidationError(f"labels file {labels_uri}: missing columns {missing} (found: {list(raw.columns)})")
    labels = raw[[ID_COLUMN, LABEL_TIME, LABEL_COLUMN]].copy()
    labels[ID_COLUMN] = labels[ID_COLUMN].astype("string").str.strip()
    times = data.iso_times(labels[LABEL_TIME])
    bad = times.isna() | labels[ID_COLUMN].isna() | (labels[ID_COLUMN] == "")
    if bad.any():
        rows = (labels.index[bad][:5] + 1).tolist()  # data rows from 1, as every rejects file counts them
        raise DataValidationError(
            f"labels file {labels_uri}: {int(bad.sum())} rows without a customer id or an ISO-8601 "
            f"{LABEL_TIME}, first at rows {rows}"
        )
    labels[LABEL_TIME] = times
    label = data.label_values(labels[LABEL_COLUMN])
    if label.isna().any():  # here, not after the join: the join reorders rows, and the line numbers with them
        rows = (labels.index[label.isna()][:5] + 1).tolist()
        raise DataValidationError(f"labels file {labels_uri}: {int(label.isna().sum())} rows whose {LABEL_COLUMN} "
                                  f"is not Yes/No, 1/0 or true/false, first at rows {rows}")  # fmt: skip
    labels[LABEL_COLUMN] = label.astype(int)
    # Feast's point-in-time join keeps one row per customer and time, silently: say which.
    repeated = labels.duplicated([ID_COLUMN, LABEL_TIME], keep=False)
    if repeated.any():
        differ = labels[repeated].groupby([ID_COLUMN, LABEL_TIME])[LABEL_COLUMN].transform("nunique") > 1
        if differ.any():
            rows = (differ.index[differ][:6] + 1).tolist()
            raise DataValidationError(f"labels file {labels_uri}: different labels for one customer at one "
                                      f"{LABEL_TIME}, at rows {rows}; keep the true one")  # fmt: skip
        labels = labels.drop_duplicates([ID_COLUMN, LABEL_TIME])
    store = open_store(settings)
    _require_applied(store, settings)
    _require_snapshots(settings)
    try:
        joined = training_frame(store, labels)
    except Exception as exc:  # noqa: BLE001
        raise unavailable(exc) from None
    if joined.empty:
        raise DataValidationError(f"no label in {labels_uri} has a feature snapshot at or before its {LABEL_TIME}")
    try:
        frame = data.validate(joined.drop(columns=[LABEL_TIME]), require_label=True)
    except DataValidationError:  # its row numbers count the join's rows, which no file has: name the customers
        _, reasons = data.split_rejects(joined.drop(columns=[LABEL_TIME, LABEL_COLUMN]))
        if reasons.empty:
            raise
        named = "; ".join(f"{joined.at[i, ID_COLUMN]} at {_utc_text(joined.at[i, LABEL_TIME])}: {why}"
                          for i, why in reasons.head(3).items())  # fmt: skip
        raise DataValidationError(
            f"{len(reasons)} labels in {labels_uri} meet a stored feature snapshot this release's schema refuses "
            f"({named}): ingest those customers' snapshots again, or leave their labels out"
        ) from None
    tags = {
        "feature_view": f"{PROJECT}/{FEATURE_VIEW}",
        "feature_store": "postgresql" if settings.feature_store_url else "embedded",
        "labels": labels_uri,
        "label_time_from": _utc_text(joined[LABEL_TIME].min()),
        "label_time_to": _utc_text(joined[LABEL_TIME].max()),
        "labels_without_features": str(len(labels) - len(joined)),
    }
    return frame, tags
