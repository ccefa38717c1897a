"""What customers actually did: the outcomes table beside the inference log, and the one rule
that joins an outcome to the prediction it judges.

Labels arrive weeks after a prediction, from a CRM export or a billing system, so ingestion
is idempotent (the same file twice changes nothing; a new label for the same customer and
``observed_at`` replaces the old one) and rejects bad rows one by one with their row number
and reason instead of refusing a whole file for one typo.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churn_platform import data
from churn_platform.contract import (
    CHURNED,
    CLOCK_AHEAD,
    INFERENCE_LOG_TABLE,
    INGESTED_AT,
    MODEL_NAME,
    MODEL_VERSION,
    OBSERVED_AT,
    OUTCOME_SOURCE,
    OUTCOMES_TABLE,
    PROBABILITY,
    SCORED_AT,
)
from churn_platform.errors import DataValidationError, StorageRefused, StorageUnreachable
from churn_platform.inference_log import (
    INSUFFICIENT_PRIVILEGE,
    make_engine,
    missing_file,
    refused_login,
    refused_user,
    require_log,
    schema_change,
    sqlite_time,
    sqlstate,
)
from churn_platform.schema import (
    ID_COLUMN,
    ID_MAX_LENGTH,
    LABEL_COLUMN,
    LABEL_VALUES,
    normalise_columns,
)

log = logging.getLogger(__name__)

#: The columns of an outcomes file or request, after header normalisation.
INPUT_COLUMNS: tuple[str, ...] = (ID_COLUMN, CHURNED, OBSERVED_AT)
#: What a rejects file holds for each bad row.
REJECT_COLUMNS: tuple[str, ...] = (*data.REJECT_MARKER, *INPUT_COLUMNS)


#: The longest source name (a file's path) stored with each outcome.
SOURCE_MAX_LENGTH = 512


def table(metadata: sa.MetaData) -> sa.Table:
    """The ``outcomes`` table: one label per customer and observation time."""
    return sa.Table(
        OUTCOMES_TABLE,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column(ID_COLUMN, sa.String(ID_MAX_LENGTH), nullable=False, index=True),
        sa.Column(CHURNED, sa.Boolean(), nullable=False),
        sa.Column(OBSERVED_AT, sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column(OUTCOME_SOURCE, sa.String(SOURCE_MAX_LENGTH), nullable=False, server_default=""),
        sa.Column(INGESTED_AT, sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(ID_COLUMN, OBSERVED_AT, name="uq_outcomes_customer_observed"),
    )


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class Checked:
    """Good rows, typed, ready to write; bad rows with their 1-based row number and reason."""

    good: pd.DataFrame
    rejects: pd.DataFrame
    #: Good rows without an observed_at, dated now: sent again later, they are new outcomes.
    dated_now: int = 0
    #: Good rows repeating an earlier row of the input (same customer, time and label).
    repeated: int = 0

    @property
    def rows(self) -> int:
        return len(self.good) + len(self.rejects) + self.repeated


#: No outcome is older: 1900-01-01 is a spreadsheet's "unknown", never a customer's churn.
_EARLIEST = pd.Timestamp("1970-01-01", tz="UTC")
def check(frame: pd.DataFrame, now: datetime | None = None) -> Checked:
    """Validate outcome rows; only a missing column fails the whole input (``DataValidationError``).

    Headers are normalised like customer files (``customerID``, ``Churn`` and lower-case
    spellings); labels are Yes/No, 1/0 or true/false; ``observed_at`` is ISO-8601 (a time
    without a zone is UTC) and defaults to ``now`` when the column is absent or blank.
    Within one input, the same label twice for a customer and time is one outcome; two
    different labels for them are both rejected.
    """
    now = now or datetime.now(UTC)
    frame = frame.copy()
    spelled = {str(c): str(c).strip().lower().replace(" ", "_") for c in frame.columns}
    names = [low if low in INPUT_COLUMNS else c for c, low in spelled.items()]
    for name in INPUT_COLUMNS:  # said as the file spells them: "'churned' and 'churned'" named one column twice
        if len(same := [c for c, n in zip(spelled, names, strict=True) if n == name]) > 1:
            raise DataValidationError(f"columns {same[0]!r} and {same[1]!r} both mean {name!r}; keep only one")
    frame.columns = normalise_columns(names)
    if LABEL_COLUMN in frame.columns and CHURNED in frame.columns:
        raise DataValidationError(f"both {LABEL_COLUMN!r} and {CHURNED!r} columns: they are one label, keep one")
    frame = frame.rename(columns={LABEL_COLUMN: CHURNED})
    missing = [c for c in (ID_COLUMN, CHURNED) if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"missing required columns: {missing} (found: {list(frame.columns)}); an outcome needs "
            f"{ID_COLUMN}, {CHURNED} (or Churn) and optionally {OBSERVED_AT}"
            + data.separator_hint([str(c) for c in frame.columns])
        )
    others = [c for c in frame.columns if c not in (ID_COLUMN, CHURNED)]
    if OBSERVED_AT not in frame.columns and (
        timed := [c for c in others if data.names_a_time(str(c)) or data.holds_times(frame[c])]
    ):
        # Every row would be dated now, and stored so: a churn of March judged today's predictions.
        raise DataValidationError(f"no {OBSERVED_AT} column, and {timed} is not read: rename the outcome's time "
                                  f"to {OBSERVED_AT}, or drop {timed} to date every row now")  # fmt: skip
    frame = frame.reset_index(drop=True)
    text = {c: frame[c].astype("string").str.strip() if c in frame.columns else None for c in INPUT_COLUMNS}
    text[CHURNED] = data.label_text(frame[CHURNED])
    reasons = pd.Series("", index=frame.index, dtype="object")

    def reject(mask: pd.Series, reason: pd.Series | str) -> None:
        mask = mask.fillna(False).astype(bool) & (reasons == "")
        reasons[mask] = reason[mask] if isinstance(reason, pd.Series) else reason

    ids = text[ID_COLUMN]
    reject(ids.isna() | (ids == ""), f"{ID_COLUMN}: missing")
    for mask, reason in data.id_issues(ids):
        reject(mask, reason)
    raw_label = text[CHURNED]
    label = raw_label.str.lower().map(LABEL_VALUES)
    reject(raw_label.isna() | (raw_label == ""), f"{CHURNED}: missing")
    reject(label.isna(), f"{CHURNED}: " + raw_label.fillna("").map(repr) + " is not Yes/No, 1/0 or true/false")
    raw_time = text[OBSERVED_AT]
    if raw_time is None:
        observed = pd.Series(pd.Timestamp(now), index=frame.index)
        blank = pd.Series(True, index=frame.index)
    else:
        blank = raw_time.isna() | (raw_time == "")
        # Microseconds: what both databases keep, so two times equal there are equal here too.
        observed = data.iso_times(raw_time.where(~blank)).dt.floor("us")
        shown = f"{OBSERVED_AT}: " + raw_time.fillna("").map(repr)
        # ISO 8601 allows "2026-11", which pandas reads as the 1st: a monthly export's "known by the
        # end of November" judged the predictions made before November instead of during it.
        reject(~blank & raw_time.str.fullmatch(r"\s*(?:\d{4}(?:[-/.]\d{1,2})?|\d{1,2}[-/.]\d{4})\s*"),
               shown + " names no day (a year or a month alone): give the date the outcome was known")
        # A year pandas cannot hold (1677 to 2262) is not a badly written time: say what it is.
        year = pd.to_numeric(raw_time.str.extract(r"^(\d{4})-", expand=False), errors="coerce")
        reject(~blank & observed.isna() & ((year < _EARLIEST.year) | (year > now.year)),
               shown + f" is out of range ({_EARLIEST.year} to now)")  # fmt: skip
        reject(~blank & observed.isna(), shown + " is not an ISO-8601 time")
        reject(observed <= _EARLIEST, shown + f" is not after {_EARLIEST:%Y-%m-%d}: a placeholder for an unknown time? "
               "Leave it blank to date the row now")  # fmt: skip
        observed = observed.where(~blank, pd.Timestamp(now))
    reject(observed > pd.Timestamp(now) + CLOCK_AHEAD,
           f"{OBSERVED_AT}: in the future (now is {now.isoformat(timespec='seconds')})")  # fmt: skip
    # Two different labels for one customer at one time: which is true is the sender's to say,
    # so neither is stored (the same label twice is one outcome).
    keyed = pd.DataFrame({"id": ids, "at": observed, "label": label})[reasons == ""]
    conflict = keyed.groupby(["id", "at"], dropna=False)["label"].transform("nunique") > 1
    if conflict.any():
        rows = (keyed[conflict].index.to_series() + 1).groupby([keyed["id"][conflict], keyed["at"][conflict]])
        listed = rows.transform(lambda r: ", ".join(map(str, r))).reindex(frame.index, fill_value="")
        reason = f"{CHURNED}: conflicting labels for one {ID_COLUMN} and {OBSERVED_AT} (rows " + listed + ")"
        reject(conflict.reindex(frame.index, fill_value=False), reason)
    bad = reasons != ""
    rejects = pd.DataFrame({"row": (np.flatnonzero(bad) + 1).astype("int64"), "reason": reasons[bad].to_numpy()})
    for column in INPUT_COLUMNS:
        rejects[column] = text[column][bad].to_numpy() if text[column] is not None else None
    good = pd.DataFrame({
        ID_COLUMN: ids[~bad].astype(str),
        CHURNED: label[~bad].astype(bool),
        OBSERVED_AT: observed[~bad],
    }).drop_duplicates([ID_COLUMN, OBSERVED_AT], keep="last")  # fmt: skip
    return Checked(good=good.reset_index(drop=True), rejects=rejects, dated_now=int((blank & ~bad).sum()),
                   repeated=int((~bad).sum()) - len(good))  # fmt: skip


# ---------------------------------------------------------------- storage


@dataclass(frozen=True)
class Written:
    """What a write did: new outcomes, changed labels, rows already stored as they are."""

    inserted: int
    replaced: int
    unchanged: int


def check_source(source: str) -> None:
    """Refuse a source name too long to store: PostgreSQL said "value too long", naming
    nothing, and SQLite took it."""
    if len(source) > SOURCE_MAX_LENGTH:
        raise DataValidationError(f"the source name is {len(source)} characters long, over {SOURCE_MAX_LENGTH} "
                                  "(it is stored with each outcome, for `outcomes delete --source`): move or "
                                  "rename the file to a shorter path")  # fmt: skip


def remove_earlier_rejects(path: Path) -> None:
    """Remove the rejects file an earlier run left at ``path``: only a file that is one (its
    header begins as every rejects file's does, an earlier release's too), never another a
    mistyped --rejects names."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), None)
        if header is not None and header[: len(data.REJECT_MARKER)] == list(data.REJECT_MARKER):
            path.unlink()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, csv.Error) as exc:  # no permission, not text: it stays, said
        log.warning("%s may hold an earlier run's rejects and was left as it is: %s", path,
                    getattr(exc, "strerror", None) or exc)  # fmt: skip


