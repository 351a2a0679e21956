"""Connected components of an undirected graph on Spark DataFrames: Large-Star / Small-Star.

Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). Every node ends
labelled with the smallest node of its component, in O(log^2 n) rounds (in practice a handful),
where min-label propagation needs as many rounds as the longest shortest path (a chain of
edited copies of one story is such a path). Only DataFrame operations (no GraphFrames, no RDDs),
so it runs on Spark Connect; each round's edges are checkpointed (``localCheckpoint``) so that
the plan does not grow with the rounds. Node ids are any orderable type (here ``doc_id``
strings); only counts reach the driver.

- large-star: each node ``u`` links every larger neighbour ``v`` to ``m(u)``, the smallest of
  ``u`` and its neighbours;
- small-star: each node ``u`` links itself and every smaller neighbour to ``m(u)``, the
  smallest of ``u`` and its smaller neighbours.

They alternate until a small-star leaves the edge set unchanged: then every component is a
star around its smallest node.

A graph of at most ``LOCAL_MAX_EDGES`` edges is labelled in one Spark task instead, by
union-find in memory (``in_one_task``): each distributed round costs several Spark jobs (seconds
of fixed cost), which on such a graph is all of the work. Both give the same labels.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from textmill.runtime import console

logger = logging.getLogger(__name__)

# Union-find in one Python worker holds about 200 bytes per edge: 2M edges, ~400 MB.
LOCAL_MAX_EDGES = 2_000_000
LABELS_DDL = "node string, label string"


def _large_star(edges: DataFrame) -> DataFrame:
    both = edges.unionByName(edges.select(F.col("v").alias("u"), F.col("u").alias("v")))
    smallest = both.groupBy("u").agg(F.min("v").alias("m")).select("u", F.least("m", "u").alias("m"))
    return (
        both.where(F.col("v") > F.col("u"))
        .join(smallest, "u")
        .select(F.col("v").alias("u"), F.col("m").alias("v"))
        .distinct()
    )


def _small_star(edges: DataFrame) -> DataFrame:
    oriented = edges.select(F.greatest("u", "v").alias("u"), F.least("u", "v").alias("v")).distinct()
    smallest = oriented.groupBy("u").agg(F.min("v").alias("m"))  # every v here is below u
    linked = oriented.join(smallest, "u").select(F.col("v").alias("u"), F.col("m").alias("v"))
    return linked.unionByName(smallest.select("u", F.col("m").alias("v"))).where(F.col("u") != F.col("v")).distinct()


def component_labels(edges: DataFrame, max_rounds: int = 100) -> tuple[DataFrame, int]:
    """``node, label`` for every node of ``edges`` (columns ``u``, ``v``; any orientation, repeats
    and self-loops allowed): ``label`` is the smallest node of its component. Also the rounds run.
    Fails (RuntimeError) past ``max_rounds``, which a correct run never reaches on real graphs."""
    current = edges.where(F.col("u") != F.col("v")).select("u", "v").distinct().localCheckpoint()
    rounds = 0
    with console.Progress("connected components", max_rounds, unit="rounds") as progress:
        while True:
            rounds += 1
            if rounds > max_rounds:
                raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
            after = _small_star(_large_star(current)).localCheckpoint()
            gained = after.join(current, ["u", "v"], "left_anti").count()
            changed = gained + current.join(after, ["u", "v"], "left_anti").count()
            current = after
            progress.advance(1, edges_changed=changed)
            if changed == 0:
                break
    # A star around its smallest node m: every edge is (x, m) with m < x.
    labels = current.select(F.col("u").alias("node"), F.col("v").alias("label"))
    centers = current.select(F.col("v").alias("node"), F.col("v").alias("label"))
    isolated_in_edges = edges.select(F.col("u").alias("node")).unionByName(edges.select(F.col("v").alias("node")))
    found = labels.unionByName(centers).groupBy("node").agg(F.min("label").alias("label"))
    # Nodes whose only edges were self-loops are components of their own.
    return (
        isolated_in_edges.distinct()
        .join(found, "node", "left")
        .select("node", F.coalesce("label", "node").alias("label")),
        rounds,
    )


def union_find(pairs) -> dict:
    """{node: the smallest node of its component} of an iterable of (u, v) pairs."""
    parent: dict = {}

    def find(x):
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for u, v in pairs:
        ru, rv = find(u), find(v)
        if ru != rv:  # the smaller root wins, so a root is its component's smallest node
            if ru < rv:
                parent[rv] = ru
            else:
                parent[ru] = rv
    return {node: find(node) for node in list(parent)}


def _labels_of_edges(batches):
    import pyarrow as pa

    pairs = []
    for batch in batches:
        pairs.extend(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
    labels = union_find(pairs)
    nodes = sorted(labels)
    yield pa.RecordBatch.from_arrays(
        [pa.array(nodes, type=pa.string()), pa.array([labels[n] for n in nodes], type=pa.string())],
        names=["node", "label"],
    )


def in_one_task(edges: DataFrame) -> DataFrame:
    """``component_labels``' labels, by union-find in one Spark task (string node ids; Python
    orders strings by code point, as Spark orders UTF-8 bytes)."""
    pairs = edges.select(F.col("u").cast("string"), F.col("v").cast("string"))
    return pairs.repartition(1).mapInArrow(_labels_of_edges, LABELS_DDL)
