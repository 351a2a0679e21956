"""The ``ner`` job: ``doc_id, entities`` (+ ``entity_counts``), ``error``.

Runs only the ``ner`` component of the pipeline. Shares its body with ``annotate``.
"""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import SparkSession

from textmill.pipelines.annotate import run_nlp_job
from textmill.runtime.config import JobConf
from textmill.text.spacy_annotator import EntityOptions, NlpConf


class NerJobConf(JobConf):
    nlp: NlpConf = Field(default_factory=NlpConf)
    ner: EntityOptions = Field(default_factory=EntityOptions)


JOB_CONF = NerJobConf


def run(spark: SparkSession, conf: NerJobConf) -> dict[str, float]:
    return run_nlp_job(spark, conf, None, conf.ner)
