"""The ``train_classifier`` job: labelled Parquet in, a tracked and optionally registered model out.

Kinds: ``linear`` and ``gru`` (torch), ``spacy_textcat`` (spaCy's text categorizer, logged
with the spaCy flavor); the same split, metrics, plots, registry rule and ``classify`` support.

Steps (Spark does the data work, torch the training):

1. read ``text`` + ``label`` (``prepare`` output); rows with null/empty text or a null label
   go to ``<output>/quarantine`` with a reason (rows_in == train + val + quarantined);
2. split: a separate ``classifier.validation_path``, or an exact stratified split: per
   label, the ``round(fraction x count)`` rows with the smallest ``xxhash64(doc_id, seed)``;
3. featurize on executors with a pandas UDF (the same ``Featurizer`` the model serves
   with); for ``word_ids`` the vocabulary is counted map-reduce style first; rows are
   written shuffled, as several files, to ``<output>/features/{train,val}``;
4. train: the ``linear`` kind's logistic form by default to its L2-regularised optimum on
   the driver (``training.solver: auto`` -> ``lbfgs``, ``textmill.models.logistic_solver``; C chosen
   on the validation split), where its memory estimate fits; otherwise from those files in streamed
   chunks, in this process or, with ``distributed.num_processes > 1``, through ``TorchDistributor``
   (DDP, gloo on CPU), each process reading its own shard of files; for ``spacy_textcat`` the files hold ``text,
   label`` and spaCy's own training loop trains its ``textcat`` (``textmill.models.spacy_textcat``);
5. log per-epoch and final metrics, a confusion-matrix PNG, a training-curve PNG, a
   per-class report and the label map, and the model as an MLflow pyfunc (spaCy flavor +
   textmill pyfunc for ``spacy_textcat``); optionally
   register it and move the ``champion`` alias only if it beats the current champion.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import mlflow
import numpy as np
import pandas as pd
from pydantic import Field
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from textmill.data import io, storage
from textmill.data.cleaning import blank_column
from textmill.models import plots
from textmill.models.classifier import (
    ModelSpec,
    TrainSettings,
    calibration_bins,
    confusion,
    expected_calibration_error,
    fit_temperature,
    per_label,
    scores,
    softmax,
    train,
)
from textmill.runtime import tracking
from textmill.runtime.config import JobConf, RegisteredModelName, StrictModel
from textmill.runtime.errors import AccountingError, ColumnNotFoundError, TextmillError
from textmill.runtime.registry import promote_if_better
from textmill.text.featurize import Featurizer

logger = logging.getLogger(__name__)


class ModelConf(StrictModel):
    kind: Literal["linear", "gru", "spacy_textcat"] = Field(
        "linear", description="linear (hashed n-grams) | gru | spacy_textcat (spaCy's textcat, spaCy's training loop)"
    )
    form: Literal["logistic", "fasttext"] = Field(
        "logistic",
        description=(
            "linear: logistic (one weight per bucket and label) | fasttext (dim-sized bucket embeddings, "
            "mean, linear layer)"
        ),
    )
    weighting: Literal["tfidf", "none"] = Field(
        "tfidf",
        description=(
            "linear: n-gram weights (1 + ln count) x idf, idf from the training split and saved with the model | none"
        ),
    )
    min_df: int = Field(2, gt=0, description="linear, tfidf: n-grams in fewer training documents weigh 0")
    features: Literal["hashed_ngrams", "word_ids", "char_ids"] | None = Field(
        None, description="default: hashed_ngrams for linear, word_ids for gru"
    )
    dim: int = Field(100, gt=0, description="embedding size")
    n_buckets: int = Field(2_000_000, gt=0, lt=2**31, description="hash buckets (linear)")
    ngrams: Literal[1, 2] = Field(2, description="word n-grams hashed (linear)")
    max_tokens: int = Field(1000, gt=0, description="tokens (or characters) kept per text")
    hidden: int = Field(128, gt=0, description="GRU hidden size")
    bidirectional: bool = True
    dropout: float = Field(0.3, ge=0, lt=1)
    layers: int = Field(1, gt=0)
    vocab_size: int = Field(50_000, gt=0, description="word_ids: most frequent words kept")
    min_count: int = Field(2, gt=0, description="word_ids: minimum count to enter the vocabulary")


class TrainingConf(StrictModel):
    solver: Literal["auto", "lbfgs", "sgd"] = Field(
        "auto",
        description="linear logistic form: lbfgs solves the L2-regularised objective to optimum on the driver, "
        "C chosen on the validation split; sgd streams epochs (Adagrad); auto: lbfgs when one process "
        "and its memory estimate fits classifier.max_memory_mb, else sgd. Other kinds: sgd",
    )
    C: list[float] = Field(
        default_factory=lambda: [1.0, 4.0, 16.0, 64.0],
        min_length=1,
        description="lbfgs: inverse L2 strengths tried, the best on the validation split (registry.metric) kept",
    )
    max_iter: int = Field(300, gt=0, description="lbfgs: solver iterations per C")
    epochs: int | None = Field(None, gt=0, description="default 10 for linear, 5 for gru and spacy_textcat")
    batch_size: int = Field(64, gt=0)
    lr: float | None = Field(
        None, gt=0, description="default 0.2 for the logistic form (Adagrad), 0.02 otherwise (Adam)"
    )
    keep_best: bool = Field(
        False,
        description=(
            "torch kinds: end with the epoch of the best validation registry.metric (for the fasttext form "
            "and gru, which overfit)"
        ),
    )
    patience: int | None = Field(
        None,
        gt=0,
        description="with keep_best: stop after this many epochs without a better one; null = run all epochs",
    )
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 13
    shuffle_buffer: int = Field(20_000, gt=0, description="examples held for shuffling while streaming")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default cores / processes")


class RegistryConf(StrictModel):
    name: RegisteredModelName = Field(None, description="registered model name; null = do not register")
    metric: Literal["val_macro_f1", "val_accuracy"] = "val_macro_f1"
    alias: str = "champion"


class DistributedConf(StrictModel):
    num_processes: int = Field(1, gt=0, description=">1: TorchDistributor DDP (gloo on CPU)")
    local_mode: bool = Field(True, description="processes on the driver (true) or on executors (false)")


class SpacyTrainingConf(StrictModel):
    config: str = Field("conf/spacy/textcat.cfg", description="spaCy training config for spacy_textcat")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="spaCy config overrides, e.g. {training.optimizer.learn_rate: 0.002}"
    )


class ClassifierConf(StrictModel):
    text_column: str = "text"
    label_column: str = "label"
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    validation_path: str | None = Field(None, description="separate validation Parquet; overrides the fraction")
    calibration: Literal["temperature", "none"] = Field(
        "temperature",
        description="temperature: probabilities softmax(logits / T), T fitted on the validation split (torch kinds)",
    )
    model: ModelConf = Field(default_factory=ModelConf)
    training: TrainingConf = Field(default_factory=TrainingConf)
    distributed: DistributedConf = Field(default_factory=DistributedConf)
    registry: RegistryConf = Field(default_factory=RegistryConf)
    spacy: SpacyTrainingConf = Field(default_factory=SpacyTrainingConf)
    feature_files: int | None = Field(None, gt=0, description="Parquet files per split; default max(4, 2 x processes)")
    max_memory_mb: int = Field(
        8192,
        gt=0,
        description="refuse a model whose training state (weights, gradients, optimizer) needs more, per process",
    )


class TrainClassifierJobConf(JobConf):
    required: ClassVar[tuple[str, ...]] = ("io.input", "io.output")
    container_output: ClassVar[bool] = True  # features/, quarantine/, model/
    classifier: ClassifierConf = Field(default_factory=ClassifierConf)

    def input_paths(self) -> list[str]:
        return super().input_paths() + ([self.classifier.validation_path] if self.classifier.validation_path else [])

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        if self.classifier.model.kind == "spacy_textcat" and self.classifier.distributed.num_processes > 1:
            problems.append(
                "'classifier.distributed.num_processes' > 1 needs a torch kind (linear, gru); spacy_textcat trains "
                "in one process"
            )
        t, m = self.classifier.training, self.classifier.model
        if t.solver == "lbfgs" and not (m.kind == "linear" and m.form == "logistic"):
            problems.append(
                f"'classifier.training.solver' lbfgs needs the linear kind's logistic form (got kind {m.kind!r}, "
                f"form {m.form!r})"
            )
        if t.solver == "lbfgs" and self.classifier.distributed.num_processes > 1:
            problems.append(
                "'classifier.training.solver' lbfgs trains in one process; use sgd with distributed.num_processes > 1"
            )
        if any(c <= 0 for c in t.C):
            problems.append(f"'classifier.training.C' values must be > 0 (got {t.C})")
        if self.classifier.training.patience is not None and not self.classifier.training.keep_best:
            problems.append(
                "'classifier.training.patience' needs 'classifier.training.keep_best: true' (it stops on the best "
                "epoch's metric)"
            )
        return problems


JOB_CONF = TrainClassifierJobConf


class LabelError(TextmillError):
    """The training data has too few labels or classes to train on."""


# ---------------------------------------------------------------------------- data


def epochs_for(c: ClassifierConf) -> int:
    return c.training.epochs or (10 if c.model.kind == "linear" else 5)


def lr_for(c: ClassifierConf) -> float:
    # The logistic form has one weight per bucket and label and no hidden layer: it wants larger steps.
    return c.training.lr or (0.2 if c.model.kind == "linear" and c.model.form == "logistic" else 0.02)


def featurizer_for(model: ModelConf) -> Featurizer:
    kind = model.features or ("hashed_ngrams" if model.kind == "linear" else "word_ids")
    if model.kind == "linear" and kind != "hashed_ngrams":
        raise TextmillError(f"classifier.model.features={kind!r} does not fit the linear model; use hashed_ngrams")
    return Featurizer(kind=kind, n_buckets=model.n_buckets, ngrams=model.ngrams, max_tokens=model.max_tokens)


def build_vocabulary(
    train_df: DataFrame, text_column: str, featurizer: Featurizer, size: int, min_count: int
) -> list[str]:
    """Most frequent tokens of the training split, counted on the executors."""
    options = featurizer.to_dict()

    @F.pandas_udf("array<string>")
    def tokens(texts: pd.Series) -> pd.Series:
        f = Featurizer.from_dict(options)
        return pd.Series([f.tokens(t) for t in texts])

    counts = (
        train_df.select(F.explode(tokens(F.col(text_column))).alias("token"))
        .groupBy("token")
        .count()
        .where(F.col("count") >= min_count)
        .orderBy(F.desc("count"), "token")
        .limit(size)
    )
    return [r["token"] for r in counts.collect()]


def make_featurize_udf(options: dict[str, Any]):
    @F.pandas_udf("array<int>")
    def featurize(texts: pd.Series) -> pd.Series:
        featurizer = Featurizer.from_dict(options)
        if featurizer.kind == "hashed_ngrams":
            # One numpy array per row: Arrow converts each in one copy, not id by id.
            ids, lengths = featurizer.hashed_ngrams_batch(texts)
            return pd.Series(np.split(ids.astype(np.int32), np.cumsum(lengths)[:-1]))
        return pd.Series(featurizer.ids_batch(texts))

    return featurize


def stratified_split(df: DataFrame, label_column: str, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Exact per-label split: the round(fraction x n_label) rows with the smallest seeded hash go to validation."""
    key = F.xxhash64(F.col("doc_id"), F.lit(seed))
    by_label = Window.partitionBy(label_column)
    ranked = df.withColumn("_tm_rank", F.row_number().over(by_label.orderBy(key, "doc_id"))).withColumn(
        "_tm_n", F.count(F.lit(1)).over(by_label)
    )
    is_val = F.col("_tm_rank") <= F.round(F.col("_tm_n") * fraction)
    return ranked.where(~is_val).drop("_tm_rank", "_tm_n"), ranked.where(is_val).drop("_tm_rank", "_tm_n")


