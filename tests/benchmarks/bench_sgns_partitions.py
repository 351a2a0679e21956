"""The driver JVM's peak heap while sgns trains, at 2 and 8 partitions (issue 39, item 0).

The regression: ``train_embeddings`` with ``sgns`` and ``embeddings.partitions: 8`` on the IMDB
unlabelled reviews ran out of a 6 GB driver heap after the fifth round. Each round's K partials
(the update-weighted input and output weights, 2 x vocabulary x dim float32 each) stayed on the
driver's heap: the checkpoint in memory, never freed, and a classic ``toLocalIterator`` that kept
every partition it served. Now they are checkpointed to disk, read one partition per job, and freed.

Corpus: ``imdb_unsup/unsup.txt`` (one review per line, the first ``--docs``), as ``text``; the job at
its defaults (dim 100, 5 epochs, PPMI start) with subwords off, as in the issue. Contenders side by
side in one session, after a warm-up job: ``--partitions`` (default 2 and 8). Reported: the driver
JVM's peak heap (the sum of its heap pools' peak usage, reset before each job), training seconds,
final loss, vocabulary; ratios 8 / 2.

python tests/benchmarks/bench_sgns_partitions.py [--docs 50000] [--partitions 2 8] [--epochs 5] [--sample-seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import SHARED, report, require

UNSUP = require(SHARED / "imdb_unsup" / "unsup.txt")


def heap_pools(spark) -> list:
    management = spark._jvm.java.lang.management.ManagementFactory
    pools = management.getMemoryPoolMXBeans()
    heap = spark._jvm.java.lang.management.MemoryType.HEAP
    return [pools.get(i) for i in range(pools.size()) if pools.get(i).getType().equals(heap)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sample-seconds", type=float, default=3.0)
    args = parser.parse_args()

    from textmill.jobs import run_job
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    texts = [line for line in UNSUP.read_text(encoding="utf-8").split("\n") if line][: args.docs]
    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-sgns-partitions")
    spark.sparkContext.setLogLevel("ERROR")
    runtime = spark._jvm.java.lang.Runtime.getRuntime()
    result: dict = {
        "corpus": f"imdb_unsup, first {len(texts)} reviews",
        "settings": f"sgns defaults (dim 100, PPMI start), {args.epochs} epochs, subwords off",
        "driver_max_heap_mb": round(runtime.maxMemory() / 2**20),
        "contenders": {},
        "ratios": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "in"
        src.mkdir()
        pq.write_table(
            pa.table({"doc_id": [f"d{i:06d}" for i in range(len(texts))], "text": texts}), src / "part-0.parquet"
        )
        base = {
            "spark": {"ui_enabled": False},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "bench-sgns-partitions"},
        }

        def train(out: str, docs: Path, **embeddings) -> dict:
            conf = {**base, "io": {"input": str(docs), "output": str(tmp_path / out)}, "embeddings": embeddings}
            return run_job("train_embeddings", conf, spark)

        warm = tmp_path / "warm"
        warm.mkdir()
        pq.write_table(pa.table({"doc_id": ["w"] * 1, "text": [" ".join(texts[:200])]}), warm / "p.parquet")
        train("warm-out", warm, epochs=1, subword={"enabled": False})

        def live_heap_mb() -> float:
            spark._jvm.System.gc()
            return (runtime.totalMemory() - runtime.freeMemory()) / 2**20

        for partitions in args.partitions:
            baseline = live_heap_mb()
            pools = heap_pools(spark)
            for pool in pools:
                pool.resetPeakUsage()
            samples: list[float] = []
            done = threading.Event()

            def sample(samples=samples, done=done) -> None:
                while not done.wait(args.sample_seconds):
                    samples.append(live_heap_mb())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                metrics = train(
                    f"p{partitions}", src, partitions=partitions, epochs=args.epochs, subword={"enabled": False}
                )
            finally:
                done.set()
                sampler.join()
            peak = sum(pool.getPeakUsage().getUsed() for pool in pools) / 2**20
            result["contenders"][f"partitions_{partitions}"] = {
                "driver_live_heap_before_mb": round(baseline),
                "driver_peak_live_heap_mb": round(max(samples, default=baseline)),
                "driver_live_heap_after_mb": round(live_heap_mb()),
                "live_heap_samples": len(samples),
                "driver_peak_heap_mb": round(peak),
                "train_seconds": round(metrics["train_seconds"], 1),
                "final_loss": round(metrics["final_loss"], 4),
                "vocab_size": int(metrics["vocab_size"]),
            }
            print(result["contenders"][f"partitions_{partitions}"], flush=True)
    first, last = (result["contenders"][f"partitions_{p}"] for p in (args.partitions[0], args.partitions[-1]))
    result["ratios"]["peak_live_heap_last_over_first"] = round(
        last["driver_peak_live_heap_mb"] / first["driver_peak_live_heap_mb"], 3
    )
    result["ratios"]["peak_heap_last_over_first"] = round(last["driver_peak_heap_mb"] / first["driver_peak_heap_mb"], 3)
    result["ratios"]["train_seconds_last_over_first"] = round(last["train_seconds"] / first["train_seconds"], 3)
    spark.stop()
    report("sgns_partitions", result)


if __name__ == "__main__":
    main()
