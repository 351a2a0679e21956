"""The ``train_embeddings`` job: word vectors trained map-reduce style on Spark.

1. Tokens: the input's ``tokens`` column (``tokenize`` output), or its ``text`` tokenized on
   the executors with the classifier's regex tokenizer (lower-cased, HTML tags dropped).
2. Vocabulary (map-reduce): token counts with Spark; ``min_count`` and ``max_vocab`` apply.
   The job refuses, before training, a ``vocab x dim`` that does not fit ``max_memory_mb``.
3. ``sgns`` (default): every round, each partition trains on its shard of the round in a
   Spark task (``mapInArrow``), starting from the round's weights, which reach the
   executors as a shipped directory of two ``.npy`` files (``io.ship_directory``: the path
   itself in classic local mode, an archive artifact elsewhere, Spark Connect included)
   (``embeddings.train_sgns_partition``). Each task returns its update-weighted rows, the
   driver adds them up one partition at a time (``partials.sum_partitions``) and turns the
   sum into the next weights: a row becomes the mean of the partitions' versions of it,
   weighted by how many updates each partition gave it. The driver holds the two weight
   matrices, the running sum and one partial, never one copy per partition.
   By default (``init: ppmi_svd``) the weights start from the PPMI-SVD factors of the
   ``init_vocab`` most frequent words instead of random noise: the counts are a sum over
   partitions, so the start is the same however the corpus is split, and every partition
   then refines one shared solution. From a random start the partitions' models drift
   apart and their average loses quality as partitions grow (WS-353 0.29 at 1 partition,
   0.07 at 8 on a quarter of IMDB unsup; 0.44 and 0.37 from the PPMI start).
   A batch sums the updates of a word that occurs in many of its pairs (a token repeated
   thousands of times in one post: uuencoded lines, ``>`` quote markers, ASCII art) into
   one step that grows with the count and diverges; ``max_row_updates`` scales such a
   word's share of each update down to that many full steps (``embeddings.row_shares``).
   ``ppmi_svd``: windowed co-occurrence counts per partition, added up on the driver,
   then PPMI and a truncated SVD on the driver (deterministic).
4. Subword vectors for unseen words (fastText-style n-grams, fitted by least squares).
5. Outputs under ``io.output`` (all versioned by ``export/embeddings.json``): Parquet
   ``vectors/`` (word, count, vector), ``vocab/`` (word, count), ``export/`` (word2vec text,
   float16 .npy + vocab.tsv, n-gram .npy, TensorBoard projector TSVs), all logged to MLflow
   with an ``embedder`` pyfunc that turns texts into document vectors.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal

import mlflow
import numpy as np
import pandas as pd
from pydantic import Field
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import textmill
from textmill.data import io, storage
from textmill.runtime import console, partials, session_kinds, tracking
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.errors import ColumnNotFoundError, TextmillError
from textmill.vectors import embeddings as emb

logger = logging.getLogger(__name__)

FORMAT = "textmill-embeddings/v1"


class EmbeddingsMemoryError(TextmillError):
    """The vocabulary x dimension would not fit the configured memory."""


class EmbeddingsDivergedError(TextmillError):
    """SGNS training produced non-finite weights."""


class SubwordConf(StrictModel):
    enabled: bool = Field(True, description="fit n-gram vectors for unseen words")
    buckets: int = Field(200_000, gt=0, description="FNV-1a hash buckets for character n-grams")
    min_n: int = Field(3, gt=0)
    max_n: int = Field(6, gt=0)
    steps: int = Field(100, gt=0, description="conjugate-gradient steps of the least-squares fit")


class EmbeddingsConf(StrictModel):
    method: Literal["sgns", "ppmi_svd"] = Field("sgns", description="sgns | ppmi_svd")
    tokens_column: str = Field("tokens", description="used when the input has it")
    text_column: str = Field("text", description="tokenized on the executors when there is no tokens column")
    lowercase: bool = True
    dim: int = Field(100, gt=0)
    window: int = Field(5, gt=0)
    negative: int = Field(5, gt=0, description="negative samples per pair (sgns)")
    epochs: int = Field(5, gt=0, description="passes over the corpus (sgns)")
    rounds_per_epoch: int = Field(1, gt=0, description="weight averages per epoch (sgns)")
    init: Literal["ppmi_svd", "random"] = Field(
        "ppmi_svd",
        description="sgns start: PPMI-SVD factors of the most frequent words (partition-independent), or random",
    )
    init_vocab: int = Field(30_000, gt=1, description="words the ppmi_svd start covers (the rest start random)")
    min_count: int = Field(5, gt=0)
    max_vocab: int | None = Field(200_000, gt=0)
    sample: float = Field(1e-3, ge=0, description="subsampling threshold; 0 = off")
    lr: float = Field(0.025, gt=0, description="start learning rate, decays linearly over all rounds")
    lr_min: float = Field(0.0001, gt=0)
    batch_pairs: int = Field(1024, gt=0, description="(center, context) pairs per vectorised update")
    shared_negatives: int = Field(
        16,
        gt=0,
        description=(
            "negative words drawn per batch and shared by its pairs, each weighted negative/shared_negatives (sgns)"
        ),
    )
    max_row_updates: int = Field(
        16,
        ge=0,
        description="a word's summed updates per batch are scaled down to this many full steps; 0 = off (sgns)",
    )
    partitions: int | None = Field(None, gt=0, description="default: default parallelism")
    seed: int = 1
    max_memory_mb: int = Field(4096, gt=0, description="refuse a vocab x dim whose training state needs more")
    projector_top_n: int = Field(5000, gt=0, description="words in the TensorBoard projector files")
    subword: SubwordConf = Field(default_factory=SubwordConf)


class TrainEmbeddingsJobConf(JobConf):
    container_output: ClassVar[bool] = True  # vectors/, vocab/, export/
    embeddings: EmbeddingsConf = Field(default_factory=EmbeddingsConf)


JOB_CONF = TrainEmbeddingsJobConf


# ---------------------------------------------------------------------------- data


def token_column(df: DataFrame, c: EmbeddingsConf) -> DataFrame:
    """``doc_id, tokens`` from a tokens column or from text."""
    if c.tokens_column in df.columns:
        tokens = F.col(c.tokens_column)
        if c.lowercase:
            tokens = F.transform(tokens, lambda t: F.lower(t))
        return df.select("doc_id", tokens.alias("tokens"))
    if c.text_column not in df.columns:
        raise ColumnNotFoundError(
            f"neither {c.tokens_column!r} nor {c.text_column!r} is a column of the input; "
            f"available: {', '.join(df.columns)}"
        )
    io.require_text_column(df, c.text_column)
    lowercase = c.lowercase

    @F.pandas_udf("array<string>")
    def tokenize(texts: pd.Series) -> pd.Series:
        from textmill.text.featurize import Featurizer

        featurizer = Featurizer(lowercase=lowercase, max_tokens=10**9)
        return pd.Series([featurizer.tokens(t) for t in texts])

    return df.select("doc_id", tokenize(F.col(c.text_column)).alias("tokens"))


def count_vocabulary(tokens: DataFrame, min_count: int, max_vocab: int | None) -> pd.DataFrame:
    counts = (
        tokens.select(F.explode("tokens").alias("word"))
        .groupBy("word")
        .count()
        .where(F.col("count") >= min_count)
        .orderBy(F.desc("count"), "word")
    )
    if max_vocab:
        counts = counts.limit(max_vocab)
    return counts.toPandas()


def training_memory_mb(vocab: int, dim: int) -> float:
    """Per task and on the driver: two weight matrices + two update-weighted copies, float32."""
    return 4 * vocab * dim * 4 / 2**20


def make_ids_udf(words: list[str]):
    index = {w: i for i, w in enumerate(words)}

    @F.pandas_udf("array<int>")
    def to_ids(tokens: pd.Series) -> pd.Series:
        return pd.Series([[index[t] for t in toks if t in index] if toks is not None else [] for toks in tokens])

    return to_ids


def _sum_results(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


# ---------------------------------------------------------------------------- training


def cooccurrences(ids: DataFrame, vocab: int, window: int):
    """Co-occurrence counts of the ``vocab`` most frequent words: one sparse matrix per task, added up on the driver
    one at a time (``partials.sum_partitions``)."""

    def task(batches, part):
        from textmill.runtime.partials import list_column
        from textmill.vectors.embeddings import cooccurrence_counts

        return cooccurrence_counts(list_column(batches, "ids"), vocab, window)

    counts = partials.sum_partitions(ids.select("ids"), task, lambda a, b: a + b)
    logger.info("%d non-zero co-occurrences among the %d most frequent words", counts.nnz, vocab)
    return counts


def initial_weights(ids: DataFrame, vocab: int, c: EmbeddingsConf) -> tuple[np.ndarray, np.ndarray]:
    """word2vec's start (small random input vectors, zero output vectors), or the PPMI-SVD
    factors for the ``init_vocab`` most frequent words (see the module docstring)."""
    rng = np.random.default_rng(c.seed)
    w_in = ((rng.random((vocab, c.dim), dtype=np.float32) - 0.5) / c.dim).astype(np.float32)
    w_out = np.zeros((vocab, c.dim), dtype=np.float32)
    if c.init == "ppmi_svd":
        covered = min(vocab, c.init_vocab)
        w_in[:covered], w_out[:covered] = emb.ppmi_factors(cooccurrences(ids, covered, c.window), c.dim)
    return w_in, w_out


def train_sgns(
    spark: SparkSession,
    ids: DataFrame,
    counts: np.ndarray,
    c: EmbeddingsConf,
    total_tokens: int,
    partitions: int,
    w_in: np.ndarray,
    w_out: np.ndarray,
) -> tuple[np.ndarray, list[dict]]:
    keep = emb.keep_probabilities(counts, c.sample).astype(np.float32)
    negative_probs = emb.negative_distribution(counts)
    settings = emb.SgnsSettings(
        dim=c.dim,
        window=c.window,
        negative=c.negative,
        sample=c.sample,
        batch_pairs=c.batch_pairs,
        shared_negatives=c.shared_negatives,
        max_row_updates=c.max_row_updates,
    )
    rounds = c.epochs * c.rounds_per_epoch
    history = []
    with console.Progress("sgns", rounds, unit="rounds") as progress:
        for step in range(rounds):
            epoch, r = divmod(step, c.rounds_per_epoch)
            lr_start = max(c.lr_min, c.lr * (1 - step / rounds))
            lr_end = max(c.lr_min, c.lr * (1 - (step + 1) / rounds))
            expected = max(1, total_tokens // (partitions * c.rounds_per_epoch))
            seed = c.seed * 1_000_003 + step * 1009
            started = time.perf_counter()
            weights = io.scratch_dir(f"sgns-round-{step + 1}-")
            np.save(weights / "w_in.npy", w_in)
            np.save(weights / "w_out.npy", w_out)
            shipped = io.ship_directory(spark, weights)

            def task(batches, part, shipped=shipped, seed=seed, lr_start=lr_start, lr_end=lr_end, expected=expected):
                from textmill.data.io import shipped_path
                from textmill.runtime.partials import list_column
                from textmill.vectors.embeddings import train_sgns_partition

                start = Path(shipped_path(shipped))
                return train_sgns_partition(
                    list_column(batches, "ids"),
                    np.load(start / "w_in.npy"),
                    np.load(start / "w_out.npy"),
                    keep,
                    negative_probs,
                    settings,
                    lr_start,
                    lr_end,
                    expected,
                    seed + part,
                )

            shard = ids.where(F.col("round") == r).select("ids")
            total = partials.sum_partitions(shard, task, _sum_results)
            shutil.rmtree(
                weights, ignore_errors=True
            )  # a shipped archive of it stays in the scratch folder for late executors
            if total is None:
                raise TextmillError(f"sgns round {step + 1}: no partition returned a result")
            w_in = emb.combine(w_in, total.pop("in_weighted"), total["in_updates"])
            w_out = emb.combine(w_out, total.pop("out_weighted"), total["out_updates"])
            if not (np.isfinite(w_in).all() and np.isfinite(w_out).all()):
                raise EmbeddingsDivergedError(
                    f"sgns diverged in round {step + 1} (non-finite weights) with lr={c.lr}, "
                    f"batch_pairs={c.batch_pairs} and "
                    f"max_row_updates={c.max_row_updates}: words repeated many times within a batch get their "
                    "updates summed "
                    "into one oversized step; lower embeddings.max_row_updates (0 turns the cap off) or embeddings.lr"
                )
            seconds = time.perf_counter() - started
            record = {
                "round": step + 1,
                "epoch": epoch + 1,
                "pairs": int(total["pairs"]),
                "tokens": int(total["tokens"]),
                "loss": total["loss_sum"] / max(total["batches"], 1),
                "seconds": seconds,
                "lr_start": lr_start,
            }
            history.append(record)
            mlflow.log_metrics(
                {"round_loss": record["loss"], "round_pairs": record["pairs"], "round_seconds": seconds}, step=step + 1
            )
            logger.info(
                "sgns round %d/%d (epoch %d): %d pairs, loss %.4f, %.1fs",
                step + 1,
                rounds,
                epoch + 1,
                record["pairs"],
                record["loss"],
                seconds,
            )
            progress.advance(epoch=epoch + 1, loss=round(record["loss"], 4))
    return w_in, history


def train_ppmi_svd(ids: DataFrame, vocab: int, c: EmbeddingsConf) -> np.ndarray:
    return emb.ppmi_svd(cooccurrences(ids, vocab, c.window), c.dim)


# ---------------------------------------------------------------------------- outputs


def write_exports(
    directory: Path,
    words: list[str],
    counts: np.ndarray,
    vectors: np.ndarray,
    ngram_vectors: np.ndarray | None,
    c: EmbeddingsConf,
    extra: dict,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "vectors.f16.npy", vectors.astype(np.float16))
    (directory / "vocab.tsv").write_text("".join(f"{w}\t{int(n)}\n" for w, n in zip(words, counts)), encoding="utf-8")
    if ngram_vectors is not None:
        np.save(directory / "ngrams.f16.npy", ngram_vectors.astype(np.float16))
    with (directory / "vectors.w2v.txt").open("w", encoding="utf-8") as fh:
        fh.write(f"{len(words)} {vectors.shape[1]}\n")
        for word, vector in zip(words, vectors):
            fh.write(word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n")
    projector = directory / "projector"
    projector.mkdir(exist_ok=True)
    top = min(c.projector_top_n, len(words))
    np.savetxt(projector / "vectors.tsv", vectors[:top], delimiter="\t", fmt="%.5f")
    (projector / "metadata.tsv").write_text(
        "word\tcount\n" + "".join(f"{w}\t{int(n)}\n" for w, n in zip(words[:top], counts[:top])), encoding="utf-8"
    )
    manifest = {
        "format": FORMAT,
        "textmill_version": textmill.__version__,
        "method": c.method,
        "dim": int(vectors.shape[1]),
        "vocab_size": len(words),
        "lowercase": c.lowercase,
        "subword": {
            "enabled": ngram_vectors is not None,
            "buckets": c.subword.buckets,
            "min_n": c.subword.min_n,
            "max_n": c.subword.max_n,
        },
        "files": {
            "vectors": "vectors.f16.npy",
            "vocab": "vocab.tsv",
            "ngrams": "ngrams.f16.npy" if ngram_vectors is not None else None,
            "word2vec_text": "vectors.w2v.txt",
            "projector": "projector/",
        },
        **extra,
    }
    (directory / "embeddings.json").write_text(json.dumps(manifest, indent=2))


def run(spark: SparkSession, conf: TrainEmbeddingsJobConf) -> dict[str, float]:
    c = conf.embeddings
    out = Path(conf.io.output[len("file:") :] if conf.io.output.startswith("file:") else conf.io.output)
    if "://" in str(conf.io.output) and not conf.io.output.startswith("file:"):
        raise TextmillError(f"io.output must be a local or mounted path for the exports (got {conf.io.output!r})")
    io.require_input(spark, conf.io.input)
    source = spark.read.parquet(conf.io.input)
    if "doc_id" not in source.columns:
        raise ColumnNotFoundError(f"column doc_id not in {conf.io.input}; available: {', '.join(source.columns)}")
    tokens = token_column(source, c).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows_in = tokens.count()
        vocab_df = count_vocabulary(tokens, c.min_count, c.max_vocab)
        words = vocab_df["word"].tolist()
        counts = vocab_df["count"].to_numpy(dtype=np.int64)
        if len(words) < 2:
            raise TextmillError(
                f"the vocabulary has {len(words)} word(s) with min_count={c.min_count}; lower min_count or add text"
            )
        need = training_memory_mb(len(words), c.dim)
        if need > c.max_memory_mb:
            raise EmbeddingsMemoryError(
                f"vocabulary {len(words):,} x dim {c.dim} needs about {need:,.0f} MB per task and on the driver "
                f"(4 float32 matrices), over embeddings.max_memory_mb={c.max_memory_mb:,}; lower max_vocab or dim, "
                f"or raise max_memory_mb"
            )
        partitions = c.partitions or session_kinds.default_parallelism(spark)
        ids = (
            tokens.select("doc_id", make_ids_udf(words)(F.col("tokens")).alias("ids"))
            .withColumn("round", F.pmod(F.xxhash64("doc_id", F.lit(c.seed)), F.lit(c.rounds_per_epoch)))
            .repartition(partitions, "doc_id")
            .sortWithinPartitions("doc_id")
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        totals = ids.agg(
            F.sum(F.size("ids")).alias("tokens"),
            F.count(F.lit(1)).alias("docs"),
            F.sum((F.size("ids") == 0).cast("int")).alias("empty"),
        ).first()
        total_tokens = int(totals["tokens"] or 0)
        logger.info(
            "train_embeddings: %d docs, %d in-vocabulary tokens, vocabulary %d, %s on %d partitions",
            totals["docs"],
            total_tokens,
            len(words),
            c.method,
            partitions,
        )
        started = time.perf_counter()
        init_seconds = 0.0
        if c.method == "sgns":
            w_in, w_out = initial_weights(ids, len(words), c)
            init_seconds = time.perf_counter() - started
            logger.info("sgns start (%s) ready in %.1fs", c.init, init_seconds)
            vectors, history = train_sgns(spark, ids, counts, c, total_tokens, partitions, w_in, w_out)
        else:
            vectors, history = train_ppmi_svd(ids, len(words), c), []
        train_seconds = time.perf_counter() - started
        ids.unpersist()
    finally:
        tokens.unpersist()

    ngram_vectors = None
    subword_seconds = 0.0
    if c.subword.enabled:
        fit_started = time.perf_counter()
        ngram_vectors = emb.fit_subwords(
            words, vectors, c.subword.buckets, c.subword.min_n, c.subword.max_n, steps=c.subword.steps
        )
        subword_seconds = time.perf_counter() - fit_started
        logger.info("subword vectors fitted in %.1fs", subword_seconds)

    with tempfile.TemporaryDirectory(prefix="textmill-embeddings-") as tmp:
        export = Path(tmp) / "export"
        write_exports(
            export,
            words,
            counts,
            vectors,
            ngram_vectors,
            c,
            {
                "training": {
                    "epochs": c.epochs,
                    "init": c.init if c.method == "sgns" else None,
                    "window": c.window,
                    "negative": c.negative,
                    "min_count": c.min_count,
                    "sample": c.sample,
                    "partitions": partitions,
                    "seed": c.seed,
                    "history": history,
                }
            },
        )
        frame = pd.DataFrame({"word": words, "count": counts, "vector": list(vectors.astype(np.float32))})
        with storage.staged_outputs(
            spark, str(out / "vectors"), str(out / "vocab"), replace_unmarked=conf.io.replace_unmarked
        ) as (staged_vectors, staged_vocab):
            spark.createDataFrame(frame, "word string, count long, vector array<float>").write.parquet(staged_vectors)
            spark.createDataFrame(frame[["word", "count"]], "word string, count long").write.parquet(staged_vocab)
        final_export = out / "export"
        if final_export.exists():
            shutil.rmtree(final_export)
        shutil.copytree(export, final_export)
    mlflow.log_artifacts(str(final_export), "embeddings")
    log_embedder(final_export)
    words_per_second = total_tokens * (c.epochs if c.method == "sgns" else 1) / max(train_seconds, 1e-9)
    return {
        "rows_in": rows_in,
        "vocab_size": len(words),
        "tokens": total_tokens,
        "empty_docs": int(totals["empty"] or 0),
        "train_seconds": train_seconds,
        "init_seconds": init_seconds,
        "subword_seconds": subword_seconds,
        "words_per_second": words_per_second,
        "partitions": partitions,
        **({"final_loss": history[-1]["loss"]} if history else {}),
    }


def log_embedder(export: Path):
    """Log the ``embedder`` pyfunc: texts -> document vectors (mean of word vectors, SIF-weighted)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    from textmill.models.from_code import model_code

    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]), outputs=Schema([ColSpec(Array(DataType.float), "vector")])
    )
    return mlflow.pyfunc.log_model(
        name="embedder",
        python_model=model_code("embedder"),
        artifacts={"embeddings": str(export)},
        code_paths=[tracking.package_code_path()],
        signature=signature,
        input_example=pd.DataFrame({"text": ["Stocks rallied after the central bank held rates.", ""]}),
        pip_requirements=["numpy", "pandas", "pydantic>=2", "pyyaml"],
    )
