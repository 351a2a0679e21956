"""The ``neighbors`` job: batch k-nearest-neighbours over a sharded Annoy index (scatter-gather).

The index directory (``build_index`` output) is shipped with ``addFile`` (or read from
shared storage) and loaded once per Python worker: every shard memory-mapped, plus the
item -> id table. Each query searches every shard and the results are merged into the
global top k, without the query itself when ``exclude_self`` is on.

Modes: ``items`` (``io.input`` holds ids of indexed items, typically the indexed vectors
themselves: the all-items kNN graph, each item without itself; only the id column is read,
each item's vector comes from the memory-mapped index, so no vectors are shuffled) or
``queries`` (``io.input`` holds new ``id, vector`` rows). Work is Arrow batch by Arrow batch
(``mapInArrow``): the search loop is the only per-row Python. Output: ``id, neighbors
array<struct<id:string, distance:float>>, error``; rows out == queries in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from textmill.data import io
from textmill.runtime import tracking, worker_cache
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.errors import InputNotFoundError
from textmill.vectors import ann

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "neighbors/v1"
OUTPUT = "id string, neighbors array<struct<id:string,distance:float>>, error string"


class NeighborsConf(StrictModel):
    index: str | None = Field(None, description="build_index output directory (required)")
    mode: Literal["items", "queries"] = Field(
        "items", description="items: io.input ids are indexed items (the kNN graph); queries: new io.input vectors"
    )
    k: int = Field(10, gt=0)
    search_k: int | None = Field(None, gt=0, description="default: the manifest's (tuned) search_k")
    exclude_self: bool = Field(True, description="drop the query's own item from its neighbours")
    id_column: str = "id"
    vector_column: str = "vector"
    partitions: int | None = Field(
        None,
        gt=0,
        description="default max(2 x default parallelism, rows / 20000), rounded up to a multiple of the parallelism",
    )


class NeighborsJobConf(JobConf):
    neighbors: NeighborsConf = Field(default_factory=NeighborsConf)

    def input_paths(self) -> list[str]:
        return super().input_paths() + ([self.neighbors.index] if self.neighbors.index else [])

    def cross_field_problems(self) -> list[str]:
        problems = super().cross_field_problems()
        if not self.neighbors.index:
            problems.append("'neighbors.index' is required but was not set (null); point it at build_index's output")
        return problems


JOB_CONF = NeighborsJobConf


def make_neighbors_fn(
    file_name: str, k: int, search_k: int | None, mode: str, exclude_self: bool, report: bool = False
):
    """The ``mapInArrow`` function: loads the shipped index once per Python worker, then searches batch by batch.

    Everything it calls lives in light modules (``textmill.vectors.ann``, ``textmill.runtime.worker_cache``): a
    class from this module would make each worker import it, and with it MLflow (~2 s).
    """

    def neighbors(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        path = io.shipped_path(file_name)
        key = ("annoy", file_name)
        loaded = worker_cache.get_or_load(key, lambda: ann.IndexSearcher(path))
        found = (loaded.neighbors(batch, k, search_k, mode, exclude_self) for batch in batches)
        if not report:
            yield from found
            return
        yield from worker_cache.with_report(
            (worker_cache.with_report_column(b) for b in found), worker_cache.attach_to_batch, key
        )

    return neighbors


def index_dir(path: str) -> Path:
    local = Path(path[len("file:") :] if path.startswith("file:") else path)
    if not (local / "manifest.json").is_file():
        raise InputNotFoundError(f"neighbors.index: no manifest.json in {local} (is it build_index output?)")
    ann.check_index(local)
    return local.resolve()


def run(spark: SparkSession, conf: NeighborsJobConf) -> dict[str, float]:
    c = conf.neighbors
    directory = index_dir(c.index)
    queries = io.read_input(
        spark,
        conf.io.input,
        [c.id_column] + ([c.vector_column] if c.mode == "queries" else []),
        f"{c.mode} mode; see neighbors.id_column and neighbors.vector_column",
    )
    if c.mode == "items":
        # Spark looks the items up (a broadcast join, usually), not each worker per batch.
        mapping = spark.read.parquet(str(directory / "mapping")).select("id", "item")
        queries = queries.select(F.col(c.id_column).cast("string").alias("id")).join(mapping, "id", "left")
    else:
        queries = queries.select(F.col(c.id_column).cast("string").alias("id"), F.col(c.vector_column).alias("vector"))
    shipped = io.ship_directory(spark, directory)
    rows_in = queries.count()
    partitions = io.task_partitions(spark, rows_in, 20_000, c.partitions)
    report = worker_cache.new_worker_report(spark)
    search = make_neighbors_fn(shipped, c.k, c.search_k, c.mode, c.exclude_self, report=True)
    result = report.observe(
        queries.repartitionByRange(partitions, "id")
        .sortWithinPartitions("id")
        .mapInArrow(search, f"{OUTPUT}, {worker_cache.REPORT_COLUMN} string")
    )
    rows_out, rows_error, _ = io.publish_rows(
        spark,
        result,
        conf.io.output,
        rows_in,
        {"schema": SCHEMA_VERSION, "index": str(directory), "k": c.k},
        replace_unmarked=conf.io.replace_unmarked,
    )
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_error": rows_error,
        "partitions": partitions,
        **tracking.log_workers(report.value),
    }
