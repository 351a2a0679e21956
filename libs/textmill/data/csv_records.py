"""A strict CSV reader that knows where every record starts and ends, for ``prepare``.

Spark's CSV parser (univocity) is lenient: an unclosed quote reads on into the records after
it and hands back one well-formed looking record, so the damage cannot be seen in the parsed
values. This reader parses the raw bytes of each file itself, with Python's C ``csv`` module
in strict mode, and keeps each record's physical lines. That gives the rules ``prepare``
documents (jobs/reliability.md):

- line endings are ``\\n`` and ``\\r\\n``; a lone ``\\r`` is part of a field's text;
- a byte-order mark at the start of a file is dropped; empty lines are not records; an empty
  field (``,,`` or ``,"",``) is null, as in Spark's CSV reader; a line break inside a quoted
  field is read as ``\n``;
- every record's raw bytes are checked as UTF-8 before anything decodes them (overlong forms,
  encoded surrogates, code points above U+10FFFF, truncated sequences, stray continuation
  bytes): such a record is quarantined with its exact bytes;
- columns are mapped by the header's names in every file, so files whose headers list the
  same columns in another order are read right;
- a record the strict parser rejects (an unclosed quote, a quote inside a quoted field that is
  not doubled, text after a closing quote) is quarantined as its first physical line, and
  parsing resumes on the next line, so an unclosed quote can swallow no record after it.
  Without ``multiline`` a record that spans lines is rejected the same way. A record with the
  wrong field count is quarantined whole, unless one of its later lines is a whole record on
  its own (a stray quote read on into it): then it is treated as rejected.

``read_records`` is the pure parser (fuzzed in tests without Spark); ``frame`` runs it on
executors (``local_files.frame``: small files packed into one task, a large single-line file
read in byte ranges), planned on the driver (``plan_parts``). Both run on classic and Spark Connect sessions.
(Until issue 38 this was a Python data source, whose planning starts Python processes of its
own: about 3 s more for every job that reads a CSV file, measured in tests/benchmarks/bench_tiny_job.py.)
"""

from __future__ import annotations

import codecs
import csv
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from textmill.data import local_files

BOM = codecs.BOM_UTF8
MAX_RECORD_BYTES = 64 * 2**20  # a longer record is quarantined whole as text_too_long, its leading fields kept
# Python's csv module refuses a field over 131,072 characters unless told otherwise: a third, hidden
# limit that quarantined every longer CSV document. A field may be as long as a record may be.
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))
TOO_LONG = "a record longer than the limit"  # how a too-long record's problem starts (prepare: text_too_long)
# A lone \r is text, but Python's csv module ends a line at any \r: it is swapped for a lone
# high surrogate, which no valid UTF-8 decodes to (and surrogateescape only makes U+DC80..DCFF).
_CR_STANDIN = "\ud800"
UNREADABLE = local_files.UNREADABLE


@dataclass(frozen=True)
class CsvDialect:
    delimiter: str = ","
    quote: str = '"'
    escape: str = '"'
    multiline: bool = False
    encoding: str = "utf-8"  # any codec Python knows; files in another are decoded, then read as UTF-8

    @property
    def utf8(self) -> bool:
        return codecs.lookup(self.encoding).name == "utf-8"

    def reader_kwargs(self) -> dict:
        doubled = self.escape == self.quote
        return {
            "delimiter": self.delimiter,
            "quotechar": self.quote,
            "doublequote": doubled,
            "escapechar": None if doubled else self.escape,
            "strict": True,
        }


@dataclass
class Record:
    """One record: its fields (None when it could not be parsed), where it was, and what was wrong."""

    fields: list[str | None] | None
    line: int  # 1-based physical line where the record starts
    raw: bytes  # the record's exact bytes, line endings included
    problem: str | None = None  # why the record was not parsed (malformed)
    undecodable: bool = False  # raw is not valid UTF-8

    @property
    def raw_text(self) -> str:
        return self.raw.decode("utf-8", "replace").rstrip("\r\n")


