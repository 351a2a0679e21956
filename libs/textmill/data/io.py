"""Read corpora and write outputs: explicit schemas, quarantine, idempotent atomic writes.

Readers turn every supported input layout into one DataFrame shape: the source columns,
plus three internal columns that ``prepare`` uses to quarantine bad records without
losing them:

- ``_tm_source``: the file the record came from;
- ``_tm_malformed``: the raw text of a record the parser could not read (else null);
- ``_tm_decode_error``: why the bytes could not be decoded (``text_files`` only);
- ``_tm_suspect``: why a record is not trustworthy (CSV: what the strict parser rejected);
- ``_tm_raw_bytes_in``: a record's exact bytes when they are not valid UTF-8 (CSV, JSON Lines,
  text lines: checked before any parser decodes them).

Writers never leave a half-written output: a job writes to a temporary sibling
directory, checks it, and only then swaps it into place (``publish``). A rerun on the
same path replaces the old output whole. Used by the pipelines on the driver.
"""

from __future__ import annotations

import atexit
import codecs
import fnmatch
import itertools
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from textmill.data import csv_records, local_files, storage
from textmill.data.storage import (
    GLOB_CHARS,
    check_published_together,
    local_path,
    path_exists,
    staged_outputs,
    write_marker,
)
from textmill.runtime import filesystems, session_kinds
from textmill.runtime.config import StrictModel
from textmill.runtime.errors import (
    AccountingError,
    ColumnNotFoundError,
    ColumnTypeError,
    CsvHeaderError,
    InputNotFoundError,
    UnreadableInputError,
    printable,
)

logger = logging.getLogger(__name__)

# _tm_source, _tm_malformed, _tm_decode_error, _tm_suspect, _tm_raw_bytes_in: named once, where the strict CSV
# reader writes them.
INTERNAL_COLUMNS = tuple(name for name, _ in csv_records.INTERNAL)
SOURCE, MALFORMED, DECODE_ERROR, SUSPECT, RAW_BYTES = INTERNAL_COLUMNS

InputFormat = Literal["csv", "jsonl", "parquet", "text_lines", "text_files"]


