"""Score a whole customer base from files or S3, in bounded memory (the local engine).

The input (a file, a folder, a glob, or an ``s3://`` key, prefix or glob; CSV or Parquet)
is streamed file by file in chunks of ``chunk_rows``; each chunk is checked row by row
against the schema, the good rows are scored by the API's fast scorer (column by column,
parity-checked against the sklearn model when the version loads), and the chunk is
appended to the output. Memory holds one chunk, whatever the input's size.

Nothing half-written is ever visible: the output is written under a temporary name beside
it and renamed when complete (for S3: uploaded when complete, and an S3 object appears only
when its upload completes), so a killed job leaves the previous output intact. Bad rows
never stop the job and are never dropped silently: they go to a rejects file with their
row number (1-based, across all input files, in order) and reasons.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
import posixpath
import queue
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churn_platform import data, explanation, object_store
from churn_platform.contract import (
    MODEL_NAME,
    MODEL_VERSION,
    PROBABILITY,
    PRODUCTION_ALIAS,
    RISK,
    RISK_BANDS,
    SCORED_AT,
    WILL_CHURN,
)
from churn_platform.errors import DataSourceError, DataValidationError, RegistryUnreachable, StorageUnreachable
from churn_platform.schema import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FEATURES,
    FEATURES_BY_NAME,
    ID_COLUMN,
    ID_MAX_LENGTH,
    ID_PLACEHOLDERS,
    canonical_column,
    normalise_columns,
)
from churn_platform.scorer import Codes, FastScorer
from churn_platform.settings import Settings

if TYPE_CHECKING:  # loading and registry import MLflow: not for Spark's executors, which only score
    from churn_platform import loading

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
#: Rows per chunk: a few tens of MB of working memory, large enough to amortise per-chunk costs.
CHUNK_ROWS = 100_000
OUTPUT_COLUMNS = (ID_COLUMN, PROBABILITY, WILL_CHURN, RISK, MODEL_NAME, MODEL_VERSION, SCORED_AT)
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring job did, for its one-line summary and ``--json``."""

    input: str
    output: str
    rejects: str
    rows: int
    scored: int
    rejected: int
    model_name: str
    model_version: int
    #: Loading and verifying the model, then reading, scoring and writing every row.
    load_seconds: float
    scoring_seconds: float

    def line(self) -> str:
        rate = self.rows / self.scoring_seconds if self.scoring_seconds else 0.0
        rejects = f", {self.rejected} rejected -> {self.rejects}"
        return (f"score: {self.scored} of {self.rows} rows scored by {self.model_name} v{self.model_version} "
                f"-> {self.output}{rejects} (model loaded in {self.load_seconds:.1f}s; "
                f"{self.scoring_seconds:.1f}s, {rate:,.0f} rows/s)")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- input


def _s3(endpoint_url: str | None) -> pafs.S3FileSystem:
    """pyarrow's S3 client with MLflow's endpoint setting (MinIO, moto) and the usual AWS_* credentials."""
    if not endpoint_url:
        return pafs.S3FileSystem()
    parsed = urlparse(endpoint_url)
    return pafs.S3FileSystem(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")


_GLOB = "*?["


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in _GLOB)


