"""The classifier as a self-contained model directory and as an MLflow pyfunc.

A model directory holds ``textmill_classifier.json`` (format version, ModelSpec, Featurizer,
labels) and ``weights.pt``. ``TextClassifier`` loads one and predicts batches of texts;
``TextClassifierPyfunc`` wraps it for MLflow (``mlflow.pyfunc.load_model``, ``mlflow models
serve``, and textmill's ``classify`` job). ``predict`` takes a pandas Series, a list, or a
DataFrame (column ``text``, else the first column) and returns a DataFrame with ``label``,
``probability``, ``probabilities`` ({label: p}) and ``error`` (null and blank texts get no
label and an empty ``probabilities``, as in the ``classify`` job), one row per input, batched inside.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from textmill.data.cleaning import is_blank
from textmill.models.classifier import ModelSpec, collate, model_inputs
from textmill.text.featurize import Featurizer

FORMAT = "textmill-classifier/v1"
CONFIG = "textmill_classifier.json"
WEIGHTS = "weights.pt"


def save_model_dir(
    path: str | Path,
    model: torch.nn.Module,
    spec: ModelSpec,
    featurizer: Featurizer,
    labels: list[str],
    temperature: float = 1.0,
) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # A new file, then a rename: a worker that memory-mapped the previous weights keeps reading them.
    torch.save(model.state_dict(), path / f"{WEIGHTS}.tmp")
    (path / f"{WEIGHTS}.tmp").replace(path / WEIGHTS)
    config = {
        "format": FORMAT,
        "spec": asdict(spec),
        "featurizer": featurizer.to_dict(),
        "labels": labels,
        "temperature": temperature,
    }
    (path / CONFIG).write_text(json.dumps(config))
    return path


class TextClassifier:
    """A loaded model directory: texts in, labels and class probabilities out."""

    def __init__(self, path: str | Path, batch_size: int = 512) -> None:
        config = json.loads((Path(path) / CONFIG).read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} model directory (format={config.get('format')!r})")
        self.spec = ModelSpec(**config["spec"])
        self.featurizer = Featurizer.from_dict(config["featurizer"])
        self.labels: list[str] = config["labels"]
        # Probabilities are softmax(logits / temperature), fitted on the validation split
        # (train_classifier's classifier.calibration); 1.0 for models saved before it existed.
        self.temperature = float(config.get("temperature", 1.0))
        # Built without memory, then handed the weights memory-mapped: the bucket table (800 MB for
        # the fasttext form at 2M buckets, 8 MB per label for the logistic form) is neither randomly
        # initialised nor copied, loading takes milliseconds, and Python workers on one machine share its pages.
        with torch.device("meta"):
            self.model = self.spec.build()
        state = torch.load(Path(path) / WEIGHTS, map_location="cpu", mmap=True, weights_only=True)
        self.model.load_state_dict(state, assign=True)
        self.model.eval()
        self.kind = "bag" if self.spec.kind == "linear" else "sequence"
        self.batch_size = batch_size

    @torch.no_grad()
    def probabilities(self, texts: list[str | None]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            if self.featurizer.kind == "hashed_ngrams":
                ids, lengths = self.featurizer.hashed_ngrams_batch(chunk)
                inputs = {"ids": torch.from_numpy(ids), "offsets": torch.from_numpy(np.cumsum(lengths) - lengths)}
            else:
                inputs = model_inputs(collate([(self.featurizer.ids(t), 0) for t in chunk], self.kind))
            out.append(torch.softmax(self.model(**inputs).float() / self.temperature, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def predict(self, texts: list[str | None]) -> pd.DataFrame:
        """One row per text: ``label, probability, probabilities, error``. Null or blank texts get no
        label and ``error`` "null text" / "empty text", as in the ``classify`` job."""
        scored = [i for i, t in enumerate(texts) if not is_blank(t)]
        probs = self.probabilities([texts[i] for i in scored])
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        out = pd.DataFrame(
            {
                "label": pd.Series([None] * len(texts), dtype=object),
                "probability": np.full(len(texts), np.nan),
                # {} rather than null: mlflow.pyfunc.spark_udf cannot carry a null map.
                "probabilities": pd.Series([{} for _ in texts], dtype=object),
                "error": pd.Series(["null text" if t is None else "empty text" for t in texts], dtype=object),
            }
        )
        if scored:
            out.loc[scored, "label"] = [self.labels[i] for i in best]
            out.loc[scored, "probability"] = probs[np.arange(len(best)), best]
            out.loc[scored, "probabilities"] = pd.Series(
                [dict(zip(self.labels, map(float, row))) for row in probs], index=scored
            )
            out.loc[scored, "error"] = None
        return out


def texts_from(model_input: Any) -> list[str | None]:
    if isinstance(model_input, pd.DataFrame):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        return [t if isinstance(t, str) else None for t in column]
    if isinstance(model_input, (pd.Series, list, tuple, np.ndarray)):
        return [t if isinstance(t, str) else None for t in model_input]
    if isinstance(model_input, str):
        return [model_input]
    raise TypeError(f"expected texts as a Series, list or DataFrame, got {type(model_input).__name__}")


class TextClassifierPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.classifier = TextClassifier(context.artifacts["model_dir"])

    # A DataFrame hint (Series and lists are accepted too): MLflow infers no signature from it, so the
    # explicit one stays, and it does not warn about a missing hint.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self.classifier.predict(texts_from(model_input))
