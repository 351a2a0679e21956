"""The ``tokenize`` job: ``doc_id, tokens, n_tokens`` (+ lemmas, pos, sentences), ``error``.

With ``nlp.model: blank:en`` it needs no model package. Shares its body with ``annotate``.
"""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import SparkSession

from textmill.pipelines.annotate import run_nlp_job
from textmill.runtime.config import JobConf
from textmill.text.spacy_annotator import NlpConf, TokenOptions


class TokenizeJobConf(JobConf):
    nlp: NlpConf = Field(default_factory=NlpConf)
    tokenize: TokenOptions = Field(default_factory=TokenOptions)


JOB_CONF = TokenizeJobConf


def run(spark: SparkSession, conf: TokenizeJobConf) -> dict[str, float]:
    return run_nlp_job(spark, conf, conf.tokenize, None)
