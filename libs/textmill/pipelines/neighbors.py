"""The ``neighbors`` job: batch k-nearest-neighbours over a sharded Annoy index (scatter-gather).

The index directory (``build_index`` output) is shipped with ``addFile`` (or read from
shared storage) and loaded once per Python worker: every shard memory-mapped, plus the
item -> id table. Each query searches every shard and the results are merged into the
global top k, without the query itself when ``exclude_self`` is on.

Modes: ``items`` (``io.input`` is the indexed vectors themselves: the all-items kNN graph,
each item without itself) or ``queries`` (``io.input`` holds new ``id, vector`` rows). Output: ``id, neighbors array<struct<id:string,
distance:float>>, error``; rows out == queries in.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Literal

import mlflow
import numpy as np
import pandas as pd
from pydantic import Field
from pyspark import SparkFiles
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from textmill import ann, io, models
from textmill.config import JobConf, StrictModel
from textmill.errors import ColumnNotFoundError, InputNotFoundError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "neighbors/v1"
OUTPUT = "neighbors array<struct<id:string,distance:float>>, error string"


class NeighborsConf(StrictModel):
    index: str | None = Field(None, description="build_index output directory (required)")
    mode: Literal["items", "queries"] = Field("items", description="items: kNN graph of the index; queries: io.input rows")
    k: int = Field(10, gt=0)
    search_k: int | None = Field(None, gt=0, description="default: the manifest's (tuned) search_k")
    exclude_self: bool = Field(True, description="drop the query's own item from its neighbours")
    id_column: str = "id"
    vector_column: str = "vector"
    partitions: int | None = Field(None, gt=0, description="default max(2 x default parallelism, rows / 20000)")


class NeighborsJobConf(JobConf):
    neighbors: NeighborsConf = Field(default_factory=NeighborsConf)

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        if not self.neighbors.index:
            problems.append("'neighbors.index' is required but was not set (null); point it at build_index's output")
        return problems


JOB_CONF = NeighborsJobConf


class _LoadedIndex:
    def __init__(self, path: str) -> None:
        self.index = ann.ShardedIndex(path)
        mapping = pd.read_parquet(Path(path) / "mapping", columns=["item", "id"]).sort_values("item")
        self.ids = mapping["id"].to_numpy()
        self.items = {key: item for item, key in zip(mapping["item"], mapping["id"])}


def make_neighbors_udf(file_name: str, k: int, search_k: int | None, exclude_self: bool, report=None):
    @F.pandas_udf(OUTPUT)
    def neighbors(ids: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        path = SparkFiles.get(file_name)
        key = ("annoy", path)
        loaded = models.get_or_load(key, lambda: _LoadedIndex(path))
        for query_ids, vectors in ids:
            out, errors = [], []
            for query_id, vector in zip(query_ids, vectors):
                if vector is None or len(vector) != loaded.index.manifest.dim:
                    out.append(None)
                    errors.append("null vector" if vector is None else f"vector of dimension {len(vector)}, index has {loaded.index.manifest.dim}")
                    continue
                self_item = loaded.items.get(query_id) if exclude_self else None
                items, distances = loaded.index.search(np.asarray(vector, dtype=np.float32), k, search_k, exclude=self_item)
                out.append([{"id": loaded.ids[i], "distance": float(d)} for i, d in zip(items, distances)])
                errors.append(None)
            yield pd.DataFrame({"neighbors": out, "error": errors})
        models.report_worker(report, key)

    return neighbors


def index_dir(path: str) -> Path:
    local = Path(path[len("file:"):] if path.startswith("file:") else path)
    if not (local / "manifest.json").is_file():
        raise InputNotFoundError(f"neighbors.index: no manifest.json in {local} (is it build_index output?)")
    return local.resolve()


def run(spark: SparkSession, conf: NeighborsJobConf) -> dict[str, float]:
    c = conf.neighbors
    directory = index_dir(c.index)
    io.require_input(spark, conf.io.input)
    queries = spark.read.parquet(conf.io.input)
    for name in (c.id_column, c.vector_column):
        if name not in queries.columns:
            raise ColumnNotFoundError(f"neighbors: column {name!r} not in {conf.io.input}; available: {', '.join(queries.columns)}")
    queries = queries.select(F.col(c.id_column).cast("string").alias("id"), F.col(c.vector_column).alias("vector"))
    shipped = io.ship_directory(spark, directory)
    rows_in = queries.count()
    partitions = c.partitions or max(2 * spark.sparkContext.defaultParallelism, -(-rows_in // 20_000))
    report = spark.sparkContext.accumulator({}, models.WorkerReport())
    udf = make_neighbors_udf(shipped, c.k, c.search_k, c.exclude_self and c.mode == "items", report)
    result = (queries.repartitionByRange(partitions, "id").sortWithinPartitions("id")
              .select("id", udf(F.col("id"), F.col("vector")).alias("_n")).select("id", "_n.*"))
    rows_out, rows_error, _ = io.publish_rows(spark, result, conf.io.output, rows_in,
                                              {"schema": SCHEMA_VERSION, "index": str(directory), "k": c.k})
    mlflow.log_dict({"workers": report.value}, "workers.json")
    return {"rows_in": rows_in, "rows_out": rows_out, "rows_error": rows_error, "partitions": partitions,
            **models.summarize_workers(report.value)}