def upgrade(engine: sa.Engine) -> None:
    with schema_change(engine) as conn:
        table(sa.MetaData()).metadata.create_all(conn)


def write(engine: sa.Engine, good: pd.DataFrame, source: str, chunk_rows: int = 5000) -> Written:
    """Upsert checked outcomes in one transaction: all of them or none."""
    from sqlalchemy.dialects.sqlite import insert

    upgrade(engine)
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - the log supports these two
        raise DataValidationError(f"outcomes need PostgreSQL or SQLite, not {dialect}")
    stored_now = _stored_time(datetime.now(UTC), dialect)
    if dialect == "postgresql":
        with engine.begin() as conn:
            return _copy_postgres(conn, good, source, stored_now)
    outcomes = table(sa.MetaData())
    # One statement for every chunk, its rows as parameters: a statement built with a chunk's
    # rows as VALUES was compiled anew each time, 70 % of a write (300,000 rows took a minute,
    # SQLite's write lock held all along: the API's log writer and POST /outcomes waited).
    statement = insert(outcomes)
    new = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[ID_COLUMN, OBSERVED_AT],
        set_={CHURNED: new[CHURNED], OUTCOME_SOURCE: new[OUTCOME_SOURCE], INGESTED_AT: new[INGESTED_AT]},
        where=outcomes.c[CHURNED].is_distinct_from(new[CHURNED]),
    )
    changed = 0
    with engine.begin() as conn:
        # One writer at a time: take the write lock before counting, so no other upload's
        # rows are counted as this one's.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        before = conn.execute(sa.select(sa.func.count()).select_from(outcomes)).scalar_one()
        for start in range(0, len(good), chunk_rows):
            chunk = good.iloc[start : start + chunk_rows]
            rows = [
                {ID_COLUMN: c, CHURNED: bool(y), OBSERVED_AT: t, OUTCOME_SOURCE: source, INGESTED_AT: stored_now}
                for c, y, t in zip(chunk[ID_COLUMN], chunk[CHURNED], _stored_times(chunk[OBSERVED_AT], dialect),
                                   strict=True)
            ]  # fmt: skip
            changed += conn.execute(statement, rows).rowcount
        inserted = conn.execute(sa.select(sa.func.count()).select_from(outcomes)).scalar_one() - before
    return Written(inserted=inserted, replaced=changed - inserted, unchanged=len(good) - changed)


