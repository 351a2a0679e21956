"""The ``watch`` job: process the files that arrive in an inbox, each exactly once.

Spark Structured Streaming's file source lists ``watch.inbox`` (recursively, hidden files
skipped) and writes each micro-batch's file list to the checkpoint before the batch runs.
The stream carries file names only (``binaryFile`` with the content pruned); ``foreachBatch``
reads exactly those files with the ``prepare`` job's own reader and transform, then runs the
other steps in ``watch.steps`` on the prepared rows with the batch jobs' transforms, writes
every step to a staging directory, checks ``rows in == rows out (+ quarantined)``, and
publishes the batch (``textmill.streaming.batches``).

Exactly once, for readers of ``<io.output>/<step>``: Spark replays a batch it had not
committed with the same id and the same files; every directory is keyed by that id, so a
replay replaces its own output, and a batch found in the commit log is not run again.

On a Spark Connect session ``foreachBatch`` would run its function on the server, apart from
this process's state, so there the driver lists the inbox itself (``run_from_listings``):
the files no committed batch holds are cut into batches numbered on from the last commit,
and each runs through the same ``Watcher``; the commit log is the checkpoint, so a batch
killed before its commit runs again under its own id. ``watch.max_file_age`` does not apply
there, and a stop request waits for the batch in progress.

Models are planned (spaCy) or resolved and shipped (classifier, word vectors) once per
invocation on the driver, and loaded once per Python worker, where they stay loaded across
micro-batches. SIGTERM or SIGINT stops the watch after the batch in progress (or abandons
it after ``watch.stop_timeout_seconds``; the next run replays it).
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar, Literal

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pydantic import Field, field_validator
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession

from textmill.data import io, storage
from textmill.dedup.transforms import DedupConf
from textmill.pipelines import annotate, classify, dedup, embed_docs, prepare
from textmill.pipelines.classify import ClassifyConf
from textmill.pipelines.embed_docs import EmbedConf
from textmill.pipelines.prepare import PrepareConf
from textmill.runtime import console, session_kinds, tracking, worker_cache
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.errors import CsvHeaderError, OutputError, TextmillError, UnreadableInputError, from_read_failure
from textmill.streaming.batches import BatchLog
from textmill.text.spacy_annotator import EntityOptions, NlpConf, TokenOptions, plan_pipeline

logger = logging.getLogger(__name__)

STREAMABLE = ("prepare", "dedup", "annotate", "ner", "tokenize", "classify", "embed_docs")
NLP_STEPS = ("annotate", "ner", "tokenize")
WHOLE_CORPUS = ("train_classifier", "train_embeddings", "build_index", "neighbors", "cluster", "pipeline")
DEDUP_INDEX = "dedup_index"  # the dedup step's signatures and band keys, which later batches are compared with
_FILE_LISTING = "path string, modificationTime timestamp, length bigint, content binary"
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}


class BatchFailedError(TextmillError):
    """A micro-batch failed; nothing of it was published and the next run replays it."""


class _StopRequested(Exception):
    """Raised in place of starting a batch once a stop was asked for."""


def interval_seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)\s*", text)
    if not match:
        raise ValueError("an interval such as 30s, 500ms, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


class EveryConf(StrictModel):
    every: str = Field(description="time between micro-batch starts, e.g. 30s, 500ms, 5m, 1h")

    @field_validator("every")
    @classmethod
    def _interval(cls, value: str) -> str:
        if interval_seconds(value) <= 0:
            raise ValueError("an interval above zero")
        return value


class WatchConf(StrictModel):
    inbox: str | None = Field(
        None, description="directory files land in (required); producers write elsewhere and rename into it"
    )
    steps: list[str] = Field(
        default_factory=lambda: ["prepare"],
        min_length=1,
        description="prepare, then any of dedup, annotate|ner|tokenize, classify, embed_docs, in that order "
        "(after dedup, the later steps see the kept rows only)",
    )
    trigger: Literal["available_now"] | EveryConf = Field(
        "available_now",
        description="available_now: every file not yet seen, in batches, then stop | {every: 30s}: keep running",
    )
    max_files_per_batch: int = Field(1000, gt=0, description="files per micro-batch (Spark's maxFilesPerTrigger)")
    checkpoint: str | None = Field(None, description="Spark checkpoint; default <io.output>/_checkpoint")
    archive: str | None = Field(
        None, description="move processed files here (Spark's cleanSource=archive); null: leave them"
    )
    max_file_age: str = Field(
        "3650d", description="files older than the newest seen by more than this are ignored (Spark's maxFileAge)"
    )
    duplicates_across_batches: bool = Field(
        True, description="with prepare.duplicates: quarantine, also quarantine doc_ids of earlier batches"
    )
    stop_timeout_seconds: float = Field(
        300, ge=0, description="on SIGTERM/SIGINT, wait this long for the batch in progress"
    )

    @field_validator("steps")
    @classmethod
    def _streamable_steps(cls, steps: list[str]) -> list[str]:
        for step in steps:
            if step in WHOLE_CORPUS:
                raise ValueError(
                    f"{step!r} needs the whole corpus and cannot run per micro-batch; run the {step} job on "
                    "the watch's outputs instead"
                )
            if step not in STREAMABLE:
                raise ValueError(f"unknown step {step!r}; steps: {', '.join(STREAMABLE)}")
        if steps[0] != "prepare":
            raise ValueError("the first step must be 'prepare' (it reads the new files)")
        if len(set(steps)) != len(steps):
            raise ValueError("a step may appear once")
        if len([s for s in steps if s in NLP_STEPS]) > 1:
            raise ValueError(
                "at most one of annotate, ner, tokenize (annotate gives tokens and entities from one parse)"
            )
        rank = [
            min(STREAMABLE.index(s), STREAMABLE.index("annotate")) if s in NLP_STEPS else STREAMABLE.index(s)
            for s in steps
        ]
        if rank != sorted(rank):
            raise ValueError("steps must keep the order prepare, dedup, annotate|ner|tokenize, classify, embed_docs")
        return steps

    @field_validator("trigger", mode="before")
    @classmethod
    def _trigger(cls, value: Any) -> Any:
        # Checked here so that a wrong value gets one message, not one per member of the union.
        if value == "available_now" or isinstance(value, EveryConf):
            return value
        if isinstance(value, dict) and set(value) == {"every"} and isinstance(value["every"], str):
            try:
                seconds = interval_seconds(value["every"])
            except ValueError:
                seconds = 0
            if seconds > 0:
                return value
            raise ValueError(
                f"{{every: ...}} takes an interval above zero such as 30s, 500ms, 5m or 1h, not {value['every']!r}"
            )
        raise ValueError("available_now, or {every: <interval>} such as {every: 30s}")

    @field_validator("max_file_age")
    @classmethod
    def _age(cls, value: str) -> str:
        if not re.fullmatch(r"\d+\s*(ms|s|m|min|h|d)", value.strip()):
            raise ValueError("a duration such as 7d, 12h or 30m")
        return value.strip()


class WatchJobConf(JobConf):
    required: ClassVar[tuple[str, ...]] = ("watch.inbox", "io.output")
    container_output: ClassVar[bool] = True  # <step>/batch=<id>/, quarantine/, _batches/, _checkpoint/
    rate_metric: ClassVar[bool] = False

    watch: WatchConf = Field(default_factory=WatchConf)
    prepare: PrepareConf = Field(default_factory=PrepareConf)
    nlp: NlpConf = Field(default_factory=NlpConf)
    tokenize: TokenOptions = Field(default_factory=TokenOptions)
    ner: EntityOptions = Field(default_factory=EntityOptions)
    classify: ClassifyConf = Field(default_factory=ClassifyConf)
    embed: EmbedConf = Field(default_factory=EmbedConf)
    dedup: DedupConf = Field(default_factory=DedupConf)

    def input_paths(self) -> list[str]:
        paths = [self.watch.inbox] if self.watch.inbox else []
        if "classify" in self.watch.steps:
            paths += classify.local_model_paths(self.classify.model_uri)
        if "embed_docs" in self.watch.steps and self.embed.embeddings:
            paths.append(self.embed.embeddings)
        return paths

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        w = self.watch
        if self.io.input:
            problems.append("'io.input' is not used by watch: set 'watch.inbox' to the directory files arrive in")
        if self.io.quarantine:
            problems.append(
                "'io.quarantine' is not used by watch: quarantined rows go to <io.output>/quarantine/batch=<id>/"
            )
        if "classify" in w.steps and not self.classify.model_uri:
            problems.append("'classify.model_uri' is required with the classify step, e.g. models:/news@champion")
        if "classify" in w.steps and self.classify.evaluate:
            problems.append(
                "'classify.evaluate' is not available in watch; run the classify job on <io.output>/prepare"
            )
        if "dedup" in w.steps:
            d = self.dedup
            if (d.id_column, d.text_column) != ("doc_id", "text"):
                problems.append("'dedup.id_column' and 'dedup.text_column' are doc_id and text in watch (prepare's)")
            if self.prepare.duplicates != "quarantine" or not w.duplicates_across_batches:
                problems.append(
                    "the dedup step needs unique doc_ids across batches: 'prepare.duplicates: quarantine' and "
                    "'watch.duplicates_across_batches: true'"
                )
            if d.representative == "earliest":
                problems.append(
                    "'dedup.representative: earliest' does not apply in watch: an earlier batch's document always "
                    "stays the representative; within a batch use lowest_id or longest"
                )
        if "embed_docs" in w.steps and not self.embed.embeddings:
            problems.append("'embed.embeddings' is required with the embed_docs step (train_embeddings' output)")
        for key, path in (
            ("watch.checkpoint", w.checkpoint),
            ("watch.archive", w.archive),
            ("io.output", self.io.output),
        ):
            if path and w.inbox and _overlaps(path, w.inbox):
                problems.append(
                    f"'{key}' ({path!r}) and 'watch.inbox' ({w.inbox!r}) may not contain one another: "
                    "the watch would read its own files"
                )
        if w.archive and self.io.output and _overlaps(w.archive, self.io.output):
            problems.append(f"'watch.archive' ({w.archive!r}) and 'io.output' may not contain one another")
        return problems


def _overlaps(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
        return a.startswith(b) or b.startswith(a)
    pa, pb = Path(a).resolve(), Path(b).resolve()
    return pa == pb or pa in pb.parents or pb in pa.parents


JOB_CONF = WatchJobConf


def checkpoint_path(conf: WatchJobConf) -> str:
    return conf.watch.checkpoint or f"{conf.io.output.rstrip('/')}/_checkpoint"


# ---------------------------------------------------------------------------- one batch


class BatchSteps:
    """The steps of one watch, with their models made ready once; ``write`` runs them on one batch."""

    def __init__(self, spark: SparkSession, conf: WatchJobConf, workdir: str, report: Any) -> None:
        self.spark, self.conf, self.report = spark, conf, report
        steps = conf.watch.steps
        self.nlp_step = next((s for s in steps if s in NLP_STEPS), None)
        self.tokens = conf.tokenize if self.nlp_step in ("annotate", "tokenize") else None
        self.entities = conf.ner if self.nlp_step in ("annotate", "ner") else None
        self.plan = (
            plan_pipeline(
                conf.nlp.model,
                self.tokens,
                self.entities,
                gpu=conf.nlp.gpu,
                spark=spark,
                components=conf.nlp.components,
            )
            if self.nlp_step
            else None
        )
        tracking.tag_model_source("textmill.nlp", self.plan.source if self.plan else None)
        self.classifier = classify.ship_model(spark, conf.classify.model_uri, workdir) if "classify" in steps else None
        self.embeddings = (
            io.ship_directory(spark, embed_docs.export_dir(conf.embed.embeddings)) if "embed_docs" in steps else None
        )

    def write(
        self, batch_id: int, files: list[tuple[str, int]], attempt: str, seen: list[str], indexed: list[str]
    ) -> tuple[dict, dict[str, str]]:
        """Run every step on ``files`` into ``attempt``; returns ({step: metrics}, {output name: staged dir}).
        ``seen``: earlier batches' prepare directories; ``indexed``: their dedup indexes."""
        spark, conf, p = self.spark, self.conf, self.conf.prepare
        to_read = [uri for uri, size in files if size > 0 or p.format == "text_files"]
        zero = {"rows_in": 0, "rows_out": 0, "rows_quarantined": 0}
        if len(to_read) < len(files):
            logger.warning(
                "batch %d: %d empty file(s), e.g. %s: they hold no records",
                batch_id,
                len(files) - len(to_read),
                next(uri for uri, size in files if size == 0),
            )
        if not to_read:
            return {"prepare": zero}, {}
        with io.reading_local_files(spark, to_read):
            prepared = prepare.read_prepared(spark, to_read, p).persist(prepare.CACHE_LEVEL)
            if seen:
                repeated = prepare.repeated_ids(prepared, spark.read.parquet(*seen)).collect()
                if repeated:
                    logger.warning(
                        "batch %d: %d doc_id(s) were published by an earlier batch; quarantined as duplicate_doc_id, "
                        "e.g. %s",
                        batch_id,
                        len(repeated),
                        repeated[0]["doc_id"],
                    )
                    marked = prepare.quarantine_seen(
                        prepared, spark.createDataFrame(repeated, "doc_id string"), "an earlier batch"
                    )
                    marked = marked.persist(prepare.CACHE_LEVEL)
                    prepared.unpersist()
                    prepared = marked
            try:
                stats = prepare.reason_stats(prepared)
                if not stats:
                    logger.warning("batch %d: %d file(s) hold no records", batch_id, len(to_read))
                    return {"prepare": zero}, {}
                staged = {"prepare": f"{attempt}/prepare", "quarantine": f"{attempt}/quarantine"}
                metrics = {
                    "prepare": prepare.write_prepared(
                        spark,
                        prepared,
                        stats,
                        staged["prepare"],
                        staged["quarantine"],
                        p,
                        {"batch_id": batch_id, "files": len(to_read)},
                    )
                }
            finally:
                prepared.unpersist()
        rows = metrics["prepare"]["rows_out"]
        if rows == 0:
            return metrics, staged
        good = spark.read.parquet(staged["prepare"])
        tokens_dir = None
        marker = {"batch_id": batch_id}
        for step in conf.watch.steps[1:]:
            path = f"{attempt}/{step}"
            if step == "dedup":
                staged[DEDUP_INDEX] = f"{attempt}/{DEDUP_INDEX}"
                metrics[step], good = dedup.write_batch(
                    spark, good, rows, conf.dedup, indexed, path, staged[DEDUP_INDEX], marker
                )
                staged[step] = path
                rows = metrics[step]["rows_kept"]
                if rows == 0:  # every row copies an earlier one: nothing for the later steps
                    break
                good = good.localCheckpoint()
                continue
            if step in NLP_STEPS:
                metrics[step], _ = annotate.write_annotations(
                    spark, good, path, rows, conf.nlp, self.tokens, self.entities, self.report, marker, plan=self.plan
                )
                tokens_dir = path if self.tokens is not None else None
            elif step == "classify":
                c = conf.classify
                scored = classify.with_predictions(
                    good, c, self.classifier, io.task_partitions(spark, rows, 50_000, c.partitions), self.report
                )
                out, errors, _ = io.write_rows(
                    spark, scored, path, rows, {"schema": classify.SCHEMA_VERSION, "model_uri": c.model_uri, **marker}
                )
                metrics[step] = {"rows_in": rows, "rows_out": out, "rows_error": errors}
            else:  # embed_docs: from the tokens of this batch when a step made them, else from the text
                c = conf.embed
                source = spark.read.parquet(tokens_dir) if tokens_dir else good
                vectors = embed_docs.with_doc_vectors(
                    source, c, self.embeddings, io.task_partitions(spark, rows, 50_000, c.partitions), self.report
                )
                out, errors, _ = io.write_rows(
                    spark, vectors, path, rows, {"schema": embed_docs.SCHEMA_VERSION, **marker}
                )
                metrics[step] = {"rows_in": rows, "rows_out": out, "rows_error": errors}
            staged[step] = path
        return metrics, staged


