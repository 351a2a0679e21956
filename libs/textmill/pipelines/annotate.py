"""The ``annotate`` job (tokens and entities in one parse) and the transforms behind
``tokenize`` and ``ner``.

Transforms, for notebooks and other jobs: ``with_annotations``, ``with_tokens`` and
``with_entities`` take a DataFrame with ``doc_id`` and a text column and return one row
per input row: ``doc_id``, the requested outputs, ``error`` (null when fine) and any
``keep_columns``. The spaCy pipeline is planned on the driver (fails fast if it cannot
load) and loaded once per executor Python worker.

``run_nlp_job`` is the job body the three jobs share: read ``prepare`` output, then
``write_annotations`` (also used by ``watch``): annotate, write Parquet sorted by ``doc_id``,
check rows out == rows in, count row errors (or fail on them); the job publishes the staged
output and returns metrics including the worker report (Python workers, model loads per
worker, peak worker RSS).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import textmill
from textmill.data import io, storage
from textmill.runtime import tracking, worker_cache
from textmill.runtime.config import JobConf
from textmill.runtime.errors import AccountingError, ColumnNotFoundError, TextmillError
from textmill.text.spacy_annotator import (
    EntityOptions,
    NlpConf,
    PipelinePlan,
    TokenOptions,
    output_schema,
    plan_pipeline,
)
from textmill.text.udfs import make_annotate_udf

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "annotate/v1"
ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"


INPUT_HINT = "the input should be prepare output; see nlp.text_column and nlp.keep_columns"


class RowErrorsError(TextmillError):
    """Rows failed and ``nlp.on_error`` is ``fail``."""


class AnnotateJobConf(JobConf):
    nlp: NlpConf = Field(default_factory=NlpConf)
    tokenize: TokenOptions = Field(default_factory=TokenOptions)
    ner: EntityOptions = Field(default_factory=EntityOptions)


JOB_CONF = AnnotateJobConf


def with_annotations(
    df: DataFrame,
    nlp: NlpConf | None = None,
    tokens: TokenOptions | None = None,
    entities: EntityOptions | None = None,
    report: Any = None,
    plan: PipelinePlan | None = None,
) -> DataFrame:
    """Annotate ``df[nlp.text_column]``; see the module docstring for the output columns.

    ``plan``: a ``plan_pipeline`` result made earlier (a long-running caller plans once)."""
    nlp = nlp or NlpConf()
    if tokens is None and entities is None:
        raise ValueError("with_annotations needs tokens, entities or both")
    io.check_columns(df, ["doc_id", nlp.text_column, *nlp.keep_columns], INPUT_HINT)
    produced = {"doc_id"} | {part.split()[0] for part in output_schema(tokens, entities).split(", ")}
    clash = sorted(set(nlp.keep_columns) & produced)
    if clash:
        raise ColumnNotFoundError(f"nlp.keep_columns may not carry {clash}: the job writes columns with those names")
    plan = plan or plan_pipeline(
        nlp.model, tokens, entities, gpu=nlp.gpu, spark=df.sparkSession, components=nlp.components
    )
    logger.info(
        "spaCy %s: running %s (excluded: %s)",
        nlp.model,
        "tokenizer only" if not plan.exclude and not plan.enable else "the planned components",
        ", ".join(plan.exclude) or "none",
    )
    annotate = make_annotate_udf(
        plan.__dict__,
        tokens.model_dump() if tokens is not None else None,
        entities.model_dump() if entities is not None else None,
        batch_size=nlp.batch_size,
        max_length=nlp.max_length,
        long_text=nlp.long_text,
        sort_by_length=nlp.sort_by_length,
        report=report is not None,
        batch_chars=nlp.batch_chars,
    )
    text = F.col(nlp.text_column)
    annotated = df.select(
        "doc_id",
        annotate(io.utf8_or_null(text)).alias("_tm_annotations"),
        F.is_valid_utf8(text).alias("_tm_utf8"),
        *nlp.keep_columns,
    )
    fields = [f.split()[0] for f in output_schema(tokens, entities).split(", ")]
    result = annotated.select(
        "doc_id",
        *[
            io.utf8_error(F.col("_tm_utf8"), F.col("_tm_annotations.error")).alias("error")
            if f == "error"
            else F.col(f"_tm_annotations.{f}")
            for f in fields
        ],
        *nlp.keep_columns,
        *(
            [F.col(f"_tm_annotations.{worker_cache.REPORT_COLUMN}").alias(worker_cache.REPORT_COLUMN)]
            if report is not None
            else []
        ),
    )
    return report.observe(result) if report is not None else result


def with_tokens(
    df: DataFrame, nlp: NlpConf | None = None, options: TokenOptions | None = None, report: Any = None
) -> DataFrame:
    """``doc_id, tokens, n_tokens[, lemmas, pos, sentences], error``."""
    return with_annotations(df, nlp, options or TokenOptions(), None, report)


def with_entities(
    df: DataFrame, nlp: NlpConf | None = None, options: EntityOptions | None = None, report: Any = None
) -> DataFrame:
    """``doc_id, entities[, entity_counts], error``."""
    return with_annotations(df, nlp, None, options or EntityOptions(), report)


def write_annotations(
    spark: SparkSession,
    source: DataFrame,
    path: str,
    rows_in: int,
    nlp: NlpConf,
    tokens: TokenOptions | None,
    entities: EntityOptions | None,
    report: Any = None,
    marker: dict | None = None,
    plan: PipelinePlan | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Annotate ``source`` (``rows_in`` rows) into the fresh directory ``path``, check rows out ==
    rows in and ``nlp.on_error``, and mark it. Returns (metrics, up to 3 error examples).

    Shared by the tokenize/ner/annotate jobs and ``watch``; the caller publishes ``path``.
    """
    partitions = io.task_partitions(spark, rows_in, 20_000, nlp.partitions)
    logger.info("annotating %d documents in %d partitions with %s", rows_in, partitions, nlp.model)
    # Range partitions by doc_id: balanced, deterministic, and the output comes out sorted.
    spread = source.repartitionByRange(partitions, "doc_id").sortWithinPartitions("doc_id")
    annotated = with_annotations(spread, nlp, tokens, entities, report, plan)
    previous_batch = spark.conf.get(ARROW_BATCH)
    spark.conf.set(ARROW_BATCH, str(nlp.arrow_batch_size))
    try:
        annotated.write.parquet(path)
    finally:
        spark.conf.set(ARROW_BATCH, previous_batch)
    written = spark.read.parquet(path)
    totals = (
        written.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count("error").alias("errors"),
            *([F.sum("n_tokens").alias("tokens")] if tokens is not None else []),
            *([F.sum(F.size("entities")).alias("entities")] if entities is not None else []),
        )
        .first()
        .asDict()
    )
    if totals["rows"] != rows_in:
        raise AccountingError(f"rows_in={rows_in} but rows_out={totals['rows']}; nothing was published")
    examples = (
        [r.asDict() for r in written.where(F.col("error").isNotNull()).select("doc_id", "error").limit(3).collect()]
        if totals["errors"]
        else []
    )
    if totals["errors"] and nlp.on_error == "fail":
        raise RowErrorsError(
            f"{totals['errors']} row(s) failed and nlp.on_error is 'fail'; e.g. {examples}; nothing was published"
        )
    storage.write_marker(
        spark,
        path,
        {
            "schema": SCHEMA_VERSION,
            "textmill_version": textmill.__version__,
            "rows": totals["rows"],
            "columns": written.columns,
            "model": nlp.model,
            **({"model_source": plan.source} if plan is not None and plan.source else {}),
            **(marker or {}),
        },
    )
    if examples:
        logger.warning("%d row(s) have an error, e.g. %s", totals["errors"], examples)
    metrics: dict[str, float] = {
        "rows_in": rows_in,
        "rows_out": totals["rows"],
        "rows_error": totals["errors"],
        "partitions": partitions,
    }
    if tokens is not None:
        metrics["tokens"] = totals["tokens"] or 0
    if entities is not None:
        metrics["entities"] = totals["entities"] or 0
    return metrics, examples


def run_nlp_job(
    spark: SparkSession, conf: JobConf, tokens: TokenOptions | None, entities: EntityOptions | None
) -> dict[str, float]:
    nlp: NlpConf = conf.nlp
    source = io.read_input(spark, conf.io.input, ["doc_id", nlp.text_column, *nlp.keep_columns], INPUT_HINT)
    io.require_text_column(source, nlp.text_column)
    plan = plan_pipeline(
        nlp.model, tokens, entities, gpu=nlp.gpu, spark=spark, components=nlp.components
    )  # fails on the driver before any Spark job
    tracking.tag_model_source("textmill.nlp", plan.source)
    rows_in = source.count()
    report = worker_cache.new_worker_report(spark)
    with storage.staged_outputs(spark, conf.io.output, replace_unmarked=conf.io.replace_unmarked) as (staged,):
        metrics, examples = write_annotations(spark, source, staged, rows_in, nlp, tokens, entities, report, plan=plan)
    metrics.update(tracking.log_workers(report.value, error_examples=examples))
    return metrics


def run(spark: SparkSession, conf: AnnotateJobConf) -> dict[str, float]:
    return run_nlp_job(spark, conf, conf.tokenize, conf.ner)
