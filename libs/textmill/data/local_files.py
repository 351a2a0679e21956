"""Local files read by textmill's own Python readers (the strict CSV reader, ``text_files``).

The driver lists the files and plans *pieces*: a whole file, or a byte range of a large one.
``frame`` runs a reader over them and returns one DataFrame, on classic and Spark Connect
sessions alike:

- small input (``DRIVER_READ_BYTES``) is read in the driver's Python and handed to Spark as
  one Arrow table: the first Python task of a session costs seconds to start its worker;
- the rest is read by Spark tasks with ``mapInArrow``. Pieces are *packed* into tasks, in order,
  by bytes, as Spark packs small files into one split: a piece costs its bytes plus
  ``OPEN_COST_BYTES``, and a task takes up to ``task_bytes`` (at most Spark's 128 MB split,
  less when there are fewer bytes than the cluster has cores).

Packing is what makes many small files cheap. With one task per file, 5,000 small CSV files
of 15,000 rows took 273 s where one file of the same rows took 3.2 s (issue 39, item 5): each
task paid a task's start-up, and each was handed the plan of every file, so the bytes sent to
Python workers grew with the square of the file count. The plan now travels compressed.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Iterator

SPLIT_BYTES = 128 * 2**20  # the most one task reads, and the byte range of a large single-line file (Spark's split)
# What opening a file costs, counted in bytes read: small, as a Python open() is cheap next to the
# 4 MB Spark assumes for a JVM file split, so thousands of small files share a task.
OPEN_COST_BYTES = 64 * 2**10
# Local input up to this size (uncompressed files only) is read in the driver's Python: reading a
# few MB there takes well under a second, where the first Python task of a session costs seconds to
# start its worker (tests/benchmarks/bench_tiny_job.py). Both ways run the same reader.
DRIVER_READ_BYTES = 4 * 2**20

UNREADABLE = "TEXTMILL_UNREADABLE_FILE"  # marks a file error raised on an executor (see errors.unreadable_input)
BATCH_ROWS = 4096  # rows per Arrow batch of the readers here and of the strict CSV reader

Reader = Callable[[dict, list[dict]], Iterator]  # (spec, pieces) -> Arrow record batches


def reads_on_driver(files: list[tuple[str, int]]) -> bool:
    """Whether ``frame`` reads these (local path, size) files in the driver: uncompressed and small."""
    return sum(size for _, size in files) <= DRIVER_READ_BYTES and not any(path.endswith(".gz") for path, _ in files)


def task_bytes(total_bytes: int, parallelism: int) -> int:
    """The bytes one task reads: enough tasks to use every core, none over ``SPLIT_BYTES``
    (Spark's ``FilePartition.maxSplitBytes`` rule, with textmill's open cost)."""
    return min(SPLIT_BYTES, max(OPEN_COST_BYTES, -(-total_bytes // max(1, parallelism))))


def pack(sizes: list[int], limit: int) -> list[int]:
    """Where each task starts in the list of pieces: consecutive pieces share a task while their
    bytes plus open costs stay within ``limit``; a piece larger than ``limit`` is a task of its own."""
    starts: list[int] = []
    filled = limit  # no open task yet
    for i, size in enumerate(sizes):
        cost = size + OPEN_COST_BYTES
        if filled + cost > limit:
            starts.append(i)
            filled = 0
        filled += cost
    return starts or [0]


def frame(spark, spec: dict, read: Reader, ddl: str, schema, on_driver: bool = False):  # SparkSession -> DataFrame
    """The rows ``read`` makes of every piece of ``spec["pieces"]`` (dicts with ``bytes``), in order:
    in this process as one Arrow table when ``on_driver``, else by Spark tasks of packed pieces.
    ``ddl`` and ``schema`` (a ``pyarrow.Schema``) describe the same columns."""
    pieces = spec["pieces"]
    if on_driver:
        import pyarrow as pa

        table = pa.Table.from_batches(list(read(spec, pieces)), schema=schema)
        # Spark Connect cannot make a DataFrame of an Arrow table with no rows (CANNOT_INFER_EMPTY_SCHEMA).
        return spark.createDataFrame(table) if table.num_rows else spark.createDataFrame([], ddl)
    from textmill.runtime.session_kinds import default_parallelism

    limit = task_bytes(sum(p["bytes"] + OPEN_COST_BYTES for p in pieces), default_parallelism(spark))
    starts = pack([p["bytes"] for p in pieces], limit)
    bounds = [*starts, len(pieces)]
    # Every task is handed the whole plan, so it travels compressed: paths repeat their folders.
    plan = zlib.compress(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL), 6)

    def read_tasks(batches: Iterator) -> Iterator:
        whole = pickle.loads(zlib.decompress(plan))
        for batch in batches:
            for task in batch.column(0).to_pylist():
                yield from read(whole, whole["pieces"][bounds[task] : bounds[task + 1]])

    return spark.range(len(starts), numPartitions=len(starts)).mapInArrow(read_tasks, ddl)


# --- Line files (JSON Lines, text lines) ---------------------------------------------------------
# Spark's JVM line readers open every file (JSON Lines twice: schema inference, then the read), so
# 50,000 one-line files took 9-11x one file of the same lines (issue 39, item 5). Many small local
# line files are read here instead, as raw lines; Spark then parses them exactly as it parses the
# lines it reads itself (``io.read_local_line_files``).

# A line file read here is read whole into the worker's memory; larger ones stay with Spark's reader.
LINE_FILE_MAX_BYTES = 16 * 2**20
LINES_DDL = "value binary, _tm_source string"


def lines_arrow_schema():  # a pyarrow.Schema
    import pyarrow as pa

    return pa.schema([("value", pa.binary()), ("_tm_source", pa.string())])


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a file as Spark's text reader with ``lineSep`` ``\\n`` reads them: ended by
    ``\\n`` only (a ``\\r`` before it stays in the line), no line after a final ``\\n``, and a
    UTF-8 byte-order mark at the very start of the file dropped (Hadoop's line reader skips it)."""
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _read_whole(piece: dict) -> bytes:
    try:
        with open(piece["path"], "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise RuntimeError(f"{UNREADABLE}[{piece['uri']}]: {type(exc).__name__}: {exc}") from exc


def read_line_pieces(spec: dict, pieces: list[dict]) -> Iterator:
    """Arrow record batches of (the raw bytes of a line, the file's URI), every line of every piece
    (a whole file) in order, many files to a batch."""
    import pyarrow as pa

    schema = lines_arrow_schema()
    values: list[bytes] = []
    sources: list[str] = []

    def flush():
        batch = pa.RecordBatch.from_arrays(
            [pa.array(values, type=pa.binary()), pa.array(sources, type=pa.string())], schema=schema
        )
        values.clear()
        sources.clear()
        return batch

    for piece in pieces:
        lines = split_lines(_read_whole(piece))
        values.extend(lines)
        sources.extend([piece["uri"]] * len(lines))
        if len(values) >= BATCH_ROWS:
            yield flush()
    if values:
        yield flush()


# What ``json_keys`` says of a line besides its keys.
NEEDS_SPARK, REPEATED_KEY = "needs_spark", "repeated_key"
KEYS_DDL = "key string, finding string"


class _Object(list):
    """A JSON object as its (key, value) pairs, in order: repeated keys stay visible."""


def _not_standard(name: str):
    raise ValueError(name)


def json_keys(line: bytes) -> tuple[list[str], str | None]:
    """(the top-level keys, a finding) of one JSON line as Spark's schema inference sees it
    (every primitive a string): a flat object gives its keys (an empty key is dropped, as Spark
    drops it). A blank line, or a line that is valid JSON but not an object, gives no key.
    ``NEEDS_SPARK``: the line has a nested value, or is one Python's strict parser cannot vouch
    for the way Jackson reads it (not UTF-8, single quotes, NaN, trailing text): Spark's own
    inference must read the input. ``REPEATED_KEY`` with that key: an object repeats it."""
    import json

    if line.endswith(b"\r"):
        line = line[:-1]
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return [], NEEDS_SPARK
    if text.strip(" ") == "":
        return [], None
    try:
        value = json.loads(text, object_pairs_hook=_Object, parse_constant=_not_standard)
    except ValueError:
        return [], NEEDS_SPARK
    if isinstance(value, _Object):
        keys = [k for k, _ in value]
        if any(isinstance(v, list) for _, v in value):  # an object (_Object) or an array
            return [], NEEDS_SPARK
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                return [key], REPEATED_KEY
            seen.add(key)
        return [k for k in keys if k != ""], None
    if isinstance(value, list):  # Spark reads the objects of a top-level array as records
        return [], NEEDS_SPARK
    return [], None


def json_key_pieces(spec: dict, pieces: list[dict]) -> Iterator:
    """One Arrow record batch per task: every distinct top-level key of its lines, and the findings
    of ``json_keys`` (``NEEDS_SPARK`` with a null key; ``REPEATED_KEY`` with the key)."""
    import pyarrow as pa

    found: dict[tuple[str | None, str | None], None] = {}
    for piece in pieces:
        for line in split_lines(_read_whole(piece)):
            keys, finding = json_keys(line)
            if finding == NEEDS_SPARK:  # Spark infers the schema of the whole input: nothing more to learn here
                found = {(None, NEEDS_SPARK): None}
                break
            found.update(dict.fromkeys((k, finding) for k in keys))
        else:
            continue
        break
    if found:
        keys, findings = zip(*found)
        yield pa.RecordBatch.from_arrays(
            [pa.array(list(keys), type=pa.string()), pa.array(list(findings), type=pa.string())],
            names=["key", "finding"],
        )
