"""The job registry and ``run_job``: config -> SparkSession -> MLflow run -> pipeline.

``run_job`` is what ``textmill run <job>``, ``spark-submit jobs/<job>.py`` and notebooks
all call, so the three paths run the same code. Pipeline modules are imported lazily so
that ``textmill --help`` stays fast.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

from pyspark.sql import SparkSession

from textmill import storage
from textmill.config import JobConf, validate_conf
from textmill.errors import ConfigError
from textmill.session import get_spark
from textmill.tracking import job_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    summary: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def conf_model(self) -> type[JobConf]:
        return self.load().JOB_CONF


JOBS: dict[str, Job] = {
    job.name: job
    for job in [
        Job("prepare", "textmill.pipelines.prepare", "raw corpus -> clean Parquet + quarantine"),
        Job("tokenize", "textmill.pipelines.tokenize", "prepare output -> tokens (+ lemmas, pos, sentences)"),
        Job("ner", "textmill.pipelines.ner", "prepare output -> named entities"),
        Job("annotate", "textmill.pipelines.annotate", "prepare output -> tokens and entities from one parse"),
        Job("train_classifier", "textmill.pipelines.train_classifier", "labelled Parquet -> torch classifier in MLflow"),
        Job("classify", "textmill.pipelines.classify", "Parquet + classifier -> labels and probabilities"),
        Job("train_embeddings", "textmill.pipelines.train_embeddings", "tokens -> word vectors (sgns or ppmi_svd) + subwords"),
        Job("embed_docs", "textmill.pipelines.embed_docs", "tokens or text + word vectors -> document vectors"),
        Job("build_index", "textmill.pipelines.build_index", "id + vector -> sharded Annoy index, recall measured"),
        Job("neighbors", "textmill.pipelines.neighbors", "index + queries -> k nearest neighbours (scatter-gather)"),
        Job("cluster", "textmill.pipelines.cluster", "kNN graph -> Chinese Whispers clusters, no k"),
        Job("log_spacy_model", "textmill.pipelines.log_spacy_model", "spaCy pipeline -> MLflow model (+ registry alias)"),
        Job("pipeline", "textmill.pipelines.pipeline", "the end-to-end demo: sample -> prepare -> summary"),
        Job("watch", "textmill.streaming.watch", "new files in an inbox -> prepare (+ annotate, classify, ...) once each"),
    ]
}


def get_job(name: str) -> Job:
    if name not in JOBS:
        raise ConfigError([f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}"])
    return JOBS[name]


def run_job(name: str, conf: JobConf | Mapping[str, Any], spark: SparkSession | None = None) -> dict[str, float]:
    """Run job ``name`` inside an MLflow run and return its metrics.

    ``conf`` may be a validated model or a plain dict (validated here, before Spark starts).
    """
    job = get_job(name)
    if not isinstance(conf, JobConf):
        conf = validate_conf(job.conf_model, conf)
    if spark is None and conf.uses_spark:
        spark = get_spark(conf.spark, app_name=f"textmill-{name}")
    outputs = conf.output_paths()
    # One writer per output for the whole job; a second run fails at once instead of at publish time.
    with storage.output_lock(spark, *outputs.values()):
        for key, path in outputs.items():
            storage.check_output(spark, path, conf.input_paths(), conf.io.replace_unmarked, key,
                                 container_for=name if conf.container_output and key == "io.output" else None)
        claim = storage.claimed_container(spark, conf.io.output, name) if conf.container_output else contextlib.nullcontext()
        with claim, job_run(name, conf, spark) as tracked:
            metrics = job.load().run(spark, conf)
            tracked.log_metrics(metrics)
    logger.info("%s finished: %s", name, {k: metrics[k] for k in list(metrics)[:6]})
    return {**metrics, **tracked.metrics}
