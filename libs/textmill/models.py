"""Per-Python-worker model cache, and the worker report that proves it.

Spark pickles a UDF's closure afresh for every task, so anything cached inside the closure
is loaded again per task. This module is imported, not pickled: its globals live as long
as the Python worker, which Spark reuses across batches and tasks
(``spark.python.worker.reuse``, on by default). ``get_or_load`` loads each model once per
worker; ``load_count`` says how often that happened.

``WorkerReport`` is an accumulator that carries, per ``host:pid``, the number of model
loads, the peak RSS and the device the worker used back to the driver, which logs it to
MLflow. Values merge with ``max``, so a retried task never inflates them.
"""
from __future__ import annotations

import logging
import os
import resource
import socket
import threading
from typing import Any, Callable, TypeVar

from pyspark.accumulators import AccumulatorParam

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


class WorkerReport(AccumulatorParam):
    """Accumulator of ``{worker_id: {"loads": int, "peak_rss_mb": float, "device": str}}``."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, acc: dict, update: dict) -> dict:
        for worker, stats in update.items():
            merged = dict(acc.get(worker, {}))
            for name, value in stats.items():
                old = merged.get(name)
                merged[name] = value if old is None or not isinstance(value, (int, float)) else max(old, value)
            acc[worker] = merged
        return acc


def new_worker_report(spark: Any) -> Any:
    """A WorkerReport accumulator for one job's UDFs (created on the driver)."""
    return spark.sparkContext.accumulator({}, WorkerReport())


def report_worker(report: Any, key: tuple, **extra: Any) -> None:
    """Add this worker's load count for ``key``, its peak RSS and ``extra`` to a WorkerReport accumulator."""
    if report is not None:
        report.add({worker_id(): {"loads": load_count(key), "peak_rss_mb": peak_rss_mb(), **extra}})


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
