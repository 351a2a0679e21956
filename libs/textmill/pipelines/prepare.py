"""The ``prepare`` job: a raw corpus in, clean partitioned Parquet out, bad records quarantined.

Reads CSV, JSON Lines, Parquet, one-document-per-line text or a directory of text files;
maps source columns to ``doc_id``/``text``/``title``/``label``; optionally cleans text;
and writes

- ``io.output``: Parquet ``doc_id, text, title, label, source, n_chars`` (+ ``columns.extra``),
  range-partitioned and sorted by ``doc_id``;
- ``io.quarantine`` (default ``<output>_quarantine``): ``doc_id, reason, detail, source, raw``.

Both are staged and published together only after ``rows_in == rows_out + rows_quarantined``
has been checked on the written files. ``prepare_frame`` is the pure DataFrame transform
(used by tests and notebooks); ``run`` is the job.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Literal

from pydantic import Field, field_validator
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

import textmill
from textmill.data import io, storage
from textmill.data.cleaning import CleaningConf, blank_column
from textmill.data.csv_records import TOO_LONG
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.errors import (
    AccountingError,
    ColumnNotFoundError,
    EmptyInputError,
    InputNotFoundError,
    printable,
)
from textmill.runtime.filesystems import from_spark_uri
from textmill.text.udfs import make_clean_udf

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "prepare/v1"
OUTPUT_COLUMNS = ["doc_id", "text", "title", "label", "source", "n_chars"]
QUARANTINE_COLUMNS = ["doc_id", "reason", "detail", "source", "raw", "raw_bytes"]
REASONS = (
    "malformed_record",
    "undecodable_bytes",
    "null_text",
    "empty_text",
    "text_too_long",
    "null_doc_id",
    "unknown_label",
    "duplicate_doc_id",
)
_REASON = "_tm_reason"
_DETAIL = "_tm_detail"
_RAW = "_tm_raw"
_RAW_BYTES = "_tm_raw_bytes"


class ColumnsConf(StrictModel):
    doc_id: str | None = Field(None, description="source column with a stable id; null = content hash")
    text: str = Field("text", description="source column with the document text")
    title: str | None = Field(None, description="source column with a title, optional")
    label: str | None = Field(None, description="source column with a label, optional")
    extra: list[str] = Field(default_factory=list, description="source columns carried through unchanged")


class OutputFilesConf(StrictModel):
    rows_per_file: int = Field(250_000, gt=0, description="at most this many rows per output file")
    bytes_per_file: int | None = Field(None, gt=0, description="target uncompressed text bytes per file")


class PrepareConf(StrictModel):
    format: io.InputFormat = Field("csv", description="csv | jsonl | parquet | text_lines | text_files")
    csv: io.CsvConf = Field(default_factory=io.CsvConf)
    text_files: io.TextFilesConf = Field(default_factory=io.TextFilesConf)
    columns: ColumnsConf = Field(default_factory=ColumnsConf)
    label_map: dict[str, str] = Field(
        default_factory=dict, description="source label -> label; unmapped values are quarantined"
    )
    cleaning: CleaningConf = Field(default_factory=CleaningConf)
    max_chars: int = Field(1_000_000, gt=0, description="longer texts (after cleaning) are quarantined")
    replacement_char_is_error: bool = Field(True, description="U+FFFD in a line-based input means undecodable bytes")
    duplicates: Literal["quarantine", "keep"] = Field("quarantine", description="rows whose doc_id was already seen")
    files: OutputFilesConf = Field(default_factory=OutputFilesConf)

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value: Any) -> Any:
        # YAML reads `1: World` with an int key; labels are compared as text.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value


class PrepareJobConf(JobConf):
    prepare: PrepareConf = Field(default_factory=PrepareConf)

    def output_paths(self) -> dict[str, str]:
        return {**super().output_paths(), "io.quarantine": quarantine_path(self)} if self.io.output else {}

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        clash = sorted(set(self.prepare.columns.extra) & set(OUTPUT_COLUMNS))
        if clash:
            problems.append(f"'prepare.columns.extra' may not carry {clash}: those names are output columns")
        p = self.prepare
        if p.format == "csv" and not p.csv.header and not p.csv.columns:
            problems.append("'prepare.csv.columns' must list the column names when 'prepare.csv.header' is false")
        if p.format == "csv" and p.csv.header and p.csv.columns:
            problems.append(
                "'prepare.csv.columns' names the columns of files without a header, but 'prepare.csv.header' is "
                "true (the names come from each file's header): drop one of the two"
            )
        return problems


def quarantine_path(conf: JobConf) -> str:
    return conf.io.quarantine or f"{conf.io.output.rstrip('/')}_quarantine"


# ---------------------------------------------------------------------------- extract


MAX_BYTES_PER_CHAR = 4  # UTF-8, UTF-16 and UTF-32 take at most 4 bytes for a character


def read_source(
    spark: SparkSession,
    path: str | list[str],
    conf: PrepareConf,
    base_path: str | None = None,
    folder: str | None = None,
) -> DataFrame:
    """The source rows of ``path`` (a path, or the exact files to read) in ``conf.format``;
    ``base_path``: the directory whose ``key=value`` folders are Parquet partition columns;
    ``folder`` (``folder_for_spark``): a local folder that Spark's line readers read whole
    instead of ``path``, its listed files."""
    return _read_source(spark, path, conf, base_path, folder)[0]


def _read_source(
    spark: SparkSession, path: str | list[str], conf: PrepareConf, base_path: str | None, folder: str | None
) -> tuple[DataFrame, bool]:
    """``read_source``, and whether the reader was handed exactly the files of ``path`` (textmill's
    own readers), where Spark's readers must be checked (``check_all_files_read``)."""
    if conf.format in FOLDER_FORMATS and not isinstance(path, str) and len(path) >= LOCAL_LINES_MIN_FILES:
        files = io.local_line_files(path)
        if files is not None:
            source = io.read_local_line_files(spark, files, conf.format)
            if source is not None:
                return source, True
            logger.info("prepare: a JSON line is not a flat object Python reads strictly: Spark infers the schema")
    if folder is not None and conf.format in FOLDER_FORMATS:
        reader = io.read_jsonl if conf.format == "jsonl" else io.read_text_lines
        return reader(spark, folder, recursive=True), False
    if conf.format == "csv":
        return io.read_csv(spark, path, conf.csv), io.reads_strict_csv(path, conf.csv)
    if conf.format == "jsonl":
        return io.read_jsonl(spark, path), False
    if conf.format == "parquet":
        reader = spark.read.option("basePath", base_path) if base_path else spark.read
        try:
            return io._with_internal(reader.parquet(*([path] if isinstance(path, str) else path))), False
        except AnalysisException as exc:
            raise io.same_name_error(exc, path, "parquet") from None
    if conf.format == "text_lines":
        return io.read_text_lines(spark, path), False
    # A file of more bytes than max_chars characters can take in any encoding is never read whole.
    max_bytes = conf.max_chars * MAX_BYTES_PER_CHAR
    return io.read_text_files(spark, path, conf.text_files, max_bytes=max_bytes), io.reads_local_text_files(path)


