"""sgns at its defaults on every corpus in ../shared/data, with and without the per-row cap.

The issue: ``train_embeddings`` diverged in round 1 on newsgroup posts, whose uuencoded
lines, ``>`` quote markers and ASCII art repeat one token thousands of times in one
document. A batch sums every update of such a row into one step. ``max_row_updates``
(default 16) caps a row's share of each batch (``embeddings.row_shares``).

Corpora: AG News test (title + description), BBC News (all 2,225 articles), IMDB train
(25,000 labelled reviews), IMDB unsup (50,000 reviews), and ``ag_news+repetition``: AG
News plus three posts of one token repeated ``--repeats`` times (a uuencoded block, a
quote-marker run, an ASCII-art run), the shape that diverged. Each runs the real job at
defaults (dim 100, 5 epochs, PPMI start, ``local[*]``), capped (the default) and
uncapped (``max_row_updates: 0``), side by side in one run, after a warm-up job. Reported per corpus and
contender: diverged or not, final round loss, training seconds, and for the IMDB corpora
WordSim-353 and analogy accuracy (``bench_embeddings.evaluate``); ratios capped/uncapped.

python tests/benchmarks/bench_sgns_corpora.py [--corpora ag_news bbc_news imdb imdb_unsup ag_news+repetition]
    [--repeats 60000] [--uncapped-corpora ag_news ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import SHARED, report, require

UNSUP = require(SHARED / "imdb_unsup" / "unsup.txt")


def texts_of(split) -> list[str]:
    """Every text of a ``bench_baselines`` split, train and test parts alike."""
    train, test = split()
    return [r["text"] for r in train + test]


def unsup_texts() -> list[str]:
    return [line for line in UNSUP.read_text(encoding="utf-8").split("\n") if line]


def with_repetition(texts: list[str], repeats: int) -> list[str]:
    return texts + [" ".join(["begin"] * repeats), " ".join([">"] * repeats), " ".join(["7 8 9"] * (repeats // 3))]


def longest_run(texts: list[str]) -> int:
    """The most times one token occurs in one document."""
    from collections import Counter

    return max((max(Counter(t.lower().split()).values(), default=0) for t in texts), default=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--corpora", nargs="+", default=["ag_news", "bbc_news", "imdb", "imdb_unsup", "ag_news+repetition"]
    )
    parser.add_argument("--repeats", type=int, default=60_000)
    parser.add_argument(
        "--uncapped-corpora", nargs="*", default=None, help="corpora that also run uncapped; default all"
    )
    args = parser.parse_args()

    from bench_baselines import ag_split, bbc_split, imdb_split
    from bench_embeddings import evaluate

    from textmill.jobs import run_job
    from textmill.pipelines.train_embeddings import EmbeddingsDivergedError
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark
    from textmill.vectors.docvectors import load_embeddings

    loaders = {
        "ag_news": lambda: texts_of(ag_split),
        "bbc_news": lambda: texts_of(bbc_split),
        "imdb": lambda: texts_of(imdb_split),
        "imdb_unsup": unsup_texts,
        "ag_news+repetition": lambda: with_repetition(texts_of(ag_split), args.repeats),
    }
    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-sgns-corpora")
    spark.sparkContext.setLogLevel("ERROR")
    result: dict = {
        "settings": "train_embeddings defaults (sgns, dim 100, window 5, negative 5, epochs 5, ppmi_svd start)",
        "corpora": {},
        "ratios": {},
    }
    uncapped_on = set(args.corpora if args.uncapped_corpora is None else args.uncapped_corpora)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        base = {
            "spark": {"ui_enabled": False},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "experiment": "textmill-bench-sgns-corpora",
            },
        }
        # Warm-up: the first job of a session pays for JVM code paths and Python workers.
        warm = tmp_path / "warm-in"
        warm.mkdir()
        pq.write_table(
            pa.table({"doc_id": [f"w{i}" for i in range(500)], "text": texts_of(ag_split)[:500]}),
            warm / "part-0.parquet",
        )
        run_job(
            "train_embeddings",
            {
                **base,
                "io": {"input": str(warm), "output": str(tmp_path / "warm-out")},
                "embeddings": {"epochs": 1, "subword": {"enabled": False}},
            },
            spark,
        )
        for name in args.corpora:
            texts = loaders[name]()
            src = tmp_path / f"{name}-in"
            src.mkdir()
            pq.write_table(
                pa.table({"doc_id": [f"d{i:06d}" for i in range(len(texts))], "text": texts}), src / "part-0.parquet"
            )
            entry: dict = {"documents": len(texts), "longest_token_run_in_one_document": longest_run(texts)}
            contenders = {"capped_16": {}, **({"uncapped": {"max_row_updates": 0}} if name in uncapped_on else {})}
            for contender, settings in contenders.items():
                out = tmp_path / f"{name}-{contender}"
                conf = {
                    **base,
                    "io": {"input": str(src), "output": str(out)},
                    "embeddings": {"subword": {"enabled": False}, **settings},
                }
                try:
                    metrics = run_job("train_embeddings", conf, spark)
                except EmbeddingsDivergedError as error:
                    entry[contender] = {"diverged": True, "error": str(error)[:160]}
                    continue
                run = {
                    "diverged": False,
                    "final_loss": round(metrics["final_loss"], 4),
                    "train_seconds": round(metrics["train_seconds"], 1),
                    "tokens": int(metrics["tokens"]),
                    "vocab_size": int(metrics["vocab_size"]),
                }
                if name.startswith("imdb"):
                    vectors, _, _ = load_embeddings(out / "export")
                    quality = evaluate(vectors.words, vectors.vectors)
                    run.update({k: quality[k] for k in ("wordsim353_spearman", "analogy_accuracy")})
                entry[contender] = run
            result["corpora"][name] = entry
            capped, uncapped = entry["capped_16"], entry.get("uncapped")
            if uncapped and not capped["diverged"] and not uncapped["diverged"]:
                result["ratios"][f"{name}_train_seconds_capped_over_uncapped"] = round(
                    capped["train_seconds"] / uncapped["train_seconds"], 3
                )
            print(json.dumps({name: entry}), flush=True)
    spark.stop()
    report("sgns_corpora", result)


if __name__ == "__main__":
    main()
