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

        return spark.createDataFrame(pa.Table.from_batches(list(read(spec, pieces)), schema=schema))
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
