"""Constant memory at a million documents: ``prepare -> ner`` at 60,800 and ~1,000,000 docs.

Corpus: the 7,600 AG News test rows repeated, each copy under a new id (a CSV with an ``id``
column, read with ``conf/prepare_ag_news.yaml`` and ``columns.doc_id: id``), so the texts are
real short news descriptions and no row is a duplicate. Each size runs in its own Python
process with its own Spark JVM (``local[*]``), so every peak below belongs to one size:

- docs/s of ``prepare`` and of ``ner`` (the job's wall time, session start excluded);
- the peak RSS of the Python workers (textmill's worker report: spaCy loaded once each);
- the driver's peak RSS: the Python driver process (``ru_maxrss``) and the Spark driver JVM
  (``VmHWM`` from /proc), to show nothing is collected in proportion to the corpus.

With ``--driver-memory 1g`` the driver JVM's heap is capped (``spark.driver_memory``; the
default is a quarter of RAM): a run that finishes under the cap shows the driver holds
nothing in proportion to the corpus, whatever its resident size grows to without one.

python tests/benchmarks/bench_scale.py [--sizes 60800 1000000] [--driver-memory 1g]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED, report, require, self_peak_rss_mb

AG = require(SHARED / "ag_news" / "test.csv")


def write_corpus(path: Path, n: int) -> None:
    with AG.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        for i in range(n):
            writer.writerow([f"ag{i:08d}", *rows[i % len(rows)]])


def jvm_peak_rss_mb(spark) -> float | None:
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if proc is None:
        return None
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def one_size(n: int, driver_memory: str | None = None) -> dict:
    from textmill.jobs import get_job, run_job
    from textmill.runtime.config import load_conf
    from textmill.runtime.session import get_spark

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "raw").mkdir()
        write_corpus(tmp / "raw" / "ag.csv", n)
        common = [
            "spark.ui_enabled=false",
            "mlflow.experiment=textmill-bench-scale",
            f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        ]
        if driver_memory:
            common.append(f"spark.driver_memory={driver_memory}")
        prepare = load_conf(
            get_job("prepare").conf_model,
            REPO / "conf" / "prepare_ag_news.yaml",
            env="local",
            overrides=[
                *common,
                f"io.input={tmp / 'raw'}",
                f"io.output={tmp / 'prepared'}",
                "prepare.columns.doc_id=id",
                "prepare.csv.columns=[id, class, title, description]",
            ],
        )
        ner = load_conf(
            get_job("ner").conf_model,
            REPO / "conf" / "ner.yaml",
            env="local",
            overrides=[*common, f"io.input={tmp / 'prepared'}", f"io.output={tmp / 'entities'}"],
        )
        spark = get_spark(prepare.spark, f"textmill-bench-scale-{n}")
        spark.sparkContext.setLogLevel("ERROR")
        result: dict = {"docs": n, "driver_memory": driver_memory or "default (a quarter of RAM)"}
        started = time.perf_counter()
        p = run_job("prepare", prepare, spark)
        seconds = time.perf_counter() - started
        result["prepare"] = {
            "wall_seconds": round(seconds, 1),
            "docs_per_second": round(n / seconds, 1),
            "rows_in": p["rows_in"],
            "rows_out": p["rows_out"],
            "rows_quarantined": p["rows_quarantined"],
        }
        started = time.perf_counter()
        m = run_job("ner", ner, spark)
        seconds = time.perf_counter() - started
        result["ner"] = {
            "wall_seconds": round(seconds, 1),
            "docs_per_second": round(m["rows_in"] / seconds, 1),
            "rows_in": m["rows_in"],
            "rows_out": m["rows_out"],
            "partitions": m["partitions"],
            "entities": m["entities"],
            "model_loads": m["model_loads"],
            "python_workers": m["python_workers"],
            "worker_peak_rss_mb": round(m["worker_peak_rss_mb"], 1),
        }
        result["driver_python_peak_rss_mb"] = round(self_peak_rss_mb(), 1)
        result["driver_jvm_peak_rss_mb"] = round(jvm_peak_rss_mb(spark) or 0, 1)
        spark.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_800, 1_000_000])
    parser.add_argument("--driver-memory", help="cap the driver JVM heap, e.g. 1g")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_size(args.one, args.driver_memory)), flush=True)
        return
    runs = []
    for n in args.sizes:
        cap = ["--driver-memory", args.driver_memory] if args.driver_memory else []
        out = subprocess.run([sys.executable, __file__, "--one", str(n), *cap], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if out.returncode or line is None:
            sys.exit(f"size {n} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        runs.append(json.loads(line[len("RESULT ") :]))
        print(f"size {n}: {runs[-1]}", file=sys.stderr, flush=True)
    result = {"corpus": f"{AG} rows repeated under unique ids", "runs": runs}
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        result["worker_peak_rss_growth"] = round(
            large["ner"]["worker_peak_rss_mb"] / small["ner"]["worker_peak_rss_mb"] - 1, 3
        )
        result["driver_jvm_peak_rss_growth"] = round(
            large["driver_jvm_peak_rss_mb"] / small["driver_jvm_peak_rss_mb"] - 1, 3
        )
        result["driver_python_peak_rss_growth"] = round(
            large["driver_python_peak_rss_mb"] / small["driver_python_peak_rss_mb"] - 1, 3
        )
    report("scale", result)


if __name__ == "__main__":
    main()