def _step_summary(step: str, m: dict) -> str:
    if step == "dedup":
        return f"dedup {m['rows_removed']} duplicates ({m['copies_of_earlier_batches']} of earlier batches)"
    return f"{step} {m.get('rows_error', 0)} row errors"


class Watcher:
    """The ``foreachBatch`` function and what it keeps across batches (totals, failure, stop)."""

    def __init__(self, spark: SparkSession, conf: WatchJobConf, steps: BatchSteps, run_id: str, report: Any) -> None:
        self.spark, self.conf, self.steps, self.run_id, self.report = spark, conf, steps, run_id, report
        self.log = BatchLog(spark, conf.io.output)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.in_batch = False
        self.failure: BaseException | None = None
        self.totals = {
            "batches": 0,
            "batches_skipped": 0,
            "files": 0,
            "total_rows_in": 0,
            "total_rows_out": 0,
            "total_rows_quarantined": 0,
        }

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        self.run_batch(
            batch_id, lambda: sorted((row["path"], row["length"]) for row in batch.select("path", "length").collect())
        )

    def run_batch(self, batch_id: int, list_files) -> None:
        """Run batch ``batch_id`` on the files ``list_files()`` names (the stream's or the inbox listing's)."""
        with self.lock:
            if self.stop.is_set():
                self.failure = _StopRequested()
                raise self.failure
            self.in_batch = True
        files: list[tuple[str, int]] = []
        try:
            files = list_files()
            self._run(batch_id, files)
        except BaseException as exc:
            self.failure = exc if isinstance(exc, BatchFailedError) else self._explain(exc, batch_id, files)
            # The job's error line says it; the trace is for --log-level DEBUG.
            logger.debug("batch %d failed: %s", batch_id, self.failure, exc_info=True)
            raise
        finally:
            with self.lock:
                self.in_batch = False

    def _explain(self, exc: BaseException, batch_id: int, files: list[tuple[str, int]]) -> BatchFailedError:
        exc = from_read_failure(exc) or exc
        what = (
            str(exc)
            if isinstance(exc, TextmillError)
            else f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:500]}"
        )
        example = f", e.g. {files[0][0]}" if files else ""
        return BatchFailedError(
            f"watch: batch {batch_id} ({len(files)} file(s){example}) failed: {what}. Nothing of it was "
            "published; the next run retries the same files"
        )

    def _run(self, batch_id: int, files: list[tuple[str, int]]) -> None:
        paths = [uri for uri, _ in files]
        done = self.log.committed(batch_id)
        if done is not None:
            if done.get("files") != paths:
                raise OutputError(
                    f"batch {batch_id} in {self.conf.io.output}/_batches was committed with other files than "
                    "the checkpoint now names for it: the checkpoint and the output do not belong together "
                    "(was one of them deleted or replaced?); use a new io.output and watch.checkpoint"
                )
            console.status(logger, "batch %d was published before the last run stopped; not running it again", batch_id)
            self.totals["batches_skipped"] += 1
            return
        started = time.perf_counter()
        logger.info("batch %d: %d new file(s)", batch_id, len(files))
        attempt = self.log.new_attempt(batch_id)
        try:
            metrics, staged = self.steps.write(
                batch_id, files, attempt, self._seen_before(batch_id), self._indexed_before(batch_id)
            )
            self.log.publish(batch_id, staged)
            seconds = time.perf_counter() - started
            self.log.commit(
                batch_id, {"files": paths, "seconds": round(seconds, 3), "steps": metrics, "outputs": sorted(staged)}
            )
        finally:
            storage.delete_path(self.spark, attempt)
        first = metrics["prepare"]
        self.totals["batches"] += 1
        self.totals["files"] += len(files)
        for key in ("rows_in", "rows_out", "rows_quarantined"):
            self.totals[f"total_{key}"] += first[key]
        console.status(
            logger,
            "batch %d: %d rows in, %d out, %d quarantined, %s in %.1f s",
            batch_id,
            first["rows_in"],
            first["rows_out"],
            first["rows_quarantined"],
            ", ".join(_step_summary(s, m) for s, m in metrics.items() if s != "prepare") or "prepare only",
            seconds,
        )
        self._log_batch(batch_id, files, metrics, seconds)

    def _seen_before(self, batch_id: int) -> list[str]:
        """Published prepare directories of the earlier batches, whose doc_ids this batch may not repeat."""
        if not (self.conf.watch.duplicates_across_batches and self.conf.prepare.duplicates == "quarantine"):
            return []
        # Spark runs batch N only after N-1 is committed, so every earlier prepare directory is a committed batch:
        # one listing, instead of reading every commit record on each batch.
        return [self.log.final_dir("prepare", i) for i in self.log.batch_ids("prepare") if i < batch_id]

    def _indexed_before(self, batch_id: int) -> list[str]:
        """The dedup indexes of the earlier batches (committed, as ``_seen_before`` says)."""
        if "dedup" not in self.conf.watch.steps:
            return []
        return [self.log.final_dir(DEDUP_INDEX, i) for i in self.log.batch_ids(DEDUP_INDEX) if i < batch_id]

    def _log_batch(self, batch_id: int, files: list, metrics: dict, seconds: float) -> None:
        first = metrics["prepare"]
        values = {
            "rows_in": first["rows_in"],
            "rows_out": first["rows_out"],
            "rows_quarantined": first["rows_quarantined"],
            "files": len(files),
            "batch_seconds": seconds,
            "docs_per_second": first["rows_in"] / seconds if seconds > 0 else 0.0,
        }
        values.update({f"{step}.rows_error": m["rows_error"] for step, m in metrics.items() if "rows_error" in m})
        if "dedup" in metrics:
            values.update({f"dedup.{k}": metrics["dedup"][k] for k in ("rows_removed", "copies_of_earlier_batches")})
        values.update(
            {
                k: v
                for k, v in worker_cache.summarize_workers(self.report.value).items()
                if k in ("python_workers", "model_loads", "max_model_loads_per_worker")
            }
        )
        now = int(time.time() * 1000)
        MlflowClient().log_batch(self.run_id, metrics=[Metric(k, float(v), now, batch_id) for k, v in values.items()])


