"""The corpus-level chain at 10k, 100k and 1M documents: cost per item, memory, and one-process anchors.

Corpus: IMDB reviews (25,000 labelled + 50,000 unlabelled) and the 7,600 AG News test
descriptions from ``../shared/data``, each cut to its first ``--max-words`` words, in a seeded
shuffled order; past the first pass every copy is perturbed (each word dropped with p=0.15 and
~5% of adjacent pairs swapped, seeded by the document number), so no two vectors are equal.
Written as Parquet ``doc_id, text`` (prepare's output schema; prepare itself is ``bench_scale``'s).

Each size runs in its own Python process with its own Spark JVM (``local[*]``), as in
``bench_scale``. textmill's jobs run first, one after another, through ``run_job``:
``train_embeddings`` (sgns, ``--epochs``), ``embed_docs``, ``build_index`` (recall tuning on,
target 0.9), ``neighbors`` (items mode, k=10, every document), ``cluster`` (defaults), and, at
sizes up to ``--ppmi-max``, ``train_embeddings`` with ppmi_svd. For each: wall seconds, seconds
per item, and the peaks a sampler thread reads from /proc every 0.2 s while the job runs: the
largest Python worker (any process under the JVM), the driver's Python process and the JVM.

Then the anchors, in the same process after textmill's peaks are taken:
- gensim ``Word2Vec`` (sg, same dim/window/negatives/min_count/sample/epochs, 2 workers) from a
  ``corpus_file`` of textmill's own tokens (gensim's fastest input; writing it is not timed);
- one Annoy index (textmill's tuned tree count, all items) built and queried in this one
  process, single-threaded, its ``search_k`` raised until its recall reaches textmill's measured one
  (above 100,000 items, 100,000 seeded queries timed and scaled to all items);
- faiss-cpu HNSW (M=32, inner product on normalised vectors, all cores) with ``efSearch`` raised
  the same way;
- the PyPI ``chinese-whispers`` (networkx; sequential; ``top``; 30 iterations) on the very edges
  ``cluster`` clusters, when the graph has at most ``--reference-max-edges`` directed edges; above
  that it is skipped with the edge count (its memory: ``graph_bytes_per_edge`` of a smaller size).

Recall: recall@10 of the all-items kNN against exact brute force on 1,000 sampled documents.
Peaks are VmRSS, which counts the pages of memory-mapped files a process touched: the Annoy
shards that ``build_index`` checks and ``neighbors`` searches are in it, shared between processes.
The JVM's RSS grows toward its heap limit over the session and never shrinks, so its per-job
peak is the session's so far. Past the first pass the copies are near-duplicates of a base text:
at 1M each document has about 11 perturbed siblings, which become its nearest neighbours, so
the kNN graph is easier (Annoy tuned to a far smaller search_k) and falls into small families
(Chinese Whispers converged in 11 rounds into ~82,000 clusters): compare sizes with that in mind.
Each finished step prints ``STEP <json>`` at once, so a run cut short still reports what it measured.

python tests/benchmarks/bench_chain_scale.py [--sizes 10000 100000 1000000] [--epochs 1] [--max-words 100]
    [--train-max-docs N] [--ppmi-max 100000] [--reference-max-edges 24000000] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import SHARED, report, require

IMDB = require(SHARED / "imdb" / "train.jsonl")
UNSUP = require(SHARED / "imdb_unsup" / "unsup.txt")
AG = require(SHARED / "ag_news" / "test.csv")
K = 10
RECALL_QUERIES = 1000
QUERY_SAMPLE = 100_000


def base_texts(max_words: int) -> list[str]:
    import csv

    texts = [json.loads(line)["text"] for line in IMDB.open(encoding="utf-8")]
    texts += [line.strip() for line in UNSUP.open(encoding="utf-8") if line.strip()]
    with AG.open(newline="", encoding="utf-8") as fh:
        texts += [row[2] for row in csv.reader(fh)]
    random.Random(0).shuffle(texts)
    return [" ".join(t.split()[:max_words]) for t in texts]


def perturbed(words: list[str], rng: random.Random) -> str:
    kept = [w for w in words if rng.random() >= 0.15] or words[:1]
    for i in range(len(kept) - 1):
        if rng.random() < 0.05:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def write_corpus(path: Path, n: int, max_words: int) -> int:
    """Parquet files of 100,000 rows; returns the words written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = base_texts(max_words)
    split = [t.split() for t in base]
    path.mkdir(parents=True)
    words = 0
    for start in range(0, n, 100_000):
        ids, texts = [], []
        for i in range(start, min(n, start + 100_000)):
            b = i % len(base)
            texts.append(base[b] if i < len(base) else perturbed(split[b], random.Random(i)))
            ids.append(f"d{i:08d}")
            words += len(texts[-1].split())
        pq.write_table(pa.table({"doc_id": ids, "text": texts}), path / f"part-{start // 100_000:05d}.parquet")
    return words