def check_columns(df: DataFrame, conf: PrepareConf) -> None:
    io.check_distinct_names(df)
    available = io.source_columns(df)
    c = conf.columns
    wanted = {"text": c.text, "doc_id": c.doc_id, "title": c.title, "label": c.label}
    wanted.update({f"extra[{i}]": name for i, name in enumerate(c.extra)})
    missing = [f"prepare.columns.{k} = {v!r}" for k, v in wanted.items() if v is not None and v not in available]
    if missing:
        shown = ", ".join(printable(name) for name in available) or "(none)"
        cr_only = (
            " (the names hold carriage returns: the file's lines seem to end in \\r alone, old Mac style; "
            "lines end at \\n or \\r\\n only: convert the file)"
            if any("\r" in name for name in available)
            else ""
        )
        raise ColumnNotFoundError(
            f"{'; '.join(missing)}: not a column of the input. Available columns: {shown}{cr_only}"
        )


# ---------------------------------------------------------------------------- transform


def _reason_and_detail(conditions: list[tuple[Column, str, Column]]) -> tuple[Column, Column]:
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for condition, name, why in reversed(conditions):
        reason = F.when(condition, F.lit(name)).otherwise(reason)
        detail = F.when(condition, why).otherwise(detail)
    return reason, detail


def _any_invalid_utf8(columns: list[str], df: DataFrame) -> Column:
    """True where any of ``columns`` holds bytes that are not valid UTF-8 (nested values via JSON)."""
    checks = []
    schema = df.schema  # once: each ``df.schema`` asks the JVM for the whole schema again
    for name in columns:
        kind = schema[name].dataType
        if isinstance(kind, T.StringType):
            checks.append(~F.is_valid_utf8(F.col(name)))
        elif isinstance(kind, (T.StructType, T.ArrayType, T.MapType)):
            checks.append(~F.is_valid_utf8(F.to_json(F.col(name))))
    if not checks:
        return F.lit(False)
    # One flat array, not a chain of ORs: a chain as deep as the column count overflowed the JVM's
    # stack while Spark planned a 20,000-column CSV (issue 39, item 4).
    return F.array_contains(F.array(*[F.coalesce(c, F.lit(False)) for c in checks]), True)


