"""Load, validate, generate and split customer data.

Validation collects every problem before failing, so one run tells a user all that is
wrong with a file: the column, the problem and a few offending rows (1-based data rows,
not counting the header).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import re
import stat
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from churn_platform import object_store
from churn_platform.errors import (
    DataSourceError,
    DataValidationError,
    StorageUnreachable,
)
from churn_platform.schema import (
    FEATURE_NAMES,
    FEATURES,
    ID_COLUMN,
    ID_CONTROL_CHARACTERS,
    ID_CONTROL_PROBLEM,
    ID_MAX_LENGTH,
    ID_PLACEHOLDER_PROBLEM,
    ID_PLACEHOLDERS,
    LABEL_COLUMN,
    LABEL_VALUES,
    Feature,
    normalise_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa

_EXAMPLES = 3


# --------------------------------------------------------------------------- reading


def read_table(uri: str | Path, s3_endpoint_url: str | None = None, *, empty: bool = False) -> pd.DataFrame:
    """Read a CSV or Parquet file from a local path or ``s3://bucket/key`` as raw strings.

    Columns are normalised to the schema's snake_case names; values are not yet checked.
    ``empty``: a header without rows is a file of nothing new (a daily export on a quiet day).
    """
    uri = str(uri)
    require_named(uri)
    if uri.startswith("s3://"):
        payload = _read_s3(uri, s3_endpoint_url)
    else:
        with _local_file(uri) as path:
            payload = path.read_bytes()
    if not payload.strip():
        raise DataSourceError(f"data file is empty: {uri}")
    try:
        frame = _parse(payload, uri)
        frame.columns = normalise_columns([str(c) for c in frame.columns])
    except DataValidationError as exc:  # two columns that mean one: say which file
        raise DataValidationError(f"{uri}: {exc}") from None
    if frame.empty and not empty:
        raise DataValidationError(f"data file has a header but no rows: {uri}")
    return frame


def require_named(uri: str) -> None:
    """An empty path names the current folder: "data path is a directory, not a file: " said nothing."""
    if not uri.strip():
        raise DataSourceError("no data file named: the path is empty")


def location(uri: str | Path) -> str:
    """What a path or ``s3://`` URI names, comparable across spellings (``./a.csv``, ``a.csv``)."""
    uri = str(uri)
    return uri.removeprefix("s3://") if uri.startswith("s3://") else str(Path(uri).resolve())


def local_target(target: str) -> Path:
    """A local output's absolute path, refused when its folder is missing or it is a folder."""
    final = Path(target).resolve()
    if not final.parent.is_dir():
        raise DataSourceError(f"output folder does not exist: {final.parent}")
    if final.is_dir():
        raise DataSourceError(f"{target} is a folder; give a file name")
    return final


_SQLITE = b"SQLite format 3\x00"
#: The columns every rejects file begins with, whichever job wrote it (a later release's may add
#: others after them: an earlier run's file is still one to replace).
REJECT_MARKER = ("row", "reason")


def refuse_foreign_output(option: str, target: str, columns: tuple[str, ...]) -> None:
    """Refuse a local output whose file exists and is not one a job of this kind wrote (it
    lacks ``columns``, as its CSV header or Parquet schema says): a mistyped ``--rejects
    inference_log.db`` replaced the log, the MLflow registry or a customer export, and said so
    only afterwards. An empty file, or none, is free; ``s3://`` keys are not read."""
    if target.startswith("s3://"):
        return
    path = Path(target)
    try:
        kind = path.stat().st_mode
        if stat.S_ISDIR(kind):
            return  # a folder is for the callers' checks to name
        if not stat.S_ISREG(kind):  # /dev/null was replaced by the scores (as root), a named pipe hung the job
            raise DataValidationError(f"{option} {target} is not a regular file (a device or a pipe); name a file")
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing to lose; a file on the way is for the callers' checks to name
    except OSError as exc:
        raise DataSourceError(f"{option} {target}: cannot read the file already there: {exc.strerror or exc}") from None
    if not head.strip():
        return
    keep = "it would be overwritten; name another file, or remove it first"
    if head.startswith(_SQLITE):
        raise DataValidationError(f"{option} {target} is a SQLite database (the MLflow registry, the inference "
                                  f"log?), not a file this job wrote: {keep}")  # fmt: skip
    found: list[str] = []
    try:
        if head.startswith(b"PAR1"):
            import pyarrow.parquet as pq  # here: the API imports this module and never reads a file

            found = list(pq.read_schema(path).names)
        else:
            first = head.splitlines()[0].decode("utf-8-sig", errors="replace")
            found = next(csv.reader([first]), [])
    except Exception:  # noqa: BLE001 - whatever it holds, it is not our output
        found = []
    absent = [c for c in columns if c not in found]
    if absent:
        raise DataValidationError(f"{option} {target} already holds a file this job did not write (no "
                                  f"{', '.join(absent)} column{'s' * (len(absent) > 1)}): {keep}")  # fmt: skip