# ---------------------------------------------------------------------------- without a stream (Spark Connect)


def pending_batches(spark: SparkSession, conf: WatchJobConf, log: BatchLog) -> list[tuple[int, list[tuple[str, int]]]]:
    """The inbox's files that no committed batch holds, in batches of ``max_files_per_batch``,
    numbered on from the last committed batch (so a batch killed before its commit runs again
    under its own id and replaces whatever it had published)."""
    records = log.records()
    done = {uri for record in records for uri in record.get("files", [])}
    next_id = max((record["batch_id"] for record in records), default=-1) + 1
    p = conf.prepare
    listed = io.list_input(spark, conf.watch.inbox, p.text_files.glob if p.format == "text_files" else None)
    new = [(uri, size) for uri, size in listed.files if uri not in done]
    size = conf.watch.max_files_per_batch
    return [(next_id + i, new[start : start + size]) for i, start in enumerate(range(0, len(new), size))]


def archive_committed(spark: SparkSession, conf: WatchJobConf, log: BatchLog) -> None:
    """Move committed files still in the inbox under ``watch.archive`` (their full path kept
    beneath it, as Spark's ``cleanSource: archive`` does)."""
    archive = conf.watch.archive.rstrip("/")
    for record in log.records():
        for uri in record.get("files", []):
            if storage.path_exists(spark, uri):
                storage.move(spark, uri, f"{archive}/{storage.local_path(uri).lstrip('/')}")