def open_bytes(path: str) -> BinaryIO:
    """A binary stream of a file's bytes, gunzipped when the name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


class _AsUtf8:
    """A file in another encoding, read line by line as UTF-8 bytes: lines end at ``\n`` only (as
    in a UTF-8 file), the encoding's byte-order mark is dropped by its codec, and bytes the
    encoding cannot decode come out as invalid UTF-8, so their record is quarantined as such."""

    def __init__(self, stream: BinaryIO, encoding: str) -> None:
        import io

        self._text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="\n")

    def readline(self) -> bytes:
        return self._text.readline().encode("utf-8", "surrogateescape")

    def __enter__(self) -> _AsUtf8:
        return self

    def __exit__(self, *exc: object) -> None:
        self._text.close()


def open_lines(path: str, dialect: CsvDialect):
    """What ``_physical_lines`` reads for ``path``: its bytes, or for another encoding than UTF-8
    its text as UTF-8 (such a file is read whole, never in byte ranges)."""
    stream = open_bytes(path)
    return stream if dialect.utf8 else _AsUtf8(stream, dialect.encoding)


def _physical_lines(stream: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line ending in ``\\n`` (the last may not).

    With a byte range, the lines that start in ``(start, end]``, plus the first line when
    ``start`` is 0 (Hadoop's split rule: a range reads on past ``end`` to finish the line that
    starts there), so every line belongs to exactly one range. Line numbers count from the
    range's first line.
    """
    position = start
    if start:
        stream.seek(start)
        position += len(
            stream.readline()
        )  # the line holding byte ``start`` began in the previous range, which reads it
    number = 0
    while end is None or position <= end:
        line = stream.readline()
        if not line:
            return
        number += 1
        position += len(line)
        if number == 1 and start == 0 and line.startswith(BOM):
            line = line[len(BOM) :]
        yield number, line


def _decode(line: bytes) -> tuple[str, bool]:
    """The line as text for the parser (line ending removed, lone \\r swapped) and whether it is valid UTF-8."""
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
    try:
        text, valid = body.decode("utf-8"), True
    except UnicodeDecodeError:
        text, valid = body.decode("utf-8", "surrogateescape"), False
    return text.replace("\r", _CR_STANDIN) + "\n", valid


def _restore_cr(value: str) -> str:
    return value.replace(_CR_STANDIN, "\r")


