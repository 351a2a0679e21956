"""The long fuzz profile of prepare's readers (``make fuzz``): the CI properties of
``tests/test_fuzz_prepare.py`` with many more examples and a seed of your choice.

    python tests/benchmarks/fuzz_prepare.py --parser-examples 20000 --job-examples 600 --seed 1

Prints one JSON object: examples run per level, seconds, and the first falsifying example of
each level (Hypothesis shrinks it) or null. Exit 1 when an invariant failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from fuzz_corpora import FORMATS, corpora  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402


def run_level(name: str, body, examples: int, seed_value: int, formats: list[str]) -> dict:
    count = 0

    @seed(seed_value)
    @given(corpus=corpora(formats))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def prop(corpus):
        nonlocal count
        count += 1
        body(corpus)

    started = time.time()
    failure = None
    try:
        prop()
    except Exception as exc:  # noqa: BLE001 - reported as the level's falsifying example
        failure = "".join(traceback.format_exception_only(type(exc), exc))[-4000:]
        print(f"{name}: FAILED\n{failure}", file=sys.stderr)
    return {"examples_run": count, "seconds": round(time.time() - started, 1), "failure": failure}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parser-examples", type=int, default=20000)
    parser.add_argument("--job-examples", type=int, default=600)
    parser.add_argument("--seed", type=int, default=int(time.strftime("%Y%m%d")))
    args = parser.parse_args()

    from test_fuzz_prepare import CSV_FORMATS, check_job_example, check_parsed

    result = {
        "benchmark": "fuzz_prepare",
        "date": time.strftime("%Y-%m-%d"),
        "seed": args.seed,
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
    }
    result["parser"] = run_level(
        "parser", lambda c: [check_parsed(c, f) for f in c.files], args.parser_examples, args.seed, CSV_FORMATS
    )

    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    spark = get_spark(
        SparkConf(master="local[2]", shuffle_partitions=2, ui_enabled=False, driver_memory="2g"),
        app_name="textmill-fuzz",
    )
    spark.sparkContext.setLogLevel("ERROR")
    store = Path(tempfile.mkdtemp(prefix="textmill-fuzz-mlflow-"))
    uri = f"sqlite:///{store / 'mlflow.db'}"

    result["job"] = run_level(
        "job", lambda corpus: check_job_example(spark, uri, corpus), args.job_examples, args.seed, FORMATS
    )
    spark.stop()
    shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 1 if result["parser"]["failure"] or result["job"]["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
