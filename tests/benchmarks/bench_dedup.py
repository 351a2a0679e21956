"""Near-duplicate detection (issue 40): quality against the exact ground truth, and speed beside
datasketch's MinHashLSH (one process) and Spark ML's MinHashLSH, in one run.

Corpus: IMDB training reviews (../shared/data/imdb/train.jsonl), each a base document, plus
planted duplicates made at controlled rates from random bases: exact copies (case, punctuation
and spacing changed), near copies with word substitutions, insertions and deletions (1-10% of
the words), two sentences swapped, a header or footer line added, and lines re-wrapped; and one
boilerplate paragraph that 5% of the documents consist of, with a few words of their own.

Ground truth: the exact Jaccard of the same shingle sets (textmill's: word 5-grams of the
normalised text, 32-bit hashes). Candidates are the pairs that share a shingle held by at most
``MAX_POSTING`` documents (an inverted index, sorted in numpy), each scored exactly; the
boilerplate documents, whose shingles are held by thousands, are one clique (every pair at or
over the threshold: checked on a random sample of their pairs), and any other document sharing
their shingles is scored against each of them. So the ground truth stays linear in the corpus:
enumerating the boilerplate's pairs would be quadratic (12.5M pairs at 100k documents). A pair
of other documents that shares only shingles held by more than ``MAX_POSTING`` documents is not
enumerated (the count of documents with no rare shingle is reported). Reported:

- pair recall: ground-truth pairs whose two documents end in one group (textmill) or are
  candidates (datasketch, Spark ML);
- pair precision: of the pairs a contender reports (textmill: pairs within its groups; the
  others: candidate pairs), the share at or over the threshold; textmill's verified edges alone
  are also reported;
- group accuracy: documents whose group is exactly their ground-truth component.

Timed: textmill's ``dedup`` job (from the Parquet input to the published, checked outputs),
datasketch's signatures (shingling included, the same shingles) and index inserts, then its
queries, separately; Spark ML's fit and join. Also the peak resident memory of textmill's Python
workers and of the driver JVM (sampled from /proc every 0.2 s), and the driver's live heap after
the run. Each size runs in its own process:

    python tests/benchmarks/bench_dedup.py [--docs 10000] [--threshold 0.8] [--skip-spark-ml]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import SHARED, live_heap_mb, machine, report, require

from textmill.dedup import minhash
from textmill.dedup.components import union_find
from textmill.runtime.session_kinds import is_connect

IMDB = require(SHARED / "imdb" / "train.jsonl")


def texts(n: int) -> list[str]:
    out = []
    with IMDB.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(re.sub(r"<br\s*/?>", " ", json.loads(line)["text"]))
            if len(out) == n:
                break
    return out


def edit_words(words: list[str], rate: float, rng: random.Random, vocab: list[str]) -> list[str]:
    out = list(words)
    for _ in range(max(1, int(len(out) * rate))):
        op, i = rng.random(), rng.randrange(len(out))
        if op < 0.4:
            out[i] = rng.choice(vocab)
        elif op < 0.7:
            out.insert(i, rng.choice(vocab))
        elif len(out) > 1:
            del out[i]
    return out


def corpus(n_docs: int, seed: int = 11, boilerplate: float = 0.05) -> list[dict]:
    """n_docs documents: 10% exact copies, 15% near copies, ``boilerplate`` of them the boilerplate
    paragraph with a few words of their own, the rest bases."""
    rng = random.Random(seed)
    n_base = int(n_docs * (0.75 - boilerplate))
    bases = texts(n_base)
    if len(bases) < n_base:  # more documents than IMDB has: bases repeated with their words shuffled
        bases += [" ".join(rng.sample(t.split(), len(t.split()))) for t in rng.choices(bases, k=n_base - len(bases))]
    vocab = [w for t in bases[:2000] for w in t.split()]
    docs = [{"doc_id": f"b{i:07d}", "text": t} for i, t in enumerate(bases)]
    for i in range(int(n_docs * 0.10)):
        t = rng.choice(bases)
        docs.append({"doc_id": f"e{i:07d}", "text": t.upper().replace(". ", " .  ") if i % 2 else t + " !"})
    for i in range(int(n_docs * 0.15)):
        words = rng.choice(bases).split()
        kind = i % 5
        if kind == 0:
            words = edit_words(words, rng.choice([0.01, 0.03, 0.05, 0.1]), rng, vocab)
        elif kind == 1:  # two sentences swapped
            sentences = " ".join(words).split(". ")
            if len(sentences) > 2:
                a, b = rng.sample(range(len(sentences)), 2)
                sentences[a], sentences[b] = sentences[b], sentences[a]
            words = ". ".join(sentences).split()
        elif kind == 2:
            words = ["Posted", "by", "the", "desk", "of", "review", "weekly:", *words]
        elif kind == 3:
            words = [*words, "Copyright", "2026", "all", "rights", "reserved.", "Share", "this", "review."]
        docs.append({"doc_id": f"n{i:07d}", "text": ("\n" if kind == 4 else " ").join(words)})
    boiler = " ".join(rng.choice(bases).split()[:120])
    for i in range(n_docs - len(docs)):
        docs.append({"doc_id": f"p{i:07d}", "text": f"{boiler} {' '.join(rng.choices(vocab, k=3))}"})
    return docs


def shingle_sets(docs: list[dict]) -> dict[str, np.ndarray]:
    return {d["doc_id"]: minhash.shingle_hashes(minhash.normalize(d["text"])) for d in docs}


MAX_POSTING = 50  # a shingle held by more documents makes no candidate pair (the boilerplate's are a clique)


@dataclass
class Truth:
    """Every pair at or over the threshold: ``pairs`` (with their Jaccard), and every pair
    within ``clique`` (the boilerplate documents), which is not enumerated."""

    pairs: dict[tuple[str, str], float]
    clique: frozenset[str]
    unreachable: int  # documents with no shingle held by <= MAX_POSTING documents, outside the clique

    def size(self) -> int:
        return len(self.pairs) + len(self.clique) * (len(self.clique) - 1) // 2

    def components(self, nodes: list[str]) -> dict[str, str]:
        first = min(self.clique) if self.clique else None
        return components(nodes, [*self.pairs, *((first, d) for d in self.clique)])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    both = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - both
    return both / union if union else 1.0


def ground_truth(sets: dict[str, np.ndarray], threshold: float, clique: set[str], seed: int = 3) -> Truth:
    """The pairs at or over ``threshold`` (module docstring), in time linear in the corpus: the
    pairs that share a rare shingle are counted in numpy (how many rare shingles they share);
    only those whose count leaves the threshold reachable (with every common shingle of the
    smaller document shared too) are scored exactly."""
    ids = list(sets)
    n = len(ids)
    sizes = np.fromiter((sets[d].size for d in ids), dtype=np.int64, count=n)
    docs = np.repeat(np.arange(n, dtype=np.int64), sizes)
    shingles = np.concatenate([sets[d] for d in ids]) if n else np.empty(0, np.uint32)
    order = np.argsort(shingles, kind="stable")
    shingles, docs = shingles[order], docs[order]
    starts = np.flatnonzero(np.r_[True, shingles[1:] != shingles[:-1]]) if shingles.size else np.empty(0, np.int64)
    held = np.r_[starts[1:], shingles.size] - starts
    rare = np.repeat(held <= MAX_POSTING, held)
    rare_count = np.bincount(docs[rare], minlength=n)
    common_count = sizes - rare_count
    in_clique = np.array([d in clique for d in ids], dtype=bool)
    codes = []
    for h in range(2, MAX_POSTING + 1):
        first = starts[held == h]
        if not first.size:
            continue
        members = np.sort(docs[first[:, None] + np.arange(h)], axis=1)
        i, j = np.triu_indices(h, 1)
        a, b = members[:, i].ravel(), members[:, j].ravel()
        keep = ~(in_clique[a] & in_clique[b])
        codes.append(a[keep] * n + b[keep])
    pair_codes, shared = np.unique(np.concatenate(codes), return_counts=True) if codes else (np.empty(0), np.empty(0))
    a, b = pair_codes // n, pair_codes % n
    most = shared + np.minimum(common_count[a], common_count[b])
    possible = most / np.maximum(sizes[a] + sizes[b] - most, 1) >= threshold
    candidates = set(zip(a[possible].tolist(), b[possible].tolist()))
    # Documents outside the clique that share the clique's (common) shingles: scored against every member.
    near_clique: set[int] = set()
    for s, h in zip(starts[held > MAX_POSTING], held[held > MAX_POSTING]):
        members = docs[s : s + h]
        if in_clique[members].mean() >= 0.5:
            near_clique.update(m for m in members.tolist() if not in_clique[m])
    clique_idx = np.flatnonzero(in_clique).tolist()
    for x in near_clique:
        candidates.update((min(x, y), max(x, y)) for y in clique_idx)
    pairs = {}
    for x, y in candidates:
        j = jaccard(sets[ids[x]], sets[ids[y]])
        if j >= threshold:
            pairs[(min(ids[x], ids[y]), max(ids[x], ids[y]))] = j
    members = sorted(clique)
    rng = random.Random(seed)
    for _ in range(min(2000, len(members) * (len(members) - 1) // 2)):
        x, y = rng.sample(members, 2)
        if jaccard(sets[x], sets[y]) < threshold:
            raise SystemExit(f"the boilerplate documents {x} and {y} are not a duplicate pair: no clique")
    unreachable = int(np.sum((rare_count == 0) & ~in_clique & (sizes > 0)))
    return Truth(pairs, frozenset(clique), unreachable)


def components(nodes: list[str], pairs) -> dict[str, str]:
    """{node: the smallest node of its component}; a node in no pair is its own."""
    return {**{n: n for n in nodes}, **union_find(pairs)}


def group_scores(groups: dict[str, str], truth: Truth) -> dict:
    """Pair precision and recall of ``groups`` ({doc: group}): the pairs within a group, counted
    by group sizes (never enumerated), against the truth."""
    sizes: dict[str, int] = defaultdict(int)
    in_clique: dict[str, int] = defaultdict(int)
    for d, g in groups.items():
        sizes[g] += 1
        in_clique[g] += d in truth.clique
    reported = sum(n * (n - 1) // 2 for n in sizes.values())
    explicit = sum(1 for a, b in truth.pairs if groups.get(a) is not None and groups.get(a) == groups.get(b))
    hits = explicit + sum(n * (n - 1) // 2 for n in in_clique.values())
    clique_groups = {groups[d] for d in truth.clique if d in groups}
    return {
        "pairs_reported": reported,
        "precision": round(hits / reported, 4) if reported else None,
        "recall": round(hits / truth.size(), 4) if truth.size() else None,
        # The boilerplate clique's pairs outnumber the rest (1.25 billion at 1M documents): without them.
        "recall_outside_boilerplate": round(explicit / len(truth.pairs), 4) if truth.pairs else None,
        "boilerplate_groups": len(clique_groups),
        "boilerplate_group_outsiders": sum(
            1 for d, g in groups.items() if g in clique_groups and d not in truth.clique
        ),
    }


def pair_scores(found: set[tuple[str, str]], clique_pairs: int, truth: Truth) -> dict:
    """``found``: candidate pairs not both in the clique; ``clique_pairs``: those within it."""
    explicit = sum(1 for p in found if p in truth.pairs)
    hits = explicit + clique_pairs
    reported = len(found) + clique_pairs
    return {
        "pairs_reported": reported,
        "precision": round(hits / reported, 4) if reported else None,
        "recall": round(hits / truth.size(), 4) if truth.size() else None,
        "recall_outside_boilerplate": round(explicit / len(truth.pairs), 4) if truth.pairs else None,
    }


class PeakMemory(threading.Thread):
    """Peak resident memory (MB) of the Python workers (``pyspark.daemon``/``worker`` processes,
    each) and of the driver JVM, sampled from /proc every 0.2 s while the block runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.worker_mb = 0.0
        self.driver_mb = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmd = (proc / "cmdline").read_bytes()
                    rss = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("VmRSS"))
                except (OSError, StopIteration):
                    continue
                mb = int(rss.split()[1]) / 1024
                if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
                    self.worker_mb = max(self.worker_mb, mb)
                elif b"java" in cmd and b"SparkSubmit" in cmd:
                    self.driver_mb = max(self.driver_mb, mb)
            self.stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def run_textmill(spark, docs, tmp: Path, threshold: float) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from textmill.jobs import run_job

    src = tmp / "in"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(docs), src / "docs.parquet", row_group_size=20_000)
    conf = {
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": (tmp / "art").as_uri()},
        "io": {"input": str(src), "output": str(tmp / "out")},
        "dedup": {"threshold": threshold},
    }
    with PeakMemory() as memory:
        start = time.perf_counter()
        metrics = run_job("dedup", conf, spark)
        seconds = time.perf_counter() - start
    groups = {
        r["doc_id"]: r["dup_group"]
        for r in spark.read.parquet(str(tmp / "out")).select("doc_id", "dup_group").collect()
    }
    return {
        "seconds": round(seconds, 2),
        "metrics": metrics,
        "groups": groups,
        "peak_worker_rss_mb": round(memory.worker_mb, 1),
        "peak_driver_rss_mb": round(memory.driver_mb, 1),
        "driver_live_heap_mb": None if is_connect(spark) else round(live_heap_mb(spark), 1),
    }


