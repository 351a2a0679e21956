"""watch vs the batch jobs: the AG News test descriptions (7,600 docs) split into 50 CSV files.

Contenders, in one warm Spark session on local[*], each writing Parquet and logging to MLflow
as a user's run would:

- (a) the batch jobs: ``prepare`` on the 50 files, then ``ner`` on its output;
- (b) ``watch`` with steps ``prepare -> ner``, ``available_now``, all 50 files in one batch;
- (c) the same watch with ``max_files_per_batch: 10`` (5 micro-batches), for the per-batch cost;
- (d) as (c) with ``duplicates_across_batches: false``, for the cost of the cross-batch doc_id check.

Per-batch overhead = (wall of c - wall of b) / (5 - 1). Prints JSON with docs/s of each and the
ratios b/a and c/a (the goal is >= 0.8).

python tests/benchmarks/bench_watch.py [--files 50] [--batch-files 10]
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
from pathlib import Path

from common import REPO, SHARED, report, require, timer

AG = require(SHARED / "ag_news" / "test.csv")


def split(into: Path, files: int) -> int:
    """AG News test.csv as ``files`` header-less CSV files of near-equal size; returns the rows."""
    with AG.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    into.mkdir(parents=True)
    for f in range(files):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows[f::files])
        (into / f"part-{f:03d}.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--batch-files", type=int, default=10)
    args = parser.parse_args()

    from textmill.jobs import get_job, run_job
    from textmill.runtime.config import load_conf
    from textmill.runtime.session import get_spark
    from textmill.streaming.batches import BatchLog

    prepare_keys = ["spark.ui_enabled=false", "mlflow.experiment=textmill-bench-watch"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = split(tmp / "inbox", args.files)
        conf = lambda job, path, *sets: load_conf(
            get_job(job).conf_model, path, env="local", overrides=[*prepare_keys, *sets]
        )
        prepare_conf = conf(
            "prepare",
            REPO / "conf" / "prepare_ag_news.yaml",
            f"io.input={tmp / 'inbox'}",
            f"io.output={tmp / 'prepared'}",
        )
        ner_conf = conf(
            "ner", REPO / "conf" / "ner.yaml", f"io.input={tmp / 'prepared'}", f"io.output={tmp / 'entities'}"
        )
        # watch takes the same prepare section as the batch job (AG columns, label map, cleaning).
        ag = prepare_conf.prepare.model_dump(mode="json")

        def watch_conf(name: str, inbox: Path, files_per_batch: int | None = None, dedupe: bool = True):
            watch = {"inbox": str(inbox), "steps": ["prepare", "ner"], "duplicates_across_batches": dedupe}
            if files_per_batch:
                watch["max_files_per_batch"] = files_per_batch
            return load_conf(
                get_job("watch").conf_model,
                REPO / "conf" / "watch.yaml",
                env="local",
                overrides={
                    "io": {"output": str(tmp / name)},
                    "prepare": ag,
                    "watch": watch,
                    "spark": {"ui_enabled": False},
                    "mlflow": {"experiment": "textmill-bench-watch"},
                },
            )

        spark = get_spark(prepare_conf.spark, "textmill-bench-watch")
        # Warm-up: Python workers with spaCy loaded, JIT, the MLflow store (a watch on a copy of 2 files).
        warm = tmp / "warm"
        warm.mkdir()
        for f in sorted((tmp / "inbox").iterdir())[:2]:
            (warm / f.name).write_bytes(f.read_bytes())
        run_job("watch", watch_conf("warm-out", warm), spark)

        batch: dict = {}
        with timer(batch):
            prepared = run_job("prepare", prepare_conf, spark)
            entities = run_job("ner", ner_conf, spark)
        batch.update(
            rows_in=prepared["rows_in"],
            rows_out=entities["rows_out"],
            entities=entities["entities"],
            docs_per_second=round(prepared["rows_in"] / batch["wall_seconds"], 1),
        )

        contenders = {}
        for name, files_per_batch, dedupe in (
            ("watch_one_batch", None, True),
            ("watch_batches", args.batch_files, True),
            ("watch_batches_no_dedupe", args.batch_files, False),
        ):
            result: dict = {}
            with timer(result):
                metrics = run_job("watch", watch_conf(name, tmp / "inbox", files_per_batch, dedupe), spark)
            records = BatchLog(spark, str(tmp / name)).records()
            result.update(
                batches=int(metrics["batches"]),
                rows_in=int(metrics["total_rows_in"]),
                rows_out=int(metrics["total_rows_out"]),
                entities=sum(r["steps"]["ner"]["entities"] for r in records),
                batch_seconds=[r["seconds"] for r in records],
                max_model_loads_per_worker=metrics.get("max_model_loads_per_worker"),
                docs_per_second=round(metrics["total_rows_in"] / result["wall_seconds"], 1),
            )
            contenders[name] = result

    one, many = contenders["watch_one_batch"], contenders["watch_batches"]
    report(
        "watch_ag_news",
        {
            "input": {"file": str(AG), "rows": rows, "files": args.files},
            "batch_jobs_prepare_then_ner": batch,
            "watch_prepare_ner_one_batch": one,
            f"watch_prepare_ner_{args.batch_files}_files_per_batch": many,
            f"watch_prepare_ner_{args.batch_files}_files_per_batch_without_cross_batch_dedupe": contenders[
                "watch_batches_no_dedupe"
            ],
            "ratio_watch_one_batch_over_batch_jobs": round(one["docs_per_second"] / batch["docs_per_second"], 3),
            "ratio_watch_batches_over_batch_jobs": round(many["docs_per_second"] / batch["docs_per_second"], 3),
            "per_batch_overhead_seconds": round(
                (many["wall_seconds"] - one["wall_seconds"]) / max(1, many["batches"] - one["batches"]), 2
            ),
            "note": "same warm Spark session; each contender is one or two textmill runs with MLflow logging; ner = en_core_web_sm ner only",
        },
    )


if __name__ == "__main__":
    main()