def _labelled(df: DataFrame, c: ClassifierConf) -> tuple[DataFrame, DataFrame]:
    """(good rows, quarantined rows with a reason)."""
    reason = (
        F.when(F.col(c.text_column).isNull(), "null_text")
        .when(~F.is_valid_utf8(F.col(c.text_column)), "undecodable_text")
        .when(blank_column(F.col(c.text_column)), "empty_text")
        .when(F.col(c.label_column).isNull(), "null_label")
    )
    marked = df.withColumn("_tm_reason", reason)
    good = marked.where(F.col("_tm_reason").isNull()).drop("_tm_reason")
    bad = marked.where(F.col("_tm_reason").isNotNull()).select(
        "doc_id",
        F.col("_tm_reason").alias("reason"),
        F.make_valid_utf8(F.to_json(F.struct(*[F.col(x) for x in df.columns]))).alias("raw"),
    )
    return good, bad


def check_training_memory(c: ClassifierConf, n_labels: int) -> None:
    """Refuse, before any feature is built, a model whose training state does not fit
    ``classifier.max_memory_mb`` (10,000 labels x 2M hashed buckets would be 80 GB of weights)."""
    if c.model.kind == "spacy_textcat":
        return
    featurizer = featurizer_for(c.model)
    n_ids = (
        c.model.vocab_size + 2 if featurizer.kind == "word_ids" else featurizer.n_ids
    )  # vocab_size: the most it keeps
    spec = ModelSpec(
        kind=c.model.kind,
        n_ids=n_ids,
        n_classes=n_labels,
        dim=c.model.dim,
        hidden=c.model.hidden,
        bidirectional=c.model.bidirectional,
        layers=c.model.layers,
        form=c.model.form,
    )
    need = spec.training_memory_mb(c.training.keep_best)
    if need > c.max_memory_mb:
        shape = (
            f"{n_ids:,} ids x {n_labels:,} labels"
            if c.model.kind == "linear" and c.model.form == "logistic"
            else f"{n_ids:,} ids x dim {c.model.dim}"
        )
        raise ClassifierMemoryError(
            f"a {c.model.kind} classifier of {shape} needs about {need:,.0f} MB to train, over "
            "classifier.max_memory_mb="
            f"{c.max_memory_mb:,}; lower classifier.model.n_buckets (or vocab_size/dim), merge rare labels, or raise "
            "classifier.max_memory_mb"
        )