class CsvConf(StrictModel):
    header: bool = Field(True, description="first line of each file holds column names")
    columns: list[str] | None = Field(None, description="column names when header is false")
    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', min_length=1, max_length=1)
    escape: str = Field('"', min_length=1, max_length=1, description='"" inside a quoted field is a quote (RFC 4180)')
    multiline: bool = Field(False, description="quoted fields may span lines (slower: files are not split)")
    encoding: str = Field("UTF-8", description="any encoding Python knows (UTF-16 with its BOM, latin-1, cp1252...)")
    parser: Literal["strict", "spark"] = Field(
        "strict",
        description=(
            "strict: textmill's reader (local files; others fall back to spark) | spark: Spark's lenient parser"
        ),
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        return _known_codec(value)


class TextFilesConf(StrictModel):
    glob: str = Field("*.txt", description="file-name pattern, searched recursively")
    encodings: list[str] = Field(
        default_factory=lambda: ["utf-8", "latin-1"],
        min_length=1,
        description="tried in order; a file no encoding decodes is quarantined",
    )
    first_line_is_title: bool = Field(False, description="the first line becomes column 'title', the rest 'text'")

    @field_validator("encodings")
    @classmethod
    def _known_encodings(cls, value: list[str]) -> list[str]:
        return [_known_codec(v) for v in value]


def _known_codec(name: str) -> str:
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(
            f"unknown encoding {name!r} (Python's codec names: utf-8, utf-16, latin-1, cp1252, ...)"
        ) from None
    return name


# ---------------------------------------------------------------------------- paths


def require_input(spark: SparkSession, path: str, key: str = "io.input") -> None:
    if not path_exists(spark, path):
        raise InputNotFoundError(
            f"{key}: nothing exists at {path!r} (checked before reading; is the path or glob right?)"
        )


def read_input(spark: SparkSession, path: str, columns: list[str], hint: str = "", key: str = "io.input") -> DataFrame:
    """The Parquet at ``path``, after checking that it exists and has ``columns`` (else one clear error)."""
    require_input(spark, path, key)
    check_published_together(spark, path)
    from pyspark.errors import AnalysisException

    try:
        df = spark.read.parquet(storage.for_spark(spark, path))
    except AnalysisException as exc:
        raise same_name_error(exc, path, "parquet") from None
    check_columns(df, columns, hint)
    return df


def check_columns(df: DataFrame, columns: list[str], hint: str = "") -> None:
    check_distinct_names(df)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ColumnNotFoundError(
            f"column(s) {', '.join(missing)} not in the input; available: {', '.join(map(printable, df.columns))}"
            + (f" ({hint})" if hint else "")
        )


def check_distinct_names(df: DataFrame, key: str = "io.input") -> None:
    """Refuse columns whose names differ only in case (``Text`` and ``text``): Spark resolves names
    without case by default, so either is an ambiguous reference, which failed after planning with
    a traceback (AMBIGUOUS_REFERENCE)."""
    if str(df.sparkSession.conf.get("spark.sql.caseSensitive", "false")).lower() == "true":
        return
    seen: dict[str, str] = {}
    clashes = []
    for name in df.columns:
        first = seen.setdefault(name.lower(), name)
        if first != name:
            clashes.append(f"{first!r} and {name!r}")
    if clashes:
        raise ColumnNotFoundError(
            f"{key}: the columns {'; '.join(clashes)} differ only in case, which Spark does not tell apart "
            "(spark.sql.caseSensitive is false): rename one in the input, or set "
            "spark.conf: {spark.sql.caseSensitive: true}"
        )


def require_text_column(df: DataFrame, column: str, key: str = "io.input") -> None:
    """Refuse a text column that is not a string (an int64 ``text`` would make every row 'null text')."""
    kind = df.schema[column].dataType
    if not isinstance(kind, T.StringType):
        raise ColumnTypeError(
            f"{key}: column {column!r} holds {kind.simpleString()} values, not text (string); "
            "point the job's text column at a string column, or write the text as strings"
        )


UTF8_ERROR = "text is not valid UTF-8"


def utf8_or_null(column: Column) -> Column:
    """``column`` where it is valid UTF-8, else null: bytes Arrow cannot decode never reach a Python worker.

    Parquet not written by ``prepare`` may hold invalid UTF-8 (Spark does not validate it).
    Jobs pass text through this and then report such rows with ``utf8_error``.
    """
    return F.when(F.is_valid_utf8(column), column)


def utf8_error(valid: Column, error: Column) -> Column:
    """The row's error: ``UTF8_ERROR`` where ``valid`` (``is_valid_utf8`` of the input) is false."""
    return F.when(~valid, F.lit(UTF8_ERROR)).otherwise(error)


def number_rows(df: DataFrame, order: list[Column], name: str) -> DataFrame:
    """``df`` with ``name``: 0-based row numbers in ``order`` (which must be a total order, so
    the numbering is the same on every evaluation), computed without a global window. A window
    with no partitioning moves every row to one partition (Spark warns: WindowExec), which at
    millions of rows is a real bottleneck. Instead: a distributed sort, each row's position in
    its sorted partition (from ``monotonically_increasing_id``: partition id in the upper 31 bits,
    the row's index within the partition in the lower 33), plus the row count of the partitions
    before it (one small collect: a count per partition)."""
    ordered = (
        df.orderBy(*order)
        .withColumn("_tm_part", F.spark_partition_id())
        .withColumn("_tm_pos", F.monotonically_increasing_id() - F.shiftleft(F.col("_tm_part").cast("long"), 33))
        .localCheckpoint()
    )
    counts = sorted((r["_tm_part"], r["count"]) for r in ordered.groupBy("_tm_part").count().collect())
    starts = itertools.accumulate((count for _, count in counts), initial=0)  # rows in the partitions before
    offsets = [F.lit(x) for (part, _), before in zip(counts, starts) for x in (part, before)]
    start = F.element_at(F.create_map(*offsets), F.col("_tm_part")) if offsets else F.lit(0)
    return ordered.withColumn(name, start + F.col("_tm_pos")).drop("_tm_part", "_tm_pos")


def task_partitions(spark: SparkSession, rows: int, rows_per_partition: int, given: int | None = None) -> int:
    """``given``, else max(2 x parallelism, rows / rows_per_partition) rounded up to a multiple of the
    parallelism, so the last wave of tasks does not leave cores idle."""
    if given:
        return given
    parallelism = session_kinds.default_parallelism(spark)
    wanted = max(2 * parallelism, -(-rows // rows_per_partition))
    return parallelism * -(-wanted // parallelism)


@dataclass
class InputListing:
    """The files an input path names, and what was left out (with why)."""

    files: list[tuple[str, int]] = field(default_factory=list)  # (uri, bytes), to be read
    not_matching: list[str] = field(default_factory=list)  # left out by the file-name glob
    links: list[str] = field(default_factory=list)  # symbolic links met in the input, not followed


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def list_input(spark: SparkSession, path: str, name_glob: str | None = None) -> InputListing:
    """Every file under a path or glob, recursively, in a stable order.

    Hidden files and directories (``_x``, ``.x``) are skipped, as Spark's readers skip them.
    Symbolic links, to files or to directories, are not followed wherever they are met
    (inside a directory or as a match of a glob): they can lead out of the input, into loops,
    or to a file read twice. Only ``io.input`` itself may be a link, since the user named it.
    With ``name_glob``, only files whose name matches it are kept.
    """
    fs = storage.files(spark, path)
    listing = InputListing()
    is_glob = any(c in GLOB_CHARS for c in path)

    def keep(uri: str, name: str, size: int) -> None:
        if name_glob is None or fnmatch.fnmatchcase(name, name_glob):
            listing.files.append((uri, size))
        else:
            listing.not_matching.append(uri)

    for root in fs.glob(path):
        if root.uri.startswith("file:"):
            local = local_path(root.uri)
            if is_glob and os.path.islink(local):
                listing.links.append(local)
                continue
            if os.path.isfile(local):
                keep(f"file:{local}", root.name, os.path.getsize(local))
                continue
            for folder, dirs, names in os.walk(local, followlinks=False):
                linked = {n for n in dirs + names if not _hidden(n) and os.path.islink(os.path.join(folder, n))}
                listing.links += [os.path.join(folder, n) for n in linked]
                dirs[:] = sorted(d for d in dirs if not _hidden(d) and d not in linked)
                for name in sorted(n for n in names if not _hidden(n) and n not in linked):
                    file = os.path.join(folder, name)
                    if os.path.isfile(file):
                        keep(f"file:{file}", name, os.path.getsize(file))
            continue
        if not root.is_dir:
            keep(root.uri, root.name, root.size)
            continue
        for entry in fs.files_under(root.uri):
            keep(entry.uri, entry.name, entry.size)
    listing.files.sort()
    listing.links.sort()
    return listing


_SCRATCH_ROOT: list[str] = []
LOCAL_SHIPPED = "local:"


def scratch_dir(prefix: str) -> Path:
    """A fresh folder under this driver process's scratch root, removed when the process exits
    (what executors may read for as long as the driver runs: shipped archives, downloaded models)."""
    if not _SCRATCH_ROOT:
        _SCRATCH_ROOT.append(tempfile.mkdtemp(prefix="textmill-scratch-"))
        atexit.register(shutil.rmtree, _SCRATCH_ROOT[0], True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH_ROOT[0]))


def ship_directory(spark: SparkSession, path: str | os.PathLike) -> str:
    """Make a local directory (a model, an index) readable by every executor; returns the name
    that ``shipped_path`` turns back into a directory on an executor.

    On a classic session in local mode (``local``, ``local[N]``) executors are threads of this
    driver: they read the directory where it is, and a model of hundreds of MB is neither
    archived nor unpacked (the caller keeps the directory until the job ends). Elsewhere,
    Spark Connect included (its server need not see the client's disk), the directory travels
    as an uncompressed tar archive added with ``SparkSession.addArtifacts(archive=True)``,
    which executors unpack under that name (the API both kinds of session share; ``addFile``
    would ship directories only in local mode). Each call ships a copy under a unique name,
    since one session may ship several models of the same base name; the archives live in the
    driver's scratch folder (executors may fetch them at any time until the driver exits).
    """
    source = Path(path).resolve()
    master = session_kinds.spark_master(spark)
    if not session_kinds.is_connect(spark) and (master == "local" or master.startswith("local[")):
        # The token keeps each ship distinct (the workers' model cache is keyed by this name), so a
        # model retrained into the same directory is never served from an earlier load.
        return f"{LOCAL_SHIPPED}{uuid.uuid4().hex[:10]}:{source}"
    name = f"{source.name}-{uuid.uuid4().hex[:10]}"
    archive = scratch_dir("shipped-") / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:  # entries relative to the directory (no "./": Spark refuses it)
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    spark.addArtifacts(f"{archive}#{name}", archive=True)
    return name


def shipped_path(name: str) -> str:
    """On an executor: the directory a ``ship_directory`` name stands for."""
    if name.startswith(LOCAL_SHIPPED):
        return name[len(LOCAL_SHIPPED) :].split(":", 1)[1]
    return session_kinds.shipped_file(name)


def write_rows(
    spark: SparkSession, df: DataFrame, path: str, rows_in: int, marker: dict, check=None
) -> tuple[int, int, Any]:
    """Write ``df`` (one row per input row, with an ``error`` column) to the fresh directory ``path``.

    Rows out must equal ``rows_in`` (else AccountingError); ``check(written)`` may inspect the
    written rows and raise. Marks ``path``; returns (rows_out, rows with an error, what
    ``check`` returned). The caller publishes ``path``.
    """
    import textmill

    df.write.parquet(path)
    written = spark.read.parquet(path)
    totals = written.agg(F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors")).first()
    rows_out, rows_error = totals["rows"], totals["errors"]
    if rows_out != rows_in:
        raise AccountingError(f"rows_in={rows_in} but rows_out={rows_out}; nothing was published")
    checked = check(written) if check is not None else None
    write_marker(
        spark, path, {**marker, "textmill_version": textmill.__version__, "rows": rows_out, "columns": written.columns}
    )
    return rows_out, rows_error, checked


def publish_rows(
    spark: SparkSession,
    df: DataFrame,
    output: str,
    rows_in: int,
    marker: dict,
    check=None,
    replace_unmarked: bool = False,
) -> tuple[int, int, Any]:
    """``write_rows`` into a staged directory, then publish it as ``output``."""
    with staged_outputs(spark, output, replace_unmarked=replace_unmarked) as (staged,):
        return write_rows(spark, df, staged, rows_in, marker, check)


def count_parquet(spark: SparkSession, path: str) -> int:
    """Row count of a written Parquet directory, from its files' footers: read here with pyarrow where
    the path is local (milliseconds, where a Spark job costs about half a second), else by Spark. Both
    skip the files Spark skips (names starting with ``_`` or ``.``)."""
    if filesystems.is_local(path):
        import pyarrow.dataset as ds

        return ds.dataset(filesystems.local_path(path), format="parquet").count_rows()
    return spark.read.parquet(path).count()


# ---------------------------------------------------------------------------- readers


def spark_uri_column(uri: Column) -> Column:
    """``filesystems.from_spark_uri`` in SQL: ``_metadata.file_path`` is percent-encoded, textmill's
    ``source`` is the literal path. (``url_decode`` reads ``+`` as a space: a literal ``+`` is kept.)"""
    return F.url_decode(F.replace(uri, F.lit("+"), F.lit("%2B")))


def _with_internal(
    df: DataFrame,
    malformed: Column | None = None,
    decode_error: Column | None = None,
    suspect: Column | None = None,
    raw_bytes: Column | None = None,
) -> DataFrame:
    none = F.lit(None).cast("string")
    return df.select(
        "*",
        spark_uri_column(F.col("_metadata.file_path")).alias(SOURCE),
        (malformed if malformed is not None else none).alias(MALFORMED),
        (decode_error if decode_error is not None else none).alias(DECODE_ERROR),
        (suspect if suspect is not None else none).alias(SUSPECT),
        (raw_bytes if raw_bytes is not None else F.lit(None).cast("binary")).alias(RAW_BYTES),
    )


def read_csv(spark: SparkSession, path: str | list[str], conf: CsvConf) -> DataFrame:
    """CSV files, each mapped by its own header. Local files (what the executors' Python can
    open) and UTF-8 go through textmill's strict reader (``csv_records``); other schemes and
    encodings through Spark's parser, which is lenient about quotes (jobs/reliability.md)."""
    if reads_strict_csv(path, conf):
        return _read_csv_strict(spark, [(csv_records.local_file(u), u) for u in path], conf)
    if conf.parser == "strict":
        logger.warning(
            "prepare.csv: Spark's CSV parser reads these files (textmill's strict reader needs local UTF-8 files); "
            "an unclosed quote can read on into the next records, and columns are matched by position"
        )
    return _read_csv_spark(spark, path, conf)


def reads_strict_csv(path: str | list[str], conf: CsvConf) -> bool:
    """Whether ``read_csv`` reads these exact files with textmill's strict reader: files the
    executors' Python can open, in any encoding Python knows (``prepare`` and ``watch`` list the
    files first)."""
    return conf.parser == "strict" and not isinstance(path, str) and all(csv_records.local_file(u) for u in path)


def csv_dialect(conf: CsvConf) -> csv_records.CsvDialect:
    return csv_records.CsvDialect(conf.delimiter, conf.quote, conf.escape, conf.multiline, conf.encoding)


def csv_headers(files: list[tuple[str, str]], conf: CsvConf) -> dict[str, list[str]]:
    """{uri: header} of every file that holds a record; one clear error when a header is
    unreadable, repeats a name, or lists other columns than the first file's."""
    dialect = csv_dialect(conf)
    headers: dict[str, list[str]] = {}
    for local, uri in files:
        try:
            header = csv_records.header_of(local, dialect)
        except csv_records.HeaderError as exc:
            raise CsvHeaderError(f"io.input: {exc}") from None
        except (OSError, EOFError) as exc:
            raise UnreadableInputError(f"io.input: cannot read {uri}: {exc} (a truncated or corrupt file?)") from None
        if header is None:
            continue
        header = [name or f"_c{i}" for i, name in enumerate(header)]
        repeated = sorted({n for n in header if header.count(n) > 1})
        if repeated:
            raise CsvHeaderError(f"io.input: the header of {uri} repeats the column name(s) {repeated}")
        if headers:
            first_uri, first = next(iter(headers.items()))
            if sorted(header) != sorted(first):
                raise CsvHeaderError(
                    f"io.input: CSV files with different columns: {first_uri} has {first}, {uri} has "
                    f"{header}; read them separately or make the headers list the same columns"
                )
        headers[uri] = header
    return headers


def strict_csv_spec(files: list[tuple[str, str]], conf: CsvConf) -> tuple[dict, bool]:
    """What the strict reader reads of these (local path, uri) files (``csv_records.read_spec``), and
    whether it parses them in the driver (``csv_records.reads_on_driver``)."""
    headers = csv_headers(files, conf) if conf.header else None
    if headers is not None:
        columns = next(iter(headers.values()), [])
        files = [(local, uri) for local, uri in files if uri in headers]  # header-only files hold no record
    else:
        columns = list(conf.columns or [])
    sizes = [(local, uri, os.path.getsize(local)) for local, uri in files]
    dialect = csv_dialect(conf)
    splittable = not conf.multiline and dialect.utf8  # byte ranges split UTF-8 lines only
    parts = csv_records.plan_parts(sizes, headers, columns, csv_records.SPLIT_BYTES, splittable=splittable)
    spec = csv_records.read_spec(columns, parts, dialect, conf.header)
    return spec, csv_records.reads_on_driver([(local, size) for local, _, size in sizes])


def _read_csv_strict(spark: SparkSession, files: list[tuple[str, str]], conf: CsvConf) -> DataFrame:
    spec, on_driver = strict_csv_spec(files, conf)
    return csv_records.frame(spark, spec, on_driver=on_driver)


def _read_csv_spark(spark: SparkSession, path: str | list[str], conf: CsvConf) -> DataFrame:
    reader = (
        spark.read.option("sep", conf.delimiter)
        .option("quote", conf.quote)
        .option("escape", conf.escape)
        .option("multiLine", conf.multiline)
        .option("encoding", conf.encoding)
        .option("header", conf.header)
        .option("mode", "PERMISSIVE")
    )
    if conf.header:
        names = reader.option("inferSchema", False).csv(path).columns
    elif conf.columns:
        names = list(conf.columns)
    else:
        raise ColumnNotFoundError("prepare.csv.columns must name the columns when prepare.csv.header is false")
    corrupt = "_tm_corrupt_record"
    schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + [T.StructField(corrupt, T.StringType())])
    df = reader.schema(schema).option("columnNameOfCorruptRecord", corrupt).csv(path)
    return _with_internal(df, malformed=F.col(corrupt)).drop(corrupt)


def _raw_lines(spark: SparkSession, path: str | list[str], recursive: bool = False) -> DataFrame:
    """Every line of ``path`` as its raw bytes (column ``value``, a string Spark has not
    validated) and ``_tm_line``, the line as text: lines end at ``\\n`` or ``\\r\\n`` only,
    and a byte-order mark at the start of a line is dropped. Invalid UTF-8 is found on
    ``value`` before any parser decodes it. ``recursive``: ``path`` is a folder, read whole."""
    raw = spark.read.option("recursiveFileLookup", recursive).option("lineSep", "\n").text(path)
    return _as_lines(raw.select("value", spark_uri_column(F.col("_metadata.file_path")).alias(SOURCE)))


def _as_lines(raw: DataFrame) -> DataFrame:
    """``value`` (a line's bytes as a string Spark has not validated) and ``SOURCE``, plus ``_tm_line``."""
    line = F.regexp_replace(F.regexp_replace("value", r"\r\z", ""), r"\A\x{FEFF}", "")  # \z, \A: the value's very ends
    return raw.select("value", line.alias("_tm_line"), SOURCE)


def _line_internals(lines: DataFrame, malformed: Column | None = None) -> list[Column]:
    valid = F.is_valid_utf8("value")
    return [
        F.col(SOURCE),
        F.when(~valid, F.make_valid_utf8("_tm_line"))
        .otherwise(malformed if malformed is not None else F.lit(None))
        .cast("string")
        .alias(MALFORMED),
        F.when(~valid, F.lit("bytes that are not valid UTF-8")).alias(DECODE_ERROR),
        F.lit(None).cast("string").alias(SUSPECT),
        F.when(~valid, F.col("value").cast("binary")).alias(RAW_BYTES),
    ]


# Jackson (Spark's JSON parser) refuses a string over 20,000,000 characters unless told: a hidden
# limit that made a 52 MB JSON line malformed_record with a null id. A string may be as long as a
# record may be (csv_records.MAX_RECORD_BYTES); the text is then held to prepare.max_chars.
JSON_MAX_STRING = csv_records.MAX_RECORD_BYTES


def read_jsonl(spark: SparkSession, path: str | list[str], recursive: bool = False) -> DataFrame:
    """JSON Lines: the raw bytes of each line are checked as UTF-8 before the JSON parser
    decodes them (it maps overlong forms to real characters); every primitive is a string, so
    ids stay '0012' and never become 12 or 12.0."""
    from pyspark.errors import AnalysisException

    try:
        inferred = (
            spark.read.option("primitivesAsString", True)
            .option("recursiveFileLookup", recursive)
            .option("lineSep", "\n")
            .option("maxStringLen", JSON_MAX_STRING)
            .json(path)
            .schema
        )
    except AnalysisException as exc:
        raise same_name_error(exc, path, "jsonl") from None
    fields = [f for f in inferred.fields if f.name != "_corrupt_record"]
    lines = _raw_lines(spark, path, recursive)
    # Spark's inference merges keys of different lines that differ only in case into one column
    # (the first spelling it meets), and the other spelling's values are then read as null: lost.
    keys = F.explode(F.json_object_keys(F.make_valid_utf8("_tm_line")))
    if not _case_sensitive(spark):
        check_key_cases(r[0] for r in lines.where(F.trim("_tm_line") != "").select(keys).distinct().collect())
    return _parse_json_lines(lines, fields)


def _case_sensitive(spark: SparkSession) -> bool:
    return str(spark.conf.get("spark.sql.caseSensitive", "false")).lower() == "true"


def check_key_cases(keys: Iterable[str]) -> None:
    """One line (``same_name_in_input``) for JSON keys, of any lines, that differ only in case
    (unless ``spark.sql.caseSensitive``, where they are two columns: checked by the callers)."""
    by_case: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        by_case.setdefault(key.lower(), []).append(key)
    clashing = next((spellings for spellings in by_case.values() if len(spellings) > 1), None)
    if clashing:
        raise same_name_in_input(clashing[0], clashing, "JSON keys")


def _parse_json_lines(lines: DataFrame, fields: list[T.StructField]) -> DataFrame:
    """The ``fields`` of every non-blank line of ``lines`` (``_as_lines``), parsed by Spark."""
    corrupt = "_tm_corrupt_record"
    schema = T.StructType(fields + [T.StructField(corrupt, T.StringType())])
    lines = lines.where(F.trim("_tm_line") != "")
    parsed = lines.select(
        "*",
        F.from_json(
            F.make_valid_utf8("_tm_line"),
            schema,
            {
                "mode": "PERMISSIVE",
                "columnNameOfCorruptRecord": corrupt,
                "primitivesAsString": "true",
                "maxStringLen": str(JSON_MAX_STRING),
            },
        ).alias("_tm_json"),
    )
    # A line that parses to no object (``[1, 2]``, ``"text"``) is malformed too.
    malformed = F.when(
        F.col(f"_tm_json.{corrupt}").isNotNull() | F.col("_tm_json").isNull(), F.make_valid_utf8("_tm_line")
    )
    return parsed.select(
        *[F.col(f"_tm_json.`{f.name}`").alias(f.name) for f in fields], *_line_internals(parsed, malformed)
    )


def local_line_files(uris: list[str]) -> list[tuple[str, int]] | None:
    """(URI, size) of each file when ``read_local_line_files`` may read them: all local files,
    uncompressed, none over ``local_files.LINE_FILE_MAX_BYTES`` (each is read whole by a Python
    worker); else None."""
    files = []
    for uri in uris:
        local = csv_records.local_file(uri)
        if local is None or uri.endswith(".gz") or not os.path.isfile(local):
            return None
        size = os.path.getsize(local)
        if size > local_files.LINE_FILE_MAX_BYTES:
            return None
        files.append((uri, size))
    return files


def read_local_line_files(spark: SparkSession, files: list[tuple[str, int]], fmt: str) -> DataFrame | None:
    """JSON Lines or text lines of these local (URI, size) files (``local_line_files``), read
    by textmill's packed Python reader and parsed by Spark: the rows ``read_jsonl`` and
    ``read_text_lines`` give. JSON Lines: the schema is every top-level key, as a string, when
    every line is a flat object Python's strict parser reads (``local_files.json_keys``); else
    None, and Spark's own inference must read the input."""
    spec = {"pieces": [{"path": csv_records.local_file(uri), "uri": uri, "bytes": size} for uri, size in files]}
    on_driver = local_files.reads_on_driver([(piece["path"], piece["bytes"]) for piece in spec["pieces"]])
    raw = local_files.frame(
        spark, spec, local_files.read_line_pieces, local_files.LINES_DDL, local_files.lines_arrow_schema(), on_driver
    )
    lines = _as_lines(raw.select(F.col("value").cast("string").alias("value"), SOURCE))
    if fmt == "text_lines":
        return _text_lines(lines)
    keys = _local_json_keys(spark, spec, on_driver)
    if keys is None:
        return None
    return _parse_json_lines(lines, [T.StructField(k, T.StringType()) for k in keys])


def _local_json_keys(spark: SparkSession, spec: dict, on_driver: bool) -> list[str] | None:
    """The columns Spark's JSON inference would give these files (all strings, sorted as Spark sorts
    names: by UTF-16 code units), or None where only Spark's inference can tell."""
    import pyarrow as pa

    schema = pa.schema([("key", pa.string()), ("finding", pa.string())])
    found = local_files.frame(spark, spec, local_files.json_key_pieces, local_files.KEYS_DDL, schema, on_driver)
    rows = [(r["key"], r["finding"]) for r in found.distinct().collect()]
    if any(finding == local_files.NEEDS_SPARK for _, finding in rows):
        return None
    repeated = sorted(k for k, finding in rows if finding == local_files.REPEATED_KEY)
    if repeated:
        raise same_name_in_input(repeated[0], [repeated[0]], "JSON keys", repeated=True)
    keys = sorted({k for k, _ in rows}, key=lambda k: k.encode("utf-16-be"))
    if not _case_sensitive(spark):
        check_key_cases(keys)
    return keys


def same_name_error(exc: Exception, path: str | list[str], fmt: str) -> Exception:
    """For Spark's COLUMN_ALREADY_EXISTS while reading (JSON keys or Parquet columns that differ only
    in case, or a JSON object that repeats a key): one line naming every spelling found in the
    local input; any other error unchanged."""
    if "COLUMN_ALREADY_EXISTS" not in str(exc):
        return exc
    name = str((getattr(exc, "getMessageParameters", dict)() or {}).get("columnName", "")).strip("`")
    if fmt != "jsonl":
        return same_name_in_input(name, _parquet_spellings(path, name), "columns")
    spellings, repeated = _key_spellings(path, name)
    return same_name_in_input(name, spellings, "JSON keys", repeated)


def same_name_in_input(name: str, spellings: list[str], what: str, repeated: bool = False) -> ColumnNotFoundError:
    """One line for two columns of one name: ``spellings`` that differ only in case, or
    (``repeated``) a JSON object that repeats the key ``name``."""
    if repeated and len(spellings) < 2:
        return ColumnNotFoundError(
            f"io.input: a JSON object repeats the key {name!r}, which Spark cannot read: remove one of the two "
            "from the input"
        )
    named = " and ".join(repr(k) for k in sorted(spellings)) if len(spellings) > 1 else repr(name) + " (twice)"
    return ColumnNotFoundError(
        f"io.input: the {what} {named} "
        "differ only in case, which Spark does not tell apart (spark.sql.caseSensitive is false): rename one in the "
        "input, or set spark.conf: {spark.sql.caseSensitive: true}"
    )


def _parquet_spellings(path: str | list[str], name: str) -> list[str]:
    import pyarrow.parquet as pq

    found: dict[str, None] = {}
    for uri in [path] if isinstance(path, str) else path:
        local = csv_records.local_file(uri) or (uri if os.path.exists(uri) else None)
        if local is None:
            continue
        files = [local] if os.path.isfile(local) else sorted(str(p) for p in Path(local).rglob("*.parquet"))
        for file in files[:1]:
            found.update(dict.fromkeys(n for n in pq.read_schema(file).names if n.lower() == name.lower()))
        if len(found) > 1:
            break
    return list(found)


def _key_spellings(path: str | list[str], name: str, lines: int = 10_000) -> tuple[list[str], bool]:
    """Every spelling of the JSON key ``name`` (any case) in the first ``lines`` lines of the local
    files of ``path`` (what Spark's COLUMN_ALREADY_EXISTS names only once), and whether an object
    there repeats ``name`` itself."""
    import json

    found: dict[str, None] = {}
    repeated = False

    def local_files_of(uri: str) -> list[str]:
        local = csv_records.local_file(uri)
        if local is None or not os.path.exists(local):
            return []
        return [local] if os.path.isfile(local) else sorted(str(p) for p in Path(local).rglob("*") if p.is_file())

    for local in (file for uri in ([path] if isinstance(path, str) else path) for file in local_files_of(uri)):
        with csv_records.open_bytes(local) as stream:
            for _, line in zip(range(lines), stream):
                try:
                    pairs = json.loads(line, object_pairs_hook=lambda pairs: pairs)
                except ValueError:
                    continue
                if isinstance(pairs, list) and all(isinstance(p, tuple) for p in pairs):
                    keys = [k for k, _ in pairs]
                    found.update(dict.fromkeys(k for k in keys if k.lower() == name.lower()))
                    repeated = repeated or keys.count(name) > 1
        if len(found) > 1:
            break
    return list(found), repeated


def read_text_lines(spark: SparkSession, path: str | list[str], recursive: bool = False) -> DataFrame:
    return _text_lines(_raw_lines(spark, path, recursive))


def _text_lines(lines: DataFrame) -> DataFrame:
    return lines.select(F.make_valid_utf8("_tm_line").alias("text"), *_line_internals(lines))


_DECODED = T.StructType(
    [
        T.StructField("text", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("error", T.StringType()),
    ]
)


def decode_file(
    content: bytes | None, encodings: list[str], first_line_is_title: bool
) -> tuple[str | None, str | None, str | None]:
    """(text, title, error) for one file's bytes: the first encoding that decodes strictly wins."""
    if content is None:
        return None, None, "no content"
    for encoding in encodings:
        try:
            text = content.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        return None, None, f"not decodable as any of {', '.join(encodings)}"
    if first_line_is_title:
        title, _, body = text.partition("\n")
        return body.strip("\r\n"), title.strip(), None
    return text, None, None


def make_decode_udf(encodings: list[str], first_line_is_title: bool):
    encodings = list(encodings)

    @F.pandas_udf(_DECODED)
    def decode(contents: pd.Series) -> pd.DataFrame:
        rows = [decode_file(c, encodings, first_line_is_title) for c in contents]
        return pd.DataFrame(rows, columns=["text", "title", "error"])

    return decode


# Spark lists more than 32 exact paths with a distributed job (parallelPartitionDiscovery.threshold)
# and counts 4 MB for opening each file when it packs files into tasks (openCostInBytes): right for
# object stores, where each is a network round trip, but 5,000 small local JSON Lines files took
# 12x one file's time (47.6 against 3.9 s; issue 39, item 5). For local files only, in the scope
# of one job's reads and actions (Spark Connect plans the read again on every action).
LOCAL_FILES_SQL_CONF = {
    "spark.sql.sources.parallelPartitionDiscovery.threshold": str(2**31 - 1),
    "spark.sql.files.openCostInBytes": str(local_files.OPEN_COST_BYTES),
}


@contextmanager
def reading_local_files(spark: SparkSession, paths: str | list[str]) -> Iterator[None]:
    """``LOCAL_FILES_SQL_CONF`` while Spark's readers read ``paths``, when they are all local files."""
    if isinstance(paths, str) or not paths or not all(csv_records.local_file(u) for u in paths):
        yield
        return
    before = {key: spark.conf.get(key, None) for key in LOCAL_FILES_SQL_CONF}
    for key, value in LOCAL_FILES_SQL_CONF.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def read_text_files(
    spark: SparkSession, path: str | list[str], conf: TextFilesConf, max_bytes: int | None = None
) -> DataFrame:
    """One document per file (``list_input`` picks the files). Columns: text, title (when
    first_line_is_title), folder, name, relpath. A file over ``max_bytes`` is never read: its row
    is ``text_too_long`` (``csv_records.TOO_LONG``), where reading a 1 GB file into one value ran
    the driver JVM out of memory. Listed local files are read by textmill's Python reader, packed
    many to a task (``local_files``); Spark's file listing of 5,000 exact paths took 11-16 s."""
    if reads_local_text_files(path):
        return _read_local_text_files(spark, path, conf, max_bytes)
    raw = spark.read.format("binaryFile").load(path).select("path", "content")
    decode = make_decode_udf(conf.encodings, conf.first_line_is_title)
    # One UDF call per file; its struct is then unpacked (never call the UDF once per field).
    decoded = raw.select(decode(F.col("content")).alias("_d"), F.col("path"))
    parts = F.split(F.col("path"), "/")
    folder = F.element_at(parts, -2)
    name = F.element_at(parts, -1)
    columns = [F.col("_d.text").alias("text")]
    if conf.first_line_is_title:
        columns.append(F.col("_d.title").alias("title"))
    columns += [folder.alias("folder"), name.alias("name"), F.concat_ws("/", folder, name).alias("relpath")]
    return decoded.select(
        *columns,
        F.col("path").alias(SOURCE),
        F.lit(None).cast("string").alias(MALFORMED),
        F.col("_d.error").alias(DECODE_ERROR),
        F.lit(None).cast("string").alias(SUSPECT),
        F.lit(None).cast("binary").alias(RAW_BYTES),
    )


def reads_local_text_files(path: str | list[str]) -> bool:
    """Whether ``read_text_files`` reads these exact files with textmill's own reader (all local)."""
    return not isinstance(path, str) and all(csv_records.local_file(uri) for uri in path)


def _text_file_columns(conf_or_spec: TextFilesConf | dict) -> list[str]:
    title = conf_or_spec["first_line_is_title"] if isinstance(conf_or_spec, dict) else conf_or_spec.first_line_is_title
    return ["text", *(["title"] if title else []), "folder", "name", "relpath"]


def _read_local_text_files(
    spark: SparkSession, uris: list[str], conf: TextFilesConf, max_bytes: int | None
) -> DataFrame:
    locals_ = [(csv_records.local_file(uri), uri) for uri in uris]
    sizes = [(local, uri, os.path.getsize(local)) for local, uri in locals_]
    spec = {
        "encodings": list(conf.encodings),
        "first_line_is_title": conf.first_line_is_title,
        "max_bytes": max_bytes,
        # A file too large to read costs nothing to plan: its row is made without opening it.
        "pieces": [
            {"path": local, "uri": uri, "bytes": size if max_bytes is None or size <= max_bytes else 0}
            for local, uri, size in sizes
        ],
    }
    columns = _text_file_columns(conf)
    ddl = ", ".join([f"{c} string" for c in columns] + [f"{n} {t}" for n, t in csv_records.INTERNAL])
    on_driver = local_files.reads_on_driver([(piece["path"], piece["bytes"]) for piece in spec["pieces"]])
    return local_files.frame(spark, spec, read_text_file_pieces, ddl, _text_files_arrow_schema(columns), on_driver)


def _text_files_arrow_schema(columns: list[str]):
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in columns] + [(f.name, f.type) for f in csv_records.arrow_schema([])])


def read_text_file_pieces(spec: dict, pieces: list[dict]):
    """Arrow record batches of ``_read_local_text_files``: one row per file, each read whole
    (never more than ``max_bytes`` + 1 bytes of it), decoded by ``decode_file``."""
    import pyarrow as pa

    max_bytes = spec["max_bytes"]
    columns = _text_file_columns(spec)
    schema = _text_files_arrow_schema(columns)
    rows: list[list] = []

    def flush():
        table = list(zip(*rows))
        rows.clear()
        return pa.RecordBatch.from_arrays(
            [pa.array(list(v), type=f.type) for v, f in zip(table, schema)], schema=schema
        )

    for piece in pieces:
        uri = piece["uri"]
        try:
            with open(piece["path"], "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fits = max_bytes is None or size <= max_bytes
                content = (fh.read() if max_bytes is None else fh.read(max_bytes + 1)) if fits else b""
        except OSError as exc:
            raise RuntimeError(f"{csv_records.UNREADABLE}[{uri}]: {type(exc).__name__}: {exc}") from exc
        too_long = None
        if max_bytes is not None and (not fits or len(content) > max_bytes):  # it may have grown since the stat
            text = title = error = None
            too_long = f"{csv_records.TOO_LONG} of {max_bytes:,} bytes: a file of {size:,} bytes, not read"
        else:
            text, title, error = decode_file(content, spec["encodings"], spec["first_line_is_title"])
        segments = uri.split("/")
        folder, name = (segments[-2] if len(segments) > 1 else None), segments[-1]
        relpath = name if folder is None else f"{folder}/{name}"
        values = [text, *([title] if spec["first_line_is_title"] else []), folder, name, relpath]
        rows.append([*values, uri, None, error, too_long, None])
        if len(rows) >= csv_records.BATCH_ROWS:
            yield flush()
    if rows:
        yield flush()


def source_columns(df: DataFrame) -> list[str]:
    return [c for c in df.columns if c not in INTERNAL_COLUMNS]