def _fffd_found(conf: PrepareConf, src_cols: list[str]) -> Column:
    """True where a source value holds U+FFFD (``replacement_char_is_error``): looked for in the
    record's JSON (``_tm_json``, built once), unless a column's name holds one itself."""
    fffd = "\ufffd"
    if not conf.replacement_char_is_error or conf.format == "text_files":
        return F.lit(False)
    if any(fffd in name for name in src_cols):
        values = F.concat_ws("", *[F.col(x).cast("string") for x in src_cols])
        return F.coalesce(F.instr(values, fffd) > 0, F.lit(False))
    return F.coalesce(F.instr("_tm_json", fffd) > 0, F.lit(False))


def reader_checks_bytes(to_read: list[str], conf: PrepareConf) -> bool:
    """Whether the reader of these files checks every record's raw bytes before parsing them
    (``_tm_decode_error``): textmill's CSV reader and the line and file readers do; Parquet and
    Spark's CSV parser do not, so ``prepare_frame`` checks their every value."""
    if conf.format == "csv":
        return io.reads_strict_csv(to_read, conf.csv)
    return conf.format in ("jsonl", "text_lines", "text_files")


def prepare_frame(source: DataFrame, conf: PrepareConf, bytes_checked: bool = False) -> DataFrame:
    """Map, clean, id and classify every source row. One output row per input row.

    Columns: the output columns and extras, plus ``_tm_reason`` (null = good row),
    ``_tm_detail`` and ``_tm_raw`` for the quarantine. ``bytes_checked``: the reader has checked
    every record's raw bytes (``reader_checks_bytes``), so no value is checked again: on a
    20,000-column CSV those checks were most of the planning time.
    """
    c = conf.columns
    src_cols = io.source_columns(source)
    # Invalid UTF-8 never reaches Python (Arrow would fail to decode it): such rows are quarantined
    # below from the original bytes (the line readers and the CSV reader check them before any
    # parser decodes them); the cleaner sees them with U+FFFD instead.
    raw_text = F.make_valid_utf8(F.col(c.text).cast("string"))
    raw_title = F.make_valid_utf8(F.col(c.title).cast("string")) if c.title else F.lit(None).cast("string")
    if conf.cleaning.enabled:
        clean = make_clean_udf(conf.cleaning.model_dump())
        text, title = clean(raw_text), (clean(raw_title) if c.title else raw_title)
    else:
        text, title = raw_text, raw_title
    label_src = F.col(c.label).cast("string") if c.label else F.lit(None).cast("string")
    if conf.label_map:
        pairs = [F.lit(x) for kv in conf.label_map.items() for x in kv]
        label = F.try_element_at(F.create_map(*pairs), label_src)
    else:
        label = label_src
    given_id = F.col(c.doc_id).cast("string") if c.doc_id else None

    # What needs every source column is computed once, here, under a name: referenced by name
    # below, each wide expression stays one node in the plan (inlined into the reason and detail
    # chains, a 20,000-column CSV took minutes to plan). Only the columns used later are kept.
    # Spark's Parquet reader and CSV parser do not validate UTF-8: check every source value then.
    checked = [io.MALFORMED] if bytes_checked else [io.MALFORMED, *src_cols]
    schema = source.schema  # once: each ``df.schema`` asks the JVM for the whole schema again
    invalid_strings = [F.col(x) for x in checked if isinstance(schema[x].dataType, T.StringType)]
    # The record as JSON: what the quarantine keeps, and where U+FFFD is looked for (Spark's
    # to_json writes non-ASCII characters as they are), so the wide struct is built once.
    as_json = F.to_json(F.struct(*[F.col(x) for x in src_cols]))
    row_checks = [
        _any_invalid_utf8(checked, source).alias("_tm_invalid_utf8"),
        as_json.alias("_tm_json"),
        F.coalesce(
            F.col(io.RAW_BYTES),
            *[F.when(~F.is_valid_utf8(x), x.cast("binary")) for x in invalid_strings],
            F.lit(None).cast("binary"),
        ).alias("_tm_raw_bytes_found"),
    ]
    kept = list(dict.fromkeys(x for x in [c.doc_id, *c.extra] if x is not None))
    df = source.select(
        *kept,
        *row_checks,
        io.SOURCE,
        io.MALFORMED,
        io.DECODE_ERROR,
        io.SUSPECT,
        io.RAW_BYTES,
        raw_text.alias("_tm_raw_text"),
        text.alias("text_out"),
        title.alias("title_out"),
        label_src.alias("_tm_label_src"),
        label.alias("label_out"),
    )
    wide = df.select(
        "*",
        _fffd_found(conf, src_cols).alias("_tm_fffd"),
        F.coalesce(F.col(io.MALFORMED), F.col("_tm_json")).alias("_tm_original"),
    )
    df = wide.drop("_tm_json")
    content_id = F.substring(
        F.sha2(F.concat_ws("\u001f", F.coalesce("title_out", F.lit("")), F.coalesce("text_out", F.lit(""))), 256), 1, 32
    )
    doc_id = given_id if given_id is not None else content_id
    n_chars = F.length("text_out")
    invalid_utf8 = F.col("_tm_invalid_utf8")
    undecodable = F.col(io.DECODE_ERROR).isNotNull() | invalid_utf8
    undecodable_detail = F.when(invalid_utf8, F.lit("bytes that are not valid UTF-8"))
    if conf.replacement_char_is_error and conf.format != "text_files":
        fffd_found = F.col("_tm_fffd")
        undecodable = undecodable | fffd_found
        undecodable_detail = F.coalesce(
            undecodable_detail, F.when(fffd_found, F.lit("bytes that are not valid text (U+FFFD found)"))
        )
    conditions = [
        # Bad bytes first: they are why a JSON parser fails, so they are the reason to report.
        (undecodable, "undecodable_bytes", F.coalesce(F.col(io.DECODE_ERROR), undecodable_detail)),
        # A CSV record over the reader's record limit: its id is kept, its text never read whole.
        (F.coalesce(F.col(io.SUSPECT).startswith(TOO_LONG), F.lit(False)), "text_too_long", F.col(io.SUSPECT)),
        (
            F.col(io.MALFORMED).isNotNull(),
            "malformed_record",
            F.coalesce(F.col(io.SUSPECT), F.lit("the parser could not read this record")),
        ),
        (F.col(io.SUSPECT).isNotNull(), "malformed_record", F.col(io.SUSPECT)),
        (F.col("_tm_raw_text").isNull(), "null_text", F.lit(f"column {c.text!r} is null")),
        (blank_column(F.col("text_out")), "empty_text", F.lit("no text left after cleaning")),
        (
            n_chars > conf.max_chars,
            "text_too_long",
            F.format_string(f"n_chars=%d > max_chars={conf.max_chars}", n_chars),
        ),
    ]
    if given_id is not None:
        conditions.append(
            (
                (given_id.isNull()) | blank_column(given_id),
                "null_doc_id",
                F.lit(f"column {c.doc_id!r} is null or empty"),
            )
        )
    if conf.label_map:
        conditions.append(
            (
                F.col("_tm_label_src").isNotNull() & F.col("label_out").isNull(),
                "unknown_label",
                F.concat(F.lit("label "), F.col("_tm_label_src"), F.lit(" is not in prepare.label_map")),
            )
        )
    reason, detail = _reason_and_detail(conditions)
    # Every Parquet reader must be able to read the quarantine: text made valid, the exact bytes kept as binary.
    raw = F.make_valid_utf8(F.col("_tm_original"))
    raw_bytes = F.col("_tm_raw_bytes_found")

    df = df.select(
        "*",
        doc_id.alias("doc_id"),
        n_chars.cast("int").alias("n_chars"),
        reason.alias(_REASON),
        detail.alias(_DETAIL),
        raw.alias(_RAW),
        raw_bytes.alias(_RAW_BYTES),
    )
    if conf.duplicates == "quarantine":
        # The first row of a doc_id (by source, title, label, text) stays; later ones are quarantined.
        is_good = F.col(_REASON).isNull()
        window = Window.partitionBy("doc_id", is_good).orderBy(io.SOURCE, "title_out", "label_out", "text_out", _RAW)
        dup = is_good & (F.row_number().over(window) > 1)
        df = df.withColumn(
            _DETAIL,
            F.when(dup, F.concat(F.lit("doc_id "), F.col("doc_id"), F.lit(" seen before"))).otherwise(F.col(_DETAIL)),
        )
        df = df.withColumn(_REASON, F.when(dup, F.lit("duplicate_doc_id")).otherwise(F.col(_REASON)))

    extras = [F.col(x) for x in c.extra]
    return df.select(
        "doc_id",
        F.col("text_out").alias("text"),
        F.col("title_out").alias("title"),
        F.col("label_out").alias("label"),
        F.col(io.SOURCE).alias("source"),
        "n_chars",
        *extras,
        _REASON,
        _DETAIL,
        _RAW,
        _RAW_BYTES,
    )