def run_from_listings(spark: SparkSession, conf: WatchJobConf, watcher: Watcher) -> None:
    """The watch on a Spark Connect session, where ``foreachBatch`` would run its function on the
    server, apart from this process's state: this driver lists the inbox itself and runs each
    new batch with the same ``Watcher``; the commit log is the checkpoint. ``available_now``
    processes what is there and ends; ``every`` lists again after each interval until stopped."""
    w = conf.watch
    while not watcher.stop.is_set():
        for batch_id, files in pending_batches(spark, conf, watcher.log):
            if watcher.stop.is_set():
                break
            try:
                watcher.run_batch(batch_id, lambda files=files: files)
            except _StopRequested:
                break
            except Exception as exc:
                if isinstance(watcher.failure, TextmillError) and watcher.failure is not exc:
                    raise watcher.failure from None  # the batch's one-line explanation, as the stream path raises it
                raise
            if w.archive:
                archive_committed(spark, conf, watcher.log)
        if w.trigger == "available_now":
            return
        watcher.stop.wait(interval_seconds(w.trigger.every))


# ---------------------------------------------------------------------------- the stream


def file_stream(spark: SparkSession, conf: WatchJobConf) -> DataFrame:
    """The names and sizes of the files arriving in the inbox, as a stream (contents are not read)."""
    w = conf.watch
    # The stream only lists files; adaptive execution does not apply to it, and Spark warns if it is on.
    # A session of its own keeps that setting away from the batches' own Spark jobs.
    listing = spark.newSession()
    listing.conf.set("spark.sql.adaptive.enabled", "false")
    reader = (
        listing.readStream.format("binaryFile")
        .schema(_FILE_LISTING)
        .option("recursiveFileLookup", "true")
        .option("maxFilesPerTrigger", w.max_files_per_batch)
        .option("maxFileAge", w.max_file_age)
    )
    if conf.prepare.format == "text_files":
        reader = reader.option("pathGlobFilter", conf.prepare.text_files.glob)
    if w.archive:
        reader = reader.option("cleanSource", "archive").option("sourceArchiveDir", w.archive)
    return reader.load(w.inbox).select("path", "length")


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Below DEBUG verbosity, ``name``'s records are dropped for the block."""
    log = logging.getLogger(name)
    if logging.getLogger("textmill").getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    previous, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = previous


