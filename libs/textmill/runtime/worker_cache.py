"""Per-Python-worker model cache, and the worker report that proves it.

Spark pickles a UDF's closure afresh for every task, so anything cached inside the closure
is loaded again per task. This module is imported, not pickled: its globals live as long
as the Python worker, which Spark reuses across batches and tasks
(``spark.python.worker.reuse``, on by default). ``get_or_load`` loads each model once per
worker; ``load_count`` says how often that happened.

The worker report carries, per ``host:pid``, the number of model loads, the peak RSS and
the device the worker used back to the driver, which logs it to MLflow. It travels through
the data path, so that it works on classic and Spark Connect sessions alike (Connect has no
accumulators): each task's UDF writes its worker's report as JSON into the extra column
``REPORT_COLUMN`` of its last output row (``with_report``), and ``WorkerReport.observe``
collects the distinct reports with ``DataFrame.observe`` during the job's own write and drops
the column, so no extra pass over the data is made. Values merge with ``max``, so a retried
task never inflates them.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_cache: dict[tuple, Any] = {}
_load_counts: dict[tuple, int] = {}
_lock = threading.Lock()


def get_or_load(key: tuple, loader: Callable[[], T]) -> T:
    """Return the cached object for ``key``, calling ``loader`` only the first time in this process."""
    with _lock:
        if key not in _cache:
            logger.info("loading %s in pid %d", key, os.getpid())
            _cache[key] = loader()
            _load_counts[key] = _load_counts.get(key, 0) + 1
        return _cache[key]


def load_count(key: tuple) -> int:
    return _load_counts.get(key, 0)


def total_loads() -> int:
    return sum(_load_counts.values())


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


REPORT_COLUMN = "_tm_worker"


def merge_reports(into: dict[str, dict], update: dict[str, dict]) -> dict[str, dict]:
    """Merge ``{worker_id: {"loads": int, "peak_rss_mb": float, "device": str}}`` reports, numbers by ``max``."""
    for worker, stats in update.items():
        merged = dict(into.get(worker, {}))
        for name, value in stats.items():
            old = merged.get(name)
            merged[name] = value if old is None or not isinstance(value, (int, float)) else max(old, value)
        into[worker] = merged
    return into


def worker_report_json(key: tuple, **extra: Any) -> str:
    """This worker's report for ``key`` (its load count, peak RSS and ``extra``), as one JSON value."""
    return json.dumps({worker_id(): {"loads": load_count(key), "peak_rss_mb": peak_rss_mb(), **extra}}, sort_keys=True)


def with_report(batches: Iterator[T], attach: Callable[[T, str], T], key: tuple, **extra: Any) -> Iterator[T]:
    """Yield ``batches`` unchanged, except that the task's last non-empty batch gets this worker's
    report in its last row (``attach(batch, report_json)``), made once the input has ended.

    One batch is held back until the next arrives, so the report can wait for the end without
    changing the row count; empty batches pass through at once."""
    held = None
    for batch in batches:
        if len(batch) == 0:
            yield batch
            continue
        if held is not None:
            yield held
        held = batch
    if held is not None:
        yield attach(held, worker_report_json(key, **extra))


def attach_to_frame(frame, report: str):
    """``with_report``'s ``attach`` for a pandas DataFrame with a ``REPORT_COLUMN`` of nulls."""
    frame[REPORT_COLUMN] = [None] * (len(frame) - 1) + [report]
    return frame


def with_report_column(batch):
    """A pyarrow RecordBatch or StructArray with a last, all-null ``REPORT_COLUMN`` (string)."""
    import pyarrow as pa

    column = pa.nulls(len(batch), pa.string())
    if isinstance(batch, pa.RecordBatch):
        return batch.append_column(REPORT_COLUMN, column)
    fields = [batch.field(i) for i in range(batch.type.num_fields)]
    return pa.StructArray.from_arrays(
        [*fields, column],
        names=[*[f.name for f in batch.type], REPORT_COLUMN],
        mask=batch.is_null() if batch.null_count else None,
    )


def attach_to_batch(batch, report: str):
    """``with_report``'s ``attach`` for a pyarrow RecordBatch or StructArray whose last field is ``REPORT_COLUMN``."""
    import pyarrow as pa

    column = pa.array([None] * (len(batch) - 1) + [report], pa.string())
    if isinstance(batch, pa.RecordBatch):
        return batch.set_column(batch.num_columns - 1, REPORT_COLUMN, column)
    fields = [batch.field(i) for i in range(batch.type.num_fields - 1)]
    return pa.StructArray.from_arrays(
        [*fields, column], names=[f.name for f in batch.type], mask=batch.is_null() if batch.null_count else None
    )


class WorkerReport:
    """The per-worker report of one job (or one watch), gathered on the driver with ``observe``.

    ``observe(df)`` is applied to the DataFrame the job writes, whose UDF emits ``REPORT_COLUMN``;
    ``value`` merges every observation whose action has finished (classic and Connect alike)."""

    def __init__(self) -> None:
        self._merged: dict[str, dict] = {}
        self._pending: list[Any] = []

    def observe(self, df, column: str = REPORT_COLUMN):
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        observation = Observation(f"textmill_workers_{uuid.uuid4().hex[:12]}")
        self._pending.append(observation)
        return df.observe(observation, F.collect_set(column).alias("reports")).drop(column)

    @property
    def value(self) -> dict[str, dict]:
        from textmill.runtime.session_kinds import observation_finished

        for observation in [o for o in self._pending if observation_finished(o)]:
            self._pending.remove(observation)
            for report in observation.get.get("reports") or []:
                merge_reports(self._merged, json.loads(report))
        return self._merged


def new_worker_report(spark: Any = None) -> WorkerReport:
    """A WorkerReport for one job's UDFs (made on the driver)."""
    return WorkerReport()


def summarize_workers(report: dict[str, dict]) -> dict[str, float]:
    """Metrics for MLflow from a WorkerReport value."""
    if not report:
        return {"python_workers": 0}
    loads = [s.get("loads", 0) for s in report.values()]
    rss = [s.get("peak_rss_mb", 0.0) for s in report.values()]
    return {
        "python_workers": len(report),
        "model_loads": sum(loads),
        "max_model_loads_per_worker": max(loads),
        "worker_peak_rss_mb": max(rss),
        "workers_on_gpu": sum(1 for s in report.values() if s.get("device") == "gpu"),
    }