def read_prepared(
    spark: SparkSession,
    to_read: list[str],
    conf: PrepareConf,
    base_path: str | None = None,
    folder: str | None = None,
    listed: list[str] | None = None,
) -> DataFrame:
    """``prepare_frame`` of the listed files, after checking that the reader reads exactly them and
    that the configured columns exist: the read that ``run`` and ``watch`` share."""
    source, exact = _read_source(spark, to_read, conf, base_path, folder)
    if not exact:
        check_all_files_read(source, to_read, listed)
    check_columns(source, conf)
    return prepare_frame(source, conf, reader_checks_bytes(to_read, conf))


def repeated_ids(prepared: DataFrame, seen_ids: DataFrame) -> DataFrame:
    """The distinct ``doc_id`` s of good rows of ``prepared`` that ``seen_ids`` (a ``doc_id``
    column, e.g. every earlier batch) already holds. The batch's ids are broadcast, so the
    earlier ids are scanned once and never shuffled."""
    batch = prepared.where(F.col(_REASON).isNull()).select("doc_id").distinct()
    return seen_ids.select("doc_id").join(F.broadcast(batch), "doc_id", "left_semi").distinct()


def quarantine_seen(prepared: DataFrame, repeated: DataFrame, where: str) -> DataFrame:
    """``prepared`` with every good row whose ``doc_id`` is in ``repeated`` (a small ``doc_id``
    column, see ``repeated_ids``) quarantined as ``duplicate_doc_id`` ("seen in ``where``").
    One row out per row in."""
    seen = F.broadcast(repeated.select(F.col("doc_id").alias("_tm_seen")).distinct())
    joined = prepared.join(seen, prepared["doc_id"] == seen["_tm_seen"], "left")
    dup = F.col(_REASON).isNull() & F.col("_tm_seen").isNotNull()
    return joined.select(
        *[c for c in prepared.columns if c not in (_REASON, _DETAIL)],
        F.when(dup, F.lit("duplicate_doc_id")).otherwise(F.col(_REASON)).alias(_REASON),
        F.when(dup, F.concat(F.lit("doc_id "), F.col("doc_id"), F.lit(f" seen in {where}")))
        .otherwise(F.col(_DETAIL))
        .alias(_DETAIL),
    ).select(*prepared.columns)


