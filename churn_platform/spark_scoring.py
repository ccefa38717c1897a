"""The batch scoring job on Apache Spark (``score --engine spark``), for a customer base that
outgrows one machine.

The same job as the local engine, distributed: the same file listing (so a glob means the
same files), the same per-chunk scoring code (``batch_scoring.score_chunk``, run by
``mapInArrow`` on the executors over Arrow batches, with the version loaded and verified
once on the driver and broadcast), so both engines give the same scores, rejects, reasons
and row numbers. Rows are numbered across the input as the local engine numbers them: each
executor counts the rows of each file split it reads (``_metadata.file_block_start``), and
the driver turns those counts into offsets.

The outputs are the local engine's: one file each for the scores and the rejects. Spark
makes one pass (read, check, score, write part files of scores, rejects and row counts under
a hidden staging folder beside the output); the driver then streams the scores into the
final name through the local engine's atomic writer, so a killed job never leaves a
half-written output. When there are rejects, a second, small Spark job numbers and sorts
them (spilling to ``spark.local.dir``, never held on the driver) and they are streamed the
same way. Row order is not the input's (Spark reads large files first).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churn_platform import batch_scoring, data, object_store
from churn_platform.batch_scoring import REJECTS_SCHEMA, ScoreSummary
from churn_platform.errors import (
    DataSourceError,
    DataValidationError,
    SettingsError,
    SparkUnreachable,
    StorageUnreachable,
)
from churn_platform.schema import FEATURE_NAMES, ID_COLUMN, normalise_columns
from churn_platform.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: What each row of the distributed step is: a scored row, a rejected one, or a split's row count.
_SCORE, _REJECT, _COUNT = "score", "reject", "count"
_RAW = "_raw_"
#: hadoop-aws reads these as plain numbers; newer Hadoop defaults spell them "60s", which an
#: older hadoop-aws on the classpath (a cluster's, or the one the tests fetch) cannot parse.
_S3A_NUMBERS = {
    "fs.s3a.connection.establish.timeout": "30000",
    "fs.s3a.connection.timeout": "200000",
    "fs.s3a.threads.keepalivetime": "60",
    "fs.s3a.multipart.purge.age": "86400",
}


def _session_conf(conf: dict[str, str] | None) -> dict[str, str]:
    """The SQL settings the engine's reads and writes rely on, then the caller's ``conf``."""
    return {
        "spark.sql.session.timeZone": "UTC",
        # Columns are taken by their exact names, as the local engine reads them: case-insensitive,
        # Spark refused a file with `notes` and `Notes` beside the features (COLUMN_ALREADY_EXISTS).
        "spark.sql.caseSensitive": "true",
        # scored_at as a standard Parquet timestamp (Spark's default INT96 is deprecated).
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # A file that cannot be read is exit 2, as the local engine has it: on a cluster (or a
        # borrowed session) that skips such files, its customers went silently unscored.
        "spark.sql.files.ignoreCorruptFiles": "false",
        "spark.sql.files.ignoreMissingFiles": "false",
        # Spark types every column of a Parquet file before the job keeps its own: a nanosecond
        # timestamp no one reads (pandas writes datetime64[ns] so: an export's `exported_at`)
        # stopped the job, which the local engine scored. Read as a number, and dropped.
        "spark.sql.legacy.parquet.nanosAsLong": "true",
        **(conf or {}),
    }


#: Hadoop caches one s3a filesystem per bucket, built from the configuration at its first use:
#: on a borrowed session the job's (its endpoint, its keys) would stay the notebook's after it.
_NO_S3A_CACHE = "fs.s3a.impl.disable.cache"
#: The s3a settings ``session`` may write into the Hadoop configuration.
_S3A_KEYS = (*_S3A_NUMBERS, "fs.s3a.endpoint", "fs.s3a.path.style.access", "fs.s3a.connection.ssl.enabled",
             "fs.s3a.aws.credentials.provider", "fs.s3a.access.key", "fs.s3a.secret.key", "fs.s3a.session.token",
             _NO_S3A_CACHE)  # fmt: skip


def _restorer(spark: SparkSession, options: Iterable[str]) -> Callable[[], None]:
    """What puts a session this job did not start (a notebook's) back as it was: getOrCreate
    writes every non-static builder option into its SQL configuration (case-sensitive names,
    UTC, the app's name), and s3a is set on its Hadoop configuration; the notebook's later
    queries would have run under them. Read and written as getOrCreate writes them, so that
    core keys (``spark.app.name``) go back too."""
    conf = spark._jsparkSession.sessionState().conf()  # noqa: SLF001
    static = spark._jvm.org.apache.spark.sql.internal.SQLConf.isStaticConfigKey  # noqa: SLF001
    keys = [k for k in {*options, "spark.app.name", "spark.master"} if not static(k)]
    sql = {k: conf.getConfString(k) if conf.contains(k) else None for k in keys}
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # noqa: SLF001 - as session() sets it
    s3a = {k: hadoop.get(k) for k in _S3A_KEYS}
    hadoop.set(_NO_S3A_CACHE, "true")

    def restore() -> None:
        for key, value in sql.items():
            conf.unsetConf(key) if value is None else conf.setConfString(key, value)
        for key, value in s3a.items():
            hadoop.unset(key) if value is None else hadoop.set(key, value)

    return restore


def _java_cause(exc: BaseException) -> str:
    """The deepest Java exception behind ``exc`` as one line (``SparkException: Could not parse
    Master URL: 'local[abc]'``): its message's last line was a stack frame."""
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)  # Py4J's, or pyspark's capture
    try:
        while java is not None and java.getCause() is not None:
            java = java.getCause()
        if java is not None:
            return str(java.toString())
    except Exception:  # noqa: BLE001 - a gateway that is gone: read the text instead
        pass
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("at ", "..."))]
    return (told or lines or [type(exc).__name__])[-1]


