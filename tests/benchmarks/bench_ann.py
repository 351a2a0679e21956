"""Nearest neighbours: textmill build_index + neighbors vs one Annoy index vs brute force vs Spark LSH.

Datasets (same vectors for every method):
- ``clustered_100k``: 100,000 vectors, dim 100, a mixture of 1,000 Gaussian clusters (seeded);
- ``word_vectors``: textmill's IMDB word vectors, when ``out/benchmarks/word_vectors/export``
  exists (written by bench_embeddings.py).

For each: textmill ``build_index`` (``--shards``, default 2, auto-tuned to recall@10 >= 0.95) and the
all-items kNN graph with ``neighbors`` on ``local[*]``, run twice (the first job in a session
pays one-time warm-up costs; the second is the steady state), plus the same sharded search
in this one process (its cost per query without Spark); a single Annoy index in one process
with the same total trees, ``search_k`` raised until its recall matches textmill's; exact
blocked brute force (numpy matrix products); ``BucketedRandomProjectionLSH.approxSimilarityJoin``
for 1,000 sampled queries on unit vectors. Recall@10 is measured on the same 1,000 queries.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import REPO, report, timer

K = 10


def clustered(n: int = 100_000, dim: int = 100, centers: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)).astype(np.float32)
    return (means[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)


def run_dataset(
    spark,
    name: str,
    vectors: np.ndarray,
    tmp: Path,
    skip_lsh: bool,
    bucket_length: float = 0.05,
    skip_exact_all: bool = False,
    shards: int = 2,
) -> dict:
    from annoy import AnnoyIndex

    from textmill.jobs import run_job
    from textmill.vectors import ann

    n, dim = vectors.shape
    ids = [f"x{i:07d}" for i in range(n)]  # sorted order == row order, so item i is row i
    src = tmp / f"{name}_vectors"
    src.mkdir()
    pq.write_table(pa.table({"id": ids, "vector": list(vectors)}), src / "part-0.parquet")
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(n, size=1000, replace=False))
    exact_sample = ann.exact_topk(vectors[sample], vectors, K, "angular", exclude=sample)
    base = {
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "bench-ann"},
    }
    result: dict = {"items": n, "dim": dim}

    started = time.perf_counter()
    built = run_job(
        "build_index",
        {
            **base,
            "io": {"input": str(src), "output": str(tmp / f"{name}_index")},
            "index": {"shards": shards, "recall": {"queries": 1000, "k": K}, "tune": {"target_recall": 0.95}},
        },
        spark,
    )
    build_wall = time.perf_counter() - started
    manifest = ann.Manifest.load(tmp / f"{name}_index")
    # The first neighbors job in a session pays one-time costs (JVM code generation, Python
    # workers importing pyarrow and the index module); the second is the steady state.
    knn_walls = []
    for run in ("cold", "warm"):
        started = time.perf_counter()
        run_job(
            "neighbors",
            {
                **base,
                "io": {"input": str(src), "output": str(tmp / f"{name}_knn_{run}")},
                "neighbors": {"index": str(tmp / f"{name}_index"), "k": K},
            },
            spark,
        )
        knn_walls.append(time.perf_counter() - started)
    knn = spark.read.parquet(str(tmp / f"{name}_knn_cold"))
    rows = {
        r.id: [int(x.id[1:]) for x in r.neighbors] for r in knn.where(knn.id.isin([ids[i] for i in sample])).collect()
    }
    textmill_recall = ann.recall_at_k([rows[ids[i]] for i in sample], exact_sample)
    result["textmill"] = {
        "shards": shards,
        "n_trees_per_shard": manifest.n_trees,
        "search_k": manifest.search_k,
        "build_job_seconds": round(build_wall, 1),
        "build_index_metric_seconds": round(built["build_seconds"], 1),
        "knn_all_items_seconds_first_job": round(knn_walls[0], 1),
        "knn_all_items_seconds_second_job": round(knn_walls[1], 1),
        "queries_per_second": round(n / knn_walls[0]),
        "queries_per_second_second_job": round(n / knn_walls[1]),
        "recall_at_10": round(textmill_recall, 4),
    }
    # The same scatter-gather search in this one process, to separate search cost from Spark's.
    searcher = ann.IndexSearcher(str(tmp / f"{name}_index"))
    started = time.perf_counter()
    for start in range(0, n, 10_000):
        stop = min(start + 10_000, n)  # ids sort in row order, so row i is item i
        searcher.neighbors(
            pa.record_batch([pa.array(ids[start:stop]), pa.array(np.arange(start, stop))], names=["id", "item"]),
            K,
            None,
            "items",
            True,
        )
    result["textmill"]["search_one_core_queries_per_second"] = round(n / (time.perf_counter() - started))

    # One Annoy index in one process: same total trees, search_k raised until recall matches textmill's.
    single = AnnoyIndex(dim, "angular")
    single.set_seed(42)
    with timer(t := {}, "build_seconds"):
        for i, v in enumerate(vectors):
            single.add_item(i, v)
        single.build(manifest.n_trees * shards, n_jobs=1)
    chosen = None
    for factor in (1, 2, 4, 8, 16, 32, 64):
        search_k = factor * K * manifest.n_trees * shards
        found = [single.get_nns_by_item(int(i), K + 1, search_k=search_k)[1:] for i in sample]
        recall = ann.recall_at_k(found, exact_sample)
        chosen = (search_k, recall)
        if recall >= textmill_recall:
            break
    search_k, recall = chosen
    started = time.perf_counter()
    for i in range(n):
        single.get_nns_by_item(i, K + 1, search_k=search_k)
    single_seconds = time.perf_counter() - started
    result["single_annoy_one_process"] = {
        "n_trees": manifest.n_trees * shards,
        "search_k": search_k,
        "recall_at_10": round(recall, 4),
        "build_seconds": t["build_seconds"],
        "knn_all_items_seconds": round(single_seconds, 1),
        "queries_per_second": round(n / single_seconds),
    }

    if skip_exact_all:
        result["exact_brute_force_numpy"] = "skipped (--skip-exact-all)"
    else:
        with timer(b := {}, "knn_all_items_seconds"):
            ann.exact_topk(vectors, vectors, K, "angular", exclude=np.arange(n))
        result["exact_brute_force_numpy"] = {
            **b,
            "queries_per_second": round(n / b["knn_all_items_seconds"]),
            "recall_at_10": 1.0,
        }

    if not skip_lsh:
        from pyspark.ml.feature import BucketedRandomProjectionLSH
        from pyspark.ml.linalg import Vectors, VectorUDT
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        unit = ann.normalize(vectors)
        schema = T.StructType([T.StructField("item", T.LongType()), T.StructField("features", VectorUDT())])
        frame = spark.createDataFrame([(i, Vectors.dense(v.tolist())) for i, v in enumerate(unit)], schema).cache()
        frame.count()
        queries = frame.where(F.col("item").isin([int(i) for i in sample]))
        # Threshold: the 90th percentile of the true 10th-neighbour distance, so most true neighbours qualify.
        tenth = np.linalg.norm(unit[sample] - unit[exact_sample[:, -1]], axis=1)
        threshold = float(np.quantile(tenth, 0.9))
        lsh = {"bucket_length": bucket_length, "hash_tables": 8, "threshold": round(threshold, 3)}
        started = time.perf_counter()
        model = BucketedRandomProjectionLSH(
            inputCol="features", outputCol="hashes", bucketLength=bucket_length, numHashTables=8, seed=1
        ).fit(frame)
        pairs = (
            model.approxSimilarityJoin(queries, frame, threshold, distCol="d")
            .select(F.col("datasetA.item").alias("q"), F.col("datasetB.item").alias("c"), "d")
            .where("q != c")
            .collect()
        )
        lsh_seconds = time.perf_counter() - started
        by_query: dict[int, list] = {}
        for q, c, d in pairs:
            by_query.setdefault(q, []).append((d, c))
        found = [[c for _, c in sorted(by_query.get(int(i), []))[:K]] for i in sample]
        frame.unpersist()
        result["spark_bucketed_random_projection_lsh"] = {
            **lsh,
            "queries": 1000,
            "seconds": round(lsh_seconds, 1),
            "queries_per_second": round(1000 / lsh_seconds, 1),
            "recall_at_10": round(ann.recall_at_k(found, exact_sample), 4),
        }
    single_qps = result["single_annoy_one_process"]["queries_per_second"]
    result["ratio_textmill_over_single_annoy_queries_per_second"] = round(
        result["textmill"]["queries_per_second"] / single_qps, 3
    )
    result["ratio_textmill_second_job_over_single_annoy"] = round(
        result["textmill"]["queries_per_second_second_job"] / single_qps, 3
    )
    result["ratio_sharded_search_one_core_over_single_annoy"] = round(
        result["textmill"]["search_one_core_queries_per_second"] / single_qps, 3
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--skip-lsh", action="store_true")
    parser.add_argument(
        "--lsh-bucket-length",
        type=float,
        default=0.05,
        help="on unit vectors; 1.0 puts nearly everything in one bucket (a full cross join)",
    )
    parser.add_argument("--skip-words", action="store_true")
    parser.add_argument("--shards", type=int, default=2, help="build_index shards (queries search every shard)")
    parser.add_argument(
        "--skip-exact-all",
        action="store_true",
        help="skip the all-items brute force (minutes); recall still uses exact answers",
    )
    args = parser.parse_args()

    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-ann")
    spark.sparkContext.setLogLevel("ERROR")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        result["clustered_100k"] = run_dataset(
            spark,
            "clustered",
            clustered(args.n),
            Path(tmp),
            args.skip_lsh,
            args.lsh_bucket_length,
            args.skip_exact_all,
            args.shards,
        )
        print(json.dumps(result["clustered_100k"]), flush=True)  # partial result, in case the next dataset fails
        words = REPO / "out" / "benchmarks" / "word_vectors" / "export"
        if args.skip_words:
            result["word_vectors"] = "skipped (--skip-words)"
        elif (words / "embeddings.json").exists():
            from textmill.vectors.docvectors import load_embeddings

            vectors, _, _ = load_embeddings(words)
            result["word_vectors"] = run_dataset(
                spark,
                "words",
                vectors.vectors,
                Path(tmp),
                args.skip_lsh,
                args.lsh_bucket_length,
                args.skip_exact_all,
                args.shards,
            )
        else:
            result["word_vectors"] = f"skipped: {words} not found (run bench_embeddings.py first)"
    spark.stop()
    report("ann", result)


if __name__ == "__main__":
    main()