# ---------------------------------------------------------------------------- load


def _n_files(rows: int, text_bytes: int, files: OutputFilesConf) -> int:
    n = math.ceil(rows / files.rows_per_file)
    if files.bytes_per_file:
        n = max(n, math.ceil(text_bytes / files.bytes_per_file))
    return max(1, n)


def _input_files(spark: SparkSession, input_path: str, p: PrepareConf) -> tuple[io.InputListing, list[str]]:
    """(the listing, the files to read); clear errors when there is nothing to read."""
    glob = p.text_files.glob if p.format == "text_files" else None
    listed = io.list_input(spark, input_path, glob)
    if listed.links:
        logger.warning(
            "%d symbolic link(s) under %s not followed (links to files or directories are never read), e.g. %s",
            len(listed.links),
            input_path,
            listed.links[0],
        )
    if listed.not_matching:
        example = listed.not_matching[0].rsplit("/", 1)[-1]
        if not listed.files:
            raise InputNotFoundError(
                f"io.input: {len(listed.not_matching)} file(s) under {input_path!r}, but none matches "
                f"prepare.text_files.glob {glob!r} (e.g. {example!r}); set prepare.text_files.glob, e.g. '*'"
            )
        logger.warning(
            "%d file(s) under %s do not match prepare.text_files.glob %r and are skipped, e.g. %s",
            len(listed.not_matching),
            input_path,
            glob,
            example,
        )
    files = listed.files
    if not files:
        raise InputNotFoundError(
            f"io.input: {input_path!r} exists but holds no files"
            + (" (symbolic links are not followed)" if listed.links else "")
        )
    # A file is one document in text_files (an empty one is quarantined); elsewhere an empty file holds no records.
    to_read = [uri for uri, size in files if size > 0 or p.format == "text_files"]
    if len(to_read) < len(files):
        logger.warning(
            "%d empty input file(s), e.g. %s: they hold no records",
            len(files) - len(to_read),
            next(uri for uri, size in files if size == 0),
        )
    if not to_read:
        raise EmptyInputError(
            f"io.input: all {len(files)} input file(s) under {input_path!r} are empty (0 bytes); "
            "there are no records to prepare"
        )
    return listed, to_read


