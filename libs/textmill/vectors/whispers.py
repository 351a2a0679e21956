"""Chinese Whispers on one graph held in memory: the same rounds as ``cluster``'s Spark loop, in numpy.

``cluster`` runs graphs up to ``cluster.local_max_edges`` edges in one Spark task through
``in_memory``: a Spark job per round costs seconds of fixed overhead, which on a small graph is
all of the work. The rounds are the distributed loop's, step for step, so that one seed gives
one clustering whichever path ran:

- the nodes updated in round ``r`` are those with ``abs(xxhash64(id, r, seed)) % 1000`` below
  ``1000 x update_fraction``; Spark computes ``xxhash64(id)`` once per node (``node_key``) and
  ``active`` finishes the chain (Spark's XXH64 for a 4- or 8-byte value, seeded by the previous
  hash) vectorised;
- a node's best class has the highest summed vote, ties going to the smallest class id (ids
  compare as UTF-8 bytes, as Spark orders strings);
- ``Stopping`` is the one stop rule both loops apply.

This module imports only numpy and pyarrow, so the Python worker that runs it starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
# Arrow batches the one task returns: labels, then a last batch whose ``stats`` holds how it stopped.
OUTPUT = "id string, label string, stats string"


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def xxhash64_chain(seeds: np.ndarray, value: int) -> np.ndarray:
    """Spark's ``xxhash64`` step for one integer literal, seeded by each of ``seeds`` (int64, the
    hash of the columns before it): an int literal is hashed as 4 bytes, a larger one as 8."""
    with np.errstate(over="ignore"):
        h = seeds.astype(np.int64).view(np.uint64) + _P5
        if value in _INT32:
            h = h + np.uint64(4)
            h = h ^ (np.uint64(value & 0xFFFFFFFF) * _P1)
            h = _rotl(h, 23) * _P2 + _P3
        elif value in _INT64:
            h = h + np.uint64(8)
            k = _rotl(np.uint64(value & 0xFFFFFFFFFFFFFFFF) * _P2, 31) * _P1
            h = _rotl(h ^ k, 27) * _P1 + _P4
        else:
            raise ValueError(f"seed {value} does not fit in 64 bits")
        return _avalanche(h).view(np.int64)


def active(node_key: np.ndarray, iteration: int, seed: int, update_fraction: float) -> np.ndarray:
    """Which nodes round ``iteration`` updates: ``abs(xxhash64(id, iteration, seed)) % 1000 <
    int(1000 x update_fraction)``, from ``node_key = xxhash64(id)``."""
    h = xxhash64_chain(xxhash64_chain(node_key, iteration), seed)
    return (np.abs(h) % 1000) < int(1000 * update_fraction)


class Stopping:
    """The stop rule: converged when a round changed nothing and every node holds its best class,
    or when at most ``tolerance`` of the nodes changed (never on round 1); stalled after
    ``patience`` rounds in a row changed no fewer nodes than the fewest so far; else
    ``max_iterations``."""

    def __init__(self, n_nodes: int, tolerance: float, patience: int | None) -> None:
        self.n_nodes, self.allowed, self.patience = n_nodes, int(tolerance * n_nodes), patience
        self.reason, self.changes, self.fewest, self.since_fewest = "max_iterations", [], None, 0

    def stop_after(self, iteration: int, changed: int, unsettled: int) -> bool:
        self.changes.append(changed)
        if (not changed and not unsettled) or (self.allowed and changed <= self.allowed and iteration > 1):
            self.reason = "converged"
            return True
        if self.fewest is None or changed < self.fewest:
            self.fewest, self.since_fewest = changed, 0
        else:
            self.since_fewest += 1
        if self.patience and self.since_fewest >= self.patience:
            self.reason = "stalled"
            return True
        return False

    def summary(self) -> dict:
        last = self.changes[-1] if self.changes else 0
        return {
            "iterations": len(self.changes),
            "stop_reason": self.reason,
            "changed_share": last / max(self.n_nodes, 1),
            "changes": list(self.changes),
        }


def best_labels(src: np.ndarray, dst_label: np.ndarray, weight: np.ndarray, n_nodes: int) -> np.ndarray:
    """Per node, the class with the highest summed vote (ties: the smallest class), -1 for a node
    with no edge. ``src`` and ``dst_label`` are node and class numbers, ``weight`` the votes."""
    key = src.astype(np.int64) * n_nodes + dst_label
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    scores = np.add.reduceat(weight[order].astype(np.float64), starts)
    pair_src, pair_label = key[starts] // n_nodes, key[starts] % n_nodes
    # Pairs are sorted by (node, class): a node's first pair at its highest score is its best,
    # and its smallest class among equal scores.
    firsts = np.flatnonzero(np.concatenate(([True], pair_src[1:] != pair_src[:-1])))
    top = np.maximum.reduceat(scores, firsts)
    group = np.repeat(np.arange(len(firsts)), np.diff(np.append(firsts, len(scores))))
    at_top = np.flatnonzero(scores == top[group])
    chosen = at_top[np.concatenate(([True], group[at_top][1:] != group[at_top][:-1]))]
    best = np.full(n_nodes, -1, dtype=np.int64)
    best[pair_src[chosen]] = pair_label[chosen]
    return best


def chinese_whispers(
    src: np.ndarray, dst: np.ndarray, weight: np.ndarray, node_key: np.ndarray, conf: dict
) -> tuple[np.ndarray, dict]:
    """(class number per node, how it stopped) for nodes ``0..n-1`` numbered in id order (so
    class ``i`` is node ``i``'s id) and directed edges ``src -> dst`` whose ``weight`` is dst's vote."""
    n = len(node_key)
    labels = np.arange(n, dtype=np.int64)
    stopping = Stopping(n, conf["tolerance"], conf["patience"])
    for iteration in range(1, conf["max_iterations"] + 1):
        best = best_labels(src, labels[dst], weight, n) if len(src) else np.full(n, -1, dtype=np.int64)
        has_best = best >= 0
        wants = has_best & (best != labels)
        moving = wants & active(node_key, iteration, conf["seed"], conf["update_fraction"])
        labels = np.where(moving, best, labels)
        if stopping.stop_after(iteration, int(moving.sum()), int(wants.sum())):
            break
    return labels, stopping.summary()


def in_memory(conf: dict):
    """The ``mapInArrow`` function of the one task: every row of the graph in, ``id, label`` out.

    Rows are nodes (``id``, ``key`` = ``xxhash64(id)``, no ``dst``) and edges (``id`` the node
    voted for, ``dst`` its neighbour, ``weight`` the vote). The last batch out has one row with
    ``stats``, the stop summary as JSON.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(
            list(batches),
            schema=pa.schema(
                [("id", pa.string()), ("key", pa.int64()), ("dst", pa.string()), ("weight", pa.float64())]
            ),
        )
        is_node = pc.is_null(table.column("dst"))
        nodes, edges = table.filter(is_node), table.filter(pc.invert(is_node))
        order = pc.sort_indices(
            nodes, sort_keys=[("id", "ascending")]
        )  # Arrow compares strings as bytes, as Spark does
        ids = nodes.column("id").take(order).combine_chunks()
        keys = nodes.column("key").take(order).to_numpy()
        src = pc.index_in(edges.column("id"), value_set=ids).to_numpy(zero_copy_only=False)
        dst = pc.index_in(edges.column("dst"), value_set=ids).to_numpy(zero_copy_only=False)
        weight = edges.column("weight").to_numpy()
        del table, nodes, edges
        labels, stats = chinese_whispers(src.astype(np.int64), dst.astype(np.int64), weight, keys, conf)
        none = pa.nulls(len(ids), pa.string())
        yield pa.RecordBatch.from_arrays([ids, ids.take(pa.array(labels)), none], names=["id", "label", "stats"])
        yield pa.RecordBatch.from_arrays(
            [pa.nulls(1, pa.string()), pa.nulls(1, pa.string()), pa.array([json.dumps(stats)])],
            names=["id", "label", "stats"],
        )

    return run