def check_first_file(spark: SparkSession, conf: WatchJobConf) -> None:
    """Find a config error before the stream starts: the columns of the first file in the
    inbox must be the ones ``prepare`` is told to read (a CSV reads only its header here)."""
    p = conf.prepare
    listed = io.list_input(spark, conf.watch.inbox, p.text_files.glob if p.format == "text_files" else None)
    first = next((uri for uri, size in listed.files if size > 0), None)
    if first is None:
        return
    try:
        source = prepare.read_source(spark, [first], p)
    except (UnreadableInputError, CsvHeaderError) as exc:
        # A damaged file is its batch's to report (quarantine or a failed batch), not a config error.
        logger.debug("no column check before the stream: %s", exc)
        return
    prepare.check_columns(source, p)


def _wait(query: Any, watcher: Watcher, timeout: float) -> None:
    """Until the query ends; after a stop request, until the batch in progress ends (or ``timeout``)."""
    deadline = None
    while not query.awaitTermination(0.5):
        if not watcher.stop.is_set():
            continue
        if deadline is None:
            deadline = time.monotonic() + timeout
            console.status(
                logger, "stop requested: finishing the batch in progress (at most %.0f s), then stopping", timeout
            )
        with watcher.lock:
            busy = watcher.in_batch
        if not busy or time.monotonic() > deadline:
            if busy:
                logger.warning(
                    "the batch in progress did not finish within %.0f s; abandoning it (the next run replays it)",
                    timeout,
                )
            query.stop()
            return