def read_records(
    lines: Iterator[tuple[int, bytes]],
    dialect: CsvDialect,
    width: int | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[Record]:
    """Every record of a file's physical lines, good or not, in file order.

    ``width`` is the expected field count (None: any). A rejected record is reported as its
    first line, and parsing resumes at the line after it. Without ``multiline`` the parser is
    never given a record's second line, so an unclosed quote costs one line of memory.

    A record over ``max_record_bytes`` is one record whose problem starts with ``TOO_LONG``: its
    fields are those before its longest field (the id, typically), the others None; with
    ``multiline``, the lines after the limit are skipped, unparsed, to where the open quoted field
    closes (an unclosed quote: to the end of the file), and parsing resumes after them.
    """
    source = iter(lines)
    pending: list[tuple[int, bytes, str, bool]] = []  # lines handed back to be parsed again
    consumed: list[tuple[int, bytes, str, bool]] = []  # the lines of the record being parsed
    size = [0]  # their bytes

    def feed() -> Iterator[str]:
        # One line per record without multiline; with it, at most MAX_RECORD_BYTES (an unclosed
        # quote would otherwise hold the rest of the file in memory).
        while not (consumed and not dialect.multiline) and size[0] <= max_record_bytes:
            if pending:
                item = pending.pop(0)
            else:
                nxt = next(source, None)
                if nxt is None:
                    return
                item = (nxt[0], nxt[1], *_decode(nxt[1]))
            consumed.append(item)
            size[0] += len(item[1])
            yield item[2]

    kwargs = dialect.reader_kwargs()
    reader = csv.reader(feed(), **kwargs)
    while True:
        try:
            fields, problem = next(reader, None), None
        except csv.Error as exc:
            fields, problem = None, _explain(str(exc), dialect, size[0])
            reader = csv.reader(feed(), **kwargs)  # a csv.Error leaves the reader unusable
        if not consumed:
            return
        first, record_lines = consumed[0], list(consumed)
        total = size[0]
        consumed.clear()
        size[0] = 0
        if fields == []:  # an empty line
            continue
        if total > max_record_bytes:
            last_line = record_lines[-1][0]
            if fields is None and dialect.multiline:  # the limit came inside an open quoted field: skip to its end
                inside = _inside_quotes("".join(item[2] for item in record_lines), dialect, False)
                while inside:
                    nxt = next(source, None)
                    if nxt is None:
                        break
                    last_line, total = nxt[0], total + len(nxt[1])
                    inside = _inside_quotes(_decode(nxt[1])[0], dialect, inside)
                reader = csv.reader(feed(), **kwargs)
            leading = _leading_fields(first[2], dialect, fields)
            padded = [_restore_cr(v) if v else None for v in leading] + [None] * (
                (width or len(leading)) - len(leading)
            )
            yield Record(
                padded,
                first[0],
                first[1][:65_536],
                f"{TOO_LONG} of {max_record_bytes:,} bytes: {total:,} bytes over lines {first[0]}-{last_line}",
                undecodable=not first[3],
            )
            continue
        raw = b"".join(item[1] for item in record_lines)
        valid = all(item[3] for item in record_lines)
        if problem is None and width is not None and len(fields) != width:
            problem = f"{len(fields)} field(s), expected {width}"
            if not _absorbed(record_lines[1:], width, kwargs):
                # The parse found the record's ends: it is bad as a whole.
                yield Record(None, first[0], raw, problem, undecodable=not valid)
                continue
        if problem is not None:
            # Only the first line is the bad record's for sure: the lines after it are parsed again.
            pending[:0] = record_lines[1:]
            reader = csv.reader(feed(), **kwargs)
            yield Record(None, first[0], first[1], problem, undecodable=not first[3])
            continue
        values = [_restore_cr(v) if v else None for v in fields]  # an empty field is null, as in Spark's CSV reader
        if not valid:
            values = [
                v if v is None else v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for v in values
            ]
        yield Record(values, first[0], raw, None, undecodable=not valid)


def _inside_quotes(text: str, dialect: CsvDialect, inside: bool) -> bool:
    """Whether a quoted field is still open after ``text``, given whether one was open before it."""
    if dialect.escape == dialect.quote:  # a doubled quote toggles twice: parity is enough
        return inside ^ (text.count(dialect.quote) % 2 == 1)
    skip = False
    for char in text:
        if skip:
            skip = False
        elif inside and char == dialect.escape:
            skip = True
        elif char == dialect.quote:
            inside = not inside
    return inside


def _leading_fields(first_line: str, dialect: CsvDialect, fields: list[str] | None) -> list[str]:
    """The fields of a too-long record that come before its longest one: from the whole record's
    fields when it was parsed, else from its first line, whose last field is the one left open."""
    if fields is not None:
        longest = max(range(len(fields)), key=lambda i: len(fields[i] or ""))
        return list(fields[:longest])
    try:
        opened = next(csv.reader([first_line.rstrip("\n") + dialect.quote], **dialect.reader_kwargs()), [])
    except csv.Error:
        return []
    return list(opened[:-1])


def _absorbed(lines: list[tuple[int, bytes, str, bool]], width: int, kwargs: dict) -> bool:
    """Whether a line after a record's first parses on its own as a whole record of ``width``
    fields, with its quotes in pairs: the sign that a stray quote read on into the records after it."""
    quote = kwargs["quotechar"]
    for item in lines:
        if item[2].count(quote) % 2:  # a whole record's quotes come in pairs; this line continues a quoted field
            continue
        try:
            if len(next(csv.reader([item[2]], **kwargs), [])) == width:
                return True
        except csv.Error:
            continue
    return False


def _explain(message: str, dialect: CsvDialect, size: int) -> str:
    if "unexpected end of data" in message:
        if not dialect.multiline:
            return (
                f"a quoted field ({dialect.quote}) is not closed on its line (set prepare.csv.multiline: true if "
                "fields hold line breaks)"
            )
        return f"an unclosed quote ({dialect.quote}) runs to the end of the file"
    if "expected after" in message:
        return f"a quote ({dialect.quote}) inside a quoted field is neither doubled nor followed by the delimiter"
    return f"the CSV parser rejected it: {message}"


def header_of(path: str, dialect: CsvDialect) -> list[str | None] | None:
    """The column names on the first record of ``path`` (None for a file with no record)."""
    with open_lines(path, dialect) as stream:
        for record in read_records(_physical_lines(stream), dialect):
            if record.fields is None or record.undecodable:
                raise HeaderError(
                    f"{path}: the header (line {record.line}) is not a readable CSV record: "
                    f"{record.problem or f'bytes that are not valid {dialect.encoding}'}"
                )
            return list(record.fields)
    return None


class HeaderError(ValueError):
    """A file's header cannot be read."""


# ---------------------------------------------------------------------------- on Spark

SPLIT_BYTES = local_files.SPLIT_BYTES  # a larger uncompressed single-line file is read in byte ranges of this size
BATCH_ROWS = local_files.BATCH_ROWS
# The internal columns of every textmill reader (textmill.data.io names them), in this reader's order.
INTERNAL = [
    ("_tm_source", "string"),
    ("_tm_malformed", "string"),
    ("_tm_decode_error", "string"),
    ("_tm_suspect", "string"),
    ("_tm_raw_bytes_in", "binary"),
]


def schema_ddl(columns: list[str]) -> str:
    """The frame's schema: every CSV column as a string, then the internal columns."""
    return ", ".join([f"`{c.replace('`', '``')}` string" for c in columns] + [f"{n} {t}" for n, t in INTERNAL])


reads_on_driver = local_files.reads_on_driver


def frame(spark, spec: dict, on_driver: bool = False):  # a SparkSession in, a DataFrame out
    """The records of every piece of ``spec`` (``read_spec``), in order (``local_files.frame``)."""
    columns = spec["columns"]
    return local_files.frame(spark, spec, read_pieces, schema_ddl(columns), arrow_schema(columns), on_driver)


def read_pieces(spec: dict, pieces: list[dict]) -> Iterator:
    """Arrow record batches of up to ``BATCH_ROWS`` records of these pieces, in order: a batch
    holds the records of many small files (a batch per file cost more than reading them)."""
    import pyarrow as pa

    schema = arrow_schema(spec["columns"])
    batch: list[list] = [[] for _ in schema]

    def flush():
        arrays = [pa.array(values, type=field.type) for values, field in zip(batch, schema)]
        for values in batch:
            values.clear()
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    for piece in pieces:
        for row in piece_rows(spec, piece):
            for values, value in zip(batch, row):
                values.append(value)
            if len(batch[0]) >= BATCH_ROWS:
                yield flush()
    if batch[0]:
        yield flush()


def arrow_schema(columns: list[str]):  # a pyarrow.Schema; pyarrow is imported where it is used
    import pyarrow as pa

    return pa.schema(
        [(c, pa.string()) for c in columns] + [(n, pa.binary() if t == "binary" else pa.string()) for n, t in INTERNAL]
    )


def piece_rows(spec: dict, part: dict) -> Iterator[list]:
    """The rows (columns, then the internal columns) of one piece: a whole file, or the records
    that start in its byte range."""
    dialect = CsvDialect(**spec["dialect"])
    columns = spec["columns"]
    start, order, uri = part["start"], part["order"], part["uri"]
    width = len(order) if order is not None else len(columns)
    try:
        with open_lines(part["path"], dialect) as stream:
            lines = _physical_lines(stream, start, part["end"])
            skip_header = spec["header"] and start == 0
            for record in read_records(lines, dialect, width):
                if skip_header:
                    skip_header = False
                    continue
                where = f"line {record.line}" if start == 0 else f"a line after byte {start}"
                if record.fields is None:
                    row = [None] * len(columns)
                    malformed, suspect = record.raw_text, None
                else:
                    row = [record.fields[i] for i in (order or range(len(columns)))]
                    malformed, suspect = (record.raw_text if record.undecodable else None), None
                decode_error = f"bytes that are not valid {dialect.encoding} ({where})" if record.undecodable else None
                if record.problem:
                    suspect = f"{record.problem} ({where})"
                yield [*row, uri, malformed, decode_error, suspect, record.raw if record.undecodable else None]
    except (OSError, EOFError, ValueError) as exc:  # zlib.error is not one: gzip raises BadGzipFile (OSError)
        raise RuntimeError(f"{UNREADABLE}[{uri}]: {type(exc).__name__}: {exc}") from exc


def plan_parts(
    files: list[tuple[str, str, int]],
    headers: dict[str, list[str]] | None,
    columns: list[str],
    split_bytes: int,
    splittable: bool,
) -> list[dict]:
    """One part per file, or per ``split_bytes`` range of a large uncompressed file when records
    cannot span lines. ``files``: (local path, uri, size); ``headers``: each file's header."""
    parts = []
    for path, uri, size in files:
        order = [headers[uri].index(c) for c in columns] if headers is not None else None
        if splittable and not path.endswith(".gz") and size > split_bytes:
            bounds = list(range(0, size, split_bytes))
            for i, start in enumerate(bounds):
                end = bounds[i + 1] if i + 1 < len(bounds) else None
                piece_bytes = (end if end is not None else size) - start
                parts.append(
                    {"path": path, "uri": uri, "start": start, "end": end, "order": order, "bytes": piece_bytes}
                )
        else:
            parts.append({"path": path, "uri": uri, "start": 0, "end": None, "order": order, "bytes": size})
    return parts


def local_file(uri: str) -> str | None:
    """The local path of a textmill ``file:`` URI (literal: never percent-decoded, see
    ``runtime.filesystems``), else None (the executors' Python cannot open it)."""
    if uri.startswith("file:"):
        return "/" + uri[len("file:") :].lstrip("/")
    if uri.startswith("/"):
        return uri
    return None


def read_spec(columns: list[str], parts: list[dict], dialect: CsvDialect, header: bool) -> dict:
    """What ``frame`` reads: the output columns, the pieces (``plan_parts``), the dialect, and
    whether files have headers."""
    return {"columns": columns, "pieces": parts, "header": header, "dialect": dict(dialect.__dict__)}