def _copy_postgres(conn: sa.Connection, good: pd.DataFrame, source: str, now: datetime) -> Written:
    """COPY into a temporary table, then one upsert from it: psycopg building and PostgreSQL
    parsing batched VALUES took 18 s of a 300,000-row write. PostgreSQL says per row whether
    it inserted (xmax = 0) or updated it: counting the table before and after would also count
    rows another upload committed meanwhile."""
    columns = ", ".join((ID_COLUMN, CHURNED, OBSERVED_AT))
    conn.exec_driver_sql(f"CREATE TEMP TABLE outcomes_load ON COMMIT DROP AS SELECT {columns} "
                         f"FROM {OUTCOMES_TABLE} WITH NO DATA")  # fmt: skip
    rows = pd.DataFrame({ID_COLUMN: good[ID_COLUMN], CHURNED: good[CHURNED].astype(bool),
                         OBSERVED_AT: pd.DatetimeIndex(good[OBSERVED_AT]).tz_convert(UTC)})  # fmt: skip
    text = rows.to_csv(index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
    copy = f"COPY outcomes_load ({columns}) FROM STDIN WITH (FORMAT csv)"
    driver = conn.dialect.loaded_dbapi  # psycopg2 (postgresql+psycopg2://) or psycopg 3 (postgresql://)
    try:
        with conn.connection.dbapi_connection.cursor() as cur:
            if hasattr(cur, "copy_expert"):
                cur.copy_expert(copy, io.StringIO(text))
            else:
                with cur.copy(copy) as sink:
                    sink.write(text)
    except driver.Error as exc:  # as SQLAlchemy raises the rest: the callers tell outage from bad data
        raise sa.exc.DBAPIError.instance(copy, None, exc, driver.Error) from exc
    # In key order: two uploads sharing customers lock their rows in the same order and wait
    # for each other instead of deadlocking.
    counts = conn.exec_driver_sql(
        f"WITH written AS (INSERT INTO {OUTCOMES_TABLE} ({columns}, {OUTCOME_SOURCE}, {INGESTED_AT}) "
        f"SELECT {columns}, %(source)s, %(now)s FROM outcomes_load ORDER BY {ID_COLUMN}, {OBSERVED_AT} "
        f"ON CONFLICT ({ID_COLUMN}, {OBSERVED_AT}) DO UPDATE SET {CHURNED} = EXCLUDED.{CHURNED}, "
        f"{OUTCOME_SOURCE} = EXCLUDED.{OUTCOME_SOURCE}, {INGESTED_AT} = EXCLUDED.{INGESTED_AT} "
        f"WHERE {OUTCOMES_TABLE}.{CHURNED} IS DISTINCT FROM EXCLUDED.{CHURNED} RETURNING xmax = 0 AS fresh) "
        "SELECT count(*), count(*) FILTER (WHERE fresh) FROM written",
        {"source": source, "now": now},
    ).one()
    changed, inserted = counts
    return Written(inserted=inserted, replaced=changed - inserted, unchanged=len(good) - changed)


def _stored_times(times: pd.Series | list[datetime], dialect: str) -> list[datetime]:
    """Zoned times as stored: SQLite keeps no zone, so UTC wall time, as the inference log does.
    A column at once: per row it was half of a write."""
    index = pd.DatetimeIndex(times).tz_convert(UTC)
    return list((index.tz_localize(None) if dialect == "sqlite" else index).to_pydatetime())


def _stored_time(at: datetime | pd.Timestamp, dialect: str) -> datetime:
    return _stored_times([at], dialect)[0]


@dataclass(frozen=True)
class Ingested:
    """One ingestion: the checked rows and what writing them did (None: nothing written)."""

    checked: Checked
    written: Written | None

    def to_json(self, rejects_path: str | None = None, shown: int = 100) -> dict[str, object]:
        """The figures, and the first ``shown`` rejects with their row number and reason."""
        rejects = self.checked.rejects.head(shown)
        return {
            "rows": self.checked.rows,
            "written": vars(self.written) if self.written else None,
            "rejected": len(self.checked.rejects),
            "dated_now": self.checked.dated_now,
            "rejects_path": rejects_path,
            "rejects": rejects.astype(object).where(rejects.notna(), None).to_dict("records"),
        }


def ingest(
    frame: pd.DataFrame, url: str, *, source: str, strict: bool = False, now: datetime | None = None
) -> Ingested:
    """Check and write outcomes; with ``strict`` nothing is written when any row is bad."""
    check_source(source)
    checked = check(frame, now)
    if strict and len(checked.rejects):
        return Ingested(checked, None)
    engine = make_engine(url)
    try:
        written = write(engine, checked.good, source)
        # A repeat within the input writes nothing: unchanged, so the figures add up to the rows read.
        return Ingested(checked, dataclasses.replace(written, unchanged=written.unchanged + checked.repeated))
    except (sa.exc.DataError, sa.exc.IntegrityError, ValueError) as exc:  # refused for this data: nothing written
        raise DataValidationError(f"the database refused the outcomes: {getattr(exc, 'orig', exc)}") from exc
    except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:
        # Down, not a database at all (a SQLite URL naming another file), or refusing every
        # write (a read-only standby after a failover, a missing grant: exit 2 for a job, 503 still):
        # the sender's data is fine, and a client that drops what it is told is bad would lose it.
        # Any other ProgrammingError is a bug here, not something a retry mends.
        if isinstance(exc, sa.exc.ProgrammingError) and sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        raise _unwritable(engine, exc, "write outcomes to") from exc
    finally:
        engine.dispose()


def _unwritable(engine: sa.Engine, exc: sa.exc.SQLAlchemyError, doing: str) -> StorageUnreachable:
    """A missing grant is the operator's to give and a refused login the URL's to mend (a job's
    exit 2), anything else an outage."""
    where, why = engine.url.render_as_string(hide_password=True), str(getattr(exc, "orig", exc)).strip()
    if refused_user(exc):
        return StorageRefused(f"cannot {doing} {where}: this database user may not ({why}); grant it CONNECT and "
                              f"TEMPORARY on the database (a load stages its rows in a temporary table), SELECT, "
                              f"INSERT, UPDATE and DELETE on {OUTCOMES_TABLE} (and CREATE on the schema until that "
                              "table exists)")  # fmt: skip
    if login := refused_login(exc):
        return StorageRefused(f"cannot {doing} {where}: it refused the login ({login}); check the user, password "
                              "and database name in the URL")  # fmt: skip
    return StorageUnreachable(f"cannot {doing} {where}: {why}")


@dataclass(frozen=True)
class Deleted:
    """Outcomes last written by one source: how many, the first and last day observed, and
    (none found) every source stored with its count, to show a typo."""

    source: str
    rows: int
    deleted: bool
    first: str | None = None
    last: str | None = None
    sources: dict[str, int] = dataclasses.field(default_factory=dict)
    #: When the first and last of them were written (UTC, to the second): to tell pushes apart.
    written_first: str | None = None
    written_last: str | None = None


def delete(url: str, source: str, *, apply: bool, ingested: tuple[datetime | None, datetime | None] = (None, None),
           ) -> Deleted:  # fmt: skip
    """Count the outcomes ``source`` wrote last (a file as ingest was given it, or ``api``), and
    with ``apply`` delete them: a file with wrong labels or times is undone this way, where
    ingesting a corrected one would add outcomes at other times beside the wrong ones.
    ``ingested``: only those written from, and before, these times (one bad push of many
    under the same name: ``api``, a daily export of one file name)."""
    # No log there (a typo's file, MLflow's database) is not "none written by that source",
    # which a user would take for nothing to undo.
    if why := missing_file(url):
        raise DataValidationError(why)
    engine = make_engine(url)
    outcomes = table(sa.MetaData())
    try:
        with engine.begin() as conn:
            if not sa.inspect(conn).has_table(OUTCOMES_TABLE):
                require_log(engine)
                return Deleted(source, 0, False)
            mine = outcomes.c[OUTCOME_SOURCE] == source
            since, until = (None if t is None else _stored_time(t, conn.dialect.name) for t in ingested)
            if since is not None:
                mine &= outcomes.c[INGESTED_AT] >= since
            if until is not None:
                mine &= outcomes.c[INGESTED_AT] < until
            observed, written = outcomes.c[OBSERVED_AT], outcomes.c[INGESTED_AT]
            query = sa.select(sa.func.count(), sa.func.min(observed), sa.func.max(observed), sa.func.min(written),
                              sa.func.max(written)).where(mine)  # fmt: skip
            rows, first, last, written_first, written_last = conn.execute(query).one()
            if not rows:
                counts = conn.execute(sa.select(outcomes.c[OUTCOME_SOURCE], sa.func.count())
                                      .group_by(outcomes.c[OUTCOME_SOURCE])).all()  # fmt: skip
                return Deleted(source, 0, False, sources={s: n for s, n in counts})
            if apply:
                conn.execute(sa.delete(outcomes).where(mine))

            def second(t: datetime | str) -> str:
                """To the second, in UTC: SQLite's naive values are UTC; PostgreSQL's in the session's zone."""
                if not isinstance(t, datetime):
                    return str(t)[:19]
                return f"{t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC):%Y-%m-%d %H:%M:%S}"

            day = lambda t: second(t)[:10]  # noqa: E731 - UTC too: PostgreSQL's session zone moved it a day

            return Deleted(source, rows, apply, day(first), day(last), written_first=second(written_first),
                           written_last=second(written_last))  # fmt: skip
    except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:
        raise _unwritable(engine, exc, "delete outcomes at") from exc
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the join rule


def _shifted(dialect: str, column: str, days: str) -> str:
    """``column`` moved by ``days`` (a signed SQL expression: ``-:horizon_days``, ``30``)."""
    if dialect == "postgresql":
        # Hours, not days: a day of timestamptz arithmetic follows the session's zone, so a
        # horizon across a daylight-saving change was an hour longer or shorter than SQLite's.
        return f"{column} + make_interval(hours => 24 * ({days}))"
    # To the millisecond, as the stored text compares ('...:00.500' < '...:00.500200'): datetime()
    # cut it to the second, and a prediction 90 days and 0.3 s old was judged here, not on PostgreSQL.
    # The same instant reads '...:00.000' <= '...:00.000000'; past the millisecond SQLite may
    # differ from PostgreSQL by under 1 ms.
    return f"strftime('%Y-%m-%d %H:%M:%f', {column}, ({days}) || ' days')"


def _horizon_start(dialect: str, column: str) -> str:
    return _shifted(dialect, column, "-:horizon_days")


def matched_sql(dialect: str, *, any_version: bool = False, maturity_days: int = 0) -> str:
    """The one join rule, as SQL: each outcome observed in the window is matched to that
    customer's latest prediction by the version made at most ``horizon_days`` before
    ``observed_at`` (and not after it); a prediction that several outcomes would match is
    judged by one of them only: the first churn among them, else the latest "no" (a "no" says
    "not churned by then": a monthly status export says "no" the day after a score and "yes"
    a month later, and the score was right). The judge is chosen among every outcome that
    could share a prediction with one in the window (observed up to ``horizon_days`` before
    ``since``), so a prediction judged by a churn before the window is not judged again in
    it. A prediction made after a churn of that customer (observed within ``horizon_days``
    before it) is judged by nothing: a monthly export repeats the "yes", which matched the
    post-churn score as a churn caught, and retraining learnt from features that had seen it.
    A "no" never judges a prediction whose customer churned within ``horizon_days`` after it
    (observed before ``until``; the churn judged a later score): scored daily and exported
    daily, a churner's earlier scores were each a false alarm and a "no" to learn from.
    With ``maturity_days``, a "no" judges only a prediction made at least that long before it
    (the latest such one): a "no" the day after a score says little of a churn within the
    horizon, and windows that end before the churns are recorded read a sound model as worse.
    One row per matched outcome: the outcome's id and
    label, the prediction's log id, score, time and arm. Parameters: ``name``, ``version``,
    ``horizon_days``, ``since``, ``until`` (on ``observed_at``, half-open). With
    ``any_version`` the latest prediction by any version counts (retraining needs the
    customer's features as scored, whoever scored them; ``version`` is then not needed)."""
    version = "" if any_version else f"AND l.{MODEL_VERSION} = :version"
    mature = "" if not maturity_days else (  # an int (a setting), written into the SQL: 0 keeps the rule exact
        f"AND (o.{CHURNED} OR {_shifted(dialect, f'l.{SCORED_AT}', str(int(maturity_days)))} <= o.{OBSERVED_AT})"
    )
    return f"""
        SELECT outcome_id, {CHURNED}, {OBSERVED_AT}, log_id, {PROBABILITY}, {SCORED_AT}, arm FROM (
          SELECT ranked.*,
                 ROW_NUMBER() OVER (PARTITION BY log_id ORDER BY {CHURNED} DESC,
                                    CASE WHEN {CHURNED} THEN {OBSERVED_AT} END, {OBSERVED_AT} DESC, outcome_id)
                   AS judge_rank
          FROM (
            SELECT o.id AS outcome_id, o.{CHURNED}, o.{OBSERVED_AT}, l.id AS log_id, l.{PROBABILITY},
                   l.{SCORED_AT}, l.arm, l.{ID_COLUMN} AS customer,
                   ROW_NUMBER() OVER (PARTITION BY o.id ORDER BY l.{SCORED_AT} DESC, l.id DESC) AS rank
            FROM {OUTCOMES_TABLE} o
            JOIN {INFERENCE_LOG_TABLE} l
              ON l.{ID_COLUMN} = o.{ID_COLUMN}
             AND l.{MODEL_NAME} = :name {version}
             AND l.{SCORED_AT} <= o.{OBSERVED_AT}
             AND l.{SCORED_AT} >= {_horizon_start(dialect, f"o.{OBSERVED_AT}")} {mature}
             AND NOT EXISTS (
               SELECT 1 FROM {OUTCOMES_TABLE} gone
               WHERE gone.{ID_COLUMN} = l.{ID_COLUMN} AND gone.{CHURNED}
                 AND gone.{OBSERVED_AT} < l.{SCORED_AT}
                 AND gone.{OBSERVED_AT} >= {_horizon_start(dialect, f"l.{SCORED_AT}")})
            WHERE o.{OBSERVED_AT} >= {_horizon_start(dialect, ":since")} AND o.{OBSERVED_AT} < :until
          ) ranked WHERE rank = 1
        ) judged WHERE judge_rank = 1 AND {OBSERVED_AT} >= :since
          AND ({CHURNED} OR NOT EXISTS (
            SELECT 1 FROM {OUTCOMES_TABLE} later
            WHERE later.{ID_COLUMN} = judged.customer AND later.{CHURNED}
              AND later.{OBSERVED_AT} > judged.{SCORED_AT} AND later.{OBSERVED_AT} < :until
              AND judged.{SCORED_AT} >= {_horizon_start(dialect, f"later.{OBSERVED_AT}")}))
    """


def window_params(dialect: str, since: datetime, until: datetime) -> dict[str, object]:
    """Window bounds as the dialect compares them with stored times (SQLite: text)."""
    if dialect == "sqlite":
        return {"since": sqlite_time(since), "until": sqlite_time(until)}
    return {"since": since, "until": until}
