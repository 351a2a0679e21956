"""spaCy pipelines as MLflow models: MLflow's spaCy flavor plus a pyfunc for entities and categories.

MLflow's spaCy flavor stores the pipeline (``model.spacy/``, ``mlflow.spacy.load_model``
gives it back) but offers a pyfunc only for pipelines with a text categorizer, and then only
``doc.cats``. ``save_model``/``log_model`` keep that flavor and add textmill's
``python_function`` flavor (this module is its loader), so every logged pipeline works with
``mlflow.pyfunc.load_model``, ``mlflow.pyfunc.spark_udf`` and ``mlflow models serve``.
Per text it returns:

- ``entities`` ``array<struct<text,start_char,end_char,label>>`` (the ``ner`` job's schema),
  when the pipeline has ``ner``, ``entity_ruler`` or ``span_ruler``;
- ``label``, ``probability``, ``probabilities`` (``{category: p}``), when it has ``textcat``
  or ``textcat_multilabel`` (the ``classify`` job's columns);
- ``error``: ``"null text"``, ``"empty text"`` or what failed; ``label`` and ``probability``
  are then null, ``entities`` and ``probabilities`` empty (``mlflow.pyfunc.spark_udf`` cannot
  carry a null array or map).

Texts are parsed by the same ``Annotator`` the batch jobs use (batched ``nlp.pipe``, long
texts split at boundaries with offsets into the original text; a split text's categories are
the length-weighted mean of its pieces'). Only the components those outputs need are run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textmill.runtime.errors import NotASpacyModelError
from textmill.text.spacy_annotator import DATA

logger = logging.getLogger(__name__)

ENTITY_FACTORIES = ("ner", "entity_ruler", "span_ruler")
CATEGORY_FACTORIES = ("textcat", "textcat_multilabel")
EXAMPLE_TEXTS = ["Apple is looking at buying a U.K. startup for $1 billion.", "The match in Paris ended in a draw."]


def factories(nlp: Any) -> dict[str, str]:
    return {name: nlp.get_pipe_meta(name).factory for name in nlp.component_names}


def outputs_of(nlp: Any) -> tuple[bool, bool]:
    """(gives entities, gives categories) for a loaded pipeline."""
    found = set(factories(nlp).values())
    return bool(found & set(ENTITY_FACTORIES)), bool(found & set(CATEGORY_FACTORIES))


def signature(entities: bool, categories: bool):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Map, Object, Property, Schema

    columns = []
    if entities:
        entity = Object(
            [
                Property("text", DataType.string),
                Property("start_char", DataType.integer),
                Property("end_char", DataType.integer),
                Property("label", DataType.string),
            ]
        )
        columns.append(ColSpec(Array(entity), "entities", required=False))
    if categories:
        columns += [
            ColSpec(DataType.string, "label", required=False),
            ColSpec(DataType.double, "probability", required=False),
            ColSpec(Map(DataType.double), "probabilities", required=False),
        ]
    columns.append(ColSpec(DataType.string, "error", required=False))
    # One text column, by position: a Series, a list or a one-column DataFrame.
    return ModelSignature(inputs=Schema([ColSpec(DataType.string)]), outputs=Schema(columns))


class _OnlySpacyFlavorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Generating only the spacy flavor")


@contextmanager
def _without_only_spacy_notice() -> Iterator[None]:
    # mlflow.spacy warns that NER-only pipelines get no pyfunc; save_model adds ours right after.
    target = logging.getLogger("mlflow.spacy")
    notice = _OnlySpacyFlavorNotice()
    target.addFilter(notice)
    try:
        yield
    finally:
        target.removeFilter(notice)


def pip_requirements() -> list[str]:
    import mlflow
    import spacy

    return [f"spacy=={spacy.__version__}", f"mlflow=={mlflow.__version__}", "pandas", "numpy", "pydantic>=2", "pyyaml"]


def save_model(spacy_model: Any, path: str, mlflow_model: Any = None, input_example: Any = None, **kwargs: Any) -> None:
    """Save ``spacy_model`` with the spaCy flavor and textmill's pyfunc flavor (``Model.log`` calls this)."""
    import mlflow.spacy
    from mlflow import pyfunc
    from mlflow.models import Model

    from textmill.runtime.tracking import package_code_path

    entities, categories = outputs_of(spacy_model)
    if not entities and not categories:
        raise NotASpacyModelError(
            "the pipeline has none of the components "
            + ", ".join(ENTITY_FACTORIES + CATEGORY_FACTORIES)
            + f"; its components: {', '.join(spacy_model.component_names) or '(none)'}: nothing to serve"
        )
    mlflow_model = mlflow_model or Model()
    with _without_only_spacy_notice():
        mlflow.spacy.save_model(
            spacy_model,
            path,
            mlflow_model=mlflow_model,
            code_paths=[package_code_path()],
            signature=signature(entities, categories),
            input_example=input_example if input_example is not None else pd.DataFrame({"text": EXAMPLE_TEXTS}),
            pip_requirements=kwargs.pop("pip_requirements", None) or pip_requirements(),
            **kwargs,
        )
    # Replaces mlflow.spacy's own pyfunc (doc.cats only) where it made one.
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        data=DATA,
        code="code",
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(str(Path(path) / "MLmodel"))


