"""The ``embed_docs`` job: one vector per document from trained word vectors.

Input: Parquet with ``doc_id`` and ``tokens`` (tokenize output) or ``text``. The export
directory of ``train_embeddings`` is shipped with ``addFile`` and loaded once per Python
worker by an iterator pandas UDF. Output: ``doc_id, vector array<float>, n_known int,
error`` (rows out == rows in; a document with no known token gets a null vector and
``error = "no known tokens"``). These vectors feed the nearest-neighbour index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pydantic import Field
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from textmill.data import io
from textmill.runtime import tracking, worker_cache
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.errors import ColumnNotFoundError, InputNotFoundError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "embed_docs/v1"


class EmbedConf(StrictModel):
    embeddings: str | None = Field(None, description="train_embeddings output directory (or its export/) (required)")
    tokens_column: str = "tokens"
    text_column: str = "text"
    sif: bool = Field(True, description="weight words by a / (a + p(w))")
    sif_a: float = Field(1e-3, gt=0)
    subword_fallback: bool = Field(True, description="unseen words use their character n-gram vectors")
    partitions: int | None = Field(
        None,
        gt=0,
        description="default max(2 x default parallelism, rows / 50000), rounded up to a multiple of the parallelism",
    )


class EmbedDocsJobConf(JobConf):
    embed: EmbedConf = Field(default_factory=EmbedConf)

    def input_paths(self) -> list[str]:
        return super().input_paths() + ([self.embed.embeddings] if self.embed.embeddings else [])

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        if not self.embed.embeddings:
            problems.append(
                "'embed.embeddings' is required but was not set (null); point it at train_embeddings' output"
            )
        return problems


JOB_CONF = EmbedDocsJobConf


def export_dir(path: str) -> Path:
    base = Path(path[len("file:") :] if path.startswith("file:") else path)
    for candidate in (base, base / "export"):
        if (candidate / "embeddings.json").is_file():
            return candidate
    raise InputNotFoundError(f"embed.embeddings: no embeddings.json in {base} or {base / 'export'}")


def make_embed_udf(
    file_name: str, from_tokens: bool, sif: bool, sif_a: float, subword_fallback: bool, report: bool = False
):
    @F.pandas_udf(
        "vector array<float>, n_known int, error string" + (f", {worker_cache.REPORT_COLUMN} string" if report else "")
    )
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from textmill.text.featurize import Featurizer
        from textmill.vectors.docvectors import DocumentEmbedder

        path = io.shipped_path(file_name)
        key = ("embeddings", file_name, sif, sif_a, subword_fallback)
        embedder = worker_cache.get_or_load(key, lambda: DocumentEmbedder(path, sif, sif_a, subword_fallback))
        featurizer = Featurizer(lowercase=embedder.lowercase, max_tokens=10**9)

        def frames() -> Iterator[pd.DataFrame]:
            for batch in batches:
                yield embedded(batch)

        def embedded(batch: pd.Series) -> pd.DataFrame:
            vectors, known, errors = [], [], []
            for value in batch:
                if value is None:
                    vectors.append(None), known.append(0), errors.append("null input")
                    continue
                tokens = list(value) if from_tokens else featurizer.tokens(value)
                vector, n = embedder.embed_tokens(tokens)
                vectors.append(vector.tolist() if vector is not None else None)
                known.append(n)
                errors.append(None if vector is not None else "no known tokens")
            frame = pd.DataFrame({"vector": vectors, "n_known": known, "error": errors})
            if report:
                frame[worker_cache.REPORT_COLUMN] = None
            return frame

        if not report:
            yield from frames()
            return
        yield from worker_cache.with_report(frames(), worker_cache.attach_to_frame, key)

    return embed


def with_doc_vectors(source: DataFrame, c: EmbedConf, shipped: str, partitions: int, report=None) -> DataFrame:
    """``doc_id, vector, n_known, error``, one row per row of ``source`` (from ``c.tokens_column``
    when ``source`` has it, else ``c.text_column``), in ``partitions`` range partitions by ``doc_id``."""
    from_tokens = c.tokens_column in source.columns
    column = c.tokens_column if from_tokens else c.text_column
    if column not in source.columns:
        raise ColumnNotFoundError(
            f"embed_docs needs {c.tokens_column!r} or {c.text_column!r}; available: {', '.join(source.columns)}"
        )
    if not from_tokens:
        io.require_text_column(source, column)
    udf = make_embed_udf(shipped, from_tokens, c.sif, c.sif_a, c.subword_fallback, report is not None)
    value = F.col(column)
    valid = F.lit(True) if from_tokens else F.is_valid_utf8(value)  # annotate's tokens are valid text
    result = (
        source.repartitionByRange(partitions, "doc_id")
        .sortWithinPartitions("doc_id")
        .select("doc_id", udf(value if from_tokens else io.utf8_or_null(value)).alias("_e"), valid.alias("_tm_utf8"))
        .select(
            "doc_id",
            "_e.vector",
            "_e.n_known",
            io.utf8_error(F.col("_tm_utf8"), F.col("_e.error")).alias("error"),
            *(
                [F.col(f"_e.{worker_cache.REPORT_COLUMN}").alias(worker_cache.REPORT_COLUMN)]
                if report is not None
                else []
            ),
        )
    )
    return report.observe(result) if report is not None else result


def run(spark: SparkSession, conf: EmbedDocsJobConf) -> dict[str, float]:
    c = conf.embed
    source = io.read_input(spark, conf.io.input, ["doc_id"])
    export = export_dir(c.embeddings)
    shipped = io.ship_directory(spark, export)
    rows_in = source.count()
    partitions = io.task_partitions(spark, rows_in, 50_000, c.partitions)
    report = worker_cache.new_worker_report(spark)
    out = with_doc_vectors(source, c, shipped, partitions, report)
    rows_out, rows_error, _ = io.publish_rows(
        spark,
        out,
        conf.io.output,
        rows_in,
        {"schema": SCHEMA_VERSION, "embeddings": str(export)},
        replace_unmarked=conf.io.replace_unmarked,
    )
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_error": rows_error,
        "partitions": partitions,
        **tracking.log_workers(report.value),
    }
