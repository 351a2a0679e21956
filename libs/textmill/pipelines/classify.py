"""The ``classify`` job: score a Parquet corpus with a trained classifier, optionally evaluate.

The model is named by an MLflow URI (``models:/name@champion``, ``runs:/<id>/model``) or a
local path (an MLflow model directory, or a textmill model directory): textmill's torch
classifier or a spaCy text categorizer (``train_classifier``'s ``spacy_textcat``). The
driver pins an alias to its current version, resolves it to a local copy once, checks it
predicts labels, tags the run with the version, and ships it to the executors; an iterator
Arrow UDF loads it once per Python worker and scores Arrow batches (``predictions_array``).

Output: ``doc_id, label, probability, probabilities map<string,double>, error`` (+ keep
columns, then ``keep_as`` columns under their new names). Null or empty texts get a null
label and an error; rows out == rows in. With ``classify.evaluate: true`` the job also
compares ``label`` with the input's label column and logs accuracy, macro-F1, per-class
scores, the confusion matrix and the calibration (ECE, reliability diagram).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from textmill.data import io
from textmill.data.cleaning import is_blank
from textmill.runtime import registry, tracking, worker_cache
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.registry import ModelNotFoundError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "classify/v1"
CALIBRATION_BINS = 15
OUTPUT_SCHEMA = "label string, probability double, probabilities map<string,double>, error string"


class ClassifyConf(StrictModel):
    model_uri: str | None = Field(None, description="models:/name@alias, runs:/<id>/model, or a local path (required)")
    text_column: str = "text"
    batch_size: int = Field(1024, gt=0, description="texts per model call")
    partitions: int | None = Field(
        None,
        gt=0,
        description="default max(2 x default parallelism, rows / 50000), rounded up to a multiple of the parallelism",
    )
    keep_columns: list[str] = Field(default_factory=list)
    keep_as: dict[str, str] = Field(
        default_factory=dict, description="input columns copied under new names, e.g. {label: true_label}"
    )
    evaluate: bool = Field(False, description="compare with label_column and log accuracy, macro-F1, confusion matrix")
    label_column: str = "label"


class ClassifyJobConf(JobConf):
    classify: ClassifyConf = Field(default_factory=ClassifyConf)

    def input_paths(self) -> list[str]:
        return super().input_paths() + local_model_paths(self.classify.model_uri)

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        outputs = {"doc_id", "label", "probability", "probabilities", "error"}
        clash = sorted(set(self.classify.keep_columns) & outputs)
        if clash:
            hint = ", ".join(f"{name}: true_{name}" for name in clash)
            problems.append(
                f"'classify.keep_columns' may not carry {clash}: those names are output columns; "
                f"keep them under other names with classify.keep_as, e.g. {{{hint}}}"
            )
        renamed = list(self.classify.keep_as.values())
        taken = sorted(
            (set(renamed) & (outputs | set(self.classify.keep_columns))) | {n for n in renamed if renamed.count(n) > 1}
        )
        if taken:
            problems.append(f"'classify.keep_as' names {taken} are already output or kept columns; choose other names")
        if not self.classify.model_uri:
            problems.append(
                "'classify.model_uri' is required but was not set (null); e.g. --set "
                "classify.model_uri=models:/news@champion"
            )
        return problems


JOB_CONF = ClassifyJobConf


def local_model_paths(uri: str | None) -> list[str]:
    """``[uri]`` when it names a local model directory (an input no output may overlap), else []."""
    local = uri and not uri.startswith(("models:/", "runs:/")) and ("://" not in uri or uri.startswith("file:"))
    return [uri] if local else []


def resolve_model(uri: str, into: str) -> tuple[Path, registry.ModelSource]:
    """A local MLflow-model or textmill-model directory for ``uri`` (downloaded if remote), and
    the exact version it is (an alias pinned once)."""
    source = registry.pin(uri, "classify.model_uri")
    local = registry.download(source, into, "classify.model_uri")
    if not registry.is_mlflow_uri(uri):
        from textmill.models.classifier_pyfunc import CONFIG

        if not local.is_dir() or not ((local / "MLmodel").is_file() or (local / CONFIG).is_file()):
            raise ModelNotFoundError(
                f"classify.model_uri {uri!r} is not a model directory (no MLmodel or {CONFIG}); "
                "point it at train_classifier's <output>/model, an MLflow model, or models:/name@alias"
            )
    return local, source


def load_scorer(path: str):
    """An object with ``predict(list[str]) -> DataFrame``: the pyfunc, or a bare textmill model directory."""
    from textmill.models.classifier_pyfunc import CONFIG, TextClassifier

    if (Path(path) / CONFIG).exists():
        return TextClassifier(path)
    pyfunc = mlflow.pyfunc.load_model(path)
    return _PyfuncScorer(pyfunc)


class _PyfuncScorer:
    def __init__(self, pyfunc) -> None:
        self.pyfunc = pyfunc

    def predict(self, texts: list[str]) -> pd.DataFrame:
        return self.pyfunc.predict(pd.DataFrame({"text": texts}))


def make_classify_udf(file_name: str, batch_size: int, report: bool = False):
    """Iterator Arrow UDF: text -> struct<label, probability, probabilities, error> (+ the worker
    report field, ``worker_cache.with_report``); model once per worker."""

    @F.arrow_udf(f"{OUTPUT_SCHEMA}, {worker_cache.REPORT_COLUMN} string" if report else OUTPUT_SCHEMA)
    def classify(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        path = io.shipped_path(file_name)
        key = ("classifier", file_name)
        scorer = worker_cache.get_or_load(key, lambda: load_scorer(path))
        predicted = (predictions_array(scorer, texts.to_pylist(), batch_size) for texts in batches)
        if not report:
            yield from predicted
            return
        yield from worker_cache.with_report(
            (worker_cache.with_report_column(p) for p in predicted), worker_cache.attach_to_batch, key
        )

    return classify


def predictions_array(scorer, values: list[str | None], batch_size: int) -> pa.StructArray:
    """``OUTPUT_SCHEMA`` for ``values``: null or blank texts get a null label and an error.

    A torch classifier's probabilities go into the map column as flat Arrow arrays (offsets,
    label keys, values), so no Python dict is built per row; other models (spaCy's pyfunc)
    go through their ``predict`` DataFrame.
    """
    from textmill.models.classifier_pyfunc import TextClassifier

    ok = np.fromiter((not is_blank(t) for t in values), dtype=bool, count=len(values))
    rows = np.flatnonzero(ok)
    texts = [values[i] for i in rows]
    errors = pa.array(
        [None if good else ("null text" if t is None else "empty text") for t, good in zip(values, ok)], pa.string()
    )
    missing = pa.array(~ok)
    if isinstance(scorer, TextClassifier):
        labels = pa.array(scorer.labels, pa.string())
        probs = (
            np.concatenate(
                [scorer.probabilities(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
            )
            if texts
            else np.zeros((0, len(labels)))
        )
        best = probs.argmax(axis=1)
        label_index = np.zeros(len(values), dtype=np.int64)
        label_index[rows] = best
        probability = np.zeros(len(values))
        probability[rows] = probs[np.arange(len(rows)), best]
        sizes = np.where(ok, len(labels), 0)
        offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
        keys = labels.take(pa.array(np.tile(np.arange(len(labels)), len(rows))))
        probabilities = pa.MapArray.from_arrays(offsets, keys, pa.array(probs.ravel().astype(np.float64)), mask=missing)
        label = labels.take(pa.array(label_index, mask=~ok))
        probability = pa.array(probability, mask=~ok)
    else:
        pred = [scorer.predict(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
        pred = (
            pd.concat(pred, ignore_index=True)
            if pred
            else pd.DataFrame({"label": [], "probability": [], "probabilities": []})
        )
        label_list: list = [None] * len(values)
        probability_list: list = [None] * len(values)
        maps: list = [None] * len(values)
        for i, row, p, m in zip(rows, pred["label"], pred["probability"], pred["probabilities"]):
            label_list[i], probability_list[i], maps[i] = row, None if p is None or p != p else float(p), m
        label = pa.array(label_list, pa.string())
        probability = pa.array(probability_list, pa.float64())
        probabilities = pa.array(maps, pa.map_(pa.string(), pa.float64()))
    return pa.StructArray.from_arrays(
        [label, probability, probabilities, errors], names=["label", "probability", "probabilities", "error"]
    )


def ship_model(spark: SparkSession, model_uri: str, into: str) -> str:
    """Resolve ``model_uri`` (downloaded under ``into``), check here on the driver that it loads
    and predicts labels, tag the run with the version used, and ship it to the executors;
    returns the name for ``make_classify_udf``."""
    model_dir, source = resolve_model(model_uri, into)
    try:
        columns = set(load_scorer(str(model_dir)).predict(["A short text to check the model with."]).columns)
    except (mlflow.exceptions.MlflowException, OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelNotFoundError(
            f"classify.model_uri {model_uri!r} cannot be loaded as a model: {str(exc).splitlines()[0][:300]}"
        ) from exc
    missing = {"label", "probability", "probabilities"} - columns
    if missing:
        raise ModelNotFoundError(
            f"classify.model_uri {model_uri!r} is not a classifier: its predictions have the columns "
            f"{', '.join(sorted(columns))}, not {', '.join(sorted(missing))}"
        )
    tracking.tag_model_source("textmill.classify", source.as_dict())
    return io.ship_directory(spark, model_dir)


def with_predictions(source: DataFrame, c: ClassifyConf, shipped: str, partitions: int, report=None) -> DataFrame:
    """``doc_id, label, probability, probabilities, error`` (+ keep columns), one row per row of
    ``source``, in ``partitions`` hash partitions by ``doc_id``: deterministic on a retry, and no
    sampling pass or sort as a range partitioning would need (scoring does not need order).
    ``classify.keep_as`` columns come last, under their new names."""
    kept = [*c.keep_columns, *[F.col(name).alias(new) for name, new in c.keep_as.items()]]
    kept_names = [*c.keep_columns, *c.keep_as.values()]
    scored = source.repartition(partitions, "doc_id").select(
        "doc_id",
        make_classify_udf(shipped, c.batch_size, report is not None)(io.utf8_or_null(F.col(c.text_column))).alias(
            "_tm_p"
        ),
        F.is_valid_utf8(F.col(c.text_column)).alias("_tm_utf8"),
        *kept,
    )
    result = scored.select(
        "doc_id",
        "_tm_p.label",
        "_tm_p.probability",
        "_tm_p.probabilities",
        io.utf8_error(F.col("_tm_utf8"), F.col("_tm_p.error")).alias("error"),
        *kept_names,
        *(
            [F.col(f"_tm_p.{worker_cache.REPORT_COLUMN}").alias(worker_cache.REPORT_COLUMN)]
            if report is not None
            else []
        ),
    )
    return report.observe(result) if report is not None else result


def run(spark: SparkSession, conf: ClassifyJobConf) -> dict[str, float]:
    c = conf.classify
    source = io.read_input(
        spark,
        conf.io.input,
        ["doc_id", c.text_column, *c.keep_columns, *c.keep_as] + ([c.label_column] if c.evaluate else []),
    )
    io.require_text_column(source, c.text_column)
    with tempfile.TemporaryDirectory(prefix="textmill-model-") as tmp:
        shipped = ship_model(spark, c.model_uri, tmp)
        rows_in = source.count()
        partitions = io.task_partitions(spark, rows_in, 50_000, c.partitions)
        report = worker_cache.new_worker_report(spark)
        scored = with_predictions(source, c, shipped, partitions, report)

        def evaluate(written):
            truth = source.select("doc_id", F.col(c.label_column).cast("string").alias("_tm_true"))
            return _evaluate(written.join(truth, "doc_id"))

        rows_out, rows_error, evaluation = io.publish_rows(
            spark,
            scored,
            conf.io.output,
            rows_in,
            {"schema": SCHEMA_VERSION, "model_uri": c.model_uri},
            check=evaluate if c.evaluate else None,
            replace_unmarked=conf.io.replace_unmarked,
        )
    metrics: dict[str, float] = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_error": rows_error,
        "partitions": partitions,
        **(evaluation or {}),
    }
    metrics.update(tracking.log_workers(report.value))
    return metrics


def _evaluate(scored_with_truth) -> dict[str, float]:
    """Accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix and the calibration
    (15-bin reliability table and ECE) of ``label``/``probability`` against ``_tm_true``."""
    from textmill.models import plots
    from textmill.models.classifier import bin_of, calibration_table, expected_calibration_error, per_label, scores

    judged = scored_with_truth.where(F.col("error").isNull() & F.col("_tm_true").isNotNull())
    pairs = judged.groupBy("_tm_true", "label").count().collect()
    labels = sorted({r["_tm_true"] for r in pairs} | {r["label"] for r in pairs})
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for r in pairs:
        matrix[index[r["_tm_true"]], index[r["label"]]] += r["count"]
    result = (
        scores(matrix)
        if len(labels)
        else {"accuracy": 0.0, "macro_f1": 0.0, "precision": [], "recall": [], "f1": [], "support": []}
    )
    bins = CALIBRATION_BINS
    sums = (
        judged.groupBy(bin_of(F.col("probability"), bins).alias("bin"))
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum("probability").alias("confidence"),
            F.sum((F.col("label") == F.col("_tm_true")).cast("double")).alias("correct"),
        )
        .collect()
    )
    table = calibration_table({r["bin"]: (r["rows"], r["confidence"], r["correct"]) for r in sums}, bins)
    ece = expected_calibration_error(table)
    per_class = per_label(result, labels)
    mlflow.log_dict(
        {
            "labels": per_class,
            "label_order": labels,
            "confusion_matrix": matrix.tolist(),
            "accuracy": result["accuracy"],
            "macro_f1": result["macro_f1"],
            "ece": ece,
            "calibration": table,
        },
        "evaluation/report.json",
    )
    with tempfile.TemporaryDirectory() as tmp:
        if len(labels):
            mlflow.log_artifact(
                str(plots.confusion_matrix(Path(tmp) / "confusion_matrix.png", matrix, labels, "confusion matrix")),
                "evaluation",
            )
        mlflow.log_artifact(
            str(plots.reliability(Path(tmp) / "reliability.png", {"probability": table}, "reliability (15 bins)")),
            "evaluation",
        )
    metrics = {
        "eval_accuracy": result["accuracy"],
        "eval_macro_f1": result["macro_f1"],
        "eval_ece": ece,
        "eval_rows": int(matrix.sum()),
    }
    for label, values in per_class.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
        metrics.update({f"eval_{name}.{safe}": float(values[name]) for name in ("precision", "recall", "f1")})
    return metrics
