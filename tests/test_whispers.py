"""Chinese Whispers in one task (``textmill.vectors.whispers``) against the distributed loop.

The one-task path must be the distributed loop run elsewhere, not another algorithm: the
same nodes updated each round (Spark's xxhash64, recomputed in numpy), the same tie rule, the
same stop rule, so one seed gives one clustering on either path. Graphs here are generated:
random sizes, isolated nodes, non-ASCII ids, and weights that are multiples of 1/4, so vote
sums are exact in any order and the two paths must agree label for label (ties included,
which such weights make common).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from textmill.jobs import run_job
from textmill.vectors import whispers


def test_active_nodes_are_sparks_xxhash_choice_for_every_kind_of_seed(spark):
    rng = np.random.default_rng(11)
    alphabet = list("abcxyz019_-") + ["é", "ß", "日", "本", "🙂", "\u0000", " "]
    ids = sorted({"".join(rng.choice(alphabet, rng.integers(0, 12))) for _ in range(300)})
    # int literals hash as 4 bytes, larger ones as 8: both sides of each boundary, and negatives
    seeds = [0, 7, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63), 123456789012]
    rounds = [1, 17, 2**31 - 1]
    frame = spark.createDataFrame([(i,) for i in ids], "id string")
    columns = [
        (F.abs(F.xxhash64("id", F.lit(r), F.lit(s))) % 1000).alias(f"h_{r}_{k}")
        for r in rounds
        for k, s in enumerate(seeds)
    ]
    rows = frame.select("id", F.xxhash64("id").alias("key"), *columns).orderBy("id").collect()
    keys = np.array([r["key"] for r in rows], dtype=np.int64)
    checked = 0
    for r in rounds:
        for k, s in enumerate(seeds):
            expected = np.array([row[f"h_{r}_{k}"] for row in rows])
            for fraction in (0.05, 0.5, 1.0):
                got = whispers.active(keys, r, s, fraction)
                assert (got == (expected < int(1000 * fraction))).all(), (r, s, fraction)
                checked += 1
    assert checked == len(rounds) * len(seeds) * 3


def _graph(spark, seed: int):
    """(nodes, edges): a random graph with planted groups, isolated nodes and dyadic weights."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 160))
    names = [f"{rng.choice(['n', 'é', '日', 'Z'])}{i:03d}" for i in range(n)]
    group = rng.integers(0, max(2, n // 15), n)
    pairs = set()
    for _ in range(int(n * rng.uniform(1.5, 5))):
        a, b = rng.integers(0, n, 2)
        if a != b and (group[a] == group[b] or rng.random() < 0.3):
            pairs.add((min(a, b), max(a, b)))
    weights = {p: float(rng.integers(1, 5)) / 4 for p in pairs}
    edges = [(names[a], names[b], w) for (a, b), w in weights.items()] + [
        (names[b], names[a], w) for (a, b), w in weights.items()
    ]
    return (
        spark.createDataFrame([(x,) for x in names], "id string"),
        spark.createDataFrame(edges, "src string, dst string, weight double"),
        n,
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_one_task_path_gives_the_distributed_clusters_for_the_same_seed(spark, seed):
    from textmill.pipelines.cluster import ClusterConf, chinese_whispers, chinese_whispers_in_one_task

    nodes, edges, n = _graph(spark, seed)
    conf = ClusterConf(
        seed=seed * 101, max_iterations=12, update_fraction=[0.5, 0.9][seed - 1], tolerance=0.0, patience=3
    )
    distributed, d_stats = chinese_whispers(nodes, edges, conf, n)
    in_one_task, o_stats = chinese_whispers_in_one_task(nodes, edges, conf)
    expected = {r.id: r.label for r in distributed.collect()}
    got = {r.id: r.label for r in in_one_task.collect()}
    assert len(got) == n and got == expected
    assert o_stats == d_stats
    assert len(set(got.values())) < n  # something was clustered: the comparison is not of two starting states


def test_cluster_job_publishes_the_same_clusters_on_either_path(spark, mlflow_uri, tmp_path):
    nodes, edges, n = _graph(spark, 4)
    # neighbors output whose "distance" is the weight itself (cluster.distance: similarity), so it stays exact
    lists = edges.groupBy(F.col("src").alias("id")).agg(
        F.collect_list(F.struct(F.col("dst").alias("id"), F.col("weight").cast("float").alias("distance"))).alias(
            "neighbors"
        )
    )
    knn = nodes.join(lists, "id", "left").select(
        "id", F.coalesce("neighbors", F.array().cast(lists.schema["neighbors"].dataType)).alias("neighbors")
    )
    knn.write.parquet(str(tmp_path / "knn"))
    base = {"spark": {"ui_enabled": False}, "mlflow": {"tracking_uri": mlflow_uri, "experiment": "whispers-tests"}}
    outputs = {}
    for name, limit in (("one_task", 10**9), ("distributed", 0)):
        metrics = run_job(
            "cluster",
            {
                **base,
                "io": {"input": str(tmp_path / "knn"), "output": str(tmp_path / name)},
                "cluster": {"local_max_edges": limit, "max_iterations": 15, "distance": "similarity"},
            },
            spark,
        )
        assert metrics["one_task"] == float(name == "one_task") and metrics["rows_out"] == n
        outputs[name] = (
            {r.id: r.cluster_id for r in spark.read.parquet(str(tmp_path / name)).collect()},
            sorted((r.cluster_id, r.size) for r in spark.read.parquet(str(tmp_path / f"{name}_sizes")).collect()),
            {k: metrics[k] for k in ("clusters", "iterations", "singleton_share", "largest_cluster", "edges")},
        )
    assert outputs["one_task"] == outputs["distributed"]
    assert len(outputs["one_task"][0]) == n


def test_best_label_takes_the_highest_vote_and_the_smallest_class_on_a_tie():
    # node 0: class 2 gets 0.5 + 0.25, class 1 gets 0.75 -> tie, class 1; node 1: class 3 wins; node 2: no edge
    src = np.array([0, 0, 0, 1, 1])
    dst_label = np.array([2, 2, 1, 3, 0])
    weight = np.array([0.5, 0.25, 0.75, 1.0, 0.5])
    assert whispers.best_labels(src, dst_label, weight, 4).tolist() == [1, 3, -1, -1]


def test_one_task_path_on_graphs_without_edges_or_nodes(spark):
    from textmill.pipelines.cluster import ClusterConf, chinese_whispers_in_one_task

    no_edges = spark.createDataFrame([], "src string, dst string, weight double")
    alone = spark.createDataFrame([("b",), ("a",), ("日",)], "id string")
    labels, stats = chinese_whispers_in_one_task(alone, no_edges, ClusterConf())
    assert {r.id: r.label for r in labels.collect()} == {"a": "a", "b": "b", "日": "日"}
    assert stats["stop_reason"] == "converged" and stats["iterations"] == 1
    labels, stats = chinese_whispers_in_one_task(spark.createDataFrame([], "id string"), no_edges, ClusterConf())
    assert labels.count() == 0 and stats["stop_reason"] == "converged"


# Damage a generated kNN graph the way concatenated or edited inputs are damaged (issue 39): a node in
# two rows, a row without an id, a distance that is NaN, infinite or missing.
DAMAGE = ["duplicate_row", "null_id", "nan", "inf", "-inf", "null_distance"]


@given(
    n=st.integers(3, 12),
    k=st.integers(1, 3),
    damage=st.sampled_from(DAMAGE),
    where=st.integers(0, 10**6),
    seed=st.integers(0, 10**6),
)
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_a_damaged_graph_is_refused_in_one_line_on_both_paths_and_nothing_is_published(
    spark, mlflow_uri, n, k, damage, where, seed
):
    import tempfile
    from pathlib import Path

    from textmill.pipelines.cluster import GraphError

    rng = np.random.default_rng(seed)
    k = min(k, n - 1)
    ids = [f"n{i}é" for i in range(n)]
    rows = [
        [ids[i], [(ids[j], float(rng.uniform(0, 1))) for j in rng.choice([j for j in range(n) if j != i], k, False)]]
        for i in range(n)
    ]
    row = rows[where % n]
    if damage == "duplicate_row":
        rows.append([row[0], row[1][:1]])
    elif damage == "null_id":
        rows.append([None, row[1]])
    else:
        value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "null_distance": None}[damage]
        row[1][where % k] = (row[1][where % k][0], value)
    expected = {
        "duplicate_row": rf"1 node id\(s\) stand in more than one row of the kNN graph, e.g. '{row[0]}' in 2 rows",
        "null_id": r"1 row\(s\) of the kNN graph have no id",
    }.get(damage, r"1 neighbour distance\(s\) of the kNN graph are NaN, infinite or missing, e.g. ")
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "knn"
        spark.createDataFrame(rows, "id string, neighbors array<struct<id:string,distance:float>>").write.parquet(
            str(graph)
        )
        for limit in (10**9, 0):  # the one-task path and the distributed loop
            conf = {
                "spark": {"ui_enabled": False},
                "mlflow": {"tracking_uri": mlflow_uri, "experiment": "whispers-damaged"},
                "io": {"input": str(graph), "output": str(Path(tmp) / f"out{limit}")},
                "cluster": {"local_max_edges": limit},
            }
            with pytest.raises(GraphError, match=expected) as caught:
                run_job("cluster", conf, spark)
            assert "\n" not in str(caught.value)
            assert not (Path(tmp) / f"out{limit}").exists()


def test_a_graph_whose_rows_were_concatenated_twice_is_refused_not_merged(spark, mlflow_uri, tmp_path):
    """The issue's example: 367 rows in, 366 out, with exit 0; one row per node is now required."""
    from textmill.pipelines.cluster import GraphError

    rows = [("a", [("b", 0.1)]), ("b", [("a", 0.1)]), ("a", [("b", 0.2)])]
    spark.createDataFrame(rows, "id string, neighbors array<struct<id:string,distance:float>>").write.parquet(
        str(tmp_path / "knn")
    )
    conf = {
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": mlflow_uri},
        "io": {"input": str(tmp_path / "knn"), "output": str(tmp_path / "out")},
    }
    with pytest.raises(GraphError, match=r"1 node id\(s\) stand in more than one row .* e.g. 'a' in 2 rows"):
        run_job("cluster", conf, spark)