def refuse_overwrite(source: str, **outputs: str) -> None:
    """Refuse a job whose outputs name its input or each other: one would destroy the other.

    ``outputs`` maps each option's name (``rejects``) to its target.
    """
    seen = {location(source): "the input"}
    for option, target in outputs.items():
        other = seen.setdefault(location(target), f"--{option}")
        if other != f"--{option}":
            raise DataValidationError(f"--{option} {target} names the same file as {other}; one would overwrite it")


#: A fractional-typed id that is a whole number of at most this size reads as that integer ("7590",
#: not "7590.0" or "7.59e+03"), in both batch engines; past it a double no longer holds every integer.
WHOLE_ID_LIMIT = 2**53


def ids_as_text(table: pa.Table) -> pa.Table:
    """Customer ids as text in Arrow: pandas would turn an integer id column with a gap into
    floats ("3.0", and 2**53 + 1 rounded), so a score or a stored snapshot could name the wrong
    customer. A floating-point id column (a file written from such a frame) gives its whole
    numbers as integers, as the Spark engine does."""
    import pyarrow as pa  # here: the API imports this module and never reads a file
    import pyarrow.compute as pc

    if ID_COLUMN not in table.column_names or pa.types.is_string(table.schema.field(ID_COLUMN).type):
        return table
    ids = table.column(ID_COLUMN)
    text = ids.cast(pa.string())
    if pa.types.is_floating(ids.type):
        wide = ids.cast(pa.float64())  # a float32 column could not be compared with 2**53: exit 2
        whole = pc.and_(pc.equal(wide, pc.floor(wide)), pc.less_equal(pc.abs(wide), WHOLE_ID_LIMIT))
        text = pc.if_else(whole, pc.cast(wide, pa.int64(), safe=False).cast(pa.string()), text)
        # NaN (a gap in a float column) and infinities name no customer: missing, not "nan".
        text = pc.if_else(pc.is_finite(wide), text, pa.scalar(None, pa.string()))
    return table.set_column(table.column_names.index(ID_COLUMN), ID_COLUMN, text)


def not_utf8_advice(encoding: str = "latin1") -> str:
    """What to do with a file that is not UTF-8 text (a spreadsheet's default: Latin-1, or UTF-16)."""
    return f"export it as UTF-8 (a spreadsheet's 'CSV UTF-8') or convert it: iconv -f {encoding} -t utf-8"


