"""The fixed cost of one job: a 2-row ``textmill run prepare`` against the plain PySpark floor.

python tests/benchmarks/bench_tiny_job.py [--repeats 5] [--compare DIR]

Contenders, each a fresh process, run interleaved (A, B, C, A, B, C, ...) so that a noisy
moment hits all of them:
- ``textmill_first_run``: ``textmill run prepare`` on a 2-row CSV in a new folder, so it also
  creates its MLflow sqlite store (what every subprocess test and a user's first run pay);
- ``textmill_store_exists``: the same into a new output, with the store already there;
- ``pyspark_floor``: a plain PySpark script that starts a ``local[*]`` session, reads the same
  CSV and writes Parquet (the least any Spark job on this machine pays);
- with ``--compare DIR`` (another checkout, e.g. a ``git worktree`` of an older commit), also
  ``textmill_first_run_compared``: the same first run with that checkout's ``libs/`` first on the path.

Reports each contender's median wall seconds (and textmill's own "done in" seconds) and the
ratios to the floor; the target of issue 38 is textmill_first_run / pyspark_floor <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, report  # noqa: E402

FLOOR = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[*]").appName("floor").config("spark.ui.enabled", "false")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
spark.read.option("header", True).csv(sys.argv[1]).write.parquet(sys.argv[2])
spark.stop()
"""


def clean_env(libs: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    if libs is not None:  # the driver and Spark's Python workers (which inherit PYTHONPATH) import it first
        env["PYTHONPATH"] = os.pathsep.join([str(libs), *filter(None, [os.environ.get("PYTHONPATH")])])
    for variable in ("MLFLOW_TRACKING_URI", "SPARK_REMOTE", "TEXTMILL_LOG_LEVEL", "TEXTMILL_VERBOSITY"):
        env.pop(variable, None)
    return env


def timed(cmd: list[str], cwd: Path, libs: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(libs), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def textmill(folder: Path, source: Path, output: str, libs: Path | None = None) -> tuple[float, float]:
    cmd = [
        sys.executable,
        "-m",
        "textmill.cli",
        "run",
        "prepare",
        "--conf",
        str(REPO / "conf" / "prepare.yaml"),
        "--set",
        f"io.input={source}",
        "--set",
        f"io.output={folder / output}",
        "--set",
        "prepare.columns.doc_id=id",
        "--set",
        "spark.ui_enabled=false",
        "--json",
    ]
    wall, proc = timed(cmd, folder, libs)
    return wall, json.loads(proc.stdout)["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout whose textmill also runs the first run")
    args = parser.parse_args()
    compared = "textmill_first_run_compared" if args.compare else None
    times: dict[str, list[float]] = {"textmill_first_run": [], "textmill_store_exists": [], "pyspark_floor": []}
    inside: dict[str, list[float]] = {"textmill_first_run": [], "textmill_store_exists": []}
    if compared:
        times[compared], inside[compared] = [], []
    with tempfile.TemporaryDirectory(prefix="bench-tiny-job-") as tmp:
        source = Path(tmp) / "in.csv"
        source.write_text("id,text\n1,the first document\n2,the second document\n")
        for i in range(args.repeats):
            folder = Path(tmp) / f"run{i}"
            folder.mkdir()
            for name, output in (("textmill_first_run", "out-a"), ("textmill_store_exists", "out-b")):
                wall, job = textmill(folder, source, output)
                times[name].append(wall)
                inside[name].append(job)
            if compared:
                old = folder / "compared"
                old.mkdir()
                wall, job = textmill(old, source, "out", libs=args.compare.resolve() / "libs")
                times[compared].append(wall)
                inside[compared].append(job)
            wall, _ = timed([sys.executable, "-c", FLOOR, str(source), str(folder / "floor")], folder)
            times["pyspark_floor"].append(wall)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), file=sys.stderr)
    median = {name: round(statistics.median(values), 2) for name, values in times.items()}
    floor = median["pyspark_floor"]
    report(
        "bench_tiny_job",
        {
            "input": "a 2-row CSV; textmill run prepare with conf/prepare.yaml, spark.ui_enabled=false",
            "compared": str(args.compare) if args.compare else None,
            "repeats": args.repeats,
            "median_wall_seconds": median,
            "median_seconds_inside_the_job": {k: round(statistics.median(v), 2) for k, v in inside.items()},
            "wall_seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "ratio_to_pyspark_floor": {k: round(v / floor, 2) for k, v in median.items() if k != "pyspark_floor"},
            "note": "fresh processes, interleaved; the floor starts local[*], reads the CSV and writes Parquet",
        },
    )


if __name__ == "__main__":
    main()