# Spark lists exact paths one at a time, about 0.2 ms each (10 s for 50,000), and a folder's
# files in one pass; from this many files on, a listed local folder is handed to Spark's line
# readers whole, when that reads exactly the listed files (checked after: check_all_files_read).
FOLDER_READ_MIN_FILES = 1000
FOLDER_FORMATS = ("jsonl", "text_lines")
# From this many local line files on, textmill's packed Python reader reads them, and Spark only
# parses their lines: Spark's JVM readers open each file (JSON Lines twice), 9-11x one file's time
# at 50,000 files even when reading the folder whole (io.read_local_line_files).
LOCAL_LINES_MIN_FILES = FOLDER_READ_MIN_FILES


def folder_for_spark(input_path: str, listed: io.InputListing, to_read: list[str], p: PrepareConf) -> str | None:
    """The local folder Spark may read whole instead of the listed files, or None: a folder
    (not a glob) with many files, no symbolic link (Spark would follow it), no glob character
    (Spark would expand it), in a line format (Parquet's partition folders would change)."""
    if p.format not in FOLDER_FORMATS or len(to_read) < FOLDER_READ_MIN_FILES or not storage.is_local(input_path):
        return None
    local = os.path.abspath(storage.local_path(input_path))
    if listed.links or any(ch in storage.GLOB_CHARS for ch in local) or not os.path.isdir(local):
        return None
    return f"file:{local}"