def _on_stop_signals(watcher: Watcher, stack: ExitStack) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.signal(sig, lambda signum, frame: watcher.stop.set())
        stack.callback(signal.signal, sig, previous)


def run(spark: SparkSession, conf: WatchJobConf) -> dict[str, float]:
    w = conf.watch
    checkpoint = checkpoint_path(conf)
    io.require_input(spark, w.inbox, "watch.inbox")
    matches = storage.files(spark, w.inbox).glob(w.inbox)
    if len(matches) != 1 or not matches[0].is_dir or matches[0].name != w.inbox.rstrip("/").rsplit("/", 1)[-1]:
        raise TextmillError(
            f"watch.inbox {w.inbox!r} must be one directory (the one files arrive in), not a file or a glob"
        )
    run_id = mlflow.active_run().info.run_id
    mlflow.set_tags(
        {
            "textmill.watch.checkpoint": storage.qualified(spark, checkpoint),
            "textmill.watch.inbox": storage.qualified(spark, w.inbox),
        }
    )
    trigger = (
        {"availableNow": True}
        if w.trigger == "available_now"
        else {"processingTime": f"{interval_seconds(w.trigger.every)} seconds"}
    )
    report = worker_cache.new_worker_report(spark)
    with ExitStack() as stack:
        if not storage.qualified(spark, checkpoint).startswith(storage.qualified(spark, conf.io.output) + "/"):
            stack.enter_context(storage.output_lock(spark, checkpoint))  # one watch per checkpoint
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="textmill-watch-"))
        watcher = Watcher(spark, conf, BatchSteps(spark, conf, workdir, report), run_id, report)
        _on_stop_signals(watcher, stack)
        check_first_file(spark, conf)
        if "dedup" in w.steps and (indexed := watcher.log.batch_ids(DEDUP_INDEX)):
            dedup.check_index_settings(spark, watcher.log.final_dir(DEDUP_INDEX, indexed[-1]), conf.dedup)
        console.status(
            logger,
            "watching %s (%s, at most %d file(s) per batch) -> %s; checkpoint %s",
            w.inbox,
            "available now" if w.trigger == "available_now" else f"every {w.trigger.every}",
            w.max_files_per_batch,
            conf.io.output,
            checkpoint,
        )
        if session_kinds.is_connect(spark):
            run_from_listings(spark, conf, watcher)
            return _finish(spark, conf, watcher, report, checkpoint)
        # py4j logs the batch's exception with its trace before textmill reports it in one line.
        stack.enter_context(_quiet_logger("py4j.clientserver"))
        query = (
            file_stream(spark, conf)
            .writeStream.foreachBatch(watcher)
            .option("checkpointLocation", checkpoint)
            .queryName(f"textmill-watch-{run_id[:8]}")
            .trigger(**trigger)
            .start()
        )
        try:
            _wait(query, watcher, w.stop_timeout_seconds)
        except StreamingQueryException as exc:
            if isinstance(watcher.failure, _StopRequested):
                pass
            elif isinstance(watcher.failure, TextmillError):
                raise watcher.failure from None
            else:
                raise BatchFailedError(
                    f"watch: the stream failed: {(str(exc).strip().splitlines() or [''])[0][:500]}"
                ) from exc
    return _finish(spark, conf, watcher, report, checkpoint)


def _finish(
    spark: SparkSession, conf: WatchJobConf, watcher: Watcher, report: Any, checkpoint: str
) -> dict[str, float]:
    w = conf.watch
    totals = dict(watcher.totals)
    if totals["batches"] == 0 and totals["batches_skipped"] == 0:
        console.status(
            logger, "no new files in %s since the last run (checkpoint %s); nothing to do", w.inbox, checkpoint
        )
    elif watcher.stop.is_set():
        console.status(
            logger, "stopped after %d batch(es); the next run continues from the checkpoint", totals["batches"]
        )
    return {**totals, **tracking.log_workers(report.value)}
