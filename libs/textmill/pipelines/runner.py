"""The job registry and ``run_job``: config -> SparkSession -> MLflow run -> pipeline.

``run_job`` is what ``textmill run <job>``, ``spark-submit jobs/<job>.py`` and notebooks
all call (through ``textmill.jobs``), so the three paths run the same code; the ``pipeline``
job runs its steps through it too. Job modules are imported lazily, by name, so that
``textmill --help`` stays fast; so is MLflow (``textmill.runtime.tracking``), which a job that
starts its own Spark imports and opens in a thread while the JVM starts (``_start_spark``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pyspark.sql import SparkSession

from textmill.data import storage
from textmill.runtime.config import JobConf, validate_conf
from textmill.runtime.errors import (
    ConfigError,
    ConnectServerLostError,
    TrackingWriteError,
    connect_server_lost,
    from_out_of_memory,
    from_read_failure,
)
from textmill.runtime.redact import redact_text
from textmill.runtime.session import connect_url, get_spark
from textmill.runtime.session_kinds import driver_jvm_exit_code, forget_lost_session, is_connect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    summary: str
    # What its step line and the pipeline's table say after the row counts: str.format templates over
    # the job's metrics, each shown when all its metrics are there.
    headline: tuple[str, ...] = ()
    # The settings that shrink what the job holds in memory, named when it runs out of memory.
    memory: str = ""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def conf_model(self) -> type[JobConf]:
        return self.load().JOB_CONF


_PARSE = ("{tokens:,.0f} tokens", "{entities:,.0f} entities")
_UDF = ("{python_workers:.0f} Python workers, {model_loads:.0f} model loads",)

JOBS: dict[str, Job] = {
    job.name: job
    for job in [
        Job(
            "prepare",
            "textmill.pipelines.prepare",
            "raw corpus -> clean Parquet + quarantine",
            ("{input_files:,.0f} input file(s)",),
        ),
        Job("tokenize", "textmill.pipelines.tokenize", "prepare output -> tokens (+ lemmas, pos, sentences)", _PARSE),
        Job("ner", "textmill.pipelines.ner", "prepare output -> named entities", _PARSE),
        Job("annotate", "textmill.pipelines.annotate", "prepare output -> tokens and entities from one parse", _PARSE),
        Job(
            "train_classifier",
            "textmill.pipelines.train_classifier",
            "labelled Parquet -> torch classifier in MLflow",
            ("val accuracy {val_accuracy:.3f}", "macro-F1 {val_macro_f1:.3f}", "ECE {val_ece:.3f}"),
        ),
        Job("classify", "textmill.pipelines.classify", "Parquet + classifier -> labels and probabilities", _UDF),
        Job(
            "train_embeddings",
            "textmill.pipelines.train_embeddings",
            "tokens -> word vectors (sgns or ppmi_svd) + subwords",
            ("vocabulary {vocab_size:,.0f}", "{words_per_second:,.0f} words/s"),
            memory="embeddings.max_vocab or embeddings.dim (the driver holds vocabulary x dim weights, twice)",
        ),
        Job("embed_docs", "textmill.pipelines.embed_docs", "tokens or text + word vectors -> document vectors", _UDF),
        Job(
            "build_index",
            "textmill.pipelines.build_index",
            "id + vector -> sharded Annoy index, recall measured",
            ("recall@10 {recall_at_10:.3f}", "{n_trees:.0f} trees", "search_k {search_k:.0f}"),
        ),
        Job(
            "neighbors",
            "textmill.pipelines.neighbors",
            "index + queries -> k nearest neighbours (scatter-gather)",
            _UDF,
        ),
        Job(
            "cluster",
            "textmill.pipelines.cluster",
            "kNN graph -> Chinese Whispers clusters, no k",
            ("{clusters:,.0f} clusters", "largest {largest_cluster_share:.1%}", "{iterations:.0f} rounds"),
        ),
        Job(
            "dedup",
            "textmill.pipelines.dedup",
            "id + text -> exact and near duplicates marked (MinHash LSH) + the deduplicated table",
            ("{exact_duplicates:,.0f} exact", "{near_duplicates:,.0f} near duplicates", "{rows_kept:,.0f} kept"),
        ),
        Job(
            "log_spacy_model", "textmill.pipelines.log_spacy_model", "spaCy pipeline -> MLflow model (+ registry alias)"
        ),
        Job("pipeline", "textmill.pipelines.pipeline", "the end-to-end demo: sample -> prepare -> summary"),
        Job(
            "watch",
            "textmill.streaming.watch",
            "new files in an inbox -> prepare (+ annotate, classify, ...) once each",
            ("{batches:,.0f} batches",),
        ),
    ]
}


def get_job(name: str) -> Job:
    if name not in JOBS:
        raise ConfigError([f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}"])
    return JOBS[name]


@dataclass
class JobOutcome:
    """What a job module's ``run`` may return instead of bare metrics: metrics plus details for the
    caller (the pipeline's steps and summary), which ``--json`` prints."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobReport:
    """One finished job: its metrics and where its run and outputs are."""

    job: str
    metrics: dict[str, float]
    run_id: str
    experiment_id: str
    tracking_uri: str
    outputs: dict[str, str]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        from textmill.runtime.console import headline

        return headline(get_job(self.job).headline, self.metrics)


def _open_tracking_store(tracking_uri: str | None, failed: list[BaseException]) -> None:
    try:
        from textmill.runtime import tracking

        tracking.open_store(tracking_uri)
    except Exception as exc:  # kept, not dropped: job_run makes the same call and raises it as usual
        failed.append(exc)


def _start_spark(conf: JobConf, name: str) -> SparkSession:
    """``get_spark``, with MLflow imported and its store opened in a thread meanwhile: a new sqlite store
    is created and migrated (about 2 s), and the JVM's start leaves the CPU idle for much of its seconds.
    The thread ends before any tracking call of the job; an error it met is logged here and raised by
    ``job_run``, which makes the same call."""
    failed: list[BaseException] = []
    opener = threading.Thread(
        target=_open_tracking_store, args=(conf.mlflow.tracking_uri, failed), name="textmill-tracking-store"
    )
    opener.start()
    try:
        return get_spark(conf.spark, app_name=f"textmill-{name}")
    finally:
        opener.join()
        for exc in failed:
            logger.debug("opening the tracking store beside Spark's start failed (job_run repeats it): %s", exc)


def _publish_outcome(
    spark: SparkSession | None, outputs: Mapping[str, str], published_before: dict[str, str | None], container: bool
) -> tuple[str, bool]:
    """What a job that failed late had published: (the words for its one line, whether any output was).
    Read from the outputs' markers (files the driver reads itself, no Spark call)."""
    now = storage.publish_ids(spark, list(outputs.values()))
    published = [path for path in outputs.values() if now[path] is not None and now[path] != published_before[path]]
    if published:
        return f"the outputs were published ({', '.join(published)})", True
    if container:  # its outputs are folders inside io.output, each published on its own
        return f"outputs inside {', '.join(outputs.values())} may have been published", False
    return "nothing was published", False


@contextlib.contextmanager
def _store_failure_in_one_line(
    name: str,
    spark: SparkSession | None,
    outputs: Mapping[str, str],
    published_before: dict[str, str | None],
    container: bool,
) -> Iterator[None]:
    """A tracking store that stops taking writes mid-run (a read-only sqlite file, a server gone) is
    one line that says whether the outputs were published; 13 tracebacks and exit 1 said neither."""
    from textmill.runtime.tracking import store_write_failure

    try:
        yield
    except Exception as exc:
        why = store_write_failure(exc)
        if why is None:
            raise
        outcome, published = _publish_outcome(spark, outputs, published_before, container)
        import mlflow

        where = redact_text(mlflow.get_tracking_uri())
        if published:
            outcome += ", but the run could not record them"
        raise TrackingWriteError(
            f"{name}: the MLflow store {where} stopped taking writes during the run ({why}); {outcome}, and the "
            "run may still show RUNNING there: make the store writable (or point mlflow.tracking_uri at one that "
            "is) and run the job again",
            published=published,
        ) from None


@contextlib.contextmanager
def _connect_loss_in_one_line(
    name: str,
    spark: SparkSession | None,
    conf: JobConf,
    outputs: Mapping[str, str],
    published_before: dict[str, str | None],
) -> Iterator[None]:
    """A Spark Connect server that stops during the job is one line that names it and says what was
    published; it was 91 lines of the server's IllegalStateException and exit 1."""
    try:
        yield
    except Exception as exc:
        if spark is None or not is_connect(spark):
            raise
        why = connect_server_lost(exc)
        if why is None:
            raise
        outcome, published = _publish_outcome(spark, outputs, published_before, conf.container_output)
        server = redact_text(connect_url(conf.spark) or "")
        raise ConnectServerLostError(
            f"{name}: the Spark Connect server {server} stopped during the job ({why}); {outcome}: start the "
            "server again and rerun the job (a rerun replaces what a run left)",
            published=published,
        ) from None


def run_job(name: str, conf: JobConf | Mapping[str, Any], spark: SparkSession | None = None) -> dict[str, float]:
    """Run job ``name`` inside an MLflow run and return its metrics (see ``run_job_report``)."""
    return run_job_report(name, conf, spark).metrics


def run_job_report(name: str, conf: JobConf | Mapping[str, Any], spark: SparkSession | None = None) -> JobReport:
    """Run job ``name`` inside an MLflow run; returns its metrics, run id and output paths.

    ``conf`` may be a validated model or a plain dict (validated here, before Spark starts).
    """
    job = get_job(name)
    if not isinstance(conf, JobConf):
        conf = validate_conf(job.conf_model, conf)
    if spark is None and conf.uses_spark:
        spark = _start_spark(conf, name)
    from textmill.runtime.tracking import end_dead_runs, job_run

    outputs = conf.output_paths()

    def check_outputs() -> None:
        for key, path in outputs.items():
            storage.check_output(
                spark,
                path,
                conf.input_paths(),
                conf.io.replace_unmarked,
                key,
                container_for=name if conf.container_output and key == "io.output" else None,
            )

    check_outputs()  # before the lock: a lock file must never be made inside an input
    # One writer per output for the whole job; a second run fails at once instead of at publish time.
    with storage.output_lock(spark, *outputs.values()) as taken_over:
        check_outputs()  # again under the lock: another run may have written there meanwhile
        claim = (
            storage.claimed_container(spark, conf.io.output, name)
            if conf.container_output
            else contextlib.nullcontext()
        )
        published_before = storage.publish_ids(spark, list(outputs.values()))
        reported = _store_failure_in_one_line(name, spark, outputs, published_before, conf.container_output)
        server_lost = _connect_loss_in_one_line(name, spark, conf, outputs, published_before)
        with server_lost, reported, claim, job_run(name, conf, spark) as tracked:
            storage.record_run(spark, list(outputs.values()), tracked.run_id, tracked.tracking_uri)
            end_dead_runs(taken_over, tracked.tracking_uri, tracked.run_id)
            try:
                result = job.load().run(spark, conf)
            except Exception as exc:
                if spark is not None and is_connect(spark) and connect_server_lost(exc):
                    forget_lost_session(spark)  # before the MLflow run ends: it would ask the gone server
                    raise
                user_error = from_read_failure(exc) or from_out_of_memory(
                    exc,
                    name,
                    conf.spark.remote is None and (conf.spark.master or "local").startswith("local"),
                    job.memory,
                    driver_jvm_exit_code(spark) if spark is not None else None,
                )
                if user_error is None:
                    raise
                raise user_error from exc
            outcome = result if isinstance(result, JobOutcome) else JobOutcome(result)
            tracked.log_metrics(outcome.metrics)
    metrics = {**outcome.metrics, **tracked.metrics}
    logger.info("%s finished: %s", name, {k: metrics[k] for k in list(metrics)[:6]})
    return JobReport(
        job=name,
        metrics=metrics,
        run_id=tracked.run_id,
        experiment_id=tracked.experiment_id,
        tracking_uri=tracked.tracking_uri,
        outputs=dict(outputs),
        seconds=metrics.get("wall_seconds", 0.0),
        details=outcome.details,
    )