def log_model(
    spacy_model: Any, name: str = "model", registered_model_name: str | None = None, input_example: Any = None
):
    """Log ``spacy_model`` to the active run (see ``save_model``); returns MLflow's ModelInfo."""
    from mlflow.models import Model

    return Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        flavor_name="spacy",
        registered_model_name=registered_model_name,
        spacy_model=spacy_model,
        input_example=input_example,
    )


class SpacyPipelineModel:
    """What ``mlflow.pyfunc.load_model`` returns for a textmill-logged spaCy pipeline."""

    def __init__(self, nlp: Any, batch_size: int = 256, max_length: int = 100_000) -> None:
        from textmill.text.spacy_annotator import Annotator, EntityOptions, needed_components

        self.entities, self.categories = outputs_of(nlp)
        keep, _, _ = needed_components(
            nlp, "the logged pipeline", None, EntityOptions() if self.entities else None, categories=self.categories
        )
        nlp.select_pipes(enable=[name for name in nlp.pipe_names if name in keep])
        self.nlp = nlp
        self.annotator = Annotator(
            nlp,
            None,
            EntityOptions() if self.entities else None,
            batch_size,
            max_length,
            "split",
            sort_by_length=True,
            categories=self.categories,
        )

    def get_raw_model(self) -> Any:
        return self.nlp

    # A DataFrame hint: MLflow then neither warns about a missing hint nor infers a signature from it.
    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from textmill.data.cleaning import is_blank
        from textmill.models.classifier_pyfunc import texts_from

        texts = texts_from(model_input)
        results = self.annotator.annotate([None if is_blank(t) else t for t in texts])
        errors = [r.error for r in results]
        for i, t in enumerate(texts):
            if t is not None and is_blank(t):
                errors[i] = "empty text"
        ok = [e is None for e in errors]
        out: dict[str, list] = {}
        if self.entities:
            out["entities"] = [
                r.entities if good else [] for r, good in zip(results, ok)
            ]  # []: spark_udf cannot carry a null array
        if self.categories:
            cats = [_mean_categories(r.cats) if good else None for r, good in zip(results, ok)]
            best = [max(c, key=c.get) if c else None for c in cats]
            out["label"] = best
            out["probability"] = [c[b] if c else np.nan for c, b in zip(cats, best)]
            out["probabilities"] = [c if c else {} for c in cats]  # {}: spark_udf cannot carry a null map
        out["error"] = errors
        return pd.DataFrame(out)


def _mean_categories(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float] | None:
    """Length-weighted mean of the categories of a text's pieces (one piece: its own)."""
    if not parts:
        return None
    total = sum(weight for weight, _ in parts) or 1
    labels = parts[0][1].keys()
    return {label: float(sum(weight * cats[label] for weight, cats in parts) / total) for label in labels}


def _load_pyfunc(data_path: str) -> SpacyPipelineModel:
    """Called by ``mlflow.pyfunc.load_model`` with the flavor's ``data`` directory."""
    import spacy

    return SpacyPipelineModel(spacy.load(data_path))
