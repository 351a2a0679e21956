"""Helpers shared by the benchmark scripts: timing, peak RSS, JSON output, MLflow logging.

Benchmarks are not tests: they run on the real corpora in ../shared/data, print one JSON
document, log it to MLflow (experiment ``textmill-benchmarks``), and report ratios, because
absolute times on shared machines are noisy.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Jobs export MLFLOW_TRACKING_URI when they run; benchmark results go where the user pointed.
TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
SHARED = Path(os.environ.get("TEXTMILL_SHARED", REPO.parent / "shared")) / "data"


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"benchmark input missing: {path} (set TEXTMILL_SHARED to the folder holding data/)")
    return path


@contextmanager
def timer(result: dict[str, Any], key: str = "wall_seconds") -> Iterator[None]:
    start = time.perf_counter()
    yield
    result[key] = round(time.perf_counter() - start, 3)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_conf(inp: Path, out: Path, fmt: str, *overrides: str):
    """``conf/prepare.yaml`` for a benchmark run: local env, UI off, the given format and overrides."""
    from textmill.pipelines.prepare import PrepareJobConf
    from textmill.runtime.config import load_conf

    return load_conf(
        PrepareJobConf,
        REPO / "conf" / "prepare.yaml",
        env="local",
        overrides=[
            f"io.input={inp}",
            f"io.output={out}",
            "spark.ui_enabled=false",
            f"prepare.format={fmt}",
            *overrides,
        ],
    )


def live_heap_mb(spark, readings: int = 5) -> float:
    """The driver JVM's live heap after a full collection (a classic session only): the least of
    ``readings`` readings, as objects py4j and Spark release a moment later vary single readings by
    ~60 MB. Shared by the benchmarks and the memory tests (tests/test_partials.py)."""
    runtime = spark._jvm.java.lang.Runtime.getRuntime()
    found = []
    for _ in range(readings):
        gc.collect()
        spark._jvm.System.gc()
        found.append((runtime.totalMemory() - runtime.freeMemory()) / 2**20)
        time.sleep(0.1)
    return min(found)


def report(name: str, result: dict[str, Any]) -> None:
    """Print the JSON, write it under out/benchmarks/, and log it to MLflow."""
    import mlflow

    from textmill.runtime.tracking import ensure_experiment

    result = {"benchmark": name, "machine": machine(), **result}
    text = json.dumps(result, indent=2, sort_keys=False)
    print(text)
    out = REPO / "out" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(text)
    mlflow.set_tracking_uri(TRACKING_URI)
    with mlflow.start_run(experiment_id=ensure_experiment("textmill-benchmarks", None), run_name=name):
        mlflow.log_dict(result, f"{name}.json")
        flat = {}
        for section, values in result.items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items() if isinstance(v, (int, float))})
            elif isinstance(values, (int, float)):
                flat[section] = values
        mlflow.log_metrics(flat)