def check_all_files_read(source: DataFrame, to_read: list[str], listed: list[str] | None = None) -> None:
    """Every listed file must be one Spark's reader reads (files counted and rows read agree), and
    with ``listed`` (every file listed, empty ones too) the reader reads no other file (one
    added since the listing). textmill's own readers (strict CSV, local text and line files) are
    handed exactly these files and need no check (a header-only CSV file holds no record)."""
    read = {_file_uri(from_spark_uri(u)) for u in source.inputFiles()}  # percent-encoded URIs, from Spark
    missing = [u for u in to_read if _file_uri(u) not in read]
    if missing:
        raise AccountingError(
            f"{len(missing)} input file(s) would not be read by the {len(read)}-file reader, e.g. {missing[0]}; "
            "nothing was written"
        )
    extra = sorted(read - {_file_uri(u) for u in listed}) if listed is not None else []
    if extra:
        raise AccountingError(
            f"{len(extra)} file(s) appeared in the input after it was listed, e.g. {extra[0]}; nothing was written: "
            "run again once the input is complete"
        )


def _file_uri(uri: str) -> str:
    """One spelling of a literal ``file:`` URI (``file:/x``, never ``file:///x``)."""
    return "file:/" + uri[len("file:") :].lstrip("/") if uri.startswith("file:") else uri


# How a prepared frame is cached (here and in ``watch``): on disk only. A cached block is a whole
# input split (up to 128 MB of text), and reading a spilled MEMORY_AND_DISK block back allocates
# it in one piece, which ran a 1 GB driver out of heap at 1M documents; from disk it is streamed
# (about 0.2 s more on 7,600 rows).
CACHE_LEVEL = StorageLevel.DISK_ONLY


def reason_stats(prepared: DataFrame) -> dict[str | None, tuple[int, int]]:
    """{reason (None = good): (rows, text bytes)} of a ``prepare_frame`` result."""
    return {
        row[_REASON]: (row["rows"], row["text_bytes"] or 0)
        for row in prepared.groupBy(_REASON)
        .agg(F.count(F.lit(1)).alias("rows"), F.sum(F.octet_length("text")).alias("text_bytes"))
        .collect()
    }