def _glob_match(path: str, pattern: str) -> bool:
    """``glob.glob``'s rule, for object keys: ``*``, ``?`` and ``[...]`` stay within one folder
    (fnmatch's ``*`` also crossed ``/``: ``exports/*.csv`` took ``exports/archive/old.csv``),
    and ``**`` as a whole segment spans any number of folders."""

    def match(parts: list[str], patterns: list[str]) -> bool:
        if not patterns:
            return not parts
        if patterns[0] == "**":
            return any(match(parts[i:], patterns[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], patterns[0]) and match(parts[1:], patterns[1:])

    return match(path.split("/"), pattern.split("/"))


def _glob_folder(pattern: str) -> str:
    """The folder a glob's matches all lie under (local or ``bucket/key`` alike): its text up to
    the last ``/`` before the first wildcard."""
    return posixpath.dirname(pattern[: min(pattern.index(ch) for ch in _GLOB if ch in pattern)])


def input_files(
    spec: str, endpoint_url: str | None = None, own: dict[str, tuple[str, ...]] | None = None
) -> tuple[pafs.FileSystem, dict[str, list[str]], str, dict[str, int]]:
    """The files ``spec`` names, in order, each with its header as written; their filesystem,
    their one format, and each Parquet file's row count (its footer's, read with its header).

    ``own`` maps this job's outputs (``--output PATH``) to the columns that file has when the
    job wrote it: a file of the input by that name is left out when it has them (an earlier
    run's output, not customers), and refused when not (a customer file the job would destroy).
    Earlier runs' outputs under other names are left out by their columns (``_customer_files``).
    """
    if spec.startswith("s3://"):
        object_store.check_address(spec, "--input", pyarrow=True)
        fs: pafs.FileSystem = _s3(endpoint_url)
        path = spec.removeprefix("s3://")
        try:
            # A file or folder named itself first: its own name is never skipped, nor read as a
            # pattern (``export[1].csv``, ``exp[2026]/``).
            named_type = fs.get_file_info(path.rstrip("/")).type
            if named_type == pafs.FileType.File:
                files, root = [path], path
            elif _has_glob(path) and named_type != pafs.FileType.Directory:
                root = _glob_folder(path)
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
                files = sorted(i.path for i in infos if i.type == pafs.FileType.File and _glob_match(i.path, path))
            elif named_type == pafs.FileType.NotFound:  # as the local engine says it (a typo in a key or bucket)
                raise DataSourceError(f"input not found: {spec}")
            else:
                root = path.rstrip("/")
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
                files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
        except (OSError, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid, a path it cannot take
            if object_store.unreachable(exc):
                raise StorageUnreachable(f"object store unreachable at {endpoint_url or 'AWS'}: {exc}") from None
            raise DataSourceError(f"cannot list {spec}: {exc}") from None
    else:
        fs = pafs.LocalFileSystem()
        local = Path(spec)
        if local.is_file():  # named itself: its own name is never skipped, nor read as a pattern
            root = str(local.resolve())
            files = [root]
        elif local.is_dir():  # named itself too: exp[2026]/ is that folder, not a pattern
            root = str(local.resolve())
            files = _folder_files(local)
        elif _has_glob(spec):
            files = _local_files(spec)
            root = str(Path(_glob_folder(spec)).resolve())
        else:
            raise DataSourceError(f"input not found: {spec}")
    named = files == [root]  # a file named itself: read whatever it holds
    visible = [f for f in files if not _hidden(f, root)]
    files = [f for f in visible if Path(f).suffix.lower() in _SUFFIXES]
    other = [f for f in visible if Path(f).suffix.lower() not in _SUFFIXES]
    if not named and other:  # `2026-11.csv.gz` was left out unseen
        log.warning("not reading %d file(s) of %s that are neither .csv nor .parquet (compressed exports are not "
                    "read: decompress them first): %s", len(other), spec, ", ".join(other[:5]))  # fmt: skip
    if named and not files:
        raise DataSourceError(f"{spec} is neither .csv nor .parquet (compressed exports are not read: decompress it)")
    if not files:
        raise DataSourceError(f"no CSV or Parquet files in {spec}")
    files = _without_own_outputs(fs, files, own or {}, spec)
    kinds = {f: _SUFFIXES[Path(f).suffix.lower()] for f in files}
    # Every file's header before the first row is scored: a column missing from the last of 200
    # files ended the job (exit 2, nothing written) after the 199 before it were scored.
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="score-headers") as pool:  # S3: one round trip each
        read = dict(zip(files, pool.map(lambda path: _columns(fs, path, kinds[path]), files), strict=True))
    headers = {path: names for path, (names, _) in read.items()}
    rows = {path: n for path, (_, n) in read.items() if n is not None}
    if not named:  # an earlier run's Parquet scores beside CSV exports are left out, not "a mix"
        headers = _customer_files(headers, spec)
    formats = {kinds[f] for f in headers}
    if len(formats) > 1:
        raise DataSourceError(f"{spec} mixes CSV and Parquet files; score them separately")
    return fs, headers, formats.pop(), rows


def _local_files(pattern: str) -> list[str]:
    """The files a local pattern names, each once, by its real path."""
    folder = _glob_folder(pattern)
    parts = re.sub("/+", "/", pattern[len(folder) :].lstrip("/")).split("/")
    return _walk(folder or ".", parts + ["*"] if parts[-1] == "**" else parts)


def _folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` by its real path, each once, through symlinked folders as its
    ``**`` glob goes (rglob skipped them)."""
    return _walk(str(folder), ["**", "*"])


def _walk(folder: str, parts: list[str]) -> list[str]:
    """The real paths of the files under ``folder`` that a glob's segments match (``**`` any
    number of folders), each once, as ``glob`` finds them.

    Symlinked folders are followed, as ``glob`` follows them, but each real folder is read once
    per segment: ``glob`` went round a loop until the path grew too long (two loops made 2**40
    paths), and links to one folder from many walked it once per route. Hidden names
    (``_temporary/``, ``.spark`` staging) are judged as they sit under ``folder``, before a
    link takes them elsewhere, and never entered.
    """
    found: set[str] = set()
    seen: set[tuple[str, int]] = set()  # what lies below depends on the real folder alone
    unreadable: dict[str, str] = {}  # a folder is read once per segment of the pattern: named once

    def visit(path: str, at: int) -> None:
        if (key := (os.path.realpath(path), at)) in seen:
            return
        seen.add(key)
        head, last = parts[at], at == len(parts) - 1
        if head == "**":  # none of the folders it spans
            visit(path, at + 1)
        elif not _has_glob(head):  # a name as written (`.`, `..` too), as glob takes it
            named = os.path.join(path, head)
            if head not in (".", "..") and head.startswith(_HIDDEN):
                return
            if last and os.path.isfile(named):
                found.add(os.path.realpath(named))
            elif not last and os.path.isdir(named):
                visit(named, at + 1)
            return
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):  # gone since it was listed
            return
        except OSError as exc:  # glob passes over it without a word: its customers went unscored, unseen
            if path == folder:  # the input itself: nothing to score
                raise DataSourceError(f"cannot read folder {path}: {exc.strerror or exc}") from None
            if os.path.basename(path) != "lost+found":  # the filesystem's own, root's, atop a volume
                unreadable[path] = f"{path} ({exc.strerror or exc})"
            return
        for entry in entries:
            if entry.name.startswith(_HIDDEN):
                continue
            if last:
                if fnmatch.fnmatchcase(entry.name, head) and entry.is_file():
                    found.add(os.path.realpath(entry.path))
            elif (head == "**" or fnmatch.fnmatchcase(entry.name, head)) and entry.is_dir():
                visit(entry.path, at if head == "**" else at + 1)

    visit(folder, 0)
    if unreadable:  # as compressed files are: said, not fatal (one locked folder on a share stops no run)
        log.warning("not reading %d folder(s) of %s that this job may not read (their files are not scored): %s",
                    len(unreadable), folder, ", ".join(list(unreadable.values())[:5]))  # fmt: skip
    return sorted(found)


#: How hidden names start: dot-folders (a killed Spark run's staging folder, ``.ipynb_checkpoints``)
#: and markers (``_SUCCESS``, ``_temporary``).
_HIDDEN = (".", "_")


def _hidden(path: str, root: str) -> bool:
    """Whether a name under ``root`` starts with ``.`` or ``_``."""
    below = path[len(root) :] if path.startswith(root) else Path(path).name
    return any(part.startswith(_HIDDEN) for part in below.split("/"))


def _columns(fs: pafs.FileSystem, path: str, kind: str) -> tuple[list[str], int | None]:
    """A file's header as written and, for Parquet, its row count (both from its footer)."""
    try:
        if kind == "parquet":
            with fs.open_input_file(path) as handle:
                footer = pq.read_metadata(handle)
            schema = footer.schema.to_arrow_schema()
            # A list or record where a value goes: Arrow's reader fails on it (KeyError, "a bug",
            # exit 70) once the files before it were scored.
            read = (ID_COLUMN, *FEATURE_NAMES)
            nested = [f"{f.name!r} ({f.type})" for f in schema
                      if pa.types.is_nested(f.type) and canonical_column(f.name) in read]  # fmt: skip
            if nested:
                raise DataValidationError(f"{path}: {', '.join(nested)}: a list or record in each row, not one value")
            return list(schema.names), footer.num_rows
        with fs.open_input_stream(path) as handle:
            header = handle.read(1 << 20).splitlines()
    except (OSError, pa.ArrowException) as exc:
        raise _read_error(path, kind, exc) from None
    # The first line that is not empty, as Arrow's reader takes it (an export may start with one).
    first = next((line for line in header if line.strip(b"\r")), None)
    if first is None or not any(line.strip() for line in header):
        raise DataSourceError(f"{path} is empty")
    if not first.strip():  # Arrow reads it as the header: "Expected 1 columns, got 21", after the model's download
        raise DataValidationError(f"{path}: a line of spaces before the header reads as the header; remove it")
    try:  # strictly: Arrow refuses a name that is not UTF-8 only once it reads rows
        return next(csv.reader([first.decode("utf-8-sig")])), None
    except UnicodeDecodeError:
        raise DataValidationError(f"{path}: its header is not UTF-8 text; export it as UTF-8") from None


def check_columns(path: str, raw: list[str], names: list[str]) -> None:
    """Every feature, and the id: a list of scores without ids reaches no one, and would
    replace last week's list with exit 0."""
    missing = [c for c in (ID_COLUMN, *FEATURE_NAMES) if c not in names]
    if missing:
        hint = data.separator_hint(raw)
        raise DataValidationError(f"{path}: missing required columns {missing} (found: {raw}){hint}")


def _chunks(fs: pafs.FileSystem, path: str, kind: str, raw: list[str], chunk_rows: int) -> Iterator[pa.Table]:
    """The file's rows as Arrow tables of the schema's columns (normalised names), chunk by chunk;
    ``raw`` is its header, checked by ``prepare``."""
    names = normalise_columns(raw)
    wanted = {r: n for r, n in zip(raw, names, strict=True) if n in FEATURE_NAMES or n == ID_COLUMN}
    categorical = [r for r, n in wanted.items() if n in CATEGORICAL_FEATURES]
    try:
        if kind == "parquet":
            with fs.open_input_file(path) as handle:
                # Categories as dictionaries: each distinct value is checked and looked up once.
                source = pq.ParquetFile(handle, read_dictionary=categorical, pre_buffer=False)
                for batch in source.iter_batches(batch_size=chunk_rows, columns=list(wanted)):
                    table = pa.Table.from_batches([batch]).rename_columns([wanted[c] for c in batch.schema.names])
                    yield data.ids_as_text(utf8_text(path, table))
            return
        # Everything as text: the row checks, not the parser, decide what a bad value is. Every
        # column is read, any of them may hold an unclosed quote; the ones not scored as bytes, so
        # a Latin-1 note beside UTF-8 features still reads, as it did when they were not read.
        types = {r: pa.string() if r in wanted else pa.binary() for r in raw}
        convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
        with fs.open_input_stream(path) as handle:
            # A quoted value may hold a line break (a CRM's notes column): without this, Arrow cuts
            # its 8 MiB blocks inside such a value and calls a valid file malformed.
            parse = pacsv.ParseOptions(newlines_in_values=True)
            reader = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=8 << 20), parse_options=parse,
                                    convert_options=convert)  # fmt: skip
            # Blocks are 8 MiB (tens of thousands of rows): gathered up to chunk_rows and cut there,
            # so --chunk-rows bounds a chunk below one block too; the rest waits for the next.
            pending: pa.Table | None = None
            id_column = raw[names.index(ID_COLUMN)]
            renamed = [wanted[c] for c in wanted]
            for batch in reader:
                _no_swallowed_records(path, batch, id_column)
                block = pa.Table.from_batches([batch.select(list(wanted))])
                pending = block if pending is None else pa.concat_tables([pending, block])
                while pending.num_rows >= chunk_rows:
                    yield pending.slice(0, chunk_rows).rename_columns(renamed)
                    pending = pending.slice(chunk_rows)
            if pending is not None and pending.num_rows:
                yield pending.rename_columns(renamed)
    except (OSError, pa.ArrowException) as exc:
        raise _read_error(path, kind, exc) from None


def utf8_text(path: str, table: pa.Table) -> pa.Table:
    """The table, its text refused unless UTF-8: Parquet writers that do not check (a Hive
    table of Latin-1 data, a binary column) make such files, and a category or an id in one
    failed deep in the scoring (exit 70, "a bug"). A dictionary's values are checked once."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        for chunk in column.chunks:
            values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
            kind = values.type
            try:
                if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
                    values.validate(full=True)
                elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
                    values.cast(pa.string())
            except pa.ArrowInvalid:
                raise DataSourceError(f"cannot read {path}: its {name!r} column is not UTF-8 text; "
                                      f"{data.not_utf8_advice()}") from None  # fmt: skip
    return table


def _no_swallowed_records(path: str, batch: pa.RecordBatch, id_column: str) -> None:
    """Refuse a file where an unclosed quote swallowed records, whole or in part, into one value.

    The parser reads on to the next quote, however many lines away: the customers between
    were neither scored nor rejected, and the row holding the quote took a later row's values.
    A quoted line break in a notes column is fine; a line after it with a whole record's
    delimiters is not, nor a break with a record's delimiters around it: the rest of the
    quote's own row before it, a later record's leading fields after it (a stray quote that
    the next row's value closes). Lines end in CR LF, LF or a lone CR, as Arrow reads them."""
    delimiters = batch.num_columns - 1
    for position, (name, column) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
        broken = pc.match_substring_regex(column, "[\r\n]")
        if not pc.any(broken).as_py():
            continue
        for i in pc.indices_nonzero(broken).to_pylist():
            value = column[i].as_py()
            text = value if isinstance(value, str) else value.decode("utf-8", errors="replace")
            lines = re.split(r"\r\n|\r|\n", text)
            records = [line for line in lines[1:] if line.count(",") >= delimiters]
            # A field before this one and one after it: around the break, a whole record's delimiters.
            straddles = 0 < position < delimiters and (
                lines[0].count(",") >= delimiters - position and lines[-1].count(",") >= position
            )
            if records or straddles:
                found = f"{len(records)} of them whole records (from {records[0][:60]!r})" if records else (
                    f"with a record's delimiters around them (ending {lines[-1][:60]!r})"
                )  # fmt: skip
                raise DataValidationError(
                    f"{path}: the {name!r} value of customer_id {batch.column(id_column)[i].as_py()!r} runs over "
                    f"{len(lines) - 1} more lines, {found}: an unclosed quote swallowed them (they would go "
                    "unscored, and the rest of the row take another customer's values); fix the quote and score "
                    "the file again"
                )


def _read_error(path: str, kind: str, exc: BaseException) -> Exception:
    """A store that does not answer is worth a retry (exit 3); a file that is not what it says is not (2)."""
    if object_store.unreachable(exc):
        return StorageUnreachable(f"object store unreachable while reading {path}: {exc}")
    if "invalid utf8" in str(exc).lower():  # Arrow: "In CSV column #0: ... invalid UTF8 data"
        return DataSourceError(f"cannot read {path}: it is not UTF-8 text ({exc}); {data.not_utf8_advice()}")
    return DataSourceError(f"cannot read {path} as {kind}: {exc}")


def _clean_inputs(scorer: FastScorer, chunk: pa.Table) -> tuple[np.ndarray, list[Codes]] | None:
    """The scorer's inputs straight from Arrow, when the chunk is typed and every row passes
    the schema's checks; None sends the chunk to the row-by-row checks of ``data.split_rejects``
    (text columns, a missing or bad value anywhere), which give the same verdicts and scores."""
    numbers = np.empty((chunk.num_rows, len(scorer.numeric_features)), order="F")  # each column contiguous
    for j, name in enumerate(scorer.numeric_features):
        column = chunk.column(name)
        if column.null_count or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            return None
        values = numbers[:, j]
        values[:] = column.to_numpy()
        feature = FEATURES_BY_NAME[name]
        if not np.isfinite(values).all():
            return None
        if (feature.minimum is not None and values.min(initial=np.inf) < feature.minimum) or (
            feature.maximum is not None and values.max(initial=-np.inf) > feature.maximum
        ):
            return None
        if feature.kind == "integer" and (
            not np.array_equal(values, np.round(values))
            or (feature.allowed is not None and not np.isin(values, feature.allowed).all())
        ):
            return None
    codes = []
    for name, lookup in scorer.categories.items():
        column = chunk.column(name)
        if column.null_count or not (pa.types.is_dictionary(column.type) or pa.types.is_string(column.type)):
            return None
        column = column.combine_chunks()
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        dictionary = [str(v).strip() for v in column.dictionary.to_pylist()]
        if not set(dictionary) <= set(FEATURES_BY_NAME[name].allowed or ()):
            return None
        mapped = np.array([lookup.get(v, -1) for v in dictionary], dtype=np.int32)
        codes.append((mapped, column.indices.to_numpy(zero_copy_only=False)))
    return numbers, codes


# ---------------------------------------------------------------- output


def _flush_to_disk(path: Path, *, folder: bool = False) -> None:
    """A file's failure to reach the disk (EIO, a full quota on NFS) is the write's failure. A
    folder's fsync is best effort: some network mounts and Windows refuse it, and the file in
    it is already written."""
    try:
        handle = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError:
        if not folder:
            raise


class AtomicOutput:
    """Writes a table chunk by chunk under a temporary name; ``commit`` makes it visible at once."""

    def __init__(self, target: str, kind: str, schema: pa.Schema, endpoint_url: str | None) -> None:
        self.target, self.kind, self.schema, self._endpoint = target, kind, schema, endpoint_url
        if target.startswith("s3://"):
            handle, name = tempfile.mkstemp(prefix="churn-score-", suffix=f".{kind}")
            os.close(handle)
            self._tmp = Path(name)
        else:
            final = data.local_target(target)
            self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        try:
            if self._writer is None:
                if self.kind == "parquet":
                    # Dictionaries only where values repeat: trying them on ids and scores costs a third of the write.
                    repeating = [c for c in self.schema.names if c in (RISK, MODEL_NAME) or c.endswith("_feature")]
                    self._writer = pq.ParquetWriter(self._tmp, self.schema, use_dictionary=repeating)
                else:
                    self._writer = pacsv.CSVWriter(self._tmp, self.schema)
            self._writer.write_table(table.cast(self.schema))
        except OSError as exc:  # permission, disk full: the user's to fix, not a retry
            raise DataSourceError(f"cannot write {self.target} (via {self._tmp}): {exc}") from None

    def commit(self) -> None:
        if self._writer is None:
            self.write(self.schema.empty_table())
        try:
            self._writer.close()
            if not self.target.startswith("s3://"):
                final = Path(self.target).resolve()
                _flush_to_disk(self._tmp)  # before the rename: a power cut could leave it empty under the name
                os.replace(self._tmp, final)
                _flush_to_disk(final.parent, folder=True)  # the rename itself
                return
        except OSError as exc:
            raise DataSourceError(f"cannot write {self.target}: {exc}") from None
        import boto3
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            bucket, key = object_store.split(self.target)
            boto3.client("s3", endpoint_url=self._endpoint).upload_file(str(self._tmp), bucket, key)
        except (ClientError, S3UploadFailedError, BotoCoreError) as exc:
            if object_store.unreachable(exc):
                raise StorageUnreachable(f"cannot write {self.target}: {exc}") from None
            # The store answered no (no such bucket, access denied), or no credentials: a retry will not help.
            raise DataSourceError(f"cannot write {self.target}: {exc}") from None
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove the temporary file whatever state the writer is in."""
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001, S110 - the job already failed; its first error is the one to report
            pass
        finally:
            self._tmp.unlink(missing_ok=True)


_FEATURE_TYPES = {"category": pa.string(), "integer": pa.int64(), "float": pa.float64()}


def _output_schema(explain_top_k: int | None, with_features: bool = False) -> pa.Schema:
    fields = [
        pa.field(ID_COLUMN, pa.string()),
        pa.field(PROBABILITY, pa.float64()),
        pa.field(WILL_CHURN, pa.bool_()),
        pa.field(RISK, pa.string()),
        pa.field(MODEL_NAME, pa.string()),
        pa.field(MODEL_VERSION, pa.int64()),
        pa.field(SCORED_AT, pa.timestamp("us", tz="UTC")),
    ]
    if explain_top_k:
        fields.append(pa.field("explanation_base", pa.float64()))
        for i in range(1, explain_top_k + 1):
            fields += [
                pa.field(f"explanation_{i}_feature", pa.string()),
                pa.field(f"explanation_{i}_value", pa.string()),
                pa.field(f"explanation_{i}_contribution", pa.float64()),
            ]
    if with_features:
        fields += [pa.field(f.name, _FEATURE_TYPES[f.kind]) for f in FEATURES]
    return pa.schema(fields)


def _with_features(table: pa.Table, features: pa.Table | pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``table`` and, when the schema asks for them, the customers' features as scored (so the
    drift monitor can read a scores file, features and scores together)."""
    if FEATURE_NAMES[0] not in schema.names:
        return table
    for feature in FEATURES:
        kind = _FEATURE_TYPES[feature.kind]
        if isinstance(features, pa.Table):
            values = features.column(feature.name).cast(kind if feature.kind != "category" else pa.string())
            if feature.kind == "category":
                values = pc.utf8_trim_whitespace(values)  # as the row-by-row checks write them
        else:
            values = pa.array(features[feature.name], kind, from_pandas=True)
        table = table.append_column(schema.field(feature.name), values)
    return table


def check_scored(
    source: str, rows: int, scored: int, reasons: list[str], max_reject_share: float | None = None
) -> None:
    """Refuse to replace last week's scores with none: a header-only export, or one whose every
    row fails the checks (an upstream format change, say) is an error, not an empty list. With
    ``max_reject_share``, so is one that loses more than that share of its customers: a
    partial export replaced the whole list, at exit 1 like a few stray rows."""
    if not rows:
        raise DataSourceError(f"no rows in {source}; the previous output is left as it was")
    if not scored:
        raise DataValidationError(
            f"none of the {rows:,} rows in {source} could be scored; the previous output is left as it was. "
            f"The first reasons: {' | '.join(reasons)}"
        )
    if max_reject_share is not None and (rows - scored) / rows > max_reject_share:
        raise DataValidationError(
            f"{rows - scored:,} of the {rows:,} rows in {source} were rejected ({(rows - scored) / rows:.1%}), over "
            f"--max-reject-share {max_reject_share:g}; the previous output is left as it was. The first reasons: "
            f"{' | '.join(reasons)}"
        )


REJECTS_SCHEMA = pa.schema(
    [pa.field("row", pa.int64()), pa.field("reason", pa.string())]
    + [pa.field(c, pa.string()) for c in (ID_COLUMN, *FEATURE_NAMES)]
)


def default_rejects(output: str) -> str:
    base = output[: -len(Path(output).suffix)] if Path(output).suffix else output
    return f"{base}.rejects.parquet"


# ---------------------------------------------------------------- the job


def load_model(settings: Settings, alias: str | None, version: int | None) -> loading.LoadedModel:
    """The version to score with, loaded and verified as the API does."""
    from churn_platform import loading, registry

    client = registry.connect(settings, existing=True)  # run elsewhere, it made an empty mlflow.db there
    name = settings.model_name
    try:
        with registry.translate_errors(settings):
            number = version or loading.resolve(client, name, alias or PRODUCTION_ALIAS)
            return loading.load(client, name, number, default_threshold=settings.decision_threshold,
                                sample=settings.verify_sample_rows)  # fmt: skip
    except (RegistryUnreachable, StorageUnreachable):
        raise
    except Exception as exc:
        if registry.is_connection_error(exc):
            raise RegistryUnreachable(f"registry or artifact store unreachable: {exc}"[:500]) from None
        raise


def launched_run_id(settings: Settings) -> str | None:
    """The run ``mlflow run`` made for this job (``MLFLOW_RUN_ID``; None: not launched so),
    looked up before the work: a run the tracking store lacks is named before the scoring."""
    from churn_platform import registry

    if not (run_id := os.environ.get("MLFLOW_RUN_ID")):
        return None
    client = registry.connect(settings, existing=True)
    with registry.translate_errors(settings):
        return registry.launched_run(client, run_id).info.run_id


def record_on_run(settings: Settings, run_id: str, summary: ScoreSummary) -> None:
    """Put on the launched run what its parameters cannot say: which version scored (an alias
    moves on) and how many rows went where. The scores are written by now: a registry that
    fails here is a warning, not a failed job (a Job's retry would score everything again)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    figures = {"rows": summary.rows, "rows_scored": summary.scored, "rows_rejected": summary.rejected,
               "load_seconds": summary.load_seconds, "scoring_seconds": summary.scoring_seconds}  # fmt: skip
    tags = {"model_name": summary.model_name, "model_version": str(summary.model_version)}
    try:
        MlflowClient(settings.tracking_uri, settings.tracking_uri).log_batch(
            run_id, metrics=[Metric(key, float(value), now, 0) for key, value in figures.items()],
            tags=[RunTag(key, value) for key, value in tags.items()])  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the job's work is done and its summary printed
        log.warning("could not record the version and counts on MLflow run %s: %s", run_id, str(exc)[:300])


def _output_table(
    model: loading.LoadedModel, raw: np.ndarray, ids: pa.Array, settings: Settings, scored_at: pd.Timestamp,
    schema: pa.Schema,
) -> pa.Table:  # fmt: skip
    """The scores beside their ``ids`` (trimmed text)."""
    probabilities = np.clip(raw, 0.0, 1.0)
    edges = np.array([settings.risk_medium_from, settings.risk_high_from])
    n = len(probabilities)
    return pa.table(
        {
            ID_COLUMN: ids,
            PROBABILITY: probabilities,
            WILL_CHURN: probabilities >= model.decision_threshold,
            RISK: pa.array(RISK_BANDS, pa.string()).take(np.searchsorted(edges, probabilities, side="right")),
            MODEL_NAME: pa.repeat(pa.scalar(model.name, pa.string()), n),
            MODEL_VERSION: np.full(n, model.version, dtype=np.int64),
            SCORED_AT: pa.repeat(pa.scalar(scored_at, pa.timestamp("us", tz="UTC")), n),
        },
        schema=pa.schema(list(schema)[: len(OUTPUT_COLUMNS)]),
    )


def _scored_table(
    model: loading.LoadedModel, good: pd.DataFrame, settings: Settings, scored_at: pd.Timestamp,
    explain_top_k: int | None, schema: pa.Schema,
) -> pa.Table:  # fmt: skip
    """The row-by-row path's output for the rows that passed the checks."""
    scorer = model.scorer
    explained = None
    if explain_top_k:
        assert model.explainer is not None
        explained = model.explainer.explain_frame(good)
        raw = explained.probabilities
    elif isinstance(scorer, FastScorer):
        raw = scorer.probabilities(scorer.frame_matrix(good))
    else:
        raw = scorer.score(data.to_records(good[list(FEATURE_NAMES)]))
    ids = pc.utf8_trim_whitespace(pa.array(good[ID_COLUMN], pa.string(), from_pandas=True))
    table = _output_table(model, raw, ids, settings, scored_at, schema)
    if explained is not None and explain_top_k:
        for name, values in explanation.flat_columns(explained, good, explain_top_k).items():
            table = table.append_column(name, pa.array(values))
    return _with_features(table, good, schema).cast(schema)


def rejects_after_scores(commit: Callable[[], None], output: str, rejects: str) -> None:
    """Commit the rejects, the scores being committed: rejects never appear beside an older
    run's scores. Should this fail (another store, a permission), the error says whose each
    file is, since the scores are already this run's."""
    try:
        commit()
    except (DataSourceError, StorageUnreachable) as exc:
        raise type(exc)(f"{exc}; the scores at {output} are this run's, but any file at {rejects} is an "
                        "earlier run's rejects: run the job again") from None  # fmt: skip
    except BaseException:  # Spark's rejects job losing an executor, a signal: said in the log as it goes on
        log.error("the scores at %s are this run's, but any file at %s is an earlier run's rejects: run the job "
                  "again", output, rejects)  # fmt: skip
        raise


def write_rejects(target: str, table: pa.Table, endpoint_url: str | None) -> None:
    """Write a whole rejects table to a local path or an ``s3://`` key, visible only once complete."""
    out = AtomicOutput(target, output_kind(target, None), table.schema, endpoint_url)
    try:
        out.write(table)
        out.commit()
    except BaseException:
        out.abort()
        raise


def rejects_table(chunk: pd.DataFrame, reasons: pd.Series, first_row: int, extra: tuple[str, ...] = ()) -> pa.Table:
    """The bad rows as read, with their reasons; ``extra`` columns follow the schema's (a
    snapshot's time, without which the sender could not mend the row)."""
    bad = chunk.loc[reasons.index]
    columns: dict[str, Any] = {"row": (reasons.index.to_numpy() + first_row).astype("int64"),
                               "reason": reasons.to_numpy(dtype=object)}  # fmt: skip
    for column in (ID_COLUMN, *FEATURE_NAMES, *extra):
        values = bad[column] if column in bad.columns else pd.Series([None] * len(bad), index=bad.index)
        columns[column] = pa.array([None if pd.isna(v) else str(v) for v in values], pa.string())
    return pa.table(columns, schema=pa.schema([*REJECTS_SCHEMA, *(pa.field(c, pa.string()) for c in extra)]))


@dataclass(frozen=True)
class ScoredChunk:
    #: The good rows' output (None when no row was good).
    scores: pa.Table | None
    #: The bad rows (``REJECTS_SCHEMA``; ``row`` counts from ``first_row``), None when all were good.
    rejects: pa.Table | None
    scored: int


_PLACEHOLDERS = pa.array(sorted(ID_PLACEHOLDERS))
_PLACEHOLDER_BYTES = max(len(p.encode()) for p in ID_PLACEHOLDERS)


def _odd_ids(raw: pa.ChunkedArray, ids: pa.ChunkedArray) -> bool:
    """Whether some row's id (``raw`` as text, ``ids`` trimmed) may be missing, blank, a
    placeholder, too long or hold a control character: ``split_rejects`` refuses those rows
    (it decides; this only routes the chunk to it, so a false alarm costs time, never a row).
    Cheap on clean ids: a regex took 50 ms per 1M."""
    if pc.any(pc.fill_null(pc.equal(ids, ""), True)).as_py():
        return True
    lengths = pc.binary_length(ids)
    # "NULL", "N/A": only short ids can be one, and the search costs 30 ms per 1M ids.
    if (pc.min(lengths).as_py() or 0) <= _PLACEHOLDER_BYTES and pc.any(
        pc.is_in(pc.utf8_lower(ids), value_set=_PLACEHOLDERS)
    ).as_py():
        return True
    # Bytes are at least characters: count characters only when some id has the bytes to be too long.
    longest = pc.max(lengths).as_py() or 0
    if longest > ID_MAX_LENGTH and pc.max(pc.utf8_length(ids)).as_py() > ID_MAX_LENGTH:
        return True
    return any(_control_byte(chunk) for chunk in raw.chunks)


def _control_byte(chunk: pa.StringArray) -> bool:
    """Whether a string array's text holds a control character as ``ID_CONTROL_CHARACTERS``
    defines them, by its UTF-8 bytes (its rows' bytes only, if sliced): a byte below 0x20 or
    0x7F, U+0080 to U+009F (C2 80 to C2 9F), U+2028 or U+2029 (E2 80 A8, E2 80 A9)."""
    _, offsets, text = chunk.buffers()
    if text is None or len(chunk) == 0:
        return False
    bounds = np.frombuffer(offsets, dtype=np.int32)[[chunk.offset, chunk.offset + len(chunk)]]
    data = np.frombuffer(text, dtype=np.uint8)[bounds[0] : bounds[1]]
    if data.min(initial=255) < 0x20 or (data == 0x7F).any():
        return True
    if (c2 := np.flatnonzero(data[:-1] == 0xC2)).size and (data[c2 + 1] <= 0x9F).any():  # continuations start at 0x80
        return True
    e2 = np.flatnonzero(data[:-2] == 0xE2)
    return bool(e2.size and ((data[e2 + 1] == 0x80) & ((data[e2 + 2] == 0xA8) | (data[e2 + 2] == 0xA9))).any())


def score_chunk(
    model: loading.LoadedModel, settings: Settings, table: pa.Table, scored_at: pd.Timestamp, schema: pa.Schema,
    *, fast: bool, explain_top_k: int | None, first_row: int,
) -> ScoredChunk:  # fmt: skip
    """One chunk's scores and rejects: both engines score with this, so they agree row for row."""
    clean = None
    if fast:
        given = pc.cast(table.column(ID_COLUMN), pa.string())
        ids = pc.utf8_trim_whitespace(given)  # trimmed once: the check and the output read them
        clean = not _odd_ids(given, ids) and _clean_inputs(model.scorer, table)  # type: ignore[arg-type]
    if clean:
        raw = model.scorer.columns_probabilities(*clean)  # type: ignore[union-attr]
        scores = _with_features(_output_table(model, raw, ids, settings, scored_at, schema), table, schema)
        return ScoredChunk(scores, None, table.num_rows)
    # Text columns or a bad row somewhere: the row-by-row checks.
    chunk = table.to_pandas()
    good, reasons = data.split_rejects(chunk)  # odd ids among them
    scored = _scored_table(model, good, settings, scored_at, explain_top_k, schema) if len(good) else None
    rejects = rejects_table(chunk, reasons, first_row) if len(reasons) else None
    return ScoredChunk(scored, rejects, len(good))


#: Suffixes of compressed files: an output named so would hold uncompressed Parquet or CSV.
_COMPRESSED = (".gz", ".bz2", ".zst", ".xz", ".zip")
#: Suffixes of other formats: Parquet written under one fools every reader (a dated name,
#: ``scores.20261207``, is no format's and stays Parquet).
_OTHER_FORMATS = (".txt", ".tsv", ".tab", ".json", ".jsonl", ".ndjson", ".xlsx", ".xls", ".orc", ".avro", ".feather",
                  ".arrow", ".ipc", ".xml")  # fmt: skip


def output_kind(output: str, output_format: str | None) -> str:
    suffix = Path(output).suffix.lower()
    if suffix in _COMPRESSED:
        raise DataValidationError(f"{output}: files are not written compressed here; name a .csv or .parquet file "
                                  "(Parquet compresses its columns itself)")  # fmt: skip
    named = _SUFFIXES.get(suffix)
    if output_format and named and named != output_format:  # a CSV called .parquet fools every reader
        raise DataValidationError(f"--format {output_format} does not match --output {output}'s suffix")
    if suffix in _OTHER_FORMATS and not output_format:  # --format csv under .txt is CSV, as asked
        raise DataValidationError(f"{output}: files are written as CSV or Parquet here, not {suffix}; name a .csv "
                                  "or .parquet file")  # fmt: skip
    kind = output_format or named or "parquet"
    if kind not in FORMATS:
        raise DataValidationError(f"--format must be one of {list(FORMATS)}, got {kind!r}")
    return kind


def _check_file_name(flag: str, target: str) -> None:
    """A target must name a file: ``s3://bucket`` fails only at the upload, after the scoring,
    as an unreachable store (exit 3, retried); ``s3://bucket/scores/`` writes an object
    called ``scores/`` that tools show as a folder."""
    key = object_store.split(target)[1] if target.startswith("s3://") else target
    if not key or key.endswith("/"):
        where = target if target.endswith("/") else f"{target}/"
        raise DataValidationError(f"{flag} {target} names a folder, not a file: add a file name ({where}...)")


def _check_bucket(flag: str, target: str, endpoint_url: str | None) -> None:
    """An s3:// target's bucket exists: a missing one was found at the upload, after the whole
    input was scored. Keys that may write but not look (no HeadBucket) are left to the upload."""
    if not target.startswith("s3://"):
        return
    bucket = object_store.split(target)[0]
    try:
        missing = _s3(endpoint_url).get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        return
    if missing:
        raise DataSourceError(f"{flag} {target}: bucket {bucket!r} does not exist; nothing was scored")


@dataclass(frozen=True)
class Job:
    """What both engines settle before reading a row: formats, files, the verified model."""

    kind: str
    rejects: str
    fs: pafs.FileSystem
    input_kind: str
    model: loading.LoadedModel
    #: Clean typed chunks go straight from Arrow to the scorer (explanations take the other path).
    fast: bool
    #: The input's files in order, each with its header as written (every one checked).
    headers: dict[str, list[str]]
    #: Each Parquet file's row count, from the footer read with its header.
    rows: dict[str, int]

    @property
    def files(self) -> list[str]:
        return list(self.headers)


def prepare(
    settings: Settings, source: str, output: str, *, alias: str | None, version: int | None,
    output_format: str | None, rejects: str | None, explain_top_k: int | None, staged: bool = False,
) -> Job:  # fmt: skip
    """Check the request, list the input and load the version (verified, and its column path
    checked when it will take it): everything that can refuse the job before it scores.
    ``staged``: the output is staged through pyarrow (the Spark engine)."""
    data.require_named(source)  # else the current folder's files were read as the input
    kind = output_kind(output, output_format)
    rejects = rejects or default_rejects(output)
    output_kind(rejects, None)  # a compressed name or another format's: refused before anything is read
    for flag, target in (("--output", output), ("--rejects", rejects)):
        _check_file_name(flag, target)
        if target.startswith("s3://"):
            object_store.check_address(target, flag, pyarrow=staged and flag == "--output")  # rejects: boto3
        else:
            data.local_target(target)  # its folder exists: found now, not after the model's download
    data.refuse_overwrite(source, output=output, rejects=rejects)
    own = {"output": (output, PROBABILITY), "rejects": (rejects, *data.REJECT_MARKER)}
    fs, headers, input_kind, rows = input_files(source, settings.s3_endpoint_url, own)
    for option, (target, *columns) in own.items():  # after the input's own checks, which say more
        data.refuse_foreign_output(f"--{option}", target, tuple(columns))
    for path, raw in headers.items():
        check_columns(path, raw, normalise_columns(raw, path))
    for flag, target in (("--output", output), ("--rejects", rejects)):
        _check_bucket(flag, target, settings.s3_endpoint_url)
    model = load_model(settings, alias, version)
    if explain_top_k and model.explainer is None:
        reason = model.explanations.get("reason", "no explainer")
        raise DataValidationError(f"{model.name} v{model.version} cannot explain its scores: {reason}")
    fast = isinstance(model.scorer, FastScorer) and not explain_top_k
    if fast:
        _check_column_path(model)
    return Job(kind, rejects, fs, input_kind, model, fast, headers, rows)


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
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    max_reject_share: float | None = None,
) -> ScoreSummary:
    """Score every row of ``source`` into ``output`` (and bad rows into ``rejects``)."""
    started = time.perf_counter()
    job = prepare(settings, source, output, alias=alias, version=version, output_format=output_format,
                  rejects=rejects, explain_top_k=explain_top_k)  # fmt: skip
    kind, rejects, fs, files, input_kind, model, fast = (
        job.kind, job.rejects, job.fs, job.files, job.input_kind, job.model, job.fast
    )
    bar = _progress(sum(job.rows[f] for f in files) if input_kind == "parquet" else None, progress)
    loaded = time.perf_counter()
    schema = _output_schema(explain_top_k, with_features)
    scored_at = pd.Timestamp(datetime.now(UTC)).floor("us")
    out = AtomicOutput(output, kind, schema, settings.s3_endpoint_url)
    # Written every run, empty when no row was bad: the rejects beside the scores are always this run's.
    bad_out = AtomicOutput(rejects, output_kind(rejects, None), REJECTS_SCHEMA, settings.s3_endpoint_url)
    rows = scored = rejected = 0
    reasons: list[str] = []  # the first few, for when no row could be scored
    # One writer thread: encoding a chunk (Arrow releases the GIL) overlaps reading and scoring
    # the next; at most one chunk waits, so memory stays at two chunks.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-writer")
    pending: Future[None] | None = None
    try:
        for table in _prefetched(_chunks(fs, path, input_kind, job.headers[path], chunk_rows) for path in files):
            result = score_chunk(model, settings, table, scored_at, schema, fast=fast,
                                 explain_top_k=explain_top_k, first_row=rows + 1)  # fmt: skip
            if pending is not None:
                pending.result()
            pending = writer.submit(out.write, result.scores) if result.scores is not None else None
            if result.rejects is not None:
                bad_out.write(result.rejects)
                rejected += result.rejects.num_rows
                if len(reasons) < 3:
                    reasons += result.rejects.column("reason").slice(0, 3 - len(reasons)).to_pylist()
            rows += table.num_rows
            scored += result.scored
            bar.update(table.num_rows)
        if pending is not None:
            pending.result()
        check_scored(source, rows, scored, reasons, max_reject_share)
        out.commit()
        rejects_after_scores(bad_out.commit, output, rejects)
    except BaseException:
        writer.shutdown(wait=True, cancel_futures=True)  # never close a file a write is still using
        out.abort()
        bad_out.abort()
        raise
    finally:
        writer.shutdown(wait=True)
        bar.close()
    return ScoreSummary(source, output, rejects, rows, scored, rejected, model.name,
                        model.version, round(loaded - started, 3), round(time.perf_counter() - loaded, 3))  # fmt: skip


def _prefetched(chunks: Iterator[Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """The chunks, each read by a thread while the one before is scored (Arrow's Parquet and CSV
    decoding releases the GIL, so reading takes the core the scoring leaves). One chunk waits."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():  # the consumer may have stopped (an error, a kill): never block it
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for group in chunks:
                for table in group:
                    if not put(("chunk", table)):
                        return
            put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(("error", exc))

    reader = threading.Thread(target=read, name="score-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _without_own_outputs(
    fs: pafs.FileSystem, files: list[str], own: dict[str, tuple[str, ...]], source: str
) -> list[str]:
    """The input's files minus this job's outputs (a scores file inside the input folder must
    not be read back as customers on the next run); a customer file named as an output is refused."""
    targets = {data.location(target): (option, target, columns) for option, (target, *columns) in own.items()}
    kept = []
    for f in files:
        if f not in targets:
            kept.append(f)
            continue
        option, target, columns = targets[f]
        found, _ = _columns(fs, f, _SUFFIXES[Path(f).suffix.lower()])
        if not set(columns) <= set(found):
            absent = ", ".join(c for c in columns if c not in found)
            raise DataValidationError(f"--{option} {target} is a file of the input {source}, and not one this job "
                                      f"wrote (no {absent} column): it would be overwritten; choose another name")
    if not kept:
        raise DataSourceError(f"no input files in {source} besides this job's own outputs")
    return kept


#: Columns only a job's own outputs have: a scores file (``--with-features`` has the features
#: and the id too, so it passes for customers) and a rejects file.
_OUTPUT_MARKERS = ({PROBABILITY, MODEL_VERSION}, set(data.REJECT_MARKER))


def _customer_files(headers: dict[str, list[str]], source: str) -> dict[str, list[str]]:
    """The files of a folder or glob less the outputs of earlier runs under other names than
    this run's (a dated scores file beside the exports): read back, their customers were
    scored twice, exit 0. (A file named by itself is read whatever it holds: re-scoring a
    scores file with features is a use.)"""
    kept = {}
    for path, raw in headers.items():
        names = set(normalise_columns(raw, path))
        if any(marker <= names for marker in _OUTPUT_MARKERS):
            log.warning("not reading %s: an earlier job's scores or rejects (its columns), not customers", path)
            continue
        kept[path] = raw
    if not kept:
        raise DataSourceError(f"no customer files in {source}: only earlier jobs' scores or rejects")
    return kept


def _check_column_path(model: loading.LoadedModel) -> None:
    """The column path is other code than the record path the load verified: check it against
    sklearn too, on generated customers, before it scores anyone."""
    from churn_platform import loading

    scorer = model.scorer
    assert isinstance(scorer, FastScorer)
    frame = data.generate(500, seed=11)
    numbers = frame[list(scorer.numeric_features)].to_numpy(dtype=float)
    codes = [scorer.codes(frame[c], c) for c in scorer.categories]
    expected = model.pipeline.predict_proba(frame[list(FEATURE_NAMES)])[:, 1]
    difference = float(np.max(np.abs(scorer.columns_probabilities(numbers, codes) - expected)))
    if not difference <= loading.PARITY_TOLERANCE:
        raise loading.VerificationFailed(
            f"{model.name} v{model.version}: the batch scorer differs from sklearn by {difference:.3g}; not scoring"
        )


def _progress(total: int | None, enabled: bool) -> Any:
    """A bar of ``total`` rows (Parquet's footers say it; a CSV's lines are counted only by reading them)."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    # In a log (a pod, a pipe), a line per update: a bar redrawn with \r runs them into one.
    lines = None if interactive else "{desc}: {n_fmt} rows in {elapsed} ({rate_fmt})\n"
    return tqdm(total=total, unit="rows", unit_scale=True, desc="scoring", disable=not enabled, file=sys.stderr,
                mininterval=0.5 if interactive else 10, dynamic_ncols=interactive, bar_format=lines)  # fmt: skip
