"""Map-reduce in DataFrame terms: a partial result per partition, added up on the driver.

Training jobs need a reduction that Spark SQL's aggregates do not express: a sparse
co-occurrence matrix, or the update-weighted rows of two weight matrices. RDD
``mapPartitions`` + ``treeReduce`` do that on a classic session only. Here each partition's
Python function runs inside ``mapInArrow`` (both kinds of session), its result is pickled and
cut into chunks of at most ``CHUNK_BYTES`` (so no Arrow batch nears Spark Connect's 128 MiB
message limit). All tasks run at once into a ``localCheckpoint`` (the chunks stay on the
executors); only then does the driver read them back one partition at a time, rebuilding
and adding one partial at a time: the driver holds the running total and one partial, never
all K of them. (Reading straight from the ``mapInArrow`` would run the tasks one
partition after another, each only when the driver asks for it: K tasks in series.) Large
inputs to the function (weights) travel as shipped files (``io.ship_directory``), not in the
closure.

The checkpoint is kept on the executors' disks, not in their memory, read with one job per
partition (``session_kinds.rows_by_partition``) and freed as soon as it has been read. In
local mode the executors are the driver JVM: a checkpoint in memory put all K partials on the
driver's heap, one left to the garbage collector put every round's there, and a classic
``toLocalIterator`` kept every partition it had served (sgns on 8 partitions ran out of a
6 GB heap after five rounds).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame

from textmill.runtime.session_kinds import release_checkpoint, rows_by_partition

CHUNK_BYTES = 16 * 2**20
SCHEMA = "part int, seq int, chunk binary"


def list_column(batches: Iterator[pa.RecordBatch], column: str) -> Iterator[np.ndarray]:
    """The values of an ``array<int>`` column, one int64 array per row, over ``batches``."""
    for batch in batches:
        values = batch.column(column)
        offsets = values.offsets.to_numpy()
        flat = values.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        for i in range(len(values)):
            yield flat[offsets[i] : offsets[i + 1]]


def sum_partitions(
    df: DataFrame, task: Callable[[Iterator[pa.RecordBatch], int], Any], add: Callable[[Any, Any], Any]
) -> Any:
    """``add``-reduce of ``task(batches, partition_id)`` over the partitions of ``df`` (None when
    every task returned None, which a task does for nothing to add)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        partial = task(batches, part)
        if partial is None:
            return
        data = pickle.dumps(partial, protocol=pickle.HIGHEST_PROTOCOL)
        for seq, start in enumerate(range(0, len(data), CHUNK_BYTES)):
            yield pa.record_batch(
                [
                    pa.array([part], pa.int32()),
                    pa.array([seq], pa.int32()),
                    pa.array([data[start : start + CHUNK_BYTES]], pa.binary()),
                ],
                names=["part", "seq", "chunk"],
            )

    total = None
    current, chunks = None, []

    def finish() -> None:
        nonlocal total
        if chunks:
            partial = pickle.loads(b"".join(chunks))
            total = partial if total is None else add(total, partial)

    stored = df.mapInArrow(run, SCHEMA).localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)
    try:
        for row in rows_by_partition(stored):
            if row["part"] != current:
                finish()
                current, chunks = row["part"], []
            chunks.append(bytes(row["chunk"]))
        finish()
    finally:
        release_checkpoint(stored)
    return total