def _rss_mb(pid: int, field: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


class PeakSampler:
    """Peak RSS while a block runs, sampled every 0.2 s: this process, the JVM, its largest Python descendant."""

    def __init__(self, jvm_pid: int | None) -> None:
        self.jvm_pid = jvm_pid

    def _descendants(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = [], [self.jvm_pid]
        while frontier:
            parent = frontier.pop()
            children = [p for p, pp in parents.items() if pp == parent]
            found += children
            frontier += children
        return found

    def __enter__(self) -> PeakSampler:
        self.peaks = {"driver_python_mb": 0.0, "driver_jvm_mb": 0.0, "worker_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.peaks["driver_python_mb"] = max(self.peaks["driver_python_mb"], _rss_mb(os.getpid()))
        if self.jvm_pid:
            self.peaks["driver_jvm_mb"] = max(self.peaks["driver_jvm_mb"], _rss_mb(self.jvm_pid))
            workers = [_rss_mb(p) for p in self._descendants()]
            self.peaks["worker_mb"] = max([self.peaks["worker_mb"], *workers])

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.peaks = {k: round(v, 1) for k, v in self.peaks.items()}


def step(result: dict, name: str, payload: dict) -> None:
    result[name] = payload
    print("STEP " + json.dumps({"docs": result["docs"], "step": name, **payload}), flush=True)


def load_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(str(path), columns=["doc_id", "vector"])
    table = table.filter(table.column("vector").is_valid()).sort_by("doc_id")
    ids = np.array(table.column("doc_id").to_pylist())
    dim = len(table.column("vector")[0].as_py())
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return ids, np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def one_size(n: int, args) -> dict:
    import pyarrow.parquet as pq

    from textmill.jobs import run_job
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark
    from textmill.vectors import ann

    result: dict = {"docs": n}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        # its own process: the base texts held while writing would otherwise count in this driver's peak
        written = subprocess.run(
            [sys.executable, __file__, "--write-corpus", str(n), str(tmp / "docs"), "--max-words", str(args.max_words)],
            check=True,
            capture_output=True,
            text=True,
        )
        result["words"] = int(written.stdout.split()[-1])
        result["corpus_seconds"] = round(time.perf_counter() - started, 1)
        base = {
            "spark": {"ui_enabled": False},
            "mlflow": {"experiment": "textmill-bench-chain-scale", "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        }
        spark = get_spark(SparkConf(ui_enabled=False), f"textmill-bench-chain-{n}")
        spark.sparkContext.setLogLevel("ERROR")
        jvm = getattr(spark.sparkContext._gateway, "proc", None)
        jvm_pid = jvm.pid if jvm is not None else None

        def job(name: str, label: str, conf: dict, items: int, extra=lambda m: {}) -> dict:
            with PeakSampler(jvm_pid) as peaks:
                started = time.perf_counter()
                metrics = run_job(name, {**base, **conf}, spark)
                seconds = time.perf_counter() - started
            step(
                result,
                label,
                {
                    "wall_seconds": round(seconds, 1),
                    "seconds_per_item_us": round(1e6 * seconds / items, 1),
                    "peak_worker_rss_mb": peaks.peaks["worker_mb"],
                    "peak_driver_python_rss_mb": peaks.peaks["driver_python_mb"],
                    "peak_driver_jvm_rss_mb": peaks.peaks["driver_jvm_mb"],
                    **extra(metrics),
                },
            )
            return metrics

        emb = {"dim": 100, "epochs": args.epochs, "min_count": 5, "window": 5, "negative": 5}
        # Above --train-max-docs, sgns trains on the first files only (100,000 documents each) and the later jobs use those vectors.
        train_files = (
            sorted((tmp / "docs").glob("*.parquet"))[: max(1, args.train_max_docs // 100_000)]
            if n > args.train_max_docs
            else []
        )
        train_input = tmp / "docs_train"
        if train_files:
            train_input.mkdir()
            for f in train_files:
                (train_input / f.name).symlink_to(f)
        trained = sum(pq.ParquetFile(f).metadata.num_rows for f in train_files) if train_files else n
        result["train_docs"] = trained
        job(
            "train_embeddings",
            "train_embeddings_sgns",
            {
                "io": {"input": str(train_input if train_files else tmp / "docs"), "output": str(tmp / "emb")},
                "embeddings": {"method": "sgns", **emb},
            },
            trained,
            lambda m: {
                "rounds": args.epochs,
                "tokens": int(m["tokens"]),
                "vocab": int(m["vocab_size"]),
                "words_per_second": round(m["words_per_second"]),
                **{key: round(m[key], 1) for key in ("init_seconds", "train_seconds", "subword_seconds") if key in m},
                "final_loss": round(m.get("final_loss", float("nan")), 4),
            },
        )
        job(
            "embed_docs",
            "embed_docs",
            {
                "io": {"input": str(tmp / "docs"), "output": str(tmp / "docvec")},
                "embed": {"embeddings": str(tmp / "emb")},
            },
            n,
            lambda m: {"rows_error": int(m["rows_error"])},
        )
        index = job(
            "build_index",
            "build_index",
            {"io": {"input": str(tmp / "docvec"), "output": str(tmp / "index")}, "index": {"id_column": "doc_id"}},
            n,
            lambda m: {
                "shards": int(m["shards"]),
                "n_trees": int(m["n_trees"]),
                "search_k": int(m["search_k"]),
                "sample_recall_at_10": round(m["recall_at_10"], 4),
                "recall_target_reached": bool(m["recall_target_reached"]),
            },
        )
        job(
            "neighbors",
            "neighbors",
            {
                "io": {"input": str(tmp / "docvec"), "output": str(tmp / "knn")},
                "neighbors": {"index": str(tmp / "index"), "k": K, "id_column": "doc_id"},
            },
            n,
            lambda m: {"partitions": int(m["partitions"]), "rows_out": int(m["rows_out"])},
        )
        # ---- the kNN anchors now, while the vectors are at hand; freed before cluster runs
        ids, vectors = load_vectors(tmp / "docvec")
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(ids), min(RECALL_QUERIES, len(ids)), replace=False))
        exact = ann.exact_topk(
            vectors[sample], vectors, K, "angular", exclude=sample, block=64
        )  # 64 x 1M scores: 256 MB
        position = {d: i for i, d in enumerate(ids)}
        knn = spark.read.parquet(str(tmp / "knn"))
        found = {
            r.id: [position[x.id] for x in r.neighbors] for r in knn.where(knn.id.isin(ids[sample].tolist())).collect()
        }
        recall = ann.recall_at_k([found[ids[i]] for i in sample], exact)
        result["neighbors"]["recall_at_10"] = round(recall, 4)
        step(result, "neighbors_recall", {"recall_at_10": round(recall, 4), "queries": len(sample)})
        step(
            result,
            "anchor_annoy",
            annoy_anchor(vectors, sample, exact, int(index["n_trees"]) * int(index["shards"]), recall),
        )
        step(result, "anchor_faiss_hnsw", faiss_anchor(vectors, sample, exact, recall))
        del ids, vectors, exact, position, found
        job(
            "cluster",
            "cluster",
            {"io": {"input": str(tmp / "knn"), "output": str(tmp / "clusters")}},
            n,
            lambda m: {
                "rounds": int(m["iterations"]),
                "converged": bool(m["converged"]),
                "stalled": bool(m["stalled"]),
                "edges": int(m["edges"]),
                "one_task": bool(m["one_task"]),
                "clusters": int(m["clusters"]),
                "changed_share": round(m["changed_share"], 4),
                "largest_cluster_share": round(m["largest_cluster_share"], 4),
            },
        )
        if n <= args.ppmi_max and not train_files:
            job(
                "train_embeddings",
                "train_embeddings_ppmi_svd",
                {
                    "io": {"input": str(tmp / "docs"), "output": str(tmp / "emb_ppmi")},
                    "embeddings": {"method": "ppmi_svd", **emb},
                },
                n,
                lambda m: {"vocab": int(m["vocab_size"])},
            )
        step(result, "anchor_gensim_sgns", gensim_anchor(train_input if train_files else tmp / "docs", emb))
        step(result, "anchor_chinese_whispers", whispers_anchor(spark, tmp, args.reference_max_edges))
        spark.stop()
    return result


def _recall_of(search, sample: np.ndarray, exact: np.ndarray) -> float:
    from textmill.vectors import ann

    return ann.recall_at_k([[x for x in search(int(i)) if x != i][:K] for i in sample], exact)


def annoy_anchor(vectors: np.ndarray, sample: np.ndarray, exact: np.ndarray, trees: int, target: float) -> dict:
    """One Annoy index over every item in this process; search_k raised until its sample recall reaches ``target``."""
    from annoy import AnnoyIndex

    started = time.perf_counter()
    index = AnnoyIndex(vectors.shape[1], "angular")
    index.set_seed(42)
    for i, v in enumerate(vectors):
        index.add_item(i, v.tolist())
    index.build(trees, n_jobs=1)
    build = time.perf_counter() - started
    for factor in (1, 2, 4, 8, 16, 32, 64, 128):
        search_k = factor * K * trees
        recall = _recall_of(lambda i, search_k=search_k: index.get_nns_by_item(i, K + 1, search_k), sample, exact)
        if recall >= target:
            break
    # Above QUERY_SAMPLE items, a seeded sample is queried and the time scaled to all items
    # (each query's cost does not depend on which item asks).
    queried = np.random.default_rng(1).permutation(len(vectors))[:QUERY_SAMPLE]
    started = time.perf_counter()
    for i in queried.tolist():
        index.get_nns_by_item(i, K + 1, search_k)
    query = (time.perf_counter() - started) * len(vectors) / len(queried)
    return {
        "trees": trees,
        "search_k": search_k,
        "recall_at_10": round(recall, 4),
        "build_seconds": round(build, 1),
        "query_all_seconds": round(query, 1),
        "queried": len(queried),
        "seconds": round(build + query, 1),
        "reached_target": recall >= target,
    }


def faiss_anchor(vectors: np.ndarray, sample: np.ndarray, exact: np.ndarray, target: float) -> dict:
    import faiss

    data = np.ascontiguousarray(vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12), dtype=np.float32)
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(data)
    build = time.perf_counter() - started
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        index.hnsw.efSearch = ef
        _, got = index.search(data[sample], K + 1)
        pos = {int(s): j for j, s in enumerate(sample)}
        recall = _recall_of(lambda i, got=got, pos=pos: got[pos[i]].tolist(), sample, exact)
        if recall >= target:
            break
    started = time.perf_counter()
    for start in range(0, len(data), 50_000):
        index.search(data[start : start + 50_000], K + 1)
    query = time.perf_counter() - started
    return {
        "M": 32,
        "efSearch": ef,
        "threads": faiss.omp_get_max_threads(),
        "recall_at_10": round(recall, 4),
        "build_seconds": round(build, 1),
        "query_all_seconds": round(query, 1),
        "seconds": round(build + query, 1),
        "reached_target": recall >= target,
    }


def gensim_anchor(docs: Path, emb: dict) -> dict:
    import pyarrow.parquet as pq
    from gensim.models import Word2Vec

    from textmill.text.featurize import Featurizer

    featurizer = Featurizer(lowercase=True, max_tokens=10**9)
    corpus = docs.parent / "gensim_corpus.txt"
    with corpus.open("w", encoding="utf-8") as out:
        for part in sorted(docs.glob("*.parquet")):
            for text in pq.read_table(part, columns=["text"]).column("text").to_pylist():
                out.write(" ".join(featurizer.tokens(text)) + "\n")
    started = time.perf_counter()
    model = Word2Vec(
        corpus_file=str(corpus),
        sg=1,
        vector_size=emb["dim"],
        window=emb["window"],
        negative=emb["negative"],
        min_count=emb["min_count"],
        sample=0.001,
        epochs=emb["epochs"],
        workers=2,
        seed=1,
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "vocab": len(model.wv),
        "words": model.corpus_total_words,
        "words_per_second": round(model.corpus_total_words * emb["epochs"] / seconds),
    }


def whispers_anchor(spark, tmp: Path, max_edges: int) -> dict:
    import networkx as nx
    from chinese_whispers import chinese_whispers

    from textmill.pipelines.cluster import ClusterConf, edges_from_neighbors

    edges, _ = edges_from_neighbors(spark.read.parquet(str(tmp / "knn")), ClusterConf())
    n_edges = edges.count()  # directed, both ways; networkx keeps each undirected edge once
    if n_edges > max_edges:
        return {"skipped": f"{n_edges} directed edges > --reference-max-edges {max_edges}", "edges": n_edges}
    nodes = [r.id for r in spark.read.parquet(str(tmp / "knn")).select("id").collect()]
    before = _rss_mb(os.getpid())
    started = time.perf_counter()
    graph = nx.Graph()
    graph.add_nodes_from(nodes)
    graph.add_weighted_edges_from((r.src, r.dst, r.weight) for r in edges.toLocalIterator() if r.src < r.dst)
    build = time.perf_counter() - started
    graph_mb = _rss_mb(os.getpid()) - before
    started = time.perf_counter()
    chinese_whispers(graph, weighting="top", iterations=30, seed=1)
    seconds = time.perf_counter() - started
    labels = {graph.nodes[x]["label"] for x in nodes}
    return {
        "seconds": round(seconds, 1),
        "graph_build_seconds": round(build, 1),
        "iterations": 30,
        "edges": graph.number_of_edges(),
        "graph_rss_mb": round(graph_mb, 1),
        "graph_bytes_per_edge": round(graph_mb * 2**20 / max(graph.number_of_edges(), 1)),
        "clusters": len(labels),
    }


def slope(small: dict, large: dict, key: str) -> float | None:
    if not small or not large or not small.get(key) or not large.get(key):
        return None
    return round(math.log(large[key] / small[key]) / math.log(large["_docs"] / small["_docs"]), 3)


def summarise(runs: list[dict]) -> dict:
    """Log-log slopes of time against size and memory growth between the two largest sizes; the ratios against the anchors."""
    out: dict = {}
    if len(runs) >= 2:
        small, large = runs[-2], runs[-1]
        for name in ("train_embeddings_sgns", "embed_docs", "build_index", "neighbors", "cluster"):
            a, b = small.get(name), large.get(name)
            prefix = any(run.get("train_docs", run["docs"]) != run["docs"] for run in (small, large))
            if name == "train_embeddings_sgns" and prefix:
                continue  # trained on a prefix of the corpus: no slope against its size
            if a and b:
                a, b = {**a, "_docs": small["docs"]}, {**b, "_docs": large["docs"]}
                out[f"{name}_slope_{small['docs']}_{large['docs']}"] = slope(a, b, "wall_seconds")
                if a["peak_worker_rss_mb"]:
                    out[f"{name}_worker_rss_growth"] = round(b["peak_worker_rss_mb"] / a["peak_worker_rss_mb"] - 1, 3)
                out[f"{name}_driver_jvm_rss_growth"] = round(
                    b["peak_driver_jvm_rss_mb"] / a["peak_driver_jvm_rss_mb"] - 1, 3
                )
    for run in runs:
        tag, ratios = run["docs"], {}
        if "neighbors" in run and "anchor_annoy" in run:
            ratios["neighbors_vs_one_annoy_index"] = round(
                run["anchor_annoy"]["seconds"] / run["neighbors"]["wall_seconds"], 3
            )
            ratios["neighbors_vs_one_annoy_index_query_only"] = round(
                run["anchor_annoy"]["query_all_seconds"] / run["neighbors"]["wall_seconds"], 3
            )
            ratios["build_index_plus_neighbors_vs_one_annoy_index"] = round(
                run["anchor_annoy"]["seconds"]
                / (run["neighbors"]["wall_seconds"] + run["build_index"]["wall_seconds"]),
                3,
            )
        if "neighbors" in run and "anchor_faiss_hnsw" in run:
            ratios["neighbors_vs_faiss_hnsw"] = round(
                run["anchor_faiss_hnsw"]["seconds"] / run["neighbors"]["wall_seconds"], 3
            )
        ref = run.get("anchor_chinese_whispers", {})
        if "cluster" in run and "seconds" in ref:
            ratios["cluster_vs_chinese_whispers"] = round(ref["seconds"] / run["cluster"]["wall_seconds"], 3)
            ratios["cluster_vs_chinese_whispers_with_graph_build"] = round(
                (ref["seconds"] + ref["graph_build_seconds"]) / run["cluster"]["wall_seconds"], 3
            )
        if "train_embeddings_sgns" in run and "anchor_gensim_sgns" in run:
            ratios["sgns_vs_gensim"] = round(
                run["anchor_gensim_sgns"]["seconds"] / run["train_embeddings_sgns"]["wall_seconds"], 3
            )
        out[f"ratios_{tag}"] = ratios  # > 1: textmill is faster
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--epochs", type=int, default=1, help="sgns passes (textmill and gensim alike)")
    parser.add_argument("--max-words", type=int, default=100, help="each base text cut to its first N words")
    parser.add_argument(
        "--train-max-docs",
        type=int,
        default=10**9,
        help="above this size train_embeddings (and gensim) see only the first N documents (multiple of 100,000)",
    )
    parser.add_argument("--ppmi-max", type=int, default=100_000, help="ppmi_svd only at sizes up to this")
    parser.add_argument(
        "--reference-max-edges",
        type=int,
        default=24_000_000,
        help="chinese-whispers only on graphs up to this many directed edges (networkx: ~400-480 bytes per undirected edge)",
    )
    parser.add_argument("--tmp", default=None, help="where each size's data goes (default the system temp dir)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-corpus", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_corpus:
        print(write_corpus(Path(args.write_corpus[1]), int(args.write_corpus[0]), args.max_words))
        return
    if args.one:
        print("RESULT " + json.dumps(one_size(args.one, args)), flush=True)
        return
    runs = []
    passed = [
        "--epochs",
        str(args.epochs),
        "--train-max-docs",
        str(args.train_max_docs),
        "--max-words",
        str(args.max_words),
        "--ppmi-max",
        str(args.ppmi_max),
        "--reference-max-edges",
        str(args.reference_max_edges),
        *(["--tmp", args.tmp] if args.tmp else []),
    ]
    for n in args.sizes:
        proc = subprocess.Popen([sys.executable, __file__, "--one", str(n), *passed], stdout=subprocess.PIPE, text=True)
        partial: dict = {"docs": n}
        final = None
        for line in proc.stdout:
            if line.startswith("STEP "):
                data = json.loads(line[5:])
                partial[data.pop("step")] = {k: v for k, v in data.items() if k != "docs"}
                print(f"size {n}: {line[5:].strip()}", file=sys.stderr, flush=True)
            elif line.startswith("RESULT "):
                final = json.loads(line[len("RESULT ") :])
        proc.wait()
        runs.append(final or {**partial, "incomplete": f"exit {proc.returncode}"})
        if final is None:
            print(f"size {n} failed (exit {proc.returncode}); its finished steps are kept", file=sys.stderr, flush=True)
    report(
        "chain_scale",
        {
            "corpus": f"{IMDB.name} + {UNSUP.name} + {AG.name}, cut to {args.max_words} words, perturbed copies",
            "epochs": args.epochs,
            "runs": runs,
            **summarise(runs),
        },
    )


if __name__ == "__main__":
    main()
