"""Approximate nearest neighbours with sharded Annoy indexes: build, load once, search, merge.

An index directory holds ``manifest.json`` (format ``textmill-annoy/v1``: dim, metric,
n_trees, seed, search_k, shard files and item counts, build time, measured recall),
``shards/shard-NNNNN.ann`` and ``mapping/`` (Parquet ``item, id, shard, local``). Items get
dense integer ids ``0..n-1`` in id order; item ``i`` lives in shard ``i % S`` at local id
``i // S``.

``build_shard`` runs inside a Spark task (one per shard); ``ShardedIndex`` is loaded once
per Python worker (``textmill.models``), memory-maps every shard, searches them all and
merges to the global top k (scatter-gather). ``exact_topk`` is the blocked brute force
(matrix-matrix products, a block of queries at a time) that recall is measured against.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT = "textmill-annoy/v1"
METRICS = ("angular", "euclidean", "manhattan", "dot")


def default_trees(n_items: int) -> int:
    return max(1, round(math.log(max(n_items, 2))))


def shard_file(shard: int) -> str:
    return f"shards/shard-{shard:05d}.ann"


def build_shard(path: str, dim: int, metric: str, n_trees: int, seed: int, locals_: Sequence[int],
                vectors: Sequence[Sequence[float]], on_disk: bool = True) -> float:
    """Build one shard's Annoy index at ``path``; returns the build seconds."""
    from annoy import AnnoyIndex

    started = time.perf_counter()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    index = AnnoyIndex(dim, metric)
    index.set_seed(seed)
    if on_disk:
        index.on_disk_build(path)  # trees go straight to the file, not to RAM first
    for local, vector in zip(locals_, vectors):
        index.add_item(int(local), vector)
    index.build(n_trees, n_jobs=1)
    if not on_disk:
        index.save(path)
    index.unload()
    return time.perf_counter() - started


@dataclass
class Manifest:
    dim: int
    metric: str
    n_trees: int
    seed: int
    search_k: int
    shards: list[dict]
    n_items: int
    build_seconds: float = 0.0
    recall: dict | None = None
    format: str = FORMAT

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "manifest.json").write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        data = json.loads((Path(directory) / "manifest.json").read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{directory}: not a {FORMAT} index (format={data.get('format')!r})")
        return cls(**data)


class ShardedIndex:
    """All shards of an index, memory-mapped; search returns global items and distances."""

    def __init__(self, directory: str | Path) -> None:
        from annoy import AnnoyIndex

        self.directory = Path(directory)
        self.manifest = Manifest.load(directory)
        self.n_shards = len(self.manifest.shards)
        self.shards = []
        for shard in self.manifest.shards:
            index = AnnoyIndex(self.manifest.dim, self.manifest.metric)
            index.load(str(self.directory / shard["file"]))  # mmap: shared by processes on a machine
            self.shards.append(index)

    def search(self, vector: Sequence[float], k: int, search_k: int | None = None, exclude: int | None = None) -> tuple[list[int], list[float]]:
        """Global top ``k`` (items, distances) over every shard; ``exclude`` drops one item (the query itself)."""
        search_k = self.manifest.search_k if search_k is None else search_k
        want = k + (1 if exclude is not None else 0)
        items: list[int] = []
        distances: list[float] = []
        for shard_no, index in enumerate(self.shards):
            local, dist = index.get_nns_by_vector(vector, want, search_k=search_k, include_distances=True)
            items.extend(l * self.n_shards + shard_no for l in local)
            distances.extend(dist)
        order = sorted(range(len(items)), key=lambda i: (distances[i], items[i]))
        merged = [(items[i], distances[i]) for i in order if items[i] != exclude][:k]
        return [m[0] for m in merged], [m[1] for m in merged]


def normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)


def exact_topk(queries: np.ndarray, data: np.ndarray, k: int, metric: str, exclude: np.ndarray | None = None,
               block: int = 1024) -> np.ndarray:
    """Exact top-k item indices by blocked brute force (a block of queries x all items per product)."""
    queries = np.asarray(queries, dtype=np.float32)
    data = np.asarray(data, dtype=np.float32)
    if metric == "angular":
        queries, data = normalize(queries), normalize(data)
    result = np.zeros((len(queries), k), dtype=np.int64)
    data_sq = (data ** 2).sum(1)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        if metric in ("angular", "dot"):
            score = -(q @ data.T)
        elif metric == "euclidean":
            score = data_sq[None, :] - 2 * (q @ data.T)
        else:  # manhattan: no matrix form; a block at a time keeps memory bounded
            score = np.abs(q[:, None, :] - data[None, :, :]).sum(2)
        if exclude is not None:
            score[np.arange(len(q)), exclude[start : start + block]] = np.inf
        top = np.argpartition(score, k, axis=1)[:, :k]
        order = np.take_along_axis(score, top, 1).argsort(1)
        result[start : start + block] = np.take_along_axis(top, order, 1)
    return result


def recall_at_k(approx: Sequence[Sequence[int]], exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = [len(set(a[:k]) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits) / k) if hits else 0.0