def _parse(payload: bytes, uri: str) -> pd.DataFrame:
    is_parquet = payload[:4] == b"PAR1" or uri.lower().endswith((".parquet", ".pq"))
    if payload.startswith(_SQLITE):  # read as text, "not UTF-8: iconv -f latin1"
        raise DataSourceError(f"{uri} is a SQLite database, not a CSV or Parquet file (the inference log? name it "
                              "with --inference-log-url sqlite:///PATH)")  # fmt: skip
    if payload[:2] == b"\x1f\x8b":  # gzip's magic: parsed as text, "'utf-8' codec can't decode byte 0x8b"
        raise DataSourceError(f"{uri} is compressed (gzip): decompress it first; CSV and Parquet are read as written")
    if not is_parquet and payload[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):  # "a header but no rows"
        raise DataSourceError(f"{uri} holds JSON; CSV and Parquet files are read here: export it as one of them")
    try:
        if is_parquet:
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(payload))
            return ids_as_text(table.rename_columns(normalise_columns(table.column_names))).to_pandas()
        # Everything as text first: validation, not the parser, decides what a bad value is. The
        # C parser ends a value at a NUL byte ("A\x00C" read as "A": another customer's id), so a
        # file holding one goes through the Python parser, which keeps it for the checks to refuse.
        engine = "python" if b"\x00" in payload else "c"
        # index_col=False: a first row with a field more than the header made pandas take the
        # first column for an index and shift the others ("C1,Yes,No": a customer "Yes" who did
        # not churn); now a warning, raised as the error it is (the C parser's own error for a later row).
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=False, engine=engine, index_col=False)
        # pandas renames a repeated `tenure` to `tenure.1`, which no schema column matches: the
        # second was dropped unseen. The header as written is checked, as `TENURE` beside it is.
        written = pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=False, header=None, nrows=1,
                              engine=engine)  # fmt: skip
    except pd.errors.EmptyDataError as exc:
        raise DataSourceError(f"data file is empty: {uri}") from exc
    except pd.errors.ParserWarning:
        raise DataSourceError(f"cannot parse {uri} as CSV: a row has more fields than the header (a comma after "
                              "the last value?); every row must have the header's fields") from None
    except UnicodeDecodeError as exc:
        if payload[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a byte-order mark: Excel's "Unicode text"
            raise DataSourceError(f"cannot read {uri}: it is UTF-16 text; {not_utf8_advice('utf-16')}") from None
        raise DataSourceError(f"cannot read {uri}: it is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                              f"{not_utf8_advice()}") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file for the user
        kind = "Parquet" if is_parquet else "CSV"
        raise DataSourceError(f"cannot parse {uri} as {kind}: {exc}") from exc
    normalise_columns([str(c) for c in written.iloc[0]])
    return frame


def _read_s3(uri: str, endpoint_url: str | None) -> bytes:
    return _s3_object(uri, endpoint_url, lambda client, b, k: client.get_object(Bucket=b, Key=k)["Body"].read())


def modified_time(uri: str, s3_endpoint_url: str | None = None) -> datetime:
    """When a file (local or ``s3://``) was last written: a daily export's own time, where the
    time of the run would date a stale export as today's."""
    if uri.startswith("s3://"):
        stamp = _s3_object(uri, s3_endpoint_url, lambda client, b, k: client.head_object(Bucket=b, Key=k))
        return stamp["LastModified"].astimezone(UTC)
    with _local_file(uri) as path:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)


@contextlib.contextmanager
def _local_file(uri: str) -> Iterator[Path]:
    """A local data file that is there and not a folder, and what reading it raises as ours
    (not "a bug", exit 70): checked alike whether a job reads it or only looks for it."""
    path = Path(uri)
    try:
        if not path.exists():
            # `mlflow run` runs in the project folder: a relative path is looked for there, not where it was typed.
            where = "" if path.is_absolute() else f" (looked for at {path.resolve()})"
            raise DataSourceError(f"data file not found: {uri}{where}")
        if path.is_dir():
            raise DataSourceError(f"data path is a directory, not a file: {uri}")
        yield path
    except OSError as exc:
        why = f"cannot read data file {uri}: {exc.strerror or exc}"
        if isinstance(exc, PermissionError) or exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise DataSourceError(why) from None  # another user's file, a path no one can open: exit 2
        raise StorageUnreachable(why) from None  # an I/O error, a stale NFS handle: retried (exit 3)


def _s3_object(uri: str, endpoint_url: str | None, call: Callable[[Any, str, str], Any]) -> Any:
    """``call(client, bucket, key)`` on the object ``uri`` names, its failures as ours."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    bucket, key = object_store.split(uri)
    if not bucket or not key:
        raise DataSourceError(f"not a valid s3 URI (want s3://bucket/key): {uri}")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
    )
    try:
        return call(client, bucket, key)
    except EndpointConnectionError as exc:
        raise StorageUnreachable(
            f"object store unreachable at {endpoint_url or 'AWS default endpoint'}: {exc}"
        ) from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if object_store.unreachable(exc):  # a 503 or SlowDown after the retries: worth the job's retry (exit 3)
            raise StorageUnreachable(f"object store unavailable for {uri}: {code or exc}") from exc
        if code == "NoSuchBucket":
            raise DataSourceError(f"bucket {bucket!r} does not exist ({uri})") from exc
        if code in ("NoSuchKey", "404"):
            raise DataSourceError(f"object not found: {uri}") from exc
        raise DataSourceError(f"cannot read {uri}: {code or exc}") from exc
    except BotoCoreError as exc:  # no credentials configured (exit 2), or the store away (3)
        error = StorageUnreachable if object_store.unreachable(exc) else DataSourceError
        raise error(f"cannot read {uri}: {exc}") from exc


# --------------------------------------------------------------------------- validation


def _rows(mask: pd.Series, values: pd.Series) -> str:
    bad = values[mask]
    shown = ", ".join(f"row {i + 1}: {v!r}" for i, v in list(bad.items())[:_EXAMPLES])
    more = f" (and {len(bad) - _EXAMPLES} more)" if len(bad) > _EXAMPLES else ""
    return f"{shown}{more}"


def is_blank(values: pd.Series) -> pd.Series:
    """Missing in any spelling files use: NaN, empty or whitespace, or the text nan/None."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.isna()  # a typed column (Parquet) has no text to look at
    return values.isna() | _text(values).str.strip().isin(["", "nan", "NaN", "None"])


def label_values(values: pd.Series) -> pd.Series:
    """Churn labels as 1/0 from any spelling ``LABEL_VALUES`` knows; NaN where it knows none."""
    return label_text(values).str.lower().map(LABEL_VALUES)


def label_text(values: pd.Series) -> pd.Series:
    """Labels as stripped text for ``LABEL_VALUES``: whole numbers of a floating-point column
    as integers ("1", not "1.0": pandas reads an integer label column with a gap as floats),
    and so the same column written to a CSV ("1.0", "0.0"), read as text."""
    if not pd.api.types.is_float_dtype(values):
        return values.astype("string").str.strip().str.replace(r"^([01])\.0*$", r"\1", regex=True)
    numbers = values.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) <= 1)
    text = values.astype("string")
    text[whole] = numbers[whole].astype(np.int64).astype(str)
    return text


#: An ISO 8601 time that ends with a zone (``Z``, ``+05:30``, ``-0300``, ``+01``); a date alone has none.
_ZONED = r"[T ]\d.*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


