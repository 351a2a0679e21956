"""pandas UDF factories used by the jobs.

Each factory takes plain values (str, int, dict), never a SparkSession, a DataFrame or a
loaded model, so Spark pickles only small closures; anything heavy is loaded on the
executor. Every UDF returns exactly one output row per input row and passes nulls through.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
from pyspark.sql import functions as F

from textmill.cleaning import CleaningConf, clean_text


def make_clean_udf(options: Mapping[str, Any]):
    """A string -> string pandas UDF applying ``clean_text`` with the given CleaningConf fields."""
    options = dict(options)

    @F.pandas_udf("string")
    def clean(texts: pd.Series) -> pd.Series:
        conf = CleaningConf(**options)
        return pd.Series([clean_text(t, conf) if isinstance(t, str) else None for t in texts], dtype=object)

    return clean
