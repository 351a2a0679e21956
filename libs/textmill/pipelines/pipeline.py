"""The ``pipeline`` job: the end-to-end run behind the README's first command.

With ``io.input`` unset it generates the sample corpus (``textmill.data.sample``) under
``<io.output>/sample/``; then it runs each step in ``pipeline.steps`` as a nested MLflow
run under this job's run, writing to ``<io.output>/<step output>``, and finishes with a
summary (counts, labels, lengths, quarantine reasons, tokens and entity types) that it
logs as ``summary.json`` (and ``--json`` prints). Steps: ``prepare`` -> ``dedup`` (the later steps read its
kept table) -> ``annotate`` -> ``train_classifier``
(when the prepared sample has at least two labels) -> ``classify`` (with the model just
trained, or ``classify.model_uri``) -> ``train_embeddings`` (on annotate's tokens) ->
``embed_docs`` -> ``build_index`` -> ``neighbors`` (the documents' kNN graph) -> ``cluster``.

Each step prints a line as it starts and ends (``textmill.runtime.console``); the steps' rows, seconds,
headlines and run ids, with the summary, are returned as the job's details (``--json``) and logged
as ``steps.json`` and ``summary.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

import mlflow
from pydantic import Field
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from textmill.data.sample import write_sample_csv
from textmill.dedup.transforms import DedupConf
from textmill.pipelines.annotate import AnnotateJobConf
from textmill.pipelines.build_index import BuildIndexJobConf, IndexConf
from textmill.pipelines.classify import ClassifyConf, ClassifyJobConf
from textmill.pipelines.cluster import ClusterConf, ClusterJobConf
from textmill.pipelines.dedup import DedupJobConf
from textmill.pipelines.embed_docs import EmbedConf, EmbedDocsJobConf
from textmill.pipelines.neighbors import NeighborsConf, NeighborsJobConf
from textmill.pipelines.prepare import PrepareConf, PrepareJobConf
from textmill.pipelines.runner import JobOutcome, run_job_report
from textmill.pipelines.train_classifier import ClassifierConf, TrainClassifierJobConf
from textmill.pipelines.train_embeddings import EmbeddingsConf, TrainEmbeddingsJobConf
from textmill.runtime import console
from textmill.runtime.config import JobConf, StrictModel
from textmill.text.spacy_annotator import EntityOptions, NlpConf, TokenOptions

logger = logging.getLogger(__name__)


STEP_ORDER = (
    "prepare",
    "dedup",
    "annotate",
    "train_classifier",
    "classify",
    "train_embeddings",
    "embed_docs",
    "build_index",
    "neighbors",
    "cluster",
)
Step = Literal[
    "prepare",
    "dedup",
    "annotate",
    "train_classifier",
    "classify",
    "train_embeddings",
    "embed_docs",
    "build_index",
    "neighbors",
    "cluster",
]


class SampleConf(StrictModel):
    n_docs: int = Field(2000, gt=0, description="generated documents when io.input is null")
    seed: int = 7


class PipelineConf(StrictModel):
    steps: list[Step] = Field(default_factory=lambda: list(STEP_ORDER), min_length=1)
    sample: SampleConf = Field(default_factory=SampleConf)


class PipelineJobConf(JobConf):
    required: ClassVar[tuple[str, ...]] = ("io.output",)
    container_output: ClassVar[bool] = True  # sample/, prepared/, annotated/, ... one per step
    rate_metric: ClassVar[bool] = False  # its wall time is all the steps'; each step logs its own rate
    pipeline: PipelineConf = Field(default_factory=PipelineConf)
    prepare: PrepareConf = Field(default_factory=PrepareConf)
    dedup: DedupConf = Field(default_factory=DedupConf)
    nlp: NlpConf = Field(default_factory=NlpConf)
    tokenize: TokenOptions = Field(default_factory=TokenOptions)
    ner: EntityOptions = Field(default_factory=EntityOptions)
    classifier: ClassifierConf = Field(default_factory=ClassifierConf)
    classify: ClassifyConf = Field(default_factory=ClassifyConf)
    embeddings: EmbeddingsConf = Field(default_factory=EmbeddingsConf)
    embed: EmbedConf = Field(default_factory=EmbedConf)
    index: IndexConf = Field(default_factory=lambda: IndexConf(id_column="doc_id"))
    neighbors: NeighborsConf = Field(default_factory=lambda: NeighborsConf(id_column="doc_id"))
    cluster: ClusterConf = Field(default_factory=ClusterConf)

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        if self.io.quarantine:
            problems.append(
                "'io.quarantine' must be null for the pipeline: each step's quarantine goes beside its output"
            )
        steps = self.pipeline.steps
        order = list(STEP_ORDER)
        if steps != sorted(steps, key=order.index):
            problems.append(
                f"'pipeline.steps' {steps}: steps run in the order {order} (each reads an earlier one's output)"
            )
        if "classify" in steps and "train_classifier" not in steps and not self.classify.model_uri:
            problems.append("'pipeline.steps' has classify without train_classifier: set classify.model_uri")
        if "embed_docs" in steps and "train_embeddings" not in steps and not self.embed.embeddings:
            problems.append("'pipeline.steps' has embed_docs without train_embeddings: set embed.embeddings")
        return problems


JOB_CONF = PipelineJobConf


def summarize(spark: SparkSession, root: str, steps: list[str]) -> dict:
    prepared, quarantine = f"{root}/prepared", f"{root}/prepared_quarantine"
    df = spark.read.parquet(prepared)
    labels = {r["label"]: r["count"] for r in df.groupBy("label").count().orderBy("label").collect()}
    q25, q50, q95 = df.approxQuantile("n_chars", [0.25, 0.5, 0.95], 0.01) if labels else (0, 0, 0)
    reasons = {r["reason"]: r["count"] for r in spark.read.parquet(quarantine).groupBy("reason").count().collect()}
    summary = {
        "documents": sum(labels.values()),
        "labels": {str(k): v for k, v in labels.items()},
        "n_chars": {"p25": q25, "p50": q50, "p95": q95},
        "quarantined": reasons,
        "example": [r.asDict() for r in df.select("doc_id", "title", "label", "text").limit(2).collect()],
    }
    if "classify" in steps and Path(f"{root}/classified").exists():
        classified = spark.read.parquet(f"{root}/classified")
        summary["classify"] = {
            r["label"]: r["count"]
            for r in classified.groupBy("label").count().orderBy("label").collect()
            if r["label"] is not None
        }
    if "train_embeddings" in steps and Path(f"{root}/embeddings/export").exists():
        from textmill.vectors.docvectors import load_embeddings

        vectors, _, manifest = load_embeddings(f"{root}/embeddings/export")
        probes = [w for w in ("profits", "match", "software", "election") if w in vectors.index]
        summary["embeddings"] = {
            "vocab_size": manifest["vocab_size"],
            "dim": manifest["dim"],
            "neighbours": {
                w: [n for n, _ in vectors.most_similar(vectors.vectors[vectors.index[w]], topn=4, exclude=[w])]
                for w in probes
            },
        }
    if "dedup" in steps and Path(f"{root}/deduplicated").exists():
        marked = spark.read.parquet(f"{root}/deduplicated")
        kinds = {r["dup_kind"]: r["count"] for r in marked.groupBy("dup_kind").count().collect()}
        summary["dedup"] = {"kept": kinds.get(None, 0), "exact": kinds.get("exact", 0), "near": kinds.get("near", 0)}
    if "cluster" in steps and Path(f"{root}/clusters").exists():
        sizes = [r["size"] for r in spark.read.parquet(f"{root}/clusters_sizes").orderBy("cluster_id").collect()]
        summary["clusters"] = {"count": len(sizes), "largest": sizes[:5], "singletons": sum(1 for x in sizes if x == 1)}
    if "annotate" in steps:
        annotated = spark.read.parquet(f"{root}/annotated")
        totals = annotated.agg(F.sum("n_tokens").alias("tokens"), F.count("error").alias("errors")).first()
        entity_types = (
            annotated.select(F.explode("entities.label").alias("label"))
            .groupBy("label")
            .count()
            .orderBy(F.desc("count"), "label")
            .limit(8)
            .collect()
        )
        summary["annotate"] = {
            "tokens": totals["tokens"],
            "row_errors": totals["errors"],
            "top_entity_types": {r["label"]: r["count"] for r in entity_types},
        }
    return summary


def run(spark: SparkSession, conf: PipelineJobConf) -> JobOutcome:
    root = conf.io.output.rstrip("/")
    source = conf.io.input
    if source is None:
        source = str(
            write_sample_csv(f"{root}/sample/news.csv", conf.pipeline.sample.n_docs, conf.pipeline.sample.seed)
        )
        logger.info("pipeline: generated %d sample documents at %s", conf.pipeline.sample.n_docs, source)
    metrics: dict[str, float] = {}
    steps: list[dict] = []
    prepared, quarantine = f"{root}/prepared", f"{root}/prepared_quarantine"
    # The steps after dedup read the deduplicated table.
    corpus = f"{root}/deduplicated_kept" if "dedup" in conf.pipeline.steps else prepared
    common = {"spark": conf.spark, "mlflow": conf.mlflow}
    model_uri: str | None = None
    for number, step in enumerate(conf.pipeline.steps, start=1):
        label = f"[{number}/{len(conf.pipeline.steps)}] {step}"
        if step == "prepare":
            step_conf = PrepareJobConf(
                io={"input": source, "output": prepared, "quarantine": quarantine}, prepare=conf.prepare, **common
            )
        elif step == "dedup":
            step_conf = DedupJobConf(
                io={"input": prepared, "output": f"{root}/deduplicated"}, dedup=conf.dedup, **common
            )
        elif step == "annotate":
            step_conf = AnnotateJobConf(
                io={"input": corpus, "output": f"{root}/annotated"},
                nlp=conf.nlp,
                tokenize=conf.tokenize,
                ner=conf.ner,
                **common,
            )
        elif step == "train_classifier":
            labels = spark.read.parquet(corpus).where("label is not null").select("label").distinct().count()
            if labels < 2:
                logger.info("pipeline: skipping train_classifier: the prepared corpus has %d label(s)", labels)
                console.step_skipped(label, f"the prepared corpus has {labels} label(s)")
                continue
            step_conf = TrainClassifierJobConf(
                io={"input": corpus, "output": f"{root}/classifier"}, classifier=conf.classifier, **common
            )
            model_uri = f"{root}/classifier/model"
        elif step == "classify":
            uri = conf.classify.model_uri or model_uri
            if uri is None:
                logger.info("pipeline: skipping classify: no model was trained and classify.model_uri is not set")
                console.step_skipped(label, "no model was trained and classify.model_uri is not set")
                continue
            step_conf = ClassifyJobConf(
                io={"input": corpus, "output": f"{root}/classified"},
                classify=conf.classify.model_copy(update={"model_uri": uri}),
                **common,
            )
        elif step == "train_embeddings":
            # Tokens from annotate when it ran, else the prepared text.
            tokens = f"{root}/annotated" if "annotate" in conf.pipeline.steps else corpus
            step_conf = TrainEmbeddingsJobConf(
                io={"input": tokens, "output": f"{root}/embeddings"}, embeddings=conf.embeddings, **common
            )
        elif step == "embed_docs":
            step_conf = EmbedDocsJobConf(
                io={"input": corpus, "output": f"{root}/doc_vectors"},
                embed=conf.embed.model_copy(update={"embeddings": conf.embed.embeddings or f"{root}/embeddings"}),
                **common,
            )
        elif step == "build_index":
            step_conf = BuildIndexJobConf(
                io={"input": f"{root}/doc_vectors", "output": f"{root}/index"}, index=conf.index, **common
            )
        elif step == "neighbors":
            step_conf = NeighborsJobConf(
                io={"input": f"{root}/doc_vectors", "output": f"{root}/neighbors"},
                neighbors=conf.neighbors.model_copy(update={"index": f"{root}/index", "mode": "items"}),
                **common,
            )
        elif step == "cluster":
            step_conf = ClusterJobConf(
                io={"input": f"{root}/neighbors", "output": f"{root}/clusters"}, cluster=conf.cluster, **common
            )
        console.step_started(label)
        report = run_job_report(step, step_conf, spark)
        headline = report.headline
        console.step_done(label, report.seconds, report.metrics, headline)
        steps.append(
            {
                "name": step,
                "seconds": round(report.seconds, 3),
                "run_id": report.run_id,
                "output": report.outputs.get("io.output"),
                "headline": headline,
                "metrics": {k: v for k, v in report.metrics.items() if "." not in k},
            }
        )
        metrics.update({f"{step}.{k}": v for k, v in report.metrics.items()})
    summary = summarize(spark, root, conf.pipeline.steps)
    mlflow.log_dict(steps, "steps.json")
    mlflow.log_dict(summary, "summary.json")
    metrics["rows_in"] = metrics.get("prepare.rows_in", 0)
    return JobOutcome(metrics, {"steps": steps, "summary": summary})
