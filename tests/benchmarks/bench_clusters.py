"""Clustering quality on labelled data: Chinese Whispers (not told k) vs Spark ML KMeans (told k).

``--corpus``: BBC News (2,225 articles, 5 topics, ``../shared/data/bbc_news``, the default),
AG News test (7,600 items, 4 topics), or ``bbc_ag``, both as nine topics. All through textmill's jobs:
``train_embeddings`` on the articles' text -> ``embed_docs`` (SIF-weighted mean vectors) ->
``build_index`` -> ``neighbors`` (items mode, the documents' kNN graph) -> ``cluster`` once per
Chinese Whispers variant in ``VARIANTS``. Next to them, Spark ML ``KMeans(k=5)`` on the same
document vectors (L2-normalised, so its distance matches the graph's cosine), three seeds.
Reported per contender: NMI and adjusted Rand index against the topics (scikit-learn's, a
benchmark-only dependency), clusters found, the largest cluster's share, iterations, how the
rounds stopped (converged, stalled) and the share of nodes changing in the last one. Beside
them, the reference implementation from PyPI (``chinese-whispers``, networkx, sequential)
on the same edges, ``--reference-seeds`` runs: NMI, ARI and seconds, and the ratios.

The topics are used only to score; no variant sees them. Which variants exist, and the
default, were chosen on this same data, so these are not held-out figures.

With ``--words``, also the word vectors ``bench_embeddings.py`` keeps in
``out/benchmarks/word_vectors/export`` (IMDB unlabelled reviews): their kNN graph clustered
by each variant, reported as the share of the vocabulary in the largest cluster, the
singleton share, and a sample of clusters (seeded), since there are no labels to score against.

python tests/benchmarks/bench_clusters.py [--corpus bbc_news|ag_news|bbc_ag] [--k 10] [--variants top log ...]
    [--reference-seeds 3] [--words] [--skip-docs]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "libs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Chinese Whispers settings compared (cluster.* keys); "default" is conf/cluster.yaml as shipped.
VARIANTS: dict[str, dict] = {
    "default": {},
    "top": {"vote": "top", "mutual": False, "min_weight": 0.0, "min_weight_quantile": None, "tolerance": 0.0},
    "lin": {"vote": "lin"},
    "log": {"vote": "log"},
    "mutual": {"mutual": True},
    "quantile_0.5": {"min_weight_quantile": 0.5},
    "log_mutual": {"vote": "log", "mutual": True},
    "log_quantile_0.5": {"vote": "log", "min_weight_quantile": 0.5},
    "log_60": {"vote": "log", "max_iterations": 60},
}


def scores(truth: list[str], found: list) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "nmi": round(float(normalized_mutual_info_score(truth, found)), 4),
        "ari": round(float(adjusted_rand_score(truth, found)), 4),
    }


def cluster_words(spark, run_job, base: dict, tmp: Path, args) -> dict:
    import random

    from textmill.vectors.docvectors import load_embeddings

    export = REPO / "out" / "benchmarks" / "word_vectors" / "export"
    if not export.exists():
        return {"skipped": f"{export} not found (run bench_embeddings.py first)"}
    vectors, _, _ = load_embeddings(export)
    spark.createDataFrame(
        [(w, v.astype(float).tolist()) for w, v in zip(vectors.words, vectors.vectors)],
        "id string, vector array<float>",
    ).write.parquet(str(tmp / "words"))
    run_job("build_index", {**base, "io": {"input": str(tmp / "words"), "output": str(tmp / "words_index")}}, spark)
    run_job(
        "neighbors",
        {
            **base,
            "io": {"input": str(tmp / "words"), "output": str(tmp / "words_knn")},
            "neighbors": {"index": str(tmp / "words_index"), "k": args.k},
        },
        spark,
    )
    out: dict = {"words": len(vectors.words)}
    for name in args.variants:
        path = tmp / f"word_clusters_{name}"
        metrics = run_job(
            "cluster",
            {**base, "io": {"input": str(tmp / "words_knn"), "output": str(path)}, "cluster": VARIANTS[name]},
            spark,
        )
        members: dict[int, list[str]] = {}
        for r in spark.read.parquet(str(path)).collect():
            members.setdefault(r.cluster_id, []).append(r.id)
        rank = {w: i for i, w in enumerate(vectors.words)}  # the export is ordered by frequency
        mid = [c for c, ws in members.items() if 5 <= len(ws) <= 40]
        sample = random.Random(0).sample(mid, min(6, len(mid)))
        out[name] = {
            "clusters": int(metrics["clusters"]),
            "largest_cluster_share": round(metrics["largest_cluster_share"], 4),
            "singleton_share": round(metrics["singleton_share"], 4),
            "iterations": int(metrics["iterations"]),
            "converged": bool(metrics["converged"]),
            "largest_cluster_most_frequent": sorted(members[0], key=rank.get)[:12],
            "sample_clusters": [sorted(members[c], key=rank.get)[:10] for c in sample],
        }
        print(json.dumps({f"words_{name}": {k: v for k, v in out[name].items() if "clusters" != k}}), flush=True)
    return out


def _all(split):
    def rows() -> list[dict]:
        train, test = split()
        return train + test

    return rows


def _corpora() -> dict:
    from bench_baselines import ag_split, bbc_split, many_class_split

    return {"bbc_news": _all(bbc_split), "ag_news": _all(ag_split), "bbc_ag": _all(many_class_split)}


CORPORA = _corpora()


def reference(spark, knn: Path, truth: dict, seeds: int) -> dict:
    """The PyPI ``chinese-whispers`` package (networkx, sequential visiting order, ``top``
    weighting, 30 iterations as textmill's default) on the very edges textmill clusters."""
    import networkx as nx
    from chinese_whispers import chinese_whispers

    from textmill.pipelines.cluster import ClusterConf, edges_from_neighbors

    edges, _ = edges_from_neighbors(spark.read.parquet(str(knn)), ClusterConf())
    started = time.perf_counter()
    graph = nx.Graph()
    graph.add_nodes_from(sorted(truth))
    graph.add_weighted_edges_from((r.src, r.dst, r.weight) for r in edges.collect())
    build_seconds = time.perf_counter() - started
    runs = []
    for seed in range(1, seeds + 1):
        started = time.perf_counter()
        chinese_whispers(graph, weighting="top", iterations=30, seed=seed)
        seconds = time.perf_counter() - started
        ids = sorted(truth)
        found = [graph.nodes[i]["label"] for i in ids]
        runs.append(
            {
                **scores([truth[i] for i in ids], found),
                "clusters": len(set(found)),
                "seconds": round(seconds, 2),
                "seed": seed,
            }
        )
    return {
        "nmi": round(sum(r["nmi"] for r in runs) / len(runs), 4),
        "ari": round(sum(r["ari"] for r in runs) / len(runs), 4),
        "seconds": round(sum(r["seconds"] for r in runs) / len(runs), 2),
        "graph_build_seconds": round(build_seconds, 2),
        "edges": graph.number_of_edges(),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=10, help="neighbours per document in the kNN graph")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--kmeans-seeds", type=int, default=3)
    parser.add_argument("--words", action="store_true", help="also cluster bench_embeddings' IMDB word vectors")
    parser.add_argument("--skip-docs", action="store_true")
    parser.add_argument("--corpus", choices=list(CORPORA), default="bbc_news")
    parser.add_argument(
        "--reference-seeds", type=int, default=3, help="runs of the PyPI chinese-whispers package on the same graph"
    )
    args = parser.parse_args()

    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from textmill.jobs import run_job
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-clusters")
    spark.sparkContext.setLogLevel("ERROR")
    rows = CORPORA[args.corpus]()
    truth = {r["doc_id"]: r["label"] for r in rows}
    result: dict = {
        "benchmark": "clusters",
        "data": args.corpus,
        "documents": len(rows),
        "topics": len(set(truth.values())),
        "knn_k": args.k,
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mlflow = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": (tmp / "art").as_uri()}
        base = {"spark": {"ui_enabled": False}, "mlflow": mlflow}
        if args.words:
            result["word_vectors"] = cluster_words(spark, run_job, base, tmp, args)
        if args.skip_docs:
            print(json.dumps(result, indent=2))
            return
        spark.createDataFrame([(r["doc_id"], r["text"]) for r in rows], "doc_id string, text string").write.parquet(
            str(tmp / "docs")
        )
        started = time.perf_counter()
        run_job(
            "train_embeddings",
            {**base, "io": {"input": str(tmp / "docs"), "output": str(tmp / "emb")}, "embeddings": {"min_count": 3}},
            spark,
        )
        run_job(
            "embed_docs",
            {
                **base,
                "io": {"input": str(tmp / "docs"), "output": str(tmp / "vectors")},
                "embed": {"embeddings": str(tmp / "emb")},
            },
            spark,
        )
        run_job(
            "build_index",
            {
                **base,
                "io": {"input": str(tmp / "vectors"), "output": str(tmp / "index")},
                "index": {"id_column": "doc_id"},
            },
            spark,
        )
        run_job(
            "neighbors",
            {
                **base,
                "io": {"input": str(tmp / "vectors"), "output": str(tmp / "knn")},
                "neighbors": {"index": str(tmp / "index"), "id_column": "doc_id", "k": args.k},
            },
            spark,
        )
        result["graph_seconds"] = round(time.perf_counter() - started, 1)

        for name in args.variants:
            started = time.perf_counter()
            out = tmp / f"clusters_{name}"
            metrics = run_job(
                "cluster",
                {**base, "io": {"input": str(tmp / "knn"), "output": str(out)}, "cluster": VARIANTS[name]},
                spark,
            )
            found = {r.id: r.cluster_id for r in spark.read.parquet(str(out)).collect()}
            ids = sorted(found)
            result[f"chinese_whispers_{name}"] = {
                **scores([truth[i] for i in ids], [found[i] for i in ids]),
                "clusters": int(metrics["clusters"]),
                "largest_cluster_share": round(metrics["largest_cluster_share"], 4),
                "singleton_share": round(metrics["singleton_share"], 4),
                "iterations": int(metrics["iterations"]),
                "converged": bool(metrics["converged"]),
                "stalled": bool(metrics["stalled"]),
                "changed_share_last_round": round(metrics["changed_share"], 5),
                "min_weight_used": round(metrics["min_weight_used"], 4),
                "seconds": round(time.perf_counter() - started, 1),
                "settings": VARIANTS[name],
            }
            print(json.dumps({name: result[f"chinese_whispers_{name}"]}), flush=True)

        if args.reference_seeds:
            result["reference_chinese_whispers_pypi"] = reference(spark, tmp / "knn", truth, args.reference_seeds)
            print(json.dumps({"reference": result["reference_chinese_whispers_pypi"]}), flush=True)
            default = result.get("chinese_whispers_default")
            if default:
                result["ratios"] = {
                    "textmill_default_seconds_over_reference": round(
                        default["seconds"] / result["reference_chinese_whispers_pypi"]["seconds"], 2
                    ),
                    "nmi_gap_textmill_default_minus_reference": round(
                        default["nmi"] - result["reference_chinese_whispers_pypi"]["nmi"], 4
                    ),
                }

        vectors = spark.read.parquet(str(tmp / "vectors")).where(F.col("vector").isNotNull())
        norm = F.sqrt(F.aggregate("vector", F.lit(0.0), lambda acc, x: acc + x * x))
        features = vectors.select(
            "doc_id", array_to_vector(F.transform("vector", lambda x: x / norm)).alias("features")
        ).cache()
        runs = []
        for seed in range(1, args.kmeans_seeds + 1):
            started = time.perf_counter()
            model = KMeans(k=len(set(truth.values())), seed=seed, featuresCol="features").fit(features)
            assigned = {
                r.doc_id: r.prediction for r in model.transform(features).select("doc_id", "prediction").collect()
            }
            ids = sorted(assigned)
            runs.append(
                {
                    **scores([truth[i] for i in ids], [assigned[i] for i in ids]),
                    "seed": seed,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        result["spark_ml_kmeans_true_k"] = {
            "nmi": round(sum(r["nmi"] for r in runs) / len(runs), 4),
            "ari": round(sum(r["ari"] for r in runs) / len(runs), 4),
            "runs": runs,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
