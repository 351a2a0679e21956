"""Approximate nearest neighbours with sharded Annoy indexes: build, load once, search, merge.

An index directory holds ``manifest.json`` (format ``textmill-annoy/v1``: dim, metric,
n_trees, seed, search_k, shard files with their item counts, sizes and SHA-256, build time, measured recall),
``shards/shard-NNNNN.ann`` and ``mapping/`` (Parquet ``item, id, shard, local``). Items get
dense integer ids ``0..n-1`` in id order; item ``i`` lives in shard ``i % S`` at local id
``i // S``.

``build_shard`` runs inside a Spark task (one per shard); ``ShardedIndex`` memory-maps
every shard, searches them all and merges to the global top k (scatter-gather), a batch of
queries at a time; ``IndexSearcher`` (loaded once per Python worker by ``neighbors``) adds
the item -> id table and answers Arrow batches. This module imports no Spark or MLflow, so
workers that unpickle it start fast. ``exact_topk`` is the blocked brute force
(matrix-matrix products, a block of queries at a time) that recall is measured against.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from textmill.runtime.errors import TextmillError

FORMAT = "textmill-annoy/v1"


class IndexCorruptError(TextmillError):
    """An index directory's manifest or shard files are damaged or do not match."""


METRICS = ("angular", "euclidean", "manhattan", "dot")


def default_trees(n_items: int) -> int:
    return max(1, round(math.log(max(n_items, 2))))


def shard_file(shard: int) -> str:
    return f"shards/shard-{shard:05d}.ann"