def run_datasketch(docs: list[dict], clique: frozenset, threshold: float, num_perm: int, queries: bool = True) -> dict:
    """Signatures (shingling included) and index inserts, timed; then the queries, timed apart."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures = {}
    for d in docs:
        hashes = minhash.shingle_hashes(minhash.normalize(d["text"]))
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([int(h).to_bytes(4, "little") for h in hashes.tolist()])
        signatures[d["doc_id"]] = m
        lsh.insert(d["doc_id"], m)
    indexed = time.perf_counter() - start
    pairs, clique_pairs = set(), 0
    for doc, m in signatures.items() if queries else ():
        for other in lsh.query(m):
            if other == doc:
                continue
            if doc in clique and other in clique:
                clique_pairs += 1
            else:
                pairs.add((min(doc, other), max(doc, other)))
    return {
        "seconds": round(indexed, 2),
        "query_seconds": round(time.perf_counter() - start - indexed, 2),
        "pairs": pairs,
        "clique_pairs": clique_pairs // 2,
        "bands_rows": [lsh.b, lsh.r],
    }


def run_spark_ml(spark, sets: dict[str, np.ndarray], clique: frozenset, threshold: float, tables: int) -> dict:
    from pyspark.ml.feature import MinHashLSH
    from pyspark.ml.linalg import SparseVector, VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    size = 1 << 24
    rows = []
    for doc, s in sets.items():
        if s.size:
            buckets = sorted({int(h) % size for h in s.tolist()})
            rows.append((doc, doc in clique, SparseVector(size, buckets, [1.0] * len(buckets))))
    schema = T.StructType(
        [T.StructField("id", T.StringType()), T.StructField("p", T.BooleanType()), T.StructField("v", VectorUDT())]
    )
    df = spark.createDataFrame(rows, schema)
    start = time.perf_counter()
    model = MinHashLSH(inputCol="v", outputCol="h", numHashTables=tables, seed=1).fit(df)
    joined = (
        model.approxSimilarityJoin(df, df, 1 - threshold, distCol="d")
        .where("datasetA.id < datasetB.id")
        .select(
            F.col("datasetA.id").alias("a"),
            F.col("datasetB.id").alias("b"),
            (F.col("datasetA.p") & F.col("datasetB.p")).alias("both"),
        )
        .localCheckpoint()
    )
    clique_pairs = joined.where("both").count()
    pairs = {(r["a"], r["b"]) for r in joined.where("not both").collect()}
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "pairs": pairs,
        "clique_pairs": clique_pairs,
        "hash_tables": tables,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--boilerplate", type=float, default=0.05, help="share of documents that are the boilerplate")
    parser.add_argument("--skip-spark-ml", action="store_true")
    parser.add_argument("--skip-datasketch", action="store_true")
    parser.add_argument(
        "--skip-datasketch-queries",
        action="store_true",
        help="time its signatures and inserts only (a query per boilerplate document lists them all: quadratic)",
    )
    parser.add_argument("--spark-ml-tables", type=int, default=5)
    parser.add_argument("--spark-ml-timeout", type=float, default=900, help="seconds before Spark ML is cancelled")
    parser.add_argument(
        "--connect",
        action="store_true",
        help="textmill on a Spark Connect server this run starts (local[2], 127.0.0.1)",
    )
    args = parser.parse_args()

    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    docs = corpus(args.docs, boilerplate=args.boilerplate)
    clique = {d["doc_id"] for d in docs if d["doc_id"].startswith("p")}
    start = time.perf_counter()
    sets = shingle_sets(docs)
    truth = ground_truth(sets, args.threshold, clique)
    truth_seconds = time.perf_counter() - start
    ids = sorted(sets)
    true_groups = truth.components(ids)
    result: dict = {
        "data": {
            "documents": len(docs),
            "ground_truth_pairs": truth.size(),
            "ground_truth_boilerplate_documents": len(truth.clique),
            "ground_truth_documents_with_no_rare_shingle": truth.unreachable,
            "ground_truth_seconds": round(truth_seconds, 1),
            "ground_truth_duplicate_documents": sum(1 for d in ids if true_groups[d] != d),
            "ground_truth_pairs_outside_boilerplate": len(truth.pairs),
            "ground_truth_boilerplate_component": sum(
                1 for d in ids if true_groups[d] == true_groups[min(truth.clique)]
            )
            if truth.clique
            else 0,
            "threshold": args.threshold,
        },
        "machine": machine(),
    }
    with contextlib.ExitStack() as stack:
        remote = None
        if args.connect:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            import connect_server

            remote, stop = connect_server.start(
                Path(stack.enter_context(tempfile.TemporaryDirectory())), driver_memory="4g"
            )
            stack.callback(stop)
        spark = get_spark(SparkConf(ui_enabled=False, remote=remote), "textmill-bench-dedup")
        if not remote:
            spark.sparkContext.setLogLevel("ERROR")
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_textmill(spark, docs, Path(tmp), args.threshold)
        if remote:  # Spark ML is a classic-session contender; the client goes before its server
            args.skip_spark_ml = True
            spark.stop()
    groups = ours["groups"]
    members = defaultdict(set)
    for d, g in groups.items():
        members[g].add(d)
    truth_members = defaultdict(set)
    for d, g in true_groups.items():
        truth_members[g].add(d)
    exact_groups = sum(1 for d in ids if members.get(groups.get(d)) == truth_members[true_groups[d]])
    m = ours["metrics"]
    result["textmill"] = {
        "session": "connect" if args.connect else "classic",
        "seconds": ours["seconds"],
        "docs_per_second": round(len(docs) / ours["seconds"], 1),
        **group_scores(groups, truth),
        "group_accuracy": round(exact_groups / len(ids), 4),
        **{k: ours[k] for k in ("peak_worker_rss_mb", "peak_driver_rss_mb", "driver_live_heap_mb")},
        **{
            k: m[k]
            for k in (
                "bands",
                "rows_per_band",
                "candidate_pairs",
                "verified_pairs",
                "exact_duplicates",
                "near_duplicates",
                "largest_group",
                "component_rounds",
            )
        },
    }
    result["ratios"] = {}
    if not args.skip_datasketch:
        sketch = run_datasketch(docs, truth.clique, args.threshold, 128, not args.skip_datasketch_queries)
        result["datasketch"] = {
            "seconds": sketch["seconds"],
            "bands_rows": sketch["bands_rows"],
        }
        if not args.skip_datasketch_queries:
            result["datasketch"] |= {
                "query_seconds": sketch["query_seconds"],
                **pair_scores(sketch["pairs"], sketch["clique_pairs"], truth),
                "verified_recall": pair_scores(
                    {p for p in sketch["pairs"] if p in truth.pairs}, sketch["clique_pairs"], truth
                )["recall"],
            }
        result["ratios"]["datasketch_seconds_over_textmill"] = round(sketch["seconds"] / ours["seconds"], 2)
    print(json.dumps({k: result[k] for k in ("textmill", "datasketch") if k in result}), file=sys.stderr, flush=True)
    if not args.skip_spark_ml:
        finished: dict = {}
        worker = threading.Thread(
            target=lambda: finished.update(
                run_spark_ml(spark, sets, truth.clique, args.threshold, args.spark_ml_tables)
            ),
            daemon=True,
        )
        worker.start()
        worker.join(args.spark_ml_timeout)
        if worker.is_alive():
            spark.sparkContext.cancelAllJobs()
            worker.join(60)
            result["spark_ml"] = {"finished": False, "seconds": f"> {args.spark_ml_timeout}"}
            result["ratios"]["spark_ml_seconds_over_textmill"] = (
                f"> {round(args.spark_ml_timeout / ours['seconds'], 2)}"
            )
        else:
            ml = finished
            result["spark_ml"] = {
                "seconds": ml["seconds"],
                "hash_tables": ml["hash_tables"],
                **pair_scores(ml["pairs"], ml["clique_pairs"], truth),
            }
            result["ratios"]["spark_ml_seconds_over_textmill"] = round(ml["seconds"] / ours["seconds"], 2)
    result["targets"] = (
        "recall >= datasketch's; precision >= 0.99 with verify; >= 1.5x datasketch at 1M; >= 5x Spark ML"
    )
    report("dedup", result)


if __name__ == "__main__":
    main()
