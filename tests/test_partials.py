"""Map-reduce partials (``textmill.runtime.partials``): every partition's task runs at the same time.

The regression this guards: streaming the ``mapInArrow`` output with ``toLocalIterator`` ran
one task per partition in series, so sgns and the co-occurrence counts used one core of any
cluster. Here each task waits for every other task to have started (a barrier of files); in
series the first task would wait forever, so it gives up after a minute and the job fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from benchmarks.common import live_heap_mb
from hypothesis import given, settings
from hypothesis import strategies as st

from textmill.runtime import partials


def test_every_partitions_task_runs_at_once_and_the_partials_add_up(spark, tmp_path):
    parts = 2  # the test session is local[2]: two task slots
    barrier = tmp_path / "started"
    barrier.mkdir()
    df = spark.range(0, 1000, numPartitions=parts).selectExpr("array(id) as ids")

    def task(batches, part, barrier=str(barrier), parts=parts):
        from textmill.runtime.partials import list_column

        Path(barrier, str(part)).touch()
        deadline = time.monotonic() + 60
        while len(list(Path(barrier).iterdir())) < parts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"partition {part}: the other tasks never started (tasks ran in series)")
            time.sleep(0.05)
        total = np.zeros(3, dtype=np.int64)
        for ids in list_column(batches, "ids"):
            total += [1, int(ids.sum()), 0]
        total[2] = part
        return total

    got = partials.sum_partitions(df, task, lambda a, b: a + b)
    assert got.tolist() == [1000, sum(range(1000)), sum(range(parts))]
    assert sorted(p.name for p in barrier.iterdir()) == [str(p) for p in range(parts)]


def persisted_rdds(spark) -> set[int]:
    """The ids of the persisted RDDs (other tests' too: compare sets, as a collection may free theirs)."""
    return {int(key) for key in spark.sparkContext._jsc.getPersistentRDDs().keySet()}


@pytest.mark.slow
@settings(max_examples=3, deadline=None)
@given(parts=st.integers(6, 10), rows=st.integers(120_000, 160_000))
def test_the_driver_holds_one_partial_at_a_time_and_nothing_after(spark, parts, rows):
    """sgns on 8 partitions ran the driver out of a 6 GB heap: every call left its checkpoint in
    memory, and a classic ``toLocalIterator`` kept every partition it had served. More
    partitions than the session's 2 cores; each partial is ``rows`` x 32 float32 (15-20 MB)."""
    df = spark.range(0, parts * 10, numPartitions=parts).selectExpr("array(cast(id as int)) as ids")

    def task(batches, part, rows=rows):
        from textmill.runtime.partials import list_column

        seen = sum(len(ids) for ids in list_column(batches, "ids"))
        return np.full((rows, 32), part + 1, dtype=np.float32), seen

    in_memory = []

    def add(a, b):
        # called while the checkpoint is being read: none of it may sit in the executors' memory
        infos = spark.sparkContext._jsc.sc().getRDDStorageInfo()
        in_memory.append(sum(info.memSize() for info in infos if info.id() not in before_rdds))
        return a[0] + b[0], a[1] + b[1]

    before_rdds = persisted_rdds(spark)
    partials.sum_partitions(df, task, add)  # the first call's one-off growth (the plan, the Python runner) is no leak
    before_heap = live_heap_mb(spark)
    for _ in range(3):
        total, seen = partials.sum_partitions(df, task, add)
        assert seen == parts * 10
        assert np.all(total == sum(range(1, parts + 1)))
    one_partial_mb = rows * 32 * 4 / 2**20
    assert in_memory and max(in_memory) == 0, in_memory
    assert not persisted_rdds(spark) - before_rdds
    # three calls of `parts` partials each (a leak kept two copies of each): less than one call's stays live
    assert live_heap_mb(spark) - before_heap < parts * one_partial_mb, (before_heap, one_partial_mb)
