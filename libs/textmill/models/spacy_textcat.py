"""spaCy's own text categorizer trained with spaCy's own training loop (``spacy_textcat``).

``train_classifier`` gives this module the same shuffled, stratified train and validation
Parquet files every kind gets (columns ``text``, ``label``). ``write_docbins`` turns each
file into a ``.spacy`` DocBin (tokenized with the config's tokenizer, ``doc.cats`` one-hot);
``train`` loads the spaCy config (``conf/spacy/textcat.cfg`` by default), points
``[paths]`` at those DocBins, and runs ``spacy.training.loop.train``. The loop evaluates
once per epoch on the validation DocBins (batcher size and step count are set so that an
evaluation falls on every epoch boundary); a registered spaCy logger hands each evaluation
to the caller, who logs it to MLflow. spaCy keeps the best evaluation's weights as
``model-best``, which is what ``train`` returns.

Memory: spaCy's loop holds the training examples in memory for a fixed number of epochs,
so this kind suits corpora that fit the driver (hundreds of thousands of reviews, not
hundreds of millions); the ``linear`` kind streams.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from textmill.runtime.errors import TextmillError

logger = logging.getLogger(__name__)

LOGGER_NAME = "textmill.EvalSink.v1"
_SINK: list[Callable[[dict], None]] = []


def _register_logger() -> None:
    import spacy

    if LOGGER_NAME in spacy.registry.loggers.get_all():
        return

    @spacy.registry.loggers(LOGGER_NAME)
    def eval_sink():
        def setup(nlp, stdout=None, stderr=None):
            def log_step(info: dict | None) -> None:
                if info is not None and _SINK:
                    _SINK[-1](info)

            return log_step, lambda: None

        return setup


def config_path(path: str) -> Path:
    """``path``, else the same path under the repository textmill runs from (conf/ beside libs/)."""
    given = Path(path)
    if given.is_file():
        return given
    beside = Path(__file__).resolve().parents[3] / path
    if not given.is_absolute() and beside.is_file():
        return beside
    raise TextmillError(
        f"classifier.spacy.config: no spaCy config at {path!r} (looked in {Path.cwd()} and {beside.parent})"
    )


def write_docbins(files: Iterable[str], labels: list[str], out_dir: Path, nlp: Any) -> int:
    """One ``.spacy`` file per Parquet file; returns the number of docs."""
    from spacy.tokens import DocBin

    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for i, path in enumerate(files):
        docs = DocBin(attrs=["ORTH"], store_user_data=False)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=2000, columns=["text", "label"]):
            texts, golds = batch.column("text").to_pylist(), batch.column("label").to_pylist()
            for doc, gold in zip(nlp.tokenizer.pipe(texts, batch_size=1000), golds):
                doc.cats = {label: float(label == gold) for label in labels}
                docs.add(doc)
                count += 1
        docs.to_disk(out_dir / f"part-{i:05d}.spacy")
    return count


def train(
    config: str,
    overrides: dict[str, Any],
    train_files: list[str],
    val_files: list[str],
    labels: list[str],
    n_train: int,
    epochs: int,
    batch_size: int,
    seed: int,
    work_dir: Path,
    on_eval: Callable[[dict], None],
) -> tuple[Any, list[dict]]:
    """Train; returns (the best pipeline, per-epoch history with train_loss, val_accuracy, val_macro_f1,
    epoch_seconds)."""
    import spacy
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import train as spacy_train

    _register_logger()
    steps_per_epoch = math.ceil(n_train / batch_size)
    fixed = {
        "paths.train": str(work_dir / "train"),
        "paths.dev": str(work_dir / "val"),
        "system.seed": seed,
        "training.seed": seed,
        "training.batcher.size": batch_size,
        # An evaluation at every epoch boundary: step k x steps_per_epoch ends epoch k (plus one batch
        # of the next, which is how spaCy's loop counts); training stops right after the last one.
        "training.eval_frequency": steps_per_epoch,
        "training.max_epochs": epochs + 1,
        "training.max_steps": epochs * steps_per_epoch,
        "training.patience": 0,
    }
    try:
        cfg = spacy.util.load_config(config_path(config), overrides={**fixed, **overrides}, interpolate=False)
    except Exception as exc:  # confection raises its own error types for bad keys and values
        raise TextmillError(
            f"classifier.spacy: the spaCy config cannot be loaded: {str(exc).strip().splitlines()[0][:300]}"
        ) from exc
    cfg["training"]["logger"] = {"@loggers": LOGGER_NAME}
    # The labels are known: without them spaCy's initialisation reads (and re-tokenizes) the whole
    # training corpus just to find them (44 s of 180 s on 22,500 IMDB reviews).
    for name, component in cfg["components"].items():
        if component.get("factory") in ("textcat", "textcat_multilabel"):
            cfg["initialize"].setdefault("components", {}).setdefault(name, {})["labels"] = list(labels)
    batcher = cfg["training"]["batcher"].get("@batchers")
    if batcher != "spacy.batch_by_sequence.v1":
        raise TextmillError(
            f"classifier.spacy.config: training.batcher must be spacy.batch_by_sequence.v1 (got {batcher!r}); "
            "textmill places one evaluation per epoch by counting batches"
        )
    blank = spacy.blank(cfg["nlp"]["lang"])
    started = time.perf_counter()
    n_docs = write_docbins(train_files, labels, work_dir / "train", blank)
    n_val = write_docbins(val_files, labels, work_dir / "val", blank)
    if n_docs != n_train:
        raise TextmillError(f"spacy_textcat: wrote {n_docs} training docs, expected {n_train}")
    logger.info(
        "spacy_textcat: %d train and %d validation docs tokenized into DocBins in %.1f s",
        n_docs,
        n_val,
        time.perf_counter() - started,
    )

    history: list[dict] = []
    last = {"step": 0, "seconds": 0.0}
    started = time.perf_counter()  # epoch_seconds count from here

    def record(info: dict) -> None:
        if info["step"] == 0:  # spaCy also evaluates after the very first batch
            last["seconds"] = time.perf_counter() - started
            return
        now = time.perf_counter() - started
        steps = info["step"] - last["step"]
        scores = info.get("other_scores") or {}
        entry = {
            "epoch": len(history) + 1,
            "train_loss": sum((info.get("losses") or {}).values()) / max(steps, 1),
            # With exclusive classes every doc has one gold and one predicted label, so micro-F1 is accuracy.
            "val_accuracy": float(scores.get("cats_micro_f", 0.0)),
            "val_macro_f1": float(scores.get("cats_macro_f", 0.0)),
            "epoch_seconds": now - last["seconds"],
        }
        last.update(step=info["step"], seconds=now)
        history.append(entry)
        on_eval(entry)

    _SINK.append(record)
    try:
        (work_dir / "out").mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        nlp = init_nlp(cfg, use_gpu=-1)
        logger.info(
            "spacy_textcat: spaCy initialised the pipeline in %.1f s; training %d epochs of %d steps",
            time.perf_counter() - began,
            epochs,
            steps_per_epoch,
        )
        began = time.perf_counter()
        spacy_train(nlp, work_dir / "out", use_gpu=-1, stdout=io.StringIO(), stderr=io.StringIO())
    finally:
        _SINK.remove(record)
    best = spacy.load(work_dir / "out" / "model-best")
    logger.info(
        "spacy_textcat: spaCy's loop ran %.1f s; best validation macro-F1 %.4f",
        time.perf_counter() - began,
        max((h["val_macro_f1"] for h in history), default=0.0),
    )
    return best, history


def predict_labels(nlp: Any, files: list[str], batch_size: int = 256) -> tuple[list[str], list[str]]:
    """(true labels, predicted labels) over Parquet files with ``text``, ``label``."""
    truth, predicted = [], []
    for path in files:
        table = pq.read_table(path, columns=["text", "label"])
        texts = table.column("text").to_pylist()
        truth += table.column("label").to_pylist()
        predicted += [max(doc.cats, key=doc.cats.get) for doc in nlp.pipe(texts, batch_size=batch_size)]
    return truth, predicted
