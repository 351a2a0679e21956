"""Word embeddings on IMDB unsup (50,000 reviews): textmill sgns vs gensim vs Spark ML Word2Vec.

All three see the same tokens (textmill's regex tokenizer, lower-cased, HTML tags dropped)
and the same settings: dim 100, window 5, negatives 5, epochs 5, min_count 5. Measured:

- textmill ``train_embeddings`` (``sgns``, its default PPMI-SVD start) on ``local[*]``, at 2, 4
  and 8 partitions, and from word2vec's random start (``init: random``) at 8 partitions, the
  configuration whose quality fell as partitions grew;
- gensim ``Word2Vec(sg=1, negative=5, workers=2)`` in one process;
- ``pyspark.ml.feature.Word2Vec`` on ``local[*]`` (2 partitions; hierarchical softmax,
  ``--spark-ml-iter`` iterations, default 1 because it is slow: its words/s is per pass);
- textmill ``ppmi_svd`` (vocabulary capped at 30,000 words).

Quality: WordSim-353 Spearman on covered pairs, and Google analogies (3CosAdd over the
30,000 most frequent words, as gensim's ``evaluate_word_analogies`` does) on covered
questions. Speed: corpus words x passes / training seconds.

python tests/benchmarks/bench_embeddings.py [--partitions 2 4 8] [--random-init-partitions 8]
    [--spark-ml-iter 1] [--skip-spark-ml] [--skip-ppmi]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import REPO, SHARED, report, require, timer

UNSUP = require(SHARED / "imdb_unsup" / "unsup.txt")
WORDSIM = require(SHARED / "wordsim" / "wordsim353.tsv")
ANALOGIES = require(SHARED / "wordsim" / "questions-words.txt")
DIM, WINDOW, NEGATIVE, EPOCHS, MIN_COUNT = 100, 5, 5, 5, 5


def load_tokens() -> list[list[str]]:
    from textmill.text.featurize import Featurizer

    featurizer = Featurizer(max_tokens=10**9)
    # One review per line; split on "\n" only (str.splitlines also breaks on \x1c, \u2028 ... inside reviews).
    return [featurizer.tokens(line) for line in UNSUP.read_text(encoding="utf-8").split("\n") if line]


def evaluate(words: list[str], vectors: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    index = {w: i for i, w in enumerate(words)}
    unit = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)
    gold, predicted, total = [], [], 0
    for line in WORDSIM.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        total += 1
        if a.lower() in index and b.lower() in index:
            gold.append(float(score))
            predicted.append(float(unit[index[a.lower()]] @ unit[index[b.lower()]]))
    # Analogies a:b :: c:? over the 30,000 most frequent words (words are sorted by count).
    top = min(30_000, len(words))
    restricted = unit[:top]
    questions = []
    for line in ANALOGIES.read_text().splitlines():
        if line.startswith(":"):
            continue
        q = [w.lower() for w in line.split()]
        if all(w in index and index[w] < top for w in q):
            questions.append([index[w] for w in q])
    correct = 0
    q = np.array(questions) if questions else np.zeros((0, 4), int)
    for start in range(0, len(q), 1024):  # matrix-matrix, 1,024 questions at a time
        block = q[start : start + 1024]
        target = restricted[block[:, 1]] - restricted[block[:, 0]] + restricted[block[:, 2]]
        sims = target @ restricted.T
        for j in range(3):
            sims[np.arange(len(block)), block[:, j]] = -np.inf
        correct += int((sims.argmax(axis=1) == block[:, 3]).sum())
    return {
        "wordsim353_spearman": round(float(spearmanr(gold, predicted).statistic), 4) if gold else None,
        "wordsim353_coverage": f"{len(gold)}/{total}",
        "analogy_accuracy": round(correct / len(q), 4) if len(q) else None,
        "analogy_coverage": f"{len(q)}/19544",
        "vocab_size": len(words),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--random-init-partitions", type=int, nargs="*", default=[8])
    parser.add_argument("--spark-ml-iter", type=int, default=1)
    parser.add_argument("--skip-spark-ml", action="store_true")
    parser.add_argument("--skip-ppmi", action="store_true")
    args = parser.parse_args()

    from textmill.jobs import run_job
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark
    from textmill.vectors.docvectors import load_embeddings

    sentences = load_tokens()
    corpus_words = sum(len(s) for s in sentences)
    result: dict = {
        "corpus": {"file": str(UNSUP), "documents": len(sentences), "words": corpus_words},
        "settings": {"dim": DIM, "window": WINDOW, "negative": NEGATIVE, "epochs": EPOCHS, "min_count": MIN_COUNT},
    }

    from gensim.models import Word2Vec as GensimWord2Vec

    g: dict = {}
    with timer(g, "train_seconds"):
        model = GensimWord2Vec(
            sentences,
            vector_size=DIM,
            window=WINDOW,
            negative=NEGATIVE,
            sg=1,
            hs=0,
            epochs=EPOCHS,
            min_count=MIN_COUNT,
            workers=2,
            sample=1e-3,
            seed=1,
        )
    g["words_per_second"] = round(corpus_words * EPOCHS / g["train_seconds"])
    g.update(evaluate(list(model.wv.index_to_key), model.wv.vectors))
    result["gensim_sg_ns_workers2"] = g

    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-embeddings")
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tokens_path = tmp_path / "tokens"
        tokens_path.mkdir()
        pq.write_table(
            pa.table({"doc_id": [f"u{i:05d}" for i in range(len(sentences))], "tokens": sentences}),
            tokens_path / "part-0.parquet",
        )
        base = {
            "spark": {"ui_enabled": False},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "experiment": "textmill-bench-embeddings",
            },
        }
        common = {
            "dim": DIM,
            "window": WINDOW,
            "negative": NEGATIVE,
            "epochs": EPOCHS,
            "min_count": MIN_COUNT,
            "max_vocab": None,
            "subword": {"enabled": False},
        }

        def textmill_run(name: str, **embeddings) -> dict:
            out = tmp_path / name
            metrics = run_job(
                "train_embeddings",
                {**base, "io": {"input": str(tokens_path), "output": str(out)}, "embeddings": {**common, **embeddings}},
                spark,
            )
            vectors, _, _ = load_embeddings(out / "export")
            passes = EPOCHS if embeddings.get("method", "sgns") == "sgns" else 1
            return {
                "train_seconds": round(metrics["train_seconds"], 1),
                "init_seconds": round(metrics["init_seconds"], 1),
                "words_per_second": round(corpus_words * passes / metrics["train_seconds"]),
                "partitions": metrics["partitions"],
                **evaluate(vectors.words, vectors.vectors),
            }

        for n in args.partitions:
            result[f"textmill_sgns_{n}_partitions"] = textmill_run(f"sgns{n}", partitions=n)
            if n == args.partitions[0]:
                # Kept for bench_ann.py, which indexes these word vectors.
                keep = REPO / "out" / "benchmarks" / "word_vectors" / "export"
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(tmp_path / f"sgns{n}" / "export", keep)
        for n in args.random_init_partitions:
            result[f"textmill_sgns_{n}_partitions_random_init"] = textmill_run(f"sgns{n}r", partitions=n, init="random")
        if not args.skip_ppmi:
            result["textmill_ppmi_svd"] = textmill_run("ppmi", method="ppmi_svd", max_vocab=30_000, partitions=2)

        if not args.skip_spark_ml:
            from pyspark.ml.feature import Word2Vec as SparkWord2Vec

            df = spark.read.parquet(str(tokens_path)).repartition(2).cache()
            df.count()
            s: dict = {"iterations": args.spark_ml_iter, "partitions": 2}
            with timer(s, "train_seconds"):
                fitted = SparkWord2Vec(
                    vectorSize=DIM,
                    windowSize=WINDOW,
                    minCount=MIN_COUNT,
                    maxIter=args.spark_ml_iter,
                    numPartitions=2,
                    seed=1,
                    inputCol="tokens",
                ).fit(df)
            s["words_per_second"] = round(corpus_words * args.spark_ml_iter / s["train_seconds"])
            rows = fitted.getVectors().collect()
            counts = dict(
                spark.read.parquet(str(tokens_path))
                .selectExpr("explode(tokens) as w")
                .groupBy("w")
                .count()
                .where(f"count >= {MIN_COUNT}")
                .collect()
            )
            rows.sort(key=lambda r: -counts.get(r.word, 0))
            s.update(evaluate([r.word for r in rows], np.array([r.vector.toArray() for r in rows], dtype=np.float32)))
            result["spark_ml_word2vec"] = s
    spark.stop()

    t2 = result.get(f"textmill_sgns_{args.partitions[0]}_partitions")
    if t2:
        result["ratios"] = {
            "textmill_over_gensim_words_per_second": round(t2["words_per_second"] / g["words_per_second"], 3),
            "wordsim_gap_vs_gensim": round(t2["wordsim353_spearman"] - g["wordsim353_spearman"], 4),
            "analogy_gap_vs_gensim_points": round(100 * (t2["analogy_accuracy"] - g["analogy_accuracy"]), 2),
        }
        for n in args.partitions[1:]:
            tn = result[f"textmill_sgns_{n}_partitions"]
            result["ratios"][f"wordsim_gap_vs_gensim_{n}_partitions"] = round(
                tn["wordsim353_spearman"] - g["wordsim353_spearman"], 4
            )
            result["ratios"][f"analogy_gap_vs_gensim_points_{n}_partitions"] = round(
                100 * (tn["analogy_accuracy"] - g["analogy_accuracy"]), 2
            )
        if "spark_ml_word2vec" in result:
            result["ratios"]["textmill_over_spark_ml_words_per_second"] = round(
                t2["words_per_second"] / result["spark_ml_word2vec"]["words_per_second"], 3
            )
    report("embeddings", result)


if __name__ == "__main__":
    main()
