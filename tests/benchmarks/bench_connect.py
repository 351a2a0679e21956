"""What a Spark Connect session costs: the same jobs on classic and on Connect, side by side.

- The ``pipeline`` job (the generated sample, ``--n-docs`` documents) run by ``textmill run``
  on a classic ``local[2]`` session and on a Spark Connect server started from the pyspark
  package (``local[2]``, same cores and driver memory), each in its own client process.
- The ``ner`` job alone on ``--ner-docs`` AG News test descriptions (the 7,600 rows repeated
  under new ids, prepared once), on both.

Reports each job's own seconds (from ``--json``: session start excluded), the client process's
wall time, and the ratios Connect / classic (target: at most 1.15 for the pipeline). The
classic client starts its JVM; the Connect server is started once beforehand, as a shared
server would be, and its start time is reported apart.

python tests/benchmarks/bench_connect.py [--n-docs 2000] [--ner-docs 60800] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import write_corpus  # the AG rows repeated under new ids, as bench_scale writes them
from common import REPO, report

sys.path.insert(0, str(REPO / "tests"))
from connect_server import start  # noqa: E402


def textmill(args: list[str], cwd: Path) -> dict:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("SPARK_REMOTE", None)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "textmill.cli", "run", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=7200,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"textmill run {args[0]} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    return {
        "job_seconds": out["seconds"],
        "process_seconds": round(wall, 3),
        "metrics": out["metrics"],
        "steps": {step["name"]: step["seconds"] for step in out.get("steps", [])},
    }


def session_args(kind: str, url: str) -> list[str]:
    return (
        ["--set", f"spark.remote={url}"]
        if kind == "connect"
        else ["--set", "spark.master=local[2]", "--set", "spark.shuffle_partitions=2"]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-docs", type=int, default=2000)
    parser.add_argument("--ner-docs", type=int, default=60800)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    result: dict = {"n_docs": args.n_docs, "ner_docs": args.ner_docs, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        common = [
            "--set",
            f"mlflow.tracking_uri={store}",
            "--set",
            f"mlflow.artifact_location={(tmp / 'art').as_uri()}",
            "--set",
            "spark.ui_enabled=false",
            "--set",
            "spark.driver_memory=2g",
        ]
        started = time.perf_counter()
        url, stop = start(tmp / "server", cores=2, driver_memory="2g")
        result["connect_server_start_seconds"] = round(time.perf_counter() - started, 3)
        try:
            runs: dict[str, list[dict]] = {"classic": [], "connect": []}
            for repeat in range(args.repeats):
                for kind in ("classic", "connect") if repeat % 2 == 0 else ("connect", "classic"):
                    runs[kind].append(
                        textmill(
                            [
                                "pipeline",
                                "--conf",
                                str(REPO / "conf" / "pipeline.yaml"),
                                "--env",
                                "local",
                                "--set",
                                f"io.output={tmp / kind / f'pipeline-{repeat}'}",
                                "--set",
                                f"pipeline.sample.n_docs={args.n_docs}",
                                *common,
                                *session_args(kind, url),
                            ],
                            tmp,
                        )
                    )
            result["pipeline"] = {
                kind: [{k: v for k, v in r.items() if k not in ("metrics", "steps")} for r in rs]
                for kind, rs in runs.items()
            }
            best = {kind: min(r["job_seconds"] for r in rs) for kind, rs in runs.items()}
            result["pipeline_ratio_connect_over_classic"] = round(best["connect"] / best["classic"], 3)
            result["pipeline_step_seconds"] = {
                kind: rs[0]["steps"] for kind, rs in runs.items()
            }  # the pipeline's --json steps

            if args.ner_docs:
                corpus = tmp / "ag.csv"
                write_corpus(corpus, args.ner_docs)
                prepared = tmp / "ag_prepared"
                textmill(
                    [
                        "prepare",
                        "--conf",
                        str(REPO / "conf" / "prepare_ag_news.yaml"),
                        "--env",
                        "local",
                        "--set",
                        f"io.input={corpus}",
                        "--set",
                        f"io.output={prepared}",
                        "--set",
                        "prepare.columns.doc_id=id",
                        "--set",
                        "prepare.csv.columns=[id, class, title, description]",
                        *common,
                        *session_args("classic", url),
                    ],
                    tmp,
                )
                ner = {}
                for kind in ("classic", "connect"):
                    run = textmill(
                        [
                            "ner",
                            "--conf",
                            str(REPO / "conf" / "ner.yaml"),
                            "--env",
                            "local",
                            "--set",
                            f"io.input={prepared}",
                            "--set",
                            f"io.output={tmp / kind / 'ner'}",
                            *common,
                            *session_args(kind, url),
                        ],
                        tmp,
                    )
                    ner[kind] = {
                        "job_seconds": run["job_seconds"],
                        "process_seconds": run["process_seconds"],
                        "docs_per_second": round(args.ner_docs / run["job_seconds"], 1),
                        "entities": run["metrics"].get("entities"),
                        "max_model_loads_per_worker": run["metrics"].get("max_model_loads_per_worker"),
                    }
                result["ner"] = ner
                result["ner_ratio_connect_over_classic"] = round(
                    ner["connect"]["job_seconds"] / ner["classic"]["job_seconds"], 3
                )
        finally:
            stop()
    report("bench_connect", result)


if __name__ == "__main__":
    main()