def write_prepared(
    spark: SparkSession,
    prepared: DataFrame,
    stats: dict[str | None, tuple[int, int]],
    out: str,
    bad_out: str,
    p: PrepareConf,
    marker: dict,
) -> dict[str, float]:
    """Write the good rows of ``prepared`` to ``out`` and the others to ``bad_out`` (both fresh
    directories), check rows_in == rows_out + rows_quarantined on the written files, and mark both.

    Shared by the ``prepare`` job and ``watch``; the caller publishes. ``prepared`` should be
    persisted: it is read for the stats and for both writes.
    """
    rows_in = sum(n for n, _ in stats.values())
    rows_good, bytes_good = stats.get(None, (0, 0))
    n_out = _n_files(rows_good, bytes_good, p.files)
    n_bad = _n_files(rows_in - rows_good, 0, p.files)
    good = prepared.where(F.col(_REASON).isNull()).drop(_REASON, _DETAIL, _RAW, _RAW_BYTES)
    bad = prepared.where(F.col(_REASON).isNotNull()).select(
        "doc_id",
        F.col(_REASON).alias("reason"),
        F.col(_DETAIL).alias("detail"),
        "source",
        F.col(_RAW).alias("raw"),
        F.col(_RAW_BYTES).alias("raw_bytes"),
    )
    good.repartitionByRange(n_out, "doc_id").sortWithinPartitions("doc_id").write.parquet(out)
    bad.repartition(n_bad).sortWithinPartitions("source", "raw").write.parquet(bad_out)
    rows_out = io.count_parquet(spark, out)
    rows_quarantined = io.count_parquet(spark, bad_out)
    if rows_in != rows_out + rows_quarantined:
        raise AccountingError(
            f"prepare: rows_in={rows_in} but rows_out={rows_out} + rows_quarantined={rows_quarantined}; "
            "nothing was published"
        )
    marker = {"schema": SCHEMA_VERSION, "textmill_version": textmill.__version__, **marker}
    storage.write_marker(spark, out, {**marker, "rows": rows_out, "columns": good.columns})
    storage.write_marker(
        spark,
        bad_out,
        {**marker, "rows": rows_quarantined, "columns": bad.columns, "schema": SCHEMA_VERSION + "-quarantine"},
    )
    reasons = {r: stats[r][0] for r in stats if r is not None}
    metrics: dict[str, float] = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_quarantined,
        "output_files": n_out,
    }
    metrics.update({f"quarantined.{r}": reasons.get(r, 0) for r in REASONS})
    return metrics


def run(spark: SparkSession, conf: PrepareJobConf) -> dict[str, float]:
    """Run ``prepare``; returns the metrics (rows_in/out/quarantined, per-reason counts, files)."""
    p = conf.prepare
    input_path, output = conf.io.input, conf.io.output
    quarantine = quarantine_path(conf)
    io.require_input(spark, input_path)
    listed, to_read = _input_files(spark, input_path, p)
    # The exact files listed, never the path again: the reader would follow the links the listing skipped.
    base = input_path if p.format == "parquet" and storage.is_directory(spark, input_path) else None
    folder = folder_for_spark(input_path, listed, to_read, p)
    with io.reading_local_files(spark, to_read):
        logger.info("prepare: reading %d file(s) from %s as %s", len(to_read), input_path, p.format)
        listed_all = [uri for uri, _ in listed.files] if folder else None
        prepared = read_prepared(spark, to_read, p, base, folder, listed_all).persist(CACHE_LEVEL)
        try:
            stats = reason_stats(prepared)
            rows_in = sum(n for n, _ in stats.values())
            if rows_in == 0:
                raise EmptyInputError(
                    f"io.input: read {len(to_read)} non-empty file(s) from {input_path!r} as {p.format} but found "
                    "no records" + (" (header lines only? see prepare.csv.header)" if p.format == "csv" else "")
                )
            logger.info(
                "prepare: %d rows read, %d good, %d to quarantine",
                rows_in,
                stats.get(None, (0, 0))[0],
                rows_in - stats.get(None, (0, 0))[0],
            )
            with storage.staged_outputs(spark, output, quarantine, replace_unmarked=conf.io.replace_unmarked) as (
                tmp_out,
                tmp_bad,
            ):
                metrics = write_prepared(spark, prepared, stats, tmp_out, tmp_bad, p, {"input": input_path})
        finally:
            prepared.unpersist()

    logger.info(
        "prepare: wrote %d rows to %s and %d to %s %s",
        metrics["rows_out"],
        output,
        metrics["rows_quarantined"],
        quarantine,
        {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("quarantined.") and v} or "",
    )
    metrics.update(
        {
            "input_files": len(listed.files),
            "empty_input_files": len(listed.files) - len(to_read),
            "skipped_input_files": len(listed.not_matching),
            "skipped_links": len(listed.links),
        }
    )
    return metrics


JOB_CONF = PrepareJobConf