class ClassifierMemoryError(TextmillError):
    """The model's training state would not fit classifier.max_memory_mb."""


def _read_checked(spark: SparkSession, path: str, c: ClassifierConf, key: str) -> DataFrame:
    io.require_input(spark, path, key)
    df = spark.read.parquet(path)
    missing = [x for x in ("doc_id", c.text_column, c.label_column) if x not in df.columns]
    if missing:
        raise ColumnNotFoundError(
            f"{key}: column(s) {', '.join(missing)} not in {path}; available: {', '.join(df.columns)}"
        )
    io.require_text_column(df, c.text_column, key)
    return df.withColumn(c.label_column, F.col(c.label_column).cast("string"))


# ---------------------------------------------------------------------------- training


def _distributed_train(
    spec: dict, settings: dict, train_files: list[str], val_files: list[str], n_train: int, result_path: str
) -> None:
    """Body of each TorchDistributor process: DDP over gloo, its own shard of the files.

    Rank 0 writes the trained state and history to ``result_path`` (a new file, then a rename).
    It does not return them: TorchDistributor's local mode pickles every process's return value
    to the same file, so the last process to finish would win, and a rank that returned None
    sometimes came last."""
    import torch
    import torch.distributed as dist

    from textmill.models.classifier import ModelSpec, TrainSettings, train

    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        result = train(
            ModelSpec(**spec), TrainSettings(**settings), train_files, val_files, n_train, rank=rank, world=world
        )
        if rank == 0:
            torch.save(
                {
                    "state": result.model.state_dict(),
                    "history": result.history,
                    "device": result.device,
                    "best_epoch": result.best_epoch,
                },
                f"{result_path}.tmp",
            )
            os.replace(f"{result_path}.tmp", result_path)
    finally:
        dist.destroy_process_group()


