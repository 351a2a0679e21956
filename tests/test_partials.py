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