def build_shard(
    path: str,
    dim: int,
    metric: str,
    n_trees: int,
    seed: int,
    locals_: Sequence[int],
    vectors: Sequence[Sequence[float]],
    on_disk: bool = True,
) -> float:
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
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / "manifest.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexCorruptError(
                f"{path} cannot be read as JSON ({exc}); rebuild the index with build_index"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise IndexCorruptError(f"{directory}: not a {FORMAT} index (format={found!r})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise IndexCorruptError(
                f"{path} does not describe an index ({exc}); rebuild the index with build_index"
            ) from exc


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: str | Path) -> dict:
    """What the manifest keeps of a shard file to know it again: its size and SHA-256."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def check_index(directory: str | Path) -> Manifest:
    """Load the manifest and every shard once (on the driver), so a damaged index fails in one clear line."""
    from annoy import AnnoyIndex

    manifest = Manifest.load(directory)
    for shard in manifest.shards:
        path = Path(directory) / shard["file"]
        if not path.is_file():
            raise IndexCorruptError(
                f"{directory}: shard file {shard['file']} is missing; rebuild the index with build_index"
            )
        # Annoy trusts its file: flipped bytes in a shard of the right size crashed the worker that
        # searched it. A manifest written since 2026-12-07 holds each shard's size and checksum.
        size = path.stat().st_size
        if shard.get("bytes") is not None and size != shard["bytes"]:
            raise IndexCorruptError(
                f"{directory}: shard file {shard['file']} holds {size:,} bytes, the manifest says "
                f"{shard['bytes']:,} (truncated or replaced?); rebuild the index with build_index"
            )
        if shard.get("sha256") and file_sha256(path) != shard["sha256"]:
            raise IndexCorruptError(
                f"{directory}: shard file {shard['file']} does not match the checksum in the manifest (damaged "
                "or replaced); rebuild the index with build_index"
            )
        index = AnnoyIndex(manifest.dim, manifest.metric)
        try:
            index.load(str(path))
            found = index.get_n_items()
        except OSError as exc:
            raise IndexCorruptError(
                f"{directory}: shard file {shard['file']} cannot be loaded ({exc}); rebuild the index with build_index"
            ) from exc
        finally:
            index.unload()
        if found != shard["items"]:
            raise IndexCorruptError(
                f"{directory}: shard file {shard['file']} holds {found} items, the manifest says "
                f"{shard['items']} (truncated or replaced?); rebuild the index with build_index"
            )
    return manifest


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

    def search(
        self, vector: Sequence[float], k: int, search_k: int | None = None, exclude: int | None = None
    ) -> tuple[list[int], list[float]]:
        """Global top ``k`` (items, distances) for one vector; ``exclude`` drops one item (the query itself)."""
        items, distances = self.search_batch(
            np.asarray(vector, dtype=np.float32)[None, :], k, search_k, None if exclude is None else np.array([exclude])
        )
        found = items[0] >= 0
        return items[0][found].tolist(), distances[0][found].tolist()

    def search_batch(
        self,
        vectors: np.ndarray | None,
        k: int,
        search_k: int | None = None,
        exclude: np.ndarray | None = None,
        items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Global top ``k`` for each query: (items int64, distances float32), both ``(n, k)``.

        Queries are the rows of ``vectors``, or, with ``items``, those indexed items (their own
        shard is searched by item and the other shards with the stored vector, which skips
        every copy through numpy). Each shard is searched for ``k`` (+1 when excluding)
        candidates; the merge to the global top k is one sort over all queries' candidates at
        once (by distance, then item, so ties are deterministic; for ``dot``, by descending dot
        product). ``exclude[i]`` (an item, or -1) is dropped from row i. Rows with fewer than
        ``k`` results are padded with item -1 and distance inf.
        """
        search_k = self.manifest.search_k if search_k is None else search_k
        want = k + (1 if exclude is not None else 0)
        shards = self.n_shards
        if items is not None:
            query_items = items.tolist()
            rows = (
                [self.shards[item % shards].get_item_vector(item // shards) for item in query_items]
                if shards > 1
                else []
            )
        else:
            query_items = None
            rows = np.asarray(vectors, dtype=np.float32).tolist()  # plain lists: annoy converts them fastest
        n = len(query_items) if query_items is not None else len(rows)
        found_items = np.full((n, shards * want), -1, dtype=np.int64)
        distances = np.full((n, shards * want), np.inf, dtype=np.float32)
        for shard_no, index in enumerate(self.shards):
            column = shard_no * want
            for row in range(n):
                if query_items is not None and query_items[row] % shards == shard_no:
                    local, dist = index.get_nns_by_item(query_items[row] // shards, want, search_k, True)
                else:
                    local, dist = index.get_nns_by_vector(rows[row], want, search_k, True)
                found_items[row, column : column + len(local)] = local
                distances[row, column : column + len(local)] = dist
            block = found_items[:, column : column + want]
            found_items[:, column : column + want] = np.where(block >= 0, block * shards + shard_no, -1)
        # Annoy's "dot" returns the dot product itself (larger is nearer); every other metric a distance.
        key = -distances if self.manifest.metric == "dot" else distances.copy()
        key[found_items < 0] = np.inf
        if exclude is not None:
            key[found_items == np.asarray(exclude, dtype=np.int64)[:, None]] = np.inf
        order = np.lexsort((found_items, key), axis=1)[:, :k]  # n_shards * want >= k columns
        found_items, distances = np.take_along_axis(found_items, order, 1), np.take_along_axis(distances, order, 1)
        missing = ~np.isfinite(np.take_along_axis(key, order, 1))
        found_items[missing], distances[missing] = -1, np.inf
        return found_items, distances


class IndexSearcher:
    """A worker's copy of an index directory: every shard memory-mapped, plus the item -> id
    table, answering Arrow batches of queries (``mode`` ``items``: ``id, item`` rows, the item
    looked up beforehand by a join with ``mapping/``, null when the id is not indexed;
    ``queries``: ``id, vector`` rows) with ``id, neighbors, error`` batches."""

    def __init__(self, path: str) -> None:
        self.index = ShardedIndex(path)
        mapping = pq.read_table(Path(path) / "mapping", columns=["item", "id"]).sort_by("item")
        self.ids = mapping.column("id").combine_chunks().cast(pa.string())

    def neighbors(
        self, batch: pa.RecordBatch, k: int, search_k: int | None, mode: str, exclude_self: bool
    ) -> pa.RecordBatch:
        """One Arrow batch of queries in, ``id, neighbors, error`` out."""
        query_ids = batch.column("id").cast(pa.string())
        errors: list[str | None] = [None] * len(batch)
        exclude = None
        if mode == "items":
            items = pc.fill_null(batch.column("item"), -1).to_numpy().astype(np.int64)
            good = items >= 0
            for row in np.flatnonzero(~good):
                errors[row] = "id not in the index" if query_ids[row].is_valid else "null id"
            exclude = items[good] if exclude_self else None
            found_items, distances = self.index.search_batch(None, k, search_k, exclude, items=items[good])
        else:
            matrix, good = self._query_vectors(batch.column("vector"), errors)
            found_items, distances = self.index.search_batch(matrix, k, search_k)
        found = found_items >= 0
        counts = np.zeros(len(batch), dtype=np.int32)
        counts[good] = found.sum(axis=1)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        values = pa.StructArray.from_arrays(
            [self.ids.take(pa.array(found_items[found])), pa.array(distances[found], pa.float32())],
            names=["id", "distance"],
        )
        neighbors = pa.ListArray.from_arrays(offsets, values, mask=pa.array(~good))
        return pa.RecordBatch.from_arrays(
            [query_ids, neighbors, pa.array(errors, pa.string())], names=["id", "neighbors", "error"]
        )

    def _query_vectors(self, vectors: pa.Array, errors: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(matrix of the usable vectors, mask of usable rows); ``errors`` gets each other row's reason."""
        dim = self.index.manifest.dim
        lengths = pc.fill_null(pc.list_value_length(vectors), -1).to_numpy()
        sized = lengths == dim
        values = vectors.filter(pa.array(sized)).flatten().to_numpy(zero_copy_only=False)  # null elements become NaN
        matrix = np.asarray(values, dtype=np.float32).reshape(-1, dim)
        finite = np.isfinite(matrix).all(axis=1)
        good = sized.copy()
        good[sized] = finite
        for row in np.flatnonzero(~good):
            errors[row] = (
                "null vector"
                if lengths[row] < 0
                else f"vector of dimension {lengths[row]}, index has {dim}"
                if lengths[row] != dim
                else "vector contains NaN or infinite values"
            )
        return matrix[finite], good


def normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)


def exact_topk(
    queries: np.ndarray, data: np.ndarray, k: int, metric: str, exclude: np.ndarray | None = None, block: int = 1024
) -> np.ndarray:
    """Exact top-k row indices of ``data`` by blocked brute force; ``exclude[i]``: a row dropped for query i."""
    return exact_topk_scored(queries, data, k, metric, exclude=exclude, block=block)[0]


def exact_topk_scored(
    queries: np.ndarray,
    data: np.ndarray,
    k: int,
    metric: str,
    data_ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by blocked brute force (a block of queries x all of ``data`` per matrix product).

    Returns (ids, scores), both ``(len(queries), min(k, len(data)))``, nearest first; a lower
    score is nearer and scores of one metric compare across calls, so partial results over
    parts of the data merge by score. ``data_ids`` names the rows (default 0..n-1);
    ``exclude[i]`` is an id dropped from query i's answer.
    """
    queries = np.asarray(queries, dtype=np.float32)
    data = np.asarray(data, dtype=np.float32)
    data_ids = np.arange(len(data)) if data_ids is None else np.asarray(data_ids)
    if metric == "angular":
        queries, data = normalize(queries), normalize(data)
    k = min(k, len(data))
    ids = np.zeros((len(queries), k), dtype=np.int64)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    data_sq = (data**2).sum(1)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        if metric in ("angular", "dot"):
            score = -(q @ data.T)
        elif metric == "euclidean":
            score = data_sq[None, :] - 2 * (q @ data.T)
        else:  # manhattan: no matrix form; a block at a time keeps memory bounded
            score = np.abs(q[:, None, :] - data[None, :, :]).sum(2)
        if exclude is not None:
            score[data_ids[None, :] == np.asarray(exclude)[start : start + block, None]] = np.inf
        top = np.argpartition(score, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.take_along_axis(score, top, 1).argsort(1, kind="stable"), 1)
        ids[start : start + block] = data_ids[top]
        scores[start : start + block] = np.take_along_axis(score, top, 1)
    return ids, scores


def recall_at_k(approx: Sequence[Sequence[int]], exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = [len(set(a[:k]) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits) / k) if hits else 0.0