def log_pyfunc(model_dir: Path, input_example: list[str], registered_name: str | None):
    """Log the model directory as an MLflow pyfunc with a signature; returns the ModelInfo."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    from textmill.models.from_code import model_code

    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),  # one text column, by position: a Series, a list or a DataFrame
        outputs=Schema(
            [
                ColSpec(DataType.string, "label", required=False),
                ColSpec(DataType.double, "probability", required=False),
                ColSpec(Map(DataType.double), "probabilities", required=False),
                ColSpec(DataType.string, "error", required=False),
            ]
        ),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=model_code("text_classifier"),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[tracking.package_code_path()],
        signature=signature,
        input_example=pd.DataFrame({"text": input_example}),
        pip_requirements=["torch==2.13.0", "pandas", "numpy", "pydantic>=2", "pyyaml"],
        registered_model_name=registered_name,
    )


def run(spark: SparkSession, conf: TrainClassifierJobConf) -> dict[str, float]:
    c = conf.classifier
    out = conf.io.output.rstrip("/")
    source = _read_checked(spark, conf.io.input, c, "io.input")
    good, bad = _labelled(source, c)
    if c.validation_path:
        train_df = good
        val_good, val_bad = _labelled(_read_checked(spark, c.validation_path, c, "classifier.validation_path"), c)
        val_df, bad = val_good, bad.unionByName(val_bad)
    else:
        train_df, val_df = stratified_split(good, c.label_column, c.validation_fraction, c.training.seed)
    labels = sorted(r[0] for r in train_df.unionByName(val_df).select(c.label_column).distinct().collect())
    if len(labels) < 2:
        raise LabelError(
            f"classifier.label_column {c.label_column!r} has {len(labels)} distinct value(s) {labels}; need at least 2"
        )
    check_training_memory(c, len(labels))

    spacy_kind = c.model.kind == "spacy_textcat"
    if spacy_kind:
        featurizer = None
        columns = [F.col(c.text_column).alias("text"), F.col(c.label_column).alias("label")]
    else:
        featurizer = featurizer_for(c.model)
        if featurizer.kind == "word_ids":
            featurizer.vocab = build_vocabulary(
                train_df, c.text_column, featurizer, c.model.vocab_size, c.model.min_count
            )
            featurizer = Featurizer.from_dict(featurizer.to_dict())
            logger.info("vocabulary: %d words", len(featurizer.vocab))
        featurize = make_featurize_udf(featurizer.to_dict())
        label_ids = F.create_map(*[F.lit(x) for i, label in enumerate(labels) for x in (label, i)])
        columns = [featurize(F.col(c.text_column)).alias("ids"), label_ids[F.col(c.label_column)].alias("label_id")]
    n_files = c.feature_files or max(4, 2 * c.distributed.num_processes)

    def features(df: DataFrame, seed: int) -> DataFrame:
        # Shuffled across files so a streaming reader sees mixed labels.
        return (
            df.withColumn("_tm_order", F.xxhash64(F.col("doc_id"), F.lit(seed)))
            .select(*columns, "_tm_order")
            .repartition(n_files, "_tm_order")
            .sortWithinPartitions("_tm_order")
            .drop("_tm_order")
        )

    rows_in = source.count() + (spark.read.parquet(c.validation_path).count() if c.validation_path else 0)
    feature_dir = f"{out}/features"
    with storage.staged_outputs(spark, feature_dir, f"{out}/quarantine", replace_unmarked=conf.io.replace_unmarked) as (
        staged,
        staged_bad,
    ):
        features(train_df, c.training.seed).write.parquet(f"{staged}/train")
        features(val_df, c.training.seed + 1).write.parquet(f"{staged}/val")
        bad.write.parquet(staged_bad)
        n_train, n_val = io.count_parquet(spark, f"{staged}/train"), io.count_parquet(spark, f"{staged}/val")
        n_bad = io.count_parquet(spark, staged_bad)
        if rows_in != n_train + n_val + n_bad:
            raise AccountingError(f"rows_in={rows_in} but train={n_train} + val={n_val} + quarantined={n_bad}")
    if n_val == 0:
        raise LabelError("the validation split is empty; raise classifier.validation_fraction or give validation_path")
    logger.info(
        "train_classifier: %d train, %d validation, %d quarantined rows; %d labels", n_train, n_val, n_bad, len(labels)
    )

    local_features = _local_dir(feature_dir)
    train_files = sorted(glob.glob(f"{local_features}/train/*.parquet"))
    val_files = sorted(glob.glob(f"{local_features}/val/*.parquet"))
    counts = {"rows_in": rows_in, "rows_train": n_train, "rows_val": n_val, "rows_quarantined": n_bad}
    mlflow.log_params({"data.n_train": n_train, "data.n_val": n_val, "data.labels": json.dumps(labels)})

    def log_epoch(epoch: int, record: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

    if spacy_kind:
        return _train_spacy_textcat(conf, labels, train_files, val_files, n_train, counts, log_epoch)
    spec = ModelSpec(
        kind=c.model.kind,
        n_ids=featurizer.n_ids,
        n_classes=len(labels),
        dim=c.model.dim,
        hidden=c.model.hidden,
        bidirectional=c.model.bidirectional,
        dropout=c.model.dropout,
        layers=c.model.layers,
        form=c.model.form,
        weighting=c.model.weighting,
        min_df=c.model.min_df,
    )
    t = c.training
    settings = TrainSettings(
        epochs=epochs_for(c),
        batch_size=t.batch_size,
        lr=lr_for(c),
        seed=t.seed,
        weight_decay=t.weight_decay,
        buffer_size=t.shuffle_buffer,
        threads=t.threads,
        keep_best=t.keep_best,
        patience=t.patience,
        select_by=c.registry.metric,
    )
    solver = solver_for(c, train_files, len(labels), featurizer.n_ids)
    mlflow.log_param("training.solver_used", solver)
    if solver == "lbfgs":
        streaming_only = [k for k in ("epochs", "lr", "keep_best", "patience") if getattr(t, k)]
        if streaming_only:
            logger.warning(
                "classifier.training.%s: settings of the streaming solver, which lbfgs does not use; set "
                "classifier.training.solver: sgd to train with them",
                ", ".join(streaming_only),
            )
        model, history = _train_lbfgs(c, spec, train_files, val_files, log_epoch)
        return _finish_torch(conf, model, spec, featurizer, labels, history, "cpu", val_files, counts, None)
    mlflow.log_params(
        {"model.n_ids": featurizer.n_ids, "training.epochs_used": settings.epochs, "training.lr_used": settings.lr}
    )
    if c.distributed.num_processes > 1:
        from pyspark.ml.torch.distributor import TorchDistributor

        logger.info(
            "training with TorchDistributor: %d processes (%s)",
            c.distributed.num_processes,
            "local" if c.distributed.local_mode else "executors",
        )
        distributor = TorchDistributor(
            num_processes=c.distributed.num_processes, local_mode=c.distributed.local_mode, use_gpu=False
        )
        result_path = f"{local_features}/_ddp_result.pt"  # "_": readers of the feature Parquet skip it
        if os.path.exists(result_path):
            os.remove(result_path)
        distributor.run(
            _distributed_train, asdict(spec), asdict(settings), train_files, val_files, n_train, result_path
        )
        if not os.path.exists(result_path):
            raise TextmillError("distributed training wrote no model from rank 0; see the TorchDistributor log above")
        import torch

        state = torch.load(result_path, map_location="cpu", weights_only=False)
        os.remove(result_path)
        model = spec.build()
        model.load_state_dict(state["state"])
        history, device, best_epoch = state["history"], state["device"], state["best_epoch"]
        for record in history:
            log_epoch(record["epoch"], record)
    else:
        result = train(spec, settings, train_files, val_files, n_train, on_epoch=log_epoch)
        model, history, device, best_epoch = result.model, result.history, result.device, result.best_epoch
    return _finish_torch(conf, model, spec, featurizer, labels, history, device, val_files, counts, best_epoch)


def solver_for(c: ClassifierConf, train_files: list[str], n_labels: int, n_ids: int) -> str:
    """``lbfgs`` or ``sgd`` for this run (see ``TrainingConf.solver``)."""
    t, m = c.training, c.model
    exact_fits_model = m.kind == "linear" and m.form == "logistic" and c.distributed.num_processes == 1
    if t.solver == "sgd" or (t.solver == "auto" and not exact_fits_model):
        return "sgd"
    from textmill.models import logistic_solver

    need = logistic_solver.estimate_mb(train_files, n_labels, n_ids)
    if need <= c.max_memory_mb:
        return "lbfgs"
    if t.solver == "lbfgs":
        raise ClassifierMemoryError(
            f"classifier.training.solver lbfgs needs about {need:,.0f} MB on the driver for this training split, over "
            f"classifier.max_memory_mb={c.max_memory_mb:,}; use solver sgd (streams) or raise classifier.max_memory_mb"
        )
    logger.info(
        "lbfgs would need about %.0f MB (max_memory_mb %d): training with the streaming sgd solver",
        need,
        c.max_memory_mb,
    )
    return "sgd"


def _train_lbfgs(c: ClassifierConf, spec: ModelSpec, train_files: list[str], val_files: list[str], log_epoch):
    """(model, history): the logistic form at its optimum, one history record per C tried."""
    from textmill.models import logistic_solver
    from textmill.models.classifier import document_frequencies

    model = spec.build()
    model.set_idf(*document_frequencies(train_files, spec.n_ids), min_df=spec.min_df)
    history, chosen = logistic_solver.fit(
        model,
        train_files,
        val_files,
        spec.n_classes,
        c.training.C,
        c.registry.metric,
        c.training.max_iter,
        on_candidate=log_epoch,
    )
    mlflow.log_params({"training.C_used": chosen})
    return model, history


def _train_spacy_textcat(
    conf: TrainClassifierJobConf,
    labels: list[str],
    train_files: list[str],
    val_files: list[str],
    n_train: int,
    counts: dict[str, int],
    log_epoch,
) -> dict[str, float]:
    from textmill.models import spacy_flavor, spacy_textcat

    c = conf.classifier
    with tempfile.TemporaryDirectory(prefix="textmill-spacy-train-") as work:
        nlp, history = spacy_textcat.train(
            c.spacy.config,
            c.spacy.overrides,
            train_files,
            val_files,
            labels,
            n_train,
            epochs_for(c),
            c.training.batch_size,
            c.training.seed,
            Path(work),
            on_eval=lambda entry: log_epoch(entry["epoch"], entry),
        )
    mlflow.log_text(nlp.config.to_str(), "spacy/config.cfg")
    truth, predicted = spacy_textcat.predict_labels(nlp, val_files)
    index = {label: i for i, label in enumerate(labels)}
    matrix = confusion(np.array([index[t] for t in truth]), np.array([index[p] for p in predicted]), len(labels))
    model_dir = Path(_local_dir(conf.io.output)) / "model"
    if model_dir.exists():  # a container claimed by this job: the previous run's model
        import shutil

        shutil.rmtree(model_dir)
    spacy_flavor.save_model(nlp, str(model_dir))
    return _finish(
        conf,
        matrix,
        labels,
        history,
        "cpu",
        counts,
        lambda: spacy_flavor.log_model(
            nlp,
            registered_model_name=c.registry.name,
            input_example=pd.DataFrame({"text": ["A short example text to classify."]}),
        ),
    )


def _local_dir(path: str) -> str:
    """Training reads the feature files with pyarrow; they must be on a local or mounted path."""
    local = path[len("file:") :] if path.startswith("file:") else path
    if "://" in local:
        raise TextmillError(f"io.output must be a local or mounted path for training (got {path!r})")
    return local


def _finish_torch(
    conf: TrainClassifierJobConf,
    model,
    spec: ModelSpec,
    featurizer: Featurizer,
    labels: list[str],
    history: list[dict],
    device: str,
    val_files: list[str],
    counts: dict[str, int],
    best_epoch: int | None,
) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    from textmill.models.classifier import ParquetExamples, collate, predict_logits
    from textmill.models.classifier_pyfunc import TextClassifier, save_model_dir

    kind = "bag" if spec.kind == "linear" else "sequence"
    loader = DataLoader(
        ParquetExamples(val_files, shuffle=False), batch_size=512, collate_fn=lambda ex: collate(ex, kind)
    )
    logits, y_true = predict_logits(model, iter(loader), torch.device("cpu"))
    matrix = confusion(y_true, logits.argmax(axis=1), len(labels))
    temperature = fit_temperature(logits, y_true) if conf.classifier.calibration == "temperature" else 1.0
    calibration = _calibration(logits, y_true, temperature)
    logger.info(
        "calibration: temperature %.3g, validation ECE %.4f (%.4f before)",
        temperature,
        calibration["val_ece"],
        calibration["val_ece_uncalibrated"],
    )
    model_dir = Path(_local_dir(conf.io.output)) / "model"
    save_model_dir(model_dir, model, spec, featurizer, labels, temperature)
    example = TextClassifier(model_dir).predict(["an example text"])  # the saved directory really loads
    logger.info("saved model to %s (example prediction %s)", model_dir, example.iloc[0].to_dict())
    return _finish(
        conf,
        matrix,
        labels,
        history,
        device,
        counts,
        lambda: log_pyfunc(model_dir, ["A short example text to classify."], conf.classifier.registry.name),
        calibration,
        best_epoch,
    )


def _calibration(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> dict:
    """Reliability tables and ECE (15 bins) of the validation split, before and after the temperature.

    The temperature is fitted on this same split, so the calibrated ECE here is optimistic;
    ``classify.evaluate`` measures it on data the model has not seen."""
    tables = {}
    for name, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
        probs = softmax(logits, t)
        tables[name] = calibration_bins(probs.max(axis=1), probs.argmax(axis=1) == y_true)
    return {
        "temperature": temperature,
        "val_ece": expected_calibration_error(tables["calibrated"]),
        "val_ece_uncalibrated": expected_calibration_error(tables["uncalibrated"]),
        "tables": tables,
    }


def _finish(
    conf: TrainClassifierJobConf,
    matrix: np.ndarray,
    labels: list[str],
    history: list[dict],
    device: str,
    counts: dict[str, int],
    log_model,
    calibration: dict | None = None,
    best_epoch: int | None = None,
) -> dict[str, float]:
    """Every kind's ending: validation report and plots, the model logged (``log_model()``), the registry rule."""
    c = conf.classifier
    report = scores(matrix)
    per_class = per_label(report, labels)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            plots.confusion_matrix(Path(tmp) / "confusion_matrix.png", matrix, labels, "validation confusion matrix"),
            plots.training_curve(Path(tmp) / "training_curve.png", history),
        ]
        if calibration is not None:
            paths.append(
                plots.reliability(
                    Path(tmp) / "reliability.png", calibration["tables"], "validation reliability (15 bins)"
                )
            )
        for path in paths:
            mlflow.log_artifact(str(path), "evaluation")
    if calibration is not None:
        mlflow.log_dict(calibration, "evaluation/calibration.json")
    mlflow.log_dict(
        {
            "labels": per_class,
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "confusion_matrix": matrix.tolist(),
        },
        "evaluation/report.json",
    )
    mlflow.log_dict({str(i): label for i, label in enumerate(labels)}, "label_map.json")
    info = log_model()
    metrics: dict[str, float] = {
        **counts,
        "val_accuracy": report["accuracy"],
        "val_macro_f1": report["macro_f1"],
        "epochs": len(history),
        "train_seconds": sum(h["epoch_seconds"] for h in history),
    }
    if calibration is not None:
        metrics.update({k: calibration[k] for k in ("temperature", "val_ece", "val_ece_uncalibrated")})
    if best_epoch is not None:
        metrics["best_epoch"] = best_epoch
    mlflow.set_tags({"textmill.model_uri": info.model_uri, "textmill.train_device": device})
    if c.registry.name:
        version = str(info.registered_model_version)
        mlflow.log_metrics({"val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]})
        decision = promote_if_better(
            c.registry.name, version, c.registry.metric, metrics[c.registry.metric], c.registry.alias
        )
        mlflow.log_dict(decision, "registry_decision.json")
        mlflow.set_tags(
            {"textmill.registered_version": version, "textmill.promoted": str(decision["promoted"]).lower()}
        )
        logger.info("registry: %s", decision["reason"])
        metrics["promoted"] = float(decision["promoted"])
    return metrics