def iso_times(values: pd.Series) -> pd.Series:
    """Times as UTC (a time without a zone is UTC); NaT for anything but ISO 8601.

    Not pandas' ``format="mixed"``, which guesses: 05/06/2026 became 6 May, 13/06/2026 13 June,
    so half of a day-first export was stored a month off. Nor its ``now``/``today``, which
    would stamp a row with the time of the upload.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    text = values.astype("string").str.strip()
    words = text.str.lower().isin(["now", "today"]).fillna(False).to_numpy(dtype=bool)
    text = text.mask(words).str.replace(r"(?<=\d)z$", "Z", regex=True)  # "...T00:00:00z", as the CLI's options take it
    # Parsed apart: in one call pandas gives a time without a zone the offset of a zoned time
    # before it (2026-11-01T00:00 after a +05:30 one became 18:30 the day before).
    zoned = text.str.contains(_ZONED, regex=True).fillna(False).to_numpy(dtype=bool)
    times = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    for rows in (zoned, ~zoned):
        if rows.any():
            times[rows] = pd.to_datetime(text[rows], utc=True, errors="coerce", format="ISO8601")
    return times


def _text(values: pd.Series) -> pd.Series:
    """The values as strings; a column that already holds strings is not converted again."""
    return values if pd.api.types.is_string_dtype(values) and not values.dtype == object else values.astype(str)


#: A row-level problem: which rows, and what is wrong with them in a few words.
RowIssue = tuple[pd.Series, str]


def _check_feature(
    feature: Feature, raw: pd.Series, tenure: pd.Series | None, problems: list[str], issues: list[RowIssue]
) -> pd.Series:
    """The column's typed values; each problem goes to ``problems`` (one line for the column)
    and ``issues`` (its rows, for callers that set bad rows aside instead of failing)."""
    name = feature.name

    def flag(mask: pd.Series, message: str, reason: str) -> None:
        problems.append(f"column {name!r}: {message}")
        issues.append((mask, f"{name}: {reason}"))

    blank = is_blank(raw)
    if feature.kind == "category":
        values = _text(raw).str.strip()
        if blank.any():
            flag(blank, f"{int(blank.sum())} missing values, {_rows(blank, raw)}", "missing")
        unknown = ~blank & ~values.isin(feature.allowed)
        if unknown.any():
            seen = sorted(values[unknown].unique())[:5]
            flag(
                unknown,
                f"unknown categories {seen} in {int(unknown.sum())} rows "
                f"({_rows(unknown, raw)}); allowed values: {list(feature.allowed)}",
                f"unknown category (allowed: {', '.join(map(str, feature.allowed))})",
            )
        return values
    if pd.api.types.is_datetime64_any_dtype(raw) or pd.api.types.is_timedelta64_dtype(raw):
        # A column typed as times (Parquet, a database export): to_numeric read nanoseconds,
        # and every row was "above 2147483647".
        if blank.any():
            flag(blank, f"{int(blank.sum())} missing values, {_rows(blank, raw)}", "missing")
        if (timed := ~blank).any():
            flag(timed, f"{int(timed.sum())} values are times ({raw.dtype}), not numbers, {_rows(timed, raw)}",
                 "a time, not a number")  # fmt: skip
        return pd.Series(np.nan, index=raw.index, dtype="float64")
    if name == "total_charges" and tenure is not None:
        new_customer_blank = first_month(blank, tenure)
        raw = raw.mask(new_customer_blank, "0")
        blank = blank & ~new_customer_blank
    numbers = pd.to_numeric(raw.where(~blank), errors="coerce")
    if blank.any():
        flag(blank, f"{int(blank.sum())} missing values, {_rows(blank, raw)}", "missing")
    non_numeric = ~blank & numbers.isna()
    if non_numeric.any():
        flag(non_numeric, f"{int(non_numeric.sum())} non-numeric values, {_rows(non_numeric, raw)}", "not a number")
    infinite = np.isinf(numbers.fillna(0))
    if infinite.any():
        flag(infinite, f"infinite values, {_rows(infinite, raw)}", "infinite")
    if feature.maximum is not None:
        high = numbers > feature.maximum
        if high.any():
            flag(high, f"{int(high.sum())} values above {feature.maximum}, {_rows(high, raw)}",
                 f"above {feature.maximum}")  # fmt: skip
    if feature.minimum is not None:
        low = numbers < feature.minimum
        if low.any():
            flag(low, f"{int(low.sum())} values below {feature.minimum:g}, {_rows(low, raw)}",
                 f"below {feature.minimum:g}")  # fmt: skip
    if feature.kind == "integer":
        fractional, outside = integer_violations(feature, numbers)
        if fractional.any():
            flag(fractional, f"values are not whole numbers, {_rows(fractional, raw)}", "not a whole number")
        if outside.any():
            flag(outside, f"values outside {list(feature.allowed)}, {_rows(outside, raw)}",
                 f"outside {list(feature.allowed)}")  # fmt: skip
    return numbers


def integer_violations(feature: Feature, numbers: pd.Series) -> tuple[pd.Series, pd.Series]:
    """An integer feature's values that are not whole numbers (12.5 months), and those outside
    its allowed values (a flag of 2; none when it has no list): the schema's rules beyond its
    range, one definition for every check of them."""
    fractional = numbers.notna() & ~np.isinf(numbers.fillna(0)) & (numbers != numbers.round())
    if feature.allowed is None:
        return fractional, pd.Series(False, index=numbers.index)
    return fractional, numbers.notna() & ~numbers.isin(feature.allowed)


def _typed(out: pd.DataFrame) -> pd.DataFrame:
    out = out.copy()  # a slice (the good rows) under pandas 2 would warn, and may not take the assignment
    for feature in FEATURES:
        if feature.kind == "integer":
            out[feature.name] = out[feature.name].astype("int64")
        elif feature.kind == "float":
            out[feature.name] = out[feature.name].astype("float64")
    return out


def separator_hint(raw: list[str]) -> str:
    """What a one-column header says of a CSV cut by another character (a European
    spreadsheet's `;`): every feature was listed missing, and nothing said why."""
    if len(raw) != 1:
        return ""
    found = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")) if sep in raw[0]), None)
    return f"; the header is one column holding {found}: save the file comma-separated" if found else ""


def missing_features(columns: list[str]) -> list[str]:
    """The schema's features not among ``columns`` (already normalised)."""
    return [c for c in FEATURE_NAMES if c not in columns]


#: Words of a column name that hold a time: an outcome's or a snapshot's under another name
#: (``churn_date``, ``CloseDate``, ``snapshotTime``); ``at`` and ``on`` only last
#: (``updated_at``, not ``at_risk``); ``observed``, ``period`` and ``month`` only as the whole
#: name (``billing_period`` or ``is_month_to_month`` describe the customer); and ``as of``.
_TIME_WORDS, _TIME_LAST = {"date", "time", "datetime", "timestamp", "ts", "when"}, {"at", "on"}
_TIME_ALONE = {"observed", "period", "month"}


def names_a_time(column: str) -> bool:
    """Whether a column's name says it holds a time (the schema's columns do not)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column).lower().replace("_", " ").replace("-", " ").split()
    return bool(words) and (
        not _TIME_WORDS.isdisjoint(words) or words[-1] in _TIME_LAST or words[-2:] == ["as", "of"]
        or (len(words) == 1 and words[0] in _TIME_ALONE)
    )  # fmt: skip


def holds_times(values: pd.Series) -> bool:
    """Whether a column holds times whatever its name (``churn_dt``, ``period_end``): a
    datetime column, or one whose first 100 values that are not blank are each an ISO 8601
    date or time."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    text = values.dropna().astype("string").str.strip()
    text = text[text != ""].head(100)
    return bool(len(text)) and bool(text.str.match(r"\d{4}-\d{2}-\d{2}").all() and iso_times(text).notna().all())


def id_issues(ids: pd.Series) -> list[RowIssue]:
    """The rows whose (trimmed, text) id no part of the platform can store or join: a
    placeholder for a missing id, longer than the log's and the stores' columns, or holding a
    control character (the API refuses those two too; PostgreSQL cannot store a NUL). Blank
    ids are each caller's to name."""
    return [
        (ids.str.lower().isin(ID_PLACEHOLDERS), f"{ID_COLUMN}: {ID_PLACEHOLDER_PROBLEM}"),
        (ids.str.len() > ID_MAX_LENGTH, f"{ID_COLUMN}: longer than {ID_MAX_LENGTH} characters"),
        (ids.str.contains(f"[{ID_CONTROL_CHARACTERS}]", regex=True), f"{ID_COLUMN}: {ID_CONTROL_PROBLEM}"),
    ]


def first_month(blank_total: pd.Series, tenure: pd.Series) -> pd.Series:
    """The rows whose blank ``total_charges`` is 0.0: the IBM file leaves it blank for customers
    in their first month (tenure 0), who have not been billed yet."""
    return blank_total & (tenure == 0)


def split_rejects(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Customers (normalised columns, every feature present) checked row by row: the valid
    ones typed as ``validate`` types them, and each invalid row's reasons (``"; "``-joined),
    indexed like ``frame``. Batch scoring sets bad rows aside with these instead of failing."""
    problems: list[str] = []
    issues: list[RowIssue] = []
    out = pd.DataFrame(index=frame.index)
    tenure = pd.to_numeric(frame["tenure"], errors="coerce")
    for feature in FEATURES:
        out[feature.name] = _check_feature(feature, frame[feature.name], tenure, problems, issues)
    if ID_COLUMN in frame.columns:
        out[ID_COLUMN] = frame[ID_COLUMN].astype("string").str.strip()
        # A score or a snapshot without its customer reaches no one; nor does one whose id the
        # API, the log and the outcomes would refuse.
        ids = out[ID_COLUMN]
        for mask, reason in [(ids.isna() | (ids == ""), f"{ID_COLUMN}: empty"), *id_issues(ids)]:
            if mask.fillna(False).any():
                issues.append((mask, reason))
    if not issues:
        return _typed(out), pd.Series([], dtype="object")
    masks = np.column_stack([mask.fillna(False).to_numpy(dtype=bool) for mask, _ in issues])
    bad = masks.any(axis=1)
    labels = np.array([reason for _, reason in issues], dtype=object)
    reasons = pd.Series(["; ".join(labels[row]) for row in masks[bad]], index=frame.index[bad], dtype="object")
    return _typed(out[~bad]), reasons


def validate(frame: pd.DataFrame, require_label: bool = True) -> pd.DataFrame:
    """Return a clean, typed copy with the schema's columns in order, or raise with every problem.

    Extra columns are dropped; ``customer_id`` is kept when present.
    """
    frame = frame.copy()
    raw = [str(c) for c in frame.columns]
    frame.columns = normalise_columns(raw)
    frame = frame.reset_index(drop=True)
    missing = missing_features(list(frame.columns))
    if require_label and LABEL_COLUMN not in frame.columns:
        missing.append(LABEL_COLUMN)
    if missing:
        raise DataValidationError(f"missing required columns: {missing} (found: {list(frame.columns)})"
                                  f"{separator_hint(raw)}")  # fmt: skip
    if frame.empty:
        raise DataValidationError("data has no rows")

    problems: list[str] = []
    out = pd.DataFrame(index=frame.index)
    if ID_COLUMN in frame.columns:  # a missing id stays missing (None), not the customer "None" or "nan"
        ids = frame[ID_COLUMN].astype("string").str.strip()
        out[ID_COLUMN] = ids.astype(object).where(ids.notna(), None)
    tenure = pd.to_numeric(frame["tenure"], errors="coerce")
    for feature in FEATURES:
        out[feature.name] = _check_feature(feature, frame[feature.name], tenure, problems, [])
    if LABEL_COLUMN in frame.columns:
        raw = frame[LABEL_COLUMN]
        label = label_values(raw)
        bad = label.isna()
        if bad.any():
            problems.append(f"column {LABEL_COLUMN!r}: {int(bad.sum())} values are not Yes/No (or 1/0, true/false), "
                            f"{_rows(bad, raw)}")  # fmt: skip
        out[LABEL_COLUMN] = label
    if problems:
        raise DataValidationError("data does not match the customer schema:\n  - " + "\n  - ".join(problems))
    out = _typed(out)
    if LABEL_COLUMN in out.columns:
        out[LABEL_COLUMN] = out[LABEL_COLUMN].astype("int64")
    return out


def load(uri: str | Path, s3_endpoint_url: str | None = None, require_label: bool = True) -> pd.DataFrame:
    """Read and validate a customer file."""
    return validate(read_table(uri, s3_endpoint_url), require_label=require_label)


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (JSON- and msgspec-ready, no NumPy scalars)."""
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]  # fmt: skip


def stable_bucket(key: str) -> int:
    """A key's bucket in [0, 10000): the same on every machine, replica and run (Python's own
    ``hash`` is salted per process). Canary routing and retraining's gate slice use it."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10_000


def digest(frame: pd.DataFrame) -> str:
    """A short content hash of a frame, recorded on model versions to trace their data."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- synthetic data


def generate(n_rows: int = 5000, seed: int = 42, drift: bool = False) -> pd.DataFrame:
    """Realistic synthetic customers with a churn signal like the Telco data's.

    Contract, tenure, charges, internet service and payment method drive churn. With
    ``drift=True`` the customer base shifts the way a promotion campaign would shift it:
    many new customers (low tenure), a price rise (higher monthly and so total charges)
    and more month-to-month contracts; the other features keep their distribution.

    Columns come out in the schema's order. A category (or flag) the schema gains is drawn
    uniformly from its allowed values; a new free numeric column has no sensible default
    distribution, so it fails here, by name, until one is written below.
    """
    if n_rows < 1:
        raise ValueError("n_rows must be at least 1")
    rng = np.random.default_rng(seed)
    n = n_rows
    pick = lambda values, p: rng.choice(np.array(values, dtype=object), size=n, p=p)  # noqa: E731

    tenure = np.round(72 * rng.beta(0.55, 0.6, size=n)).astype(int)
    if drift:
        tenure = np.round(tenure * rng.uniform(0.3, 0.7, size=n)).astype(int)
    m2m_p = 1 / (1 + np.exp(-(2.3 - tenure / 13)))
    if drift:
        m2m_p = np.clip(m2m_p + 0.2, 0, 0.97)
    u = rng.random(n)
    two_year_share = np.clip(tenure / 110, 0.05, 0.7)
    contract = np.where(
        u < m2m_p,
        "Month-to-month",
        np.where(rng.random(n) < two_year_share / (two_year_share + 0.35), "Two year", "One year"),
    ).astype(object)

    internet = pick(["DSL", "Fiber optic", "No"], [0.34, 0.44, 0.22])
    phone = pick(["Yes", "No"], [0.9, 0.1])
    multiple = np.where(phone == "No", "No phone service", pick(["Yes", "No"], [0.47, 0.53])).astype(object)

    def addon(p_yes: float) -> np.ndarray:
        return np.where(internet == "No", "No internet service", np.where(rng.random(n) < p_yes, "Yes", "No")).astype(
            object
        )

    security, backup, protection = addon(0.37), addon(0.44), addon(0.44)
    support, tv, movies = addon(0.37), addon(0.49), addon(0.5)
    n_addons = sum((a == "Yes").astype(int) for a in (security, backup, protection, support, tv, movies))
    monthly = (
        np.where(phone == "Yes", 20.0, 0.0)
        + np.where(multiple == "Yes", 5.0, 0.0)
        + np.select([internet == "DSL", internet == "Fiber optic"], [25.0, 50.0], 0.0)
        + 5.5 * n_addons
        + rng.normal(0, 2.5, size=n)
    )
    monthly = np.clip(monthly, 18.25, 118.75)
    if drift:
        monthly = monthly * 1.12 + 4
    monthly = np.round(monthly, 2)
    total = np.round(monthly * tenure * rng.uniform(0.93, 1.05, size=n), 2)
    total = np.where(tenure == 0, 0.0, np.maximum(total, monthly))

    payment = pick(
        ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"],
        [0.34, 0.23, 0.22, 0.21],
    )
    paperless = pick(["Yes", "No"], [0.59, 0.41])
    senior = (rng.random(n) < 0.16).astype(int)
    partner = pick(["Yes", "No"], [0.48, 0.52])
    dependents = np.where((partner == "Yes") & (rng.random(n) < 0.55) | (rng.random(n) < 0.08), "Yes", "No").astype(
        object
    )

    logit = (
        -1.3
        + 1.15 * (contract == "Month-to-month")
        - 1.1 * (contract == "Two year")
        - 0.032 * tenure
        + 0.85 * (internet == "Fiber optic")
        - 0.6 * (internet == "No")
        + 0.55 * (payment == "Electronic check")
        + 0.012 * (monthly - 65)
        + 0.3 * senior
        + 0.3 * (paperless == "Yes")
        - 0.35 * (security == "Yes")
        - 0.35 * (support == "Yes")
    )
    churn = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    ids = [f"{rng.integers(1000, 9999)}-{''.join(rng.choice(list('ABCDEFGHIJKLMNOPQRSTUVWXYZ'), 5))}" for _ in range(n)]
    modelled: dict[str, Any] = {
        "gender": pick(["Female", "Male"], [0.5, 0.5]),
        "senior_citizen": senior,
        "partner": partner,
        "dependents": dependents,
        "tenure": tenure,
        "phone_service": phone,
        "multiple_lines": multiple,
        "internet_service": internet,
        "online_security": security,
        "online_backup": backup,
        "device_protection": protection,
        "tech_support": support,
        "streaming_tv": tv,
        "streaming_movies": movies,
        "contract": contract,
        "paperless_billing": paperless,
        "payment_method": payment,
        "monthly_charges": monthly,
        "total_charges": total,
    }
    stale = sorted(set(modelled) - set(FEATURE_NAMES))
    if stale:
        raise ValueError(f"the generator makes columns the schema does not have: {stale}")
    columns: dict[str, Any] = {ID_COLUMN: ids}
    for feature in FEATURES:
        if feature.name in modelled:
            columns[feature.name] = modelled[feature.name]
        elif feature.allowed is not None:
            columns[feature.name] = rng.choice(np.array(feature.allowed, dtype=object), size=n)
        else:
            raise ValueError(
                f"the generator has no distribution for the numeric column {feature.name!r}: "
                "add one in churn_platform/data.py::generate"
            )
    columns[LABEL_COLUMN] = churn
    return validate(pd.DataFrame(columns))


# --------------------------------------------------------------------------- splitting


def row_keys(frame: pd.DataFrame, *, label: bool = True) -> pd.Series:
    """A hash of each row's features and (with ``label``) label: the same customer data under
    any id (the split's copies); features alone for the gate's rows Production was trained on."""
    columns = frame.loc[:, [*FEATURE_NAMES, *([LABEL_COLUMN] if label else [])]]
    # Numbers as floats: a column read back as int64 in one frame and float64 in the other is one value.
    typed = {c: columns[c].astype(float) if pd.api.types.is_numeric_dtype(columns[c]) else columns[c].astype(str)
             for c in columns}  # fmt: skip
    return pd.util.hash_pandas_object(pd.DataFrame(typed), index=False)


def customer_keys(frame: pd.DataFrame) -> pd.Series | None:
    """Each row's customer, when some customer has several rows (None otherwise: a plain row
    split); a row without an id, or with a placeholder for one ("NULL", "N/A"), is a customer
    of its own: as one customer, half a file under "NULL" went to one side of the split. With
    no ids at all, rows that are copies of each other are one customer (an export appended
    twice validated on copies of its training rows, and its figures beat a better model)."""
    ids = frame[ID_COLUMN].astype("string").str.strip() if ID_COLUMN in frame.columns else None
    known = np.zeros(len(frame), dtype=bool) if ids is None else (
        ids.notna() & (ids != "") & ~ids.str.lower().isin(ID_PLACEHOLDERS)
    ).to_numpy(dtype=bool)  # fmt: skip
    if not known.any():
        copies = row_keys(frame)
        return pd.Series(pd.factorize(copies)[0], index=frame.index) if copies.duplicated().any() else None
    if not ids[known].duplicated().any():
        return None
    # Codes, not text: a made-up id could be a real one, and pandas' hash tables once read
    # "\x00row 1" and "\x00row 2" as the same (C strings end at the NUL).
    codes = pd.factorize(ids.where(known))[0]
    codes[~known] = codes.max() + 1 + np.arange((~known).sum())
    return pd.Series(codes, index=frame.index)


#: Fewer rows of a class than this on either side of the split is no model, nor a verdict on one.
MIN_ROWS_PER_CLASS = 5


def short_of_a_class(labels: pd.Series) -> dict[Any, int] | None:
    """The rows by class when ``labels`` cannot train or judge a model (one class, or fewer than
    ``MIN_ROWS_PER_CLASS`` of one); None when they can. Training's split and retraining's both ask."""
    counts = labels.value_counts()
    return counts.to_dict() if len(counts) < 2 or counts.min() < MIN_ROWS_PER_CLASS else None


def split(frame: pd.DataFrame, validation_size: float = 0.2, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, seeded train/validation split on the churn label; by customer when a
    customer has several rows, so that none is on both sides."""
    from sklearn.model_selection import train_test_split

    if not 0 < validation_size < 1:
        raise DataValidationError(f"validation_size must be between 0 and 1, got {validation_size}")
    counts = frame[LABEL_COLUMN].value_counts()
    if len(counts) < 2 or counts.min() < 2:
        raise DataValidationError(
            f"column {LABEL_COLUMN!r} needs at least two customers of each class to train "
            f"and validate, found {counts.to_dict()}"
        )
    held_out = int(np.ceil(validation_size * len(frame)))  # as train_test_split counts them
    if min(held_out, len(frame) - held_out) < len(counts):
        raise DataValidationError(
            f"validation_size {validation_size} leaves {held_out} validation and {len(frame) - held_out} training "
            f"rows of {len(frame)}: each side needs a customer of each class; choose a share nearer 0.25"
        )
    customers = customer_keys(frame)
    if customers is None:
        train, valid = train_test_split(frame, test_size=validation_size, random_state=seed,
                                        stratify=frame[LABEL_COLUMN])  # fmt: skip
    else:
        # A customer on both sides (a feature-store training set holds one row per label time, an
        # export may repeat a row) is validated on rows the model learned: a flattered roc_auc,
        # and a gate that compares on it. So customers, not rows, are split (by whether they churned).
        churned = frame[LABEL_COLUMN].groupby(customers, sort=False).max()
        if churned.value_counts().min() < 2 or churned.nunique() < 2:
            raise DataValidationError(
                f"column {LABEL_COLUMN!r} needs at least two customers of each class to train and validate, "
                f"found {churned.value_counts().to_dict()} customers"
            )
        held_out = int(np.ceil(validation_size * len(churned)))
        if min(held_out, len(churned) - held_out) < churned.nunique():
            raise DataValidationError(
                f"validation_size {validation_size} leaves {held_out} validation and {len(churned) - held_out} "
                f"training customers of {len(churned)}: each side needs a customer of each class; choose a share "
                "nearer 0.25 or use more data"
            )
        _, held = train_test_split(churned.index, test_size=validation_size, random_state=seed, stratify=churned)
        in_valid = customers.isin(held).to_numpy()
        train, valid = frame[~in_valid], frame[in_valid]
    for side, rows in (("validation", valid), ("training", train)):  # stratified rounding can still leave one out
        if rows[LABEL_COLUMN].nunique() < len(counts):
            raise DataValidationError(
                f"validation_size {validation_size} leaves the {side} rows without one of the classes "
                f"({counts.to_dict()} in {len(frame)} rows); choose a share nearer 0.25 or use more data"
            )
        # Two rows to train on (or judge on) passed and registered a version with a roc_auc of 0.36.
        if side_counts := short_of_a_class(rows[LABEL_COLUMN]):
            raise DataValidationError(
                f"validation_size {validation_size} leaves {len(rows)} {side} rows ({side_counts} by "
                f"{LABEL_COLUMN}): each side needs at least {MIN_ROWS_PER_CLASS} of each class; use more data"
                + ("" if 0.2 <= validation_size <= 0.3 else ", or a share nearer 0.25")
            )
    return train.reset_index(drop=True), valid.reset_index(drop=True)
