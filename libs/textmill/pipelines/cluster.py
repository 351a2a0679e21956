"""The ``cluster`` job: Chinese Whispers over the kNN graph, on Spark DataFrames, no k to choose.

Edges come from ``neighbors`` output (``items`` mode), made symmetric (or, with ``mutual``,
only pairs that list each other); an edge's weight is the cosine similarity (``1 - d^2 / 2``
for Annoy's angular distance ``d``), and edges under ``min_weight`` (or the
``min_weight_quantile`` of the graph's weights) are dropped. Every node starts in its own
class. Each iteration a seeded random half of the nodes (hash of node, iteration and seed)
is updated: each takes the class with the highest summed vote among its neighbours (ties:
the smallest class id), a vote being the edge weight (``vote: top``, the default), or that
divided by the voter's degree (``lin``) or by ln(1 + degree) (``log``). Updating a random
subset per round, instead of all nodes at once, is the distributed stand-in for the
sequential random visiting order; it avoids the oscillations of fully synchronous updates.
It stops when a full sweep changes nothing, or when at most ``tolerance`` of the nodes
changed class (converged); or when ``patience`` iterations in a row changed no fewer nodes
than the fewest so far (stalled: what still changes are nodes between near-equal classes,
which more rounds move back and forth without merging anything); or at
``max_iterations``. The reason, the iterations and the share of nodes that changed in the
last one are reported. Nothing is collected to the driver but counts.

A graph with at most ``local_max_edges`` directed edges (default 4M, ~240k documents at k=10)
runs the same rounds in one Spark task, in memory (``textmill.vectors.whispers``): per-round
Spark jobs cost seconds each, which on such a graph is nearly all of the work. Same seed, same
clusters on either path (exactly, when the vote sums are exact; otherwise floating-point summation
order can break a near-tie differently).

Output: ``id, cluster_id`` (``cluster_id`` 0 is the largest cluster), plus
``<output>_sizes`` (``cluster_id, size``). MLflow: the size metrics of ``size_metrics``, iterations,
converged, and a size histogram plot.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from pydantic import Field
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import textmill
from textmill.data import io, storage
from textmill.runtime import console, session_kinds
from textmill.runtime.config import JobConf, StrictModel
from textmill.runtime.errors import AccountingError, ColumnNotFoundError, TextmillError
from textmill.vectors import whispers

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "cluster/v1"


class GraphError(TextmillError):
    """The kNN graph cannot be clustered as given: neighbours that are not nodes, a node in more than
    one row (or with no id), or a distance that is not a finite number."""


# 4M directed edges: ~240k documents at k=10, ~500 MB in the one task's worker; a Spark job per
# round costs seconds, which on graphs this small is most of the work (issue 29's benchmark).
LOCAL_MAX_EDGES = 4_000_000


class ClusterConf(StrictModel):
    min_weight: float = Field(0.0, ge=-1, le=1, description="drop edges whose cosine similarity is below this")
    min_weight_quantile: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="drop edges below this quantile of the graph's edge weights (raises min_weight, never lowers it)",
    )
    mutual: bool = Field(False, description="keep an edge only when each node is among the other's k neighbours")
    vote: Literal["top", "lin", "log"] = Field(
        "top",
        description="a neighbour's vote: its edge weight (top), divided by its degree (lin) or by ln(1 + degree) (log)",
    )
    tolerance: float = Field(
        0.001, ge=0, lt=1, description="converged when at most this share of nodes changed class in an iteration"
    )
    max_iterations: int = Field(
        60, gt=0, description="rounds at most (7,600 AG News items needed more than 30 at tolerance 0.001)"
    )
    patience: int | None = Field(
        5,
        gt=0,
        description=(
            "stop (stalled) after this many iterations in a row changed no fewer nodes than the fewest so "
            "far; null = never"
        ),
    )
    update_fraction: float = Field(0.5, gt=0, le=1, description="share of nodes updated per iteration")
    seed: int = 7
    distance: str = Field(
        "angular", description="angular: weight = 1 - d^2/2; similarity: the value is already a weight"
    )
    local_max_edges: int = Field(
        LOCAL_MAX_EDGES,
        ge=0,
        description="graphs with at most this many directed edges are clustered in one Spark task, in memory "
        "(about 120 bytes per edge at its peak), the same rounds without a Spark job per round; 0 = always distributed",
    )


class ClusterJobConf(JobConf):
    cluster: ClusterConf = Field(default_factory=ClusterConf)

    def output_paths(self) -> dict[str, str]:
        return {**super().output_paths(), "io.output (sizes)": sizes_path(self)} if self.io.output else {}


def sizes_path(conf: JobConf) -> str:
    return f"{conf.io.output.rstrip('/')}_sizes"


JOB_CONF = ClusterJobConf


def edges_from_neighbors(neighbors: DataFrame, c: ClusterConf) -> tuple[DataFrame, float]:
    """Symmetric weighted edges ``src, dst, weight`` (max weight when both directions exist) and
    the weight threshold applied: ``min_weight``, raised to the ``min_weight_quantile`` of the
    graph's own edge weights when that is set (a cosine threshold that fits one embedding
    space is wrong for another). With ``mutual``, only pairs that list each other remain."""
    exploded = neighbors.select(F.col("id").alias("src"), F.explode_outer("neighbors").alias("n")).where(
        F.col("n").isNotNull()
    )
    distance = F.col("n.distance")
    weight = (1 - distance * distance / 2) if c.distance == "angular" else distance
    directed = exploded.select("src", F.col("n.id").alias("dst"), weight.alias("weight")).where(
        F.col("src") != F.col("dst")
    )
    both = directed.withColumn("forward", F.lit(1)).unionByName(
        directed.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "weight", F.lit(0).alias("forward"))
    )
    if c.mutual:  # both directions listed: the pair has a forward (1) and a reversed (0) row
        edges = (
            both.groupBy("src", "dst")
            .agg(F.max("weight").alias("weight"), F.min("forward").alias("_lo"), F.max("forward").alias("_hi"))
            .where(F.col("_lo") < F.col("_hi"))
            .drop("_lo", "_hi")
        )
    else:
        edges = both.groupBy("src", "dst").agg(F.max("weight").alias("weight"))
    threshold = c.min_weight
    if c.min_weight_quantile is not None:
        edges = edges.localCheckpoint()
        quantile = edges.approxQuantile("weight", [c.min_weight_quantile], 0.001)
        threshold = max(threshold, quantile[0]) if quantile else threshold
    return edges.where(F.col("weight") >= threshold), float(threshold)


def vote_weights(edges: DataFrame, vote: str) -> DataFrame:
    """Edge weights as votes: Biemann's (2006) class-score variants against hubs. ``top`` is the
    plain weight; ``lin`` and ``log`` divide it by the voting neighbour's degree, or by
    ln(1 + degree), so a node with many strong edges (a frequent word, a boilerplate document)
    no longer pulls its whole neighbourhood into its class."""
    if vote == "top":
        return edges
    degree = edges.groupBy(F.col("dst").alias("_voter")).agg(F.count(F.lit(1)).alias("_degree"))
    scale = F.col("_degree") if vote == "lin" else F.log1p(F.col("_degree"))
    return edges.join(degree, edges["dst"] == degree["_voter"]).select(
        "src", "dst", (F.col("weight") / scale).alias("weight")
    )


def chinese_whispers(
    nodes: DataFrame, edges: DataFrame, c: ClusterConf, n_nodes: int | None = None
) -> tuple[DataFrame, dict]:
    """The distributed loop: (``id, label``, how it stopped: ``iterations``, ``stop_reason``
    (converged | stalled | max_iterations), ``changed_share`` of the last iteration, ``changes``
    per iteration). One Spark job per round, the labels checkpointed so no round replans the last.
    Every round reads ``edges``: pass them checkpointed (``run`` does) unless they are cheap to compute."""
    labels = nodes.select("id", F.col("id").alias("label")).localCheckpoint()
    # `top` votes are the edges themselves, already checkpointed by run; the others are a join to checkpoint once.
    edges = edges if c.vote == "top" else vote_weights(edges, c.vote).localCheckpoint()
    # With a tolerance, a few nodes flipping between two equally strong classes (they do, on
    # hub-rich graphs) no longer keep the loop going until max_iterations.
    n_nodes = n_nodes if n_nodes is not None else nodes.count()
    stopping = whispers.Stopping(n_nodes, c.tolerance, c.patience)
    no_label = F.lit(None).cast(labels.schema["label"].dataType)
    with console.Progress("chinese whispers", c.max_iterations, unit="rounds") as progress:
        for iteration in range(1, c.max_iterations + 1):
            # The best class: the highest score, then the smallest class (min of (-score, class)).
            # Votes move to their src once: that exchange serves both aggregations (a window
            # over src after a groupBy on (src, class) needed a second one). The join still
            # exchanges edges every round: a localCheckpoint does not keep its partitioning here.
            best = (
                edges.join(labels.withColumnRenamed("id", "dst").withColumnRenamed("label", "dst_label"), "dst")
                .repartition("src")
                .groupBy("src", "dst_label")
                .agg(F.sum("weight").alias("score"))
                .groupBy("src")
                .agg(
                    F.min(F.struct((-F.col("score")).alias("neg_score"), F.col("dst_label").alias("label"))).alias(
                        "top"
                    )
                )
                .select(F.col("src").alias("id"), F.col("top.label").alias("best"))
            )
            # whispers.active computes the same set from xxhash64(id): keep the two in step.
            active = (F.abs(F.xxhash64(F.col("id"), F.lit(iteration), F.lit(c.seed))) % 1000) < int(
                1000 * c.update_fraction
            )
            # A union + groupBy, not labels.join(best): the checkpoint below keeps its plan's size
            # estimate, and Spark estimates a join as the product of its inputs, so with a join the
            # estimate squared every round (a BigInt of 2^n digits; rounds went from 1 s to minutes
            # after ~20 iterations). A union adds estimates instead, which stays small.
            proposals = (
                labels.select("id", "label", no_label.alias("best"))
                .unionByName(best.select("id", no_label.alias("label"), "best"))
                .groupBy("id")
                .agg(F.max("label").alias("label"), F.max("best").alias("best"))
            )
            updated = proposals.select(
                "id",
                "label",
                F.when(active & F.col("best").isNotNull(), F.col("best")).otherwise(F.col("label")).alias("new"),
                F.when(F.col("best").isNotNull(), F.col("best") != F.col("label"))
                .otherwise(F.lit(False))
                .alias("wants"),
            )
            updated = updated.localCheckpoint()
            counts = updated.agg(
                F.sum((F.col("new") != F.col("label")).cast("int")).alias("changed"),
                F.sum(F.col("wants").cast("int")).alias("unsettled"),
            ).first()
            labels = updated.select("id", F.col("new").alias("label"))
            changed, unsettled = counts["changed"] or 0, counts["unsettled"] or 0
            logger.info(
                "chinese whispers iteration %d: %d changed, %d not at their best class", iteration, changed, unsettled
            )
            progress.advance(changed=changed)
            if stopping.stop_after(iteration, changed, unsettled):
                break
        progress.close(stopping.reason.replace("_", " ") + ("" if stopping.reason != "max_iterations" else " reached"))
    if stopping.reason == "stalled":
        logger.info(
            "chinese whispers stalled: %d iterations without fewer than %d changes",
            stopping.since_fewest,
            stopping.fewest,
        )
    return labels, stopping.summary()


def chinese_whispers_in_one_task(nodes: DataFrame, edges: DataFrame, c: ClusterConf) -> tuple[DataFrame, dict]:
    """The same rounds as ``chinese_whispers``, in one Spark task holding the graph in memory
    (``textmill.vectors.whispers``): one Spark job instead of one per round. Same result shape."""
    edges = vote_weights(edges, c.vote)
    rows = nodes.select(
        "id",
        F.xxhash64("id").alias("key"),
        F.lit(None).cast("string").alias("dst"),
        F.lit(None).cast("double").alias("weight"),
    ).unionByName(
        edges.select(
            F.col("src").alias("id"), F.lit(None).cast("long").alias("key"), "dst", F.col("weight").cast("double")
        )
    )
    conf = c.model_dump(include={"tolerance", "patience", "max_iterations", "seed", "update_fraction"})
    result = rows.repartition(1).mapInArrow(whispers.in_memory(conf), whispers.OUTPUT).localCheckpoint()
    row = result.where(F.col("stats").isNotNull()).first()
    if row is None:  # an empty graph can leave the one partition without a task: the rounds of no nodes, here
        empty = np.zeros(0, dtype=np.int64)
        stats = whispers.chinese_whispers(empty, empty, np.zeros(0), empty, conf)[1]
    else:
        stats = json.loads(row["stats"])
    logger.info(
        "chinese whispers in one task: %d rounds, %s; changes per round %s",
        stats["iterations"],
        stats["stop_reason"],
        stats["changes"],
    )
    return result.where(F.col("stats").isNull()).select("id", "label"), stats


def size_histogram(sizes: DataFrame) -> list[tuple[int, int]]:
    """(lower bound, clusters) per power-of-two bucket of cluster size: 1, 2-3, 4-7, ... At most
    64 rows reach the driver, however many clusters there are."""
    bucket = F.length(F.bin(F.col("size"))) - 1  # floor(log2), exact: a float log2 puts 8 in the 4-7 bucket
    return [
        (1 << r["bucket"], r["clusters"])
        for r in sizes.groupBy(bucket.alias("bucket"))
        .agg(F.count(F.lit(1)).alias("clusters"))
        .orderBy("bucket")
        .collect()
    ]


def _histogram(buckets: list[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(low) if low == 1 else f"{low}-{2 * low - 1}" for low, _ in buckets], [n for _, n in buckets], log=True)
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("cluster size")
    ax.set_ylabel("clusters")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_graph(neighbors: DataFrame) -> None:
    """Refuse, in one line, a graph that would cluster wrong without a sign: a node in two rows (its rows
    were merged into one node), a row without an id, or a neighbour whose distance is NaN, infinite or
    missing (the two clustering paths order NaN weights differently, so they gave other clusters).
    The neighbors job never writes any of them; each is a damaged or concatenated input."""
    counts = neighbors.agg(
        F.count(F.lit(1)).alias("rows"), F.count("id").alias("ids"), F.count_distinct("id").alias("distinct")
    ).first()
    if counts["ids"] < counts["rows"]:
        raise GraphError(f"{counts['rows'] - counts['ids']} row(s) of the kNN graph have no id; every node needs one")
    if counts["distinct"] < counts["ids"]:
        repeated = neighbors.groupBy("id").count().where("count > 1")
        example = repeated.orderBy("id").first()
        raise GraphError(
            f"{repeated.count()} node id(s) stand in more than one row of the kNN graph, e.g. {example['id']!r} in "
            f"{example['count']} rows: cluster needs one row per node (the output of one neighbors run)"
        )
    distance = F.col("n.distance")
    bad = (
        neighbors.select("id", F.explode("neighbors").alias("n"))
        .where(F.col("n").isNotNull() & (distance.isNull() | F.isnan(distance) | (F.abs(distance) == float("inf"))))
        .select("id", F.col("n.id").alias("neighbour"), distance.alias("distance"))
    )
    n_bad = bad.count()
    if n_bad:
        first = bad.orderBy("id", "neighbour").first()
        raise GraphError(
            f"{n_bad} neighbour distance(s) of the kNN graph are NaN, infinite or missing, e.g. "
            f"{first['id']!r} -> {first['neighbour']!r}: {first['distance']}; rebuild the index and neighbours "
            "from finite vectors"
        )


def run(spark: SparkSession, conf: ClusterJobConf) -> dict[str, float]:
    c = conf.cluster
    io.require_input(spark, conf.io.input)
    neighbors = spark.read.parquet(conf.io.input)
    if "id" not in neighbors.columns or "neighbors" not in neighbors.columns:
        raise ColumnNotFoundError(
            f"cluster needs neighbors output (id, neighbors); available: {', '.join(neighbors.columns)}"
        )
    check_graph(neighbors)
    nodes = neighbors.select("id")
    rows_in = nodes.count()
    strangers = neighbors.select(F.explode("neighbors.id").alias("id")).distinct().join(nodes, "id", "left_anti")
    n_strangers = strangers.count()
    if n_strangers:
        raise GraphError(
            f"{n_strangers} neighbour id(s) are not nodes of the graph (no row with that id), e.g. "
            f"{strangers.orderBy('id').first()['id']!r}: cluster needs the all-items kNN graph, i.e. neighbors "
            "in items mode over the same ids it indexed"
        )
    edges, threshold = edges_from_neighbors(neighbors, c)
    edges = edges.localCheckpoint()
    n_edges = edges.count()
    one_task = n_edges <= c.local_max_edges
    console.status(
        logger,
        "clustering %d nodes, %d edges %s",
        rows_in,
        n_edges,
        "in one task (cluster.local_max_edges)" if one_task else "with a Spark job per round",
    )
    labels, stop = (
        chinese_whispers_in_one_task(nodes, edges, c) if one_task else chinese_whispers(nodes, edges, c, rows_in)
    )
    mlflow.set_tag("textmill.cluster.stop_reason", stop["stop_reason"])
    sizes = labels.groupBy("label").agg(F.count(F.lit(1)).alias("size"))
    numbered = io.number_rows(sizes, [F.desc("size"), F.col("label")], "cluster_id")
    result = labels.join(numbered.select("label", "cluster_id"), "label").select("id", F.col("cluster_id").cast("int"))
    with storage.staged_outputs(spark, conf.io.output, sizes_path(conf), replace_unmarked=conf.io.replace_unmarked) as (
        staged,
        staged_sizes,
    ):
        result.repartitionByRange(max(1, session_kinds.default_parallelism(spark)), "id").sortWithinPartitions(
            "id"
        ).write.parquet(staged)
        numbered.select(F.col("cluster_id").cast("int"), "size").orderBy("cluster_id").write.parquet(staged_sizes)
        rows_out = io.count_parquet(spark, staged)
        if rows_out != rows_in:
            raise AccountingError(f"nodes in={rows_in} but rows out={rows_out}; nothing was published")
        storage.write_marker(
            spark, staged, {"schema": SCHEMA_VERSION, "textmill_version": textmill.__version__, "rows": rows_out}
        )
    published_sizes = spark.read.parquet(sizes_path(conf))
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "cluster_sizes.png"
        _histogram(size_histogram(published_sizes), plot)
        mlflow.log_artifact(str(plot), "cluster")
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        **size_metrics(published_sizes),
        "iterations": stop["iterations"],
        "converged": float(stop["stop_reason"] == "converged"),
        "stalled": float(stop["stop_reason"] == "stalled"),
        "changed_share": stop["changed_share"],
        "min_weight_used": threshold,
        "edges": n_edges,
        "one_task": float(one_task),
    }


def size_metrics(sizes: DataFrame) -> dict[str, float]:
    """From the ``size`` column, by Spark (one row to the driver): ``clusters``; ``singleton_share``: the
    share of NODES alone in their cluster (not of clusters); ``largest_cluster`` (nodes) and
    ``largest_cluster_share`` (its share of nodes)."""
    r = sizes.agg(
        F.count(F.lit(1)).alias("clusters"),
        F.sum((F.col("size") == 1).cast("long")).alias("singletons"),
        F.max("size").alias("largest"),
        F.sum("size").alias("nodes"),
    ).first()
    nodes, largest = r["nodes"] or 0, r["largest"] or 0
    return {
        "clusters": r["clusters"],
        "singleton_share": (r["singletons"] or 0) / max(nodes, 1),
        "largest_cluster": largest,
        "largest_cluster_share": largest / max(nodes, 1),
    }