def session(
    settings: Settings, master: str | None = None, conf: dict[str, str] | None = None, *, conf_given: bool = False
) -> SparkSession:
    """The job's Spark session: spark-submit's when run under it, else a new one (``local[*]``
    unless ``master``); s3a set up for MLflow's S3 endpoint when one is configured.
    ``conf_given``: ``conf`` holds the user's ``--spark-conf``, which a failed start names."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise DataValidationError(
            "--engine spark needs pyspark: pip install 'churn-platform[spark]' (and Java 17 or newer)"
        ) from None
    # Executors run this interpreter's Python (with the project installed) unless told otherwise.
    # pyspark reads only PYSPARK_PYTHON (spark-submit turns spark.pyspark.python into it): the
    # setting given with --spark-conf, which the error for executors without the project names,
    # was ignored.
    starting = SparkSession.getActiveSession() is None  # one running read its settings when it started
    if starting:
        if (conf or {}).get("spark.pyspark.python"):
            os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]  # type: ignore[index]
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # pyspark 4 warns that it "does not yet fully support pandas >= 3"; mapInArrow never uses pandas.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    builder = SparkSession.builder.appName("churn-platform score")
    if master:
        builder = builder.master(master)
    for key, value in _session_conf(conf).items():
        builder = builder.config(key, value)
    if starting and "spark.log.level" not in (conf or {}):
        # From the start: a master that cannot be parsed or reached printed Java's stack trace
        # (the error line says what went wrong).
        builder = builder.config("spark.log.level", "FATAL")
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - no Java, a bad master URL: one line for the user
        cause = _java_cause(exc).splitlines()[0]
        # A standalone master that never answers stops the context in the background (after
        # about a minute of tries): what fails next is any call on it.
        if (master or "").startswith("spark://") and "stopped SparkContext" in cause:
            raise SparkUnreachable(f"the Spark master at {master} did not answer (all masters unresponsive); check "
                                   "--spark-master and that the master is running") from None  # fmt: skip
        # spark.driver.memory=lots: Java's own words ("Invalid maximum heap size") come before it.
        check = " (the lines above say why; check --spark-conf)" if conf_given else ""
        raise DataValidationError(f"cannot start Spark: {cause[:300]}{check}") from None
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # noqa: SLF001 - the documented way to set fs.s3a.*
    for key, value in _S3A_NUMBERS.items():
        if not (hadoop.get(key) or "").isdigit():  # a cluster's or a user's own number stays
            hadoop.set(key, value)
    if settings.s3_endpoint_url:
        endpoint = urlparse(settings.s3_endpoint_url)
        hadoop.set("fs.s3a.endpoint", settings.s3_endpoint_url)
        hadoop.set("fs.s3a.path.style.access", "true")  # MinIO and moto serve buckets as paths
        hadoop.set("fs.s3a.connection.ssl.enabled", str(endpoint.scheme == "https").lower())
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # The keys boto3 and MLflow use; without them s3a's own chain applies (instance roles, IRSA).
        token = os.environ.get("AWS_SESSION_TOKEN")
        provider = "TemporaryAWSCredentialsProvider" if token else "SimpleAWSCredentialsProvider"
        hadoop.set("fs.s3a.aws.credentials.provider", f"org.apache.hadoop.fs.s3a.{provider}")
        hadoop.set("fs.s3a.access.key", os.environ["AWS_ACCESS_KEY_ID"])
        hadoop.set("fs.s3a.secret.key", os.environ["AWS_SECRET_ACCESS_KEY"])
        if token:  # temporary credentials (STS, SSO, an assumed role)
            hadoop.set("fs.s3a.session.token", token)
    return spark


@dataclass(frozen=True)
class _Scoring:
    """What executors need of a loaded version to score (not its pipeline or MLflow client):
    broadcast to each executor once, and unpickled without importing MLflow."""

    name: str
    version: int
    scorer: Any
    explainer: Any
    decision_threshold: float


def _active_session() -> bool:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return False
    return SparkSession.getActiveSession() is not None


_HADOOP_GLOB = re.compile(r"([\\{}\[\]*?])")


def _spark_path(path: str, s3: bool) -> str:
    """A path as ``input_files`` names it (``bucket/key`` on S3), as a URI for Spark: not
    percent-encoded, since Hadoop's ``Path`` takes the text as it is (``my%20exports``
    would name a folder of that name)."""
    return f"s3a://{path}" if s3 else f"file://{Path(path).absolute()}"


def _spark_input(path: str, s3: bool) -> str:
    """``_spark_path`` for a read, Hadoop's glob characters escaped: the files are already
    found, and a reader globs its paths (``export[1].csv`` matched no file)."""
    return _HADOOP_GLOB.sub(r"\\\1", _spark_path(path, s3))


def _our_path(uri: str) -> str:
    """A path as ``input_files`` names it, from the URI Spark's ``_metadata.file_path`` gives."""
    parsed = urlparse(uri)
    if parsed.scheme in ("s3a", "s3", "s3n"):
        return parsed.netloc + unquote(parsed.path)
    return unquote(parsed.path)


