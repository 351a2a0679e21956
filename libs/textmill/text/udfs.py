"""pandas UDF factories used by the jobs.

Each factory takes plain values (str, int, dict), never a SparkSession, a DataFrame or a
loaded model, so Spark pickles only small closures; anything heavy is loaded on the
executor. Every UDF returns exactly one output row per input row and passes nulls through.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from pyspark.sql import functions as F

from textmill.data.cleaning import CleaningConf, clean_text
from textmill.runtime.worker_cache import REPORT_COLUMN
from textmill.text.spacy_annotator import EntityOptions, TokenOptions, output_schema


def make_clean_udf(options: Mapping[str, Any]):
    """A string -> string pandas UDF applying ``clean_text`` with the given CleaningConf fields."""
    options = dict(options)

    @F.pandas_udf("string")
    def clean(texts: pd.Series) -> pd.Series:
        conf = CleaningConf(**options)
        return pd.Series([clean_text(t, conf) if isinstance(t, str) else None for t in texts], dtype=object)

    return clean


def make_annotate_udf(
    plan: Mapping[str, Any],
    tokens: Mapping[str, Any] | None,
    entities: Mapping[str, Any] | None,
    batch_size: int = 256,
    max_length: int | None = None,
    long_text: str = "split",
    sort_by_length: bool = True,
    report: bool = False,
    batch_chars: int | None = None,
):
    """An iterator pandas UDF: text -> struct of tokens/entities/... and ``error``.

    ``plan`` is a ``PipelinePlan`` as a dict; ``tokens``/``entities`` are ``TokenOptions``/
    ``EntityOptions`` as dicts (None = that output is off). The spaCy pipeline is loaded once
    per Python worker through ``textmill.runtime.worker_cache``; with ``report``, the struct gets a last
    field ``worker_cache.REPORT_COLUMN`` holding each worker's load count, peak RSS and device in the
    task's last row (``worker_cache.with_report``).
    """
    plan, tokens, entities = (
        dict(plan),
        (dict(tokens) if tokens is not None else None),
        (dict(entities) if entities is not None else None),
    )
    schema = output_schema(_options(TokenOptions, tokens), _options(EntityOptions, entities))
    if report:
        schema = f"{schema}, {REPORT_COLUMN} string"

    @F.pandas_udf(schema)
    def annotate(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from textmill.runtime import worker_cache
        from textmill.text.spacy_annotator import Annotator, PipelinePlan, load_pipeline, result_columns

        pipeline_plan = PipelinePlan(**plan)
        nlp, device = worker_cache.get_or_load(pipeline_plan.cache_key, lambda: load_pipeline(pipeline_plan))
        token_opts, entity_opts = _options(TokenOptions, tokens), _options(EntityOptions, entities)
        annotator = Annotator(
            nlp, token_opts, entity_opts, batch_size, max_length, long_text, sort_by_length, batch_chars
        )

        def frames() -> Iterator[pd.DataFrame]:
            for batch in batches:
                frame = pd.DataFrame(
                    result_columns(
                        annotator.annotate([t if isinstance(t, str) else None for t in batch]), token_opts, entity_opts
                    )
                )
                if report:
                    frame[worker_cache.REPORT_COLUMN] = None
                yield frame

        if not report:
            yield from frames()
            return
        yield from worker_cache.with_report(
            frames(),
            worker_cache.attach_to_frame,
            pipeline_plan.cache_key,
            device=device,
            textmill_from=worker_cache.__file__,
        )

    return annotate


def _options(model: type, values: Mapping[str, Any] | None):
    return model(**values) if values is not None else None