def _combined_schema(schema: pa.Schema) -> pa.Schema:
    """The distributed step's one output: scores, rejects and row counts side by side."""
    extra = [pa.field("_kind", pa.string()), pa.field("_file", pa.string()), pa.field("_block", pa.int64()),
             pa.field("_pos", pa.int64()), pa.field("reason", pa.string())]  # fmt: skip
    raw = [pa.field(f"{_RAW}{c}", pa.string()) for c in (ID_COLUMN, *FEATURE_NAMES)]
    return pa.schema(list(schema) + extra + raw)


def _padded(columns: dict[str, Any], n: int, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for f in schema:
        value = columns.get(f.name)
        if value is None:
            value = pa.nulls(n, f.type)
        elif isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        arrays.append(value.cast(f.type) if isinstance(value, pa.Array) else pa.array(value, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


#: The libraries the broadcast model is pickled with and scored by: an executor with others
#: unpickles it into other code (scikit-learn warns, then scores) and its figures are not the
#: version's. The model was verified on the driver only.
_SCORING_LIBRARIES = ("scikit-learn", "numpy")


def _library_versions(_: object = None) -> dict[str, str]:
    """Runs on an executor too (imported there by name: without the project, a ModuleNotFoundError)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in _SCORING_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # named in the mismatch, not an exit-70 "bug"
            found[name] = "(not installed)"
    return found


def _mismatch(driver: dict[str, str], executor: dict[str, str]) -> str | None:
    differ = [f"{name} {executor.get(name)} (the driver's {ours})" for name, ours in driver.items()
              if executor.get(name) != ours]  # fmt: skip
    if not differ:
        return None
    return (f"Spark's executors run {', '.join(differ)}: the model would be scored by other code than it "
            "was verified with; install the driver's versions there, or point spark.pyspark.python at a "
            "Python that has them")


def _check_executors(spark: SparkSession) -> None:
    """One small task before the scoring pass: the executors' Python has the project and the
    scoring libraries at the driver's versions (exit 2 otherwise, not a retried crash). One
    task sees one executor: a cluster whose executors run different images is not caught."""
    theirs = spark.sparkContext.parallelize([0], 1).map(_library_versions).first()
    if why := _mismatch(_library_versions(), theirs):
        raise SettingsError(why)


def _for_executors(settings: Settings) -> Settings:
    """What the executors read of the settings, the risk bands, and nothing else: every task's
    pickle carried the whole, database and registry passwords and the admin key included, to
    each executor (and to its logs and core dumps)."""
    return type(settings).model_construct(risk_medium_from=settings.risk_medium_from,
                                          risk_high_from=settings.risk_high_from)  # fmt: skip


def _as_given(uri: str) -> str:
    """A file as Spark names it (``file:/a%20b.csv``, ``s3a://b/k``), as the user and the local engine do."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(uri).path) if uri.startswith("file:") else uri.replace("s3a://", "s3://", 1)


def _utf8_text(table: pa.Table) -> pa.Table:
    """The batch's features, refused as the local engine refuses text that is not UTF-8 (Spark's
    readers pass it on unchecked), naming the file that holds it: a batch may span several."""
    import pyarrow.compute as pc

    features = table.drop_columns(["_file", "_block"])
    try:
        return batch_scoring.utf8_text("the input", features)
    except DataSourceError:
        for name in table.column("_file").unique().to_pylist():
            batch_scoring.utf8_text(_as_given(str(name)), features.filter(pc.equal(table.column("_file"), name)))
        raise


def _score_partition(
    batches: Iterator[pa.RecordBatch], *, model: Any, settings: Settings, scored_at: pd.Timestamp,
    schema: pa.Schema, fast: bool, explain_top_k: int | None,
) -> Iterator[pa.RecordBatch]:  # fmt: skip
    """Runs on an executor: each Arrow batch scored by the local engine's code; bad rows with
    their place in their file split; at the end, how many rows each split had."""
    loaded: _Scoring = model.value
    combined = _combined_schema(schema)
    seen: dict[tuple[str, int], int] = {}
    for batch in batches:
        table = pa.Table.from_batches([batch])
        files = table.column("_file").to_numpy(zero_copy_only=False)
        blocks = table.column("_block").to_numpy(zero_copy_only=False)
        codes, keys = pd.factorize(pd.MultiIndex.from_arrays([files, blocks]))
        base = np.array([seen.get(key, 0) for key in keys], dtype=np.int64)
        position = base[codes] + pd.Series(codes).groupby(codes).cumcount().to_numpy()
        for key, n in zip(keys, np.bincount(codes, minlength=len(keys)), strict=True):
            seen[key] = seen.get(key, 0) + int(n)
        features = _utf8_text(table)
        result = batch_scoring.score_chunk(loaded, settings, features, scored_at, schema,  # type: ignore[arg-type]
                                           fast=fast, explain_top_k=explain_top_k, first_row=0)  # fmt: skip
        if result.scores is not None:
            columns = {name: result.scores.column(name) for name in result.scores.column_names}
            yield _padded(columns | {"_kind": [_SCORE] * result.scores.num_rows}, result.scores.num_rows, combined)
        if result.rejects is not None:
            rows = result.rejects.column("row").to_numpy()  # 0-based, within this batch
            columns = {f"{_RAW}{c}": result.rejects.column(c) for c in (ID_COLUMN, *FEATURE_NAMES)}
            columns |= {"_kind": [_REJECT] * len(rows), "_file": files[rows].tolist(),
                        "_block": blocks[rows].tolist(), "_pos": position[rows].tolist(),
                        "reason": result.rejects.column("reason")}  # fmt: skip
            yield _padded(columns, len(rows), combined)
    if seen:
        yield _padded({"_kind": [_COUNT] * len(seen), "_file": [k[0] for k in seen], "_block": [k[1] for k in seen],
                       "_pos": list(seen.values())}, len(seen), combined)  # fmt: skip


def _read(spark: SparkSession, headers: dict[str, list[str]], kind: str, s3: bool) -> DataFrame:
    """The input's schema columns (normalised names) and each row's file split; ``headers``
    are the files' own, each checked for the schema's columns by ``prepare``."""
    from pyspark.sql import functions as F  # noqa: N812 - pyspark's own convention
    from pyspark.sql.types import DoubleType, FloatType, StringType, StructField, StructType

    files = list(headers)
    if not s3 and (odd := [f for f in files if ":" in Path(f).name]):
        # Hadoop's local filesystem names a checksum file after it, then reads that as a URI
        # ("Relative path in absolute URI: .exp:2026-12-07.csv.crc"), naming no file.
        raise DataValidationError(f"{odd[0]}: Spark cannot read a local file whose name holds ':' (Hadoop takes "
                                  "it for a URI); rename it, or score with --engine local")  # fmt: skip
    raw = headers[files[0]]
    names = normalise_columns(raw)
    wanted = [(r, n) for r, n in zip(raw, names, strict=True) if n in FEATURE_NAMES or n == ID_COLUMN]
    # Columns no one reads may share a name (a spreadsheet's trailing ",,"), which a Spark schema
    # cannot, nor can Spark then check a header against it: columns are taken by position, so
    # every file must have the first one's header.
    repeated = kind == "csv" and len(set(raw)) < len(raw)
    # Every file: Spark would read a column one file spells another way as nulls, and reject
    # that file's rows one by one.
    for path, found in headers.items():
        if respelled := [r for r, _ in wanted if r not in found]:
            raise DataValidationError(f"{path}: columns {respelled} are spelled another way than in {files[0]}; "
                                      f"the Spark engine needs one spelling per input (found: {found})")  # fmt: skip
        if repeated and found != raw:
            raise DataValidationError(f"{path}: its header differs from {files[0]}'s, which repeats column names "
                                      f"({raw}); the Spark engine then needs one header for all files")  # fmt: skip
    paths = [_spark_input(f, s3) for f in files]
    if kind == "parquet":
        frame = spark.read.parquet(*paths)
    else:
        # Everything as text, as the local engine reads CSV; every file must have this header.
        text = StructType([StructField(c if raw.count(c) == 1 else f"_c{i}", StringType()) for i, c in enumerate(raw)])
        # FAILFAST: a line with the wrong number of fields stops the job (exit 2), as it stops the
        # local engine; Spark's default would pad or cut it and score what is left. multiLine: a
        # quoted value may hold a line break (a CRM's notes); read line by line, each such row
        # became two, scored or rejected as halves. The price: one task per CSV file, not per split.
        # escape='"': CSV doubles a quote inside a quoted value; Spark's default escape, a backslash,
        # read a value ending in one (a Windows path in a notes column) as an escaped quote, and every
        # later row went into that value.
        frame = spark.read.csv(paths, header=True, schema=text, enforceSchema=repeated, mode="FAILFAST",
                               multiLine=True, escape='"')  # fmt: skip
    columns = []
    for r, n in wanted:
        column = F.col("`{}`".format(r.replace("`", "``")))  # a backtick in a header name: doubled, as Spark quotes
        if n == ID_COLUMN and isinstance(frame.schema[r].dataType, (DoubleType, FloatType)):
            # Whole numbers as integers ("7590", not Spark's "7590.0"), as data.ids_as_text gives them;
            # NaN and infinities as missing. A remainder, not floor(), which overflows a long on them.
            whole = (F.abs(column) <= data.WHOLE_ID_LIMIT) & (column % 1 == 0)
            finite = ~F.isnan(column) & (F.abs(column) != float("inf"))
            column = (F.when(whole, column.cast("long").cast("string"))
                      .when(finite, column.cast("string")))  # fmt: skip
        elif n == ID_COLUMN:
            column = column.cast("string")
        if kind == "csv":  # Spark reads an empty field as null; the local engine, as the text it is
            column = F.coalesce(column, F.lit(""))
        columns.append(column.alias(n))
    return frame.select(*columns, F.col("_metadata.file_path").alias("_file"),
                        F.col("_metadata.file_block_start").alias("_block"))  # fmt: skip


def _parts(fs: pafs.FileSystem, staging: str) -> list[str]:
    """Spark's part files in the order of their partitions (`part-100000` after `part-99999`)."""
    infos = fs.get_file_info(pafs.FileSelector(staging, recursive=False))
    found = [(int(m[1]), i.path) for i in infos
             if i.type == pafs.FileType.File and (m := re.match(r"part-(\d+)", Path(i.path).name))]  # fmt: skip
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class _Counted:
    """What the part files say without holding their rejects: rows in all, each split's first
    row (numbered as the local engine numbers them: the splits in the input's order), how
    many were rejected, and the first reasons."""

    rows: int
    first: dict[tuple[str, int], int]
    rejected: int
    reasons: list[str]
    #: The splits that hold rejects.
    with_rejects: list[tuple[str, int]]


def _counted(fs: pafs.FileSystem, parts: list[str], files: list[str]) -> _Counted:
    counts, rejected = [], 0
    early: dict[tuple[str, int], list[tuple[int, str]]] = {}  # each split's first rejects, in its order
    for part in parts:
        with fs.open_input_file(part) as handle:
            source = pq.ParquetFile(handle, pre_buffer=False)
            columns = ["_kind", "_file", "_block", "_pos", "reason"]
            for batch in source.iter_batches(batch_size=100_000, columns=columns):
                table = pa.Table.from_batches([batch])
                counts += table.filter(pc.field("_kind") == _COUNT).to_pylist()
                bad = table.filter(pc.field("_kind") == _REJECT).drop_columns(["_kind"])
                rejected += bad.num_rows
                # A split's rows come in order within its task: its first three are the first seen.
                for file, block, pos, reason in bad.to_pandas().groupby(["_file", "_block"]).head(3).itertuples(
                        index=False):  # fmt: skip
                    if len(kept := early.setdefault((file, int(block)), [])) < 3:
                        kept.append((int(pos), reason))
    order = {f: i for i, f in enumerate(files)}
    splits = sorted(((c["_file"], c["_block"], c["_pos"]) for c in counts),
                    key=lambda s: (order.get(_our_path(s[0]), len(order)), _our_path(s[0]), s[1]))  # fmt: skip
    first, total = {}, 0
    for file, block, n in splits:
        first[(file, block)] = total
        total += n
    reasons = [r for _, r in sorted((first[split] + pos, r) for split, kept in early.items() for pos, r in kept)]
    return _Counted(total, first, rejected, reasons[:3], list(early))


def _sort_rejects(spark: SparkSession, fs: pafs.FileSystem, staging: str, s3: bool, counted: _Counted) -> list[str]:
    """The rejects' part files, numbered and sorted by Spark (its sort spills to disk: an input
    of millions of bad rows is never held on the driver); none when no row was rejected. Run
    before the scores are committed: a second Spark job failing after them (an executor lost)
    left this run's scores beside an earlier run's rejects."""
    if not counted.rejected:
        return []
    from pyspark.sql import functions as F  # noqa: N812 - pyspark's own convention

    sorted_at = f"{staging}/_rejects"  # `_`: hidden from the read of the staging folder
    offsets = spark.createDataFrame([(f, b, counted.first[(f, b)]) for f, b in counted.with_rejects],
                                    "_file string, _block long, _first long")  # fmt: skip
    numbered = (
        spark.read.parquet(_spark_input(staging, s3)).where(F.col("_kind") == _REJECT)  # `scores[1]`: no glob
        .join(F.broadcast(offsets), ["_file", "_block"])
        .select((F.col("_first") + F.col("_pos") + 1).alias("row"), "reason",
                *(F.col(f"{_RAW}{c}").alias(c) for c in (ID_COLUMN, *FEATURE_NAMES)))
        .orderBy("row")
    )  # fmt: skip
    numbered.write.mode("overwrite").parquet(_spark_path(sorted_at, s3))
    return _parts(fs, sorted_at)  # a sort's part files hold consecutive ranges, in the order of their numbers


def _write_rejects(fs: pafs.FileSystem, parts: list[str], target: str, endpoint: str | None) -> None:
    """The sorted rejects streamed into one file (an empty one when there were none)."""
    if not parts:
        batch_scoring.write_rejects(target, REJECTS_SCHEMA.empty_table(), endpoint)
        return
    _write(fs, parts, target, batch_scoring.output_kind(target, None), REJECTS_SCHEMA, endpoint, kind_of_row=None)


def _write(fs: pafs.FileSystem, parts: list[str], target: str, kind: str, schema: pa.Schema,
           endpoint: str | None, *, kind_of_row: str | None = _SCORE) -> None:  # fmt: skip
    """The rows of the part files (those of ``kind_of_row``, if given), streamed into one file
    that appears only when complete."""
    out = batch_scoring.AtomicOutput(target, kind, schema, endpoint)
    try:
        for part in parts:
            with fs.open_input_file(part) as handle:
                source = pq.ParquetFile(handle, pre_buffer=False)
                columns = [*schema.names, *(["_kind"] if kind_of_row else [])]
                for batch in source.iter_batches(batch_size=100_000, columns=columns):
                    table = pa.Table.from_batches([batch])
                    if kind_of_row:
                        table = table.filter(pc.field("_kind") == kind_of_row)
                    if table.num_rows:
                        out.write(table.select(schema.names).cast(schema))
        out.commit()
    except BaseException:
        out.abort()
        raise


def score(
    settings: Settings,
    source: str,
    output: str,
    *,
    alias: str | None = None,
    version: int | None = None,
    output_format: str | None = None,
    rejects: str | None = None,
    explain_top_k: int | None = None,
    with_features: bool = False,
    chunk_rows: int = batch_scoring.CHUNK_ROWS,
    progress: bool = True,
    max_reject_share: float | None = None,
    master: str | None = None,
    conf: dict[str, str] | None = None,
) -> ScoreSummary:
    """Score every row of ``source`` into ``output`` on Spark (bad rows into ``rejects``)."""
    started = time.perf_counter()
    given = (conf or {}).get(_BATCH_ROWS)
    if given is not None and chunk_rows != batch_scoring.CHUNK_ROWS and given.strip() != str(chunk_rows):
        # One Arrow batch is one chunk: the Spark setting silently won over the option.
        raise SettingsError(f"--chunk-rows {chunk_rows} and --spark-conf {_BATCH_ROWS}={given} both set the rows "
                            "scored at a time; give one")  # fmt: skip
    job = batch_scoring.prepare(settings, source, output, alias=alias, version=version,
                                output_format=output_format, rejects=rejects, explain_top_k=explain_top_k,
                                staged=True)  # fmt: skip
    kind, rejects, files, input_kind, model, fast = (
        job.kind, job.rejects, job.files, job.input_kind, job.model, job.fast
    )
    s3 = source.startswith("s3://")
    loaded = time.perf_counter()  # Spark's start counts as scoring time: it is the engine's cost
    created = not _active_session()
    python_before = os.environ.get("PYSPARK_PYTHON")  # session() sets it for a session of its own
    ours = {
        # One Arrow batch is one chunk of the local engine.
        _BATCH_ROWS: str(chunk_rows),
        "spark.ui.showConsoleProgress": str(progress).lower(), **(conf or {}),
    }  # fmt: skip
    restore = None
    if not created:
        from pyspark.sql import SparkSession

        restore = _restorer(SparkSession.getActiveSession(), _session_conf(ours))
    spark = session(settings, master, ours, conf_given=bool(conf))
    from pyspark.sql.pandas.types import from_arrow_schema  # pyspark is there: session() checked

    if created:  # a failed task's stack trace is not for the user: the error line is
        spark.sparkContext.setLogLevel("FATAL")
    schema = batch_scoring._output_schema(explain_top_k, with_features)  # noqa: SLF001
    scored_at = pd.Timestamp(datetime.now(UTC)).floor("us")
    out_fs, staging = _staging(output, settings)
    shared = None
    try:
        if not spark.sparkContext.master.startswith("local"):
            # Executors on other machines would write the parts to their own disks, and a driver in
            # the cluster its rejects to its own short-lived one: neither beside where you look.
            for flag, path in (("--output", output), ("--rejects", rejects)):
                if path is not None and not path.startswith("s3://"):
                    raise DataValidationError(
                        f"with a cluster master ({spark.sparkContext.master}), {flag} must be s3://"
                    )
        _check_executors(spark)
        # A file of no rows adds none, and pandas writes an empty frame's text columns as Arrow's null
        # type: Spark takes a folder's schema from its first file, and took from such a file, failed
        # the whole job on the others ("column: [customer_id], physicalType: BINARY, logicalType: int").
        headers = {path: names for path, names in job.headers.items() if job.rows.get(path) != 0}
        if not headers:
            batch_scoring.check_scored(source, 0, 0, [])  # no rows: refused as the local engine refuses it
        frame = _read(spark, headers, input_kind, s3)
        # The explainer only when asked: a boosting version's unpickles shap (and numba) in every worker.
        explainer = model.explainer if explain_top_k else None
        lean = _Scoring(model.name, model.version, model.scorer, explainer, model.decision_threshold)
        shared = spark.sparkContext.broadcast(lean)  # sent to each executor once, not with every task
        work = functools.partial(_score_partition, model=shared, settings=_for_executors(settings),
                                 scored_at=scored_at, schema=schema, fast=fast,
                                 explain_top_k=explain_top_k)  # fmt: skip
        # The one distributed pass: read, check, score, write part files (scores, rejects, row counts).
        combined = frame.mapInArrow(work, from_arrow_schema(_combined_schema(schema)))
        combined.write.mode("overwrite").parquet(_spark_path(staging, output.startswith("s3://")))
        parts = _parts(out_fs, staging)
        counted = _counted(out_fs, parts, files)
        rows, rejected = counted.rows, counted.rejected
        batch_scoring.check_scored(source, rows, rows - rejected, counted.reasons, max_reject_share)
        sorted_rejects = _sort_rejects(spark, out_fs, staging, output.startswith("s3://"), counted)
        _write(out_fs, parts, output, kind, schema, settings.s3_endpoint_url)

        def commit_rejects() -> None:  # the store's errors as the job's, so the note says whose each file is
            try:
                _write_rejects(out_fs, sorted_rejects, rejects, settings.s3_endpoint_url)
            except Exception as exc:  # noqa: BLE001 - translated, not swallowed
                raise _translated(exc, source) from None

        batch_scoring.rejects_after_scores(commit_rejects, output, rejects)
    except Exception as exc:
        raise _translated(exc, source) from None
    except BaseException:  # SIGTERM (a Job's deadline: SystemExit 143) or Ctrl-C, mid-job
        # The JVM went on writing parts, into the staging folder after its removal. A session
        # of its own is stopped below; another's jobs are waited for (cancelling is not instant).
        with contextlib.suppress(Exception):
            spark.sparkContext.cancelAllJobs()
            tracker, until = spark.sparkContext.statusTracker(), time.monotonic() + 30
            while not created and tracker.getActiveJobsIds() and time.monotonic() < until:
                time.sleep(0.2)
        raise
    finally:
        # Unwinding from an error or a signal, a failing clean-up must not replace it: an
        # interrupted gateway call made spark.stop() raise, and SIGTERM read as a crash (exit 70).
        with contextlib.suppress(*(() if sys.exc_info()[0] is None else (Exception,))):
            if shared is not None:
                shared.destroy()  # the model's copies on the driver and executors
            if created:
                spark.stop()  # a session this call started (not spark-submit's, not a notebook's)
                if python_before is None:  # a notebook's next session picks its own Python
                    os.environ.pop("PYSPARK_PYTHON", None)
                else:
                    os.environ["PYSPARK_PYTHON"] = python_before
            elif restore is not None:
                restore()
        _remove(out_fs, staging, settings.s3_endpoint_url)  # after the stop: no task writes there now
    return ScoreSummary(source, output, rejects, rows, rows - rejected, rejected, model.name, model.version,
                        round(loaded - started, 3), round(time.perf_counter() - loaded, 3))  # fmt: skip


def _staging(output: str, settings: Settings) -> tuple[pafs.FileSystem, str]:
    """Where Spark writes its part files: a hidden folder beside the output, on its filesystem."""
    tag = uuid.uuid4().hex[:8]
    if output.startswith("s3://"):
        key = output.removeprefix("s3://")
        parent, _, name = key.rpartition("/")
        return batch_scoring._s3(settings.s3_endpoint_url), f"{parent}/.{name}.{tag}.spark"  # noqa: SLF001
    final = data.local_target(output)
    return pafs.LocalFileSystem(), str(final.with_name(f".{final.name}.{tag}.spark"))


def _remove(fs: pafs.FileSystem, folder: str, endpoint: str | None) -> None:
    """Delete the staging folder (on S3: every key under it, and no folder marker left behind)."""
    try:
        if isinstance(fs, pafs.S3FileSystem):
            import boto3

            bucket, _, prefix = folder.partition("/")
            client = boto3.client("s3", endpoint_url=endpoint)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        else:
            fs.delete_dir(folder)
    except Exception as exc:  # noqa: BLE001 - the outputs are complete; a leftover is worth a warning, not a failure
        if not isinstance(exc, FileNotFoundError):
            logging.getLogger(__name__).warning("could not remove the staging folder %s: %s", folder, exc)


def _translated(exc: Exception, source: str) -> Exception:
    """Spark's errors as the job's own: one line, and the exit code they deserve."""
    from churn_platform.loading import VerificationFailed

    if isinstance(exc, DataSourceError | DataValidationError | StorageUnreachable | VerificationFailed):
        return exc
    from py4j.protocol import Py4JError, Py4JNetworkError
    from pyspark.errors import PySparkException, PythonException

    if isinstance(exc, OSError) and object_store.unreachable(exc):
        # pyarrow listing or merging the staged parts: a store blip is worth the retry, not a "bug".
        return StorageUnreachable(f"object store unreachable while writing the scores of {source}: {exc}"[:500])
    if isinstance(exc, PySparkException | Py4JError) and (missing := _EXECUTOR_IMPORT.search(str(exc))):
        # Executors whose Python lacks the project (a cluster's, a notebook's): no retry mends it.
        return SettingsError(f"Spark's executors cannot import {missing[1]!r}: install churn-platform (the "
                             "driver's version, with the model's libraries) in their Python, or point "
                             "spark.pyspark.python (PYSPARK_PYTHON) at one that has it")  # fmt: skip
    if isinstance(exc, PySparkException | Py4JError) and (program := _NO_PROGRAM.search(str(exc))):
        # The deepest cause, "error=2, No such file or directory", named no program.
        return SettingsError(f"Spark's executors cannot start their Python, {program[1]!r} ({program[2]}): point "
                             "spark.pyspark.python (PYSPARK_PYTHON) at a Python with churn-platform")  # fmt: skip
    if isinstance(exc, PySparkException | Py4JError) and (bad := _BAD_CONF.search(str(exc))):
        # Met when Spark first reads the setting, while scoring: "could not score" blamed the input.
        return SettingsError(f"--spark-conf: {bad[1]}")
    if isinstance(exc, PySparkException | Py4JError) and (refused := _INPUT_REFUSED.search(str(exc))):
        return DataSourceError(refused[1])  # an executor's check of the input, as the local engine words it
    if not isinstance(exc, PySparkException | Py4JError) or isinstance(exc, PythonException | Py4JNetworkError):
        return exc
    text = str(exc).strip()
    if _NOT_THE_INPUT.search(text):  # first: an executor lost on a store timeout is still Spark's loss
        return exc
    causes = [ln.strip().removeprefix("Caused by: ") for ln in text.splitlines() if ln.startswith("Caused by: ")]
    # The deepest cause says what was wrong ("Malformed CSV record: ..."); the top, only where.
    line = causes[-1] if causes else next(
        (ln.strip() for ln in text.splitlines() if "Exception:" in ln or "Error:" in ln), text.splitlines()[0]
    )
    if any(_jvm_unreachable(cause) for cause in causes or [line]):  # s3a wraps the SDK's throttling, say
        return StorageUnreachable(f"Spark could not reach the store for {source}: {line[:400]}")
    if _RESET.search(text):
        return exc
    if (read := _FAILED_READ.search(text)) is not None:  # the deepest cause does not name the file
        file = ("s3://" if read[1].startswith("s3a://") else "") + _our_path(read[1])
        line = f"{file}: {line}"
        if _TYPE_MISMATCH in read[0]:
            line += (" (the Spark engine reads a column with one type in every file; `--engine local` "
                     "reads each file by its own)")  # fmt: skip
    return DataSourceError(f"Spark could not score {source}: {line[:500]}")


#: The Spark setting ``--chunk-rows`` sets: the rows of one Arrow batch, one chunk of the scorer's.
_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
#: Spark's error class for a file it could not read, which names it (its causes do not).
_FAILED_READ = re.compile(r"\[FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+?)\.?\s")
_TYPE_MISMATCH = "PARQUET_COLUMN_DATA_TYPE_MISMATCH"
#: A setting's value Spark refuses ("The value 'abc' in the config ... should be a/an 'int' value").
_BAD_CONF = re.compile(r"\[INVALID_CONF_VALUE[.\w]*\] (.+?)(?: SQLSTATE: \w+)?$", re.MULTILINE)
#: An executor's Python that could not be started (spark.pyspark.python naming no program).
_NO_PROGRAM = re.compile(r'Cannot run program "([^"]+)": error=\d+, ([^\n]+)')
#: An executor's refusal of the input (its text not UTF-8), as the worker's traceback ends.
_INPUT_REFUSED = re.compile(r"^churn_platform\.errors\.DataSourceError: (.+)$", re.MULTILINE)
#: A Python traceback's last line when an executor unpickles the job's code without the module
#: (at a line's start: a malformed row quoted in a message is not one).
_EXECUTOR_IMPORT = re.compile(r"^(?:ModuleNotFoundError|ImportError): No module named '([^']+)'", re.MULTILINE)
#: What failed was not the input, so not exit 2 (which the Job never retries, and whose runbook
#: says to fix the input): our own code on the executors (rows are checked there, never raised
#: on: a bug), an executor or Python worker lost (killed for memory, say), memory run out,
#: shuffle blocks lost between executors, Spark stopped. Returned as they are: exit 70 with the
#: traceback, retried; checked before the store's outage classes, which such a loss may carry
#: as its cause. Spark's fully qualified class names and its own wording, which no row quotes
#: by chance. (A full disk stays exit 2, as the local engine has it: a write refused, which a
#: retry on the same volume would meet again.)
_NOT_THE_INPUT = re.compile(
    r"org\.apache\.spark\.api\.python\.PythonException: Traceback|java\.lang\.OutOfMemoryError"
    r"|org\.apache\.spark\.memory\.SparkOutOfMemoryError|org\.apache\.spark\.shuffle\.FetchFailedException"
    r"|ExecutorLostFailure \(executor |Python worker exited unexpectedly"
    r"|SparkContext was shut down"
)
#: A connection reset that is not the store's (s3a's own come wrapped, as AWSClientIOException,
#: once its retries are spent): a crashed Python worker's socket. Exit 70, after the store check.
_RESET = re.compile(r"java\.net\.SocketException: (?:Connection reset|Broken pipe)")
#: The JVM's exceptions (Hadoop's s3a, the AWS SDK, java.net) for a store that did not answer or
#: asked to be asked later: matched on the exception's class, never on its message, which quotes
#: the user's rows ("Malformed CSV record: ...,Disconnected,...") and paths.
_JVM_LATER = frozenset({
    # Not java.net.SocketException: a crashed Python worker's "Connection reset" is one too (s3a's
    # own resets come wrapped, as AWSClientIOException, once its retries are spent).
    "ConnectException", "SocketTimeoutException", "UnknownHostException", "NoRouteToHostException",
    "ConnectTimeoutException", "NoHttpResponseException", "ConnectionPoolTimeoutException",
    "ConnectionClosedException", "AWSClientIOException", "AWSApiCallTimeoutException",
    "AWSServiceThrottledException", "AWSStatus500Exception",
})  # fmt: skip
#: The SDK's own service exceptions, "later" by the status they carry (a 503 SlowDown, a 500).
_JVM_SERVICE = frozenset({"S3Exception", "AwsServiceException", "SdkServiceException", "AmazonS3Exception"})
_LATER_STATUS = re.compile(rf"Status Code: (?:{object_store.LATER_STATUS_TEXT})\b")


def _jvm_unreachable(line: str) -> bool:
    """``line`` (``java.net.ConnectException: Connection refused``) names such an exception."""
    name, _, message = line.partition(":")
    name = name.strip().rsplit(".", 1)[-1]
    return name in _JVM_LATER or (name in _JVM_SERVICE and _LATER_STATUS.search(message) is not None)
