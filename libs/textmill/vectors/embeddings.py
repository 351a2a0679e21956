"""Word-embedding maths: vocabulary, subsampling, negatives, SGNS steps, PPMI-SVD, subwords.

Pure numpy/torch, no Spark: ``pipelines/train_embeddings`` runs these on the driver and in
Spark tasks, and tests call them directly.

- ``keep_probabilities``: Mikolov's subsampling, as in word2vec.c:
  ``p_keep(w) = (sqrt(f / (s T)) + 1) * (s T) / f`` for count ``f``, total ``T``, ``sample`` s.
- ``negative_distribution``: the unigram^0.75 distribution negatives are drawn from.
- ``train_sgns_partition``: one Spark task's share of a round. It starts from the round's
  weights, streams its sentences in chunks, builds (center, context) pairs with word2vec's
  dynamic window, and applies the SGNS gradients a batch of pairs at a time with
  ``index_add_`` (no autograd, no per-pair Python loop). The batch shares its negative
  samples (``sgns_step``), which turns the negative scores into one matrix product. It returns, per word row,
  the updated vector times the number of updates the row got, and those counts, so the
  driver can average rows weighted by how much each partition trained them. A batch
  sums the gradients of a word that fills many of its pairs into one step: a token
  repeated 20,000 times in one document made the default settings diverge. ``row_shares``
  scales each pair's share of its center's, context's and the shared negatives' updates
  so that no row takes more than ``max_row_updates`` full steps per batch. Memory:
  the two ``vocab x dim`` matrices, a chunk of pairs and a batch: never the corpus.
- ``ppmi_svd`` / ``ppmi_factors``: positive PMI (context-distribution smoothing 0.75) of a
  sparse co-occurrence matrix, then a truncated SVD with a fixed start vector: deterministic.
  ``sgns`` starts from these factors by default (see ``pipelines/train_embeddings``).
- ``char_ngrams`` / ``fnv1a_32``, ``fit_subwords`` and ``SubwordVectors``: fastText-style
  n-grams of ``<word>`` (3-6 chars) hashed into buckets; bucket vectors are fitted by least
  squares so that the mean of a word's n-gram vectors reproduces its vector; an unseen
  word gets the mean of its n-gram vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # scipy is imported lazily, only where co-occurrence counts are built
    import scipy.sparse as sp

FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word (1.0 when ``sample`` is 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)


def negative_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    weights = np.asarray(counts, dtype=np.float64) ** power
    return weights / weights.sum()


def dynamic_window_pairs(
    ids: np.ndarray, sentence_ids: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) pairs within each sentence, word2vec style: each center draws a
    window b in [1, window] and pairs with the words at distance <= b on both sides."""
    n = len(ids)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    reach = rng.integers(1, window + 1, size=n)
    centers, contexts = [], []
    for offset in range(1, window + 1):
        left = np.arange(n - offset)
        right = left + offset
        same = sentence_ids[left] == sentence_ids[right]
        # right is a context of left when left's window reaches it, and vice versa.
        fwd = same & (reach[left] >= offset)
        bwd = same & (reach[right] >= offset)
        centers += [ids[left[fwd]], ids[right[bwd]]]
        contexts += [ids[right[fwd]], ids[left[bwd]]]
    return np.concatenate(centers), np.concatenate(contexts)


@dataclass
class SgnsSettings:
    dim: int = 100
    window: int = 5
    negative: int = 5
    sample: float = 1e-3
    batch_pairs: int = 1024
    shared_negatives: int = 16
    loss_every: int = 8
    chunk_tokens: int = 200_000
    threads: int = 1
    max_row_updates: int = 16


def row_shares(rows: np.ndarray, batch_size: int, cap: int) -> np.ndarray:
    """Per pair, ``min(1, cap / n)`` for the ``n`` times its row is expected in one batch.

    The chunk's pairs are shuffled before they are cut into batches, so a row seen ``N``
    times among ``P`` pairs occurs about ``N * batch_size / P`` times in each batch: one
    bincount per chunk instead of a count per batch. Rows under the cap (all but a few
    on ordinary text) keep their full step.
    """
    expected = np.bincount(rows) * (min(batch_size, len(rows)) / max(len(rows), 1))
    return np.minimum(1.0, cap / np.maximum(expected, 1e-9))[rows].astype(np.float32)


def sgns_step(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    centers: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    k: int,
    lr: float,
    with_loss: bool = True,
    center_share: torch.Tensor | None = None,
    context_share: torch.Tensor | None = None,
) -> float:
    """One batched SGNS update in place, with negatives shared by the batch; returns the batch
    loss (NaN when ``with_loss`` is False: its logarithms cost as much as a sigmoid of the batch).

    Every (center, context) pair of the batch is scored against the same ``K = len(negatives)``
    negative words, each weighted ``k / K``: in expectation the same gradient as ``k``
    negatives drawn per pair, but the negative scores are one matrix-matrix product
    (B x d by d x K) instead of B x k dot products, and only B + B + K rows are gathered and
    updated per batch.
    """
    c = torch.index_select(w_in, 0, centers)  # B x d
    o = torch.index_select(w_out, 0, contexts)  # B x d
    n = torch.index_select(w_out, 0, negatives)  # K x d
    weight = k / len(negatives)
    pos = torch.sigmoid((c * o).sum(1))  # B
    neg = torch.sigmoid(c @ n.T)  # B x K
    g_pos = (pos - 1.0).unsqueeze(1)
    grad_c = g_pos * o + weight * (neg @ n)
    grad_o = g_pos * c
    if center_share is not None:
        grad_c = grad_c * center_share.unsqueeze(1)
        grad_o = grad_o * context_share.unsqueeze(1)
        grad_n = weight * ((neg * center_share.unsqueeze(1)).T @ c)
    else:
        grad_n = weight * (neg.T @ c)
    w_in.index_add_(0, centers, grad_c, alpha=-lr)
    w_out.index_add_(0, contexts, grad_o, alpha=-lr)
    w_out.index_add_(0, negatives, grad_n, alpha=-lr)
    if not with_loss:
        return math.nan
    return float(-(torch.log(pos + 1e-7).mean() + weight * torch.log(1.0 - neg + 1e-7).sum(1).mean()))


def train_sgns_partition(
    sentences: Iterable[np.ndarray],
    w_in0: np.ndarray,
    w_out0: np.ndarray,
    keep: np.ndarray,
    negative_probs: np.ndarray,
    settings: SgnsSettings,
    lr_start: float,
    lr_end: float,
    expected_tokens: int,
    seed: int,
) -> dict:
    """Train on one partition's sentences; see the module docstring for what comes back."""
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    w_in = torch.from_numpy(np.array(w_in0, dtype=np.float32, copy=True))
    w_out = torch.from_numpy(np.array(w_out0, dtype=np.float32, copy=True))
    updates_in = torch.zeros(len(w_in), dtype=torch.float32)
    updates_out = torch.zeros(len(w_out), dtype=torch.float32)
    neg_probs = torch.from_numpy(negative_probs.astype(np.float32))
    keep_p = np.asarray(keep)
    seen_tokens, pairs_done, loss_sum, batches, loss_batches = 0, 0, 0.0, 0, 0
    k_shared, size = settings.shared_negatives, settings.batch_pairs
    for ids, sentence_ids in _chunks(sentences, settings.chunk_tokens):
        seen_tokens += len(ids)
        kept = rng.random(len(ids)) < keep_p[ids]
        centers, contexts = dynamic_window_pairs(ids[kept], sentence_ids[kept], settings.window, rng)
        if len(centers) == 0:
            continue
        order = rng.permutation(len(centers))
        centers, contexts = centers[order], contexts[order]
        centers_t = torch.from_numpy(centers)
        contexts_t = torch.from_numpy(contexts)
        shares = None
        if settings.max_row_updates:
            center_share = row_shares(centers, size, settings.max_row_updates)
            context_share = row_shares(contexts, size, settings.max_row_updates)
            if min(center_share.min(), context_share.min()) < 1.0:
                shares = torch.from_numpy(center_share), torch.from_numpy(context_share)
        progress = min(1.0, seen_tokens / max(expected_tokens, 1))
        lr = max(lr_end, lr_start - (lr_start - lr_end) * progress)
        # The chunk's negatives in one draw, and its update counts in one bincount per matrix,
        # rather than three more small torch calls per batch.
        starts = range(0, len(centers_t), size)
        negatives = torch.multinomial(neg_probs, len(starts) * k_shared, replacement=True, generator=gen).view(
            len(starts), k_shared
        )
        for number, start in enumerate(starts):
            with_loss = batches % settings.loss_every == 0
            batch = slice(start, start + size)
            loss = sgns_step(
                w_in,
                w_out,
                centers_t[batch],
                contexts_t[batch],
                negatives[number],
                settings.negative,
                lr,
                with_loss,
                *((shares[0][batch], shares[1][batch]) if shares else ()),
            )
            if with_loss:
                loss_sum, loss_batches = loss_sum + loss, loss_batches + 1
            batches += 1
        batch_sizes = np.minimum(size, len(centers) - np.arange(0, len(centers), size))
        vocab = len(w_in)
        updates_in += torch.from_numpy(np.bincount(centers, minlength=vocab).astype(np.float32))
        updates_out += torch.from_numpy(np.bincount(contexts, minlength=vocab).astype(np.float32))
        updates_out += torch.from_numpy(
            np.bincount(
                negatives.numpy().ravel(),
                weights=np.repeat(batch_sizes * settings.negative / k_shared, k_shared),
                minlength=vocab,
            ).astype(np.float32)
        )
        pairs_done += len(centers)
    weights_in = updates_in.unsqueeze(1)
    weights_out = updates_out.unsqueeze(1)
    return {
        "in_weighted": (w_in * weights_in).numpy(),
        "in_updates": updates_in.numpy(),
        "out_weighted": (w_out * weights_out).numpy(),
        "out_updates": updates_out.numpy(),
        "pairs": pairs_done,
        "tokens": seen_tokens,
        "loss_sum": loss_sum,
        "batches": loss_batches,
    }


def _chunks(sentences: Iterable[np.ndarray], chunk_tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Concatenate sentences into chunks of about ``chunk_tokens`` ids, with sentence numbers."""
    ids: list[np.ndarray] = []
    marks: list[np.ndarray] = []
    size, number = 0, 0
    for sentence in sentences:
        if len(sentence) == 0:
            continue
        ids.append(sentence)
        marks.append(np.full(len(sentence), number, dtype=np.int64))
        number += 1
        size += len(sentence)
        if size >= chunk_tokens:
            yield np.concatenate(ids), np.concatenate(marks)
            ids, marks, size = [], [], 0
    if ids:
        yield np.concatenate(ids), np.concatenate(marks)


def combine(current: np.ndarray, weighted_sum: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """Rows trained in a round become the update-weighted mean of the partitions' rows; others stay."""
    trained = updates > 0
    out = current.copy()
    out[trained] = weighted_sum[trained] / updates[trained, None]
    return out


# ---------------------------------------------------------------------------- count-based


def cooccurrence_counts(
    sentences: Iterable[np.ndarray], vocab_size: int, window: int, chunk_tokens: int = 200_000
) -> sp.csr_matrix:
    """Symmetric window co-occurrence counts of one partition, weighted 1/distance (as GloVe/word2vec).

    Only ids below ``vocab_size`` count (words are numbered by frequency, so that is the
    ``vocab_size`` most frequent words; the others are dropped before windows are formed,
    as word2vec drops out-of-vocabulary words). Chunks are summed into sparse matrices as
    they are read, so memory follows the distinct pairs, not the corpus; the chunks' matrices
    are merged into the running total only when together they are as large as it is, so the
    total is not copied once per chunk.
    """
    import scipy.sparse as sp

    total = sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    pending: list = []
    for ids, sentence_ids in _chunks(sentences, chunk_tokens):
        inside = ids < vocab_size
        ids, sentence_ids = ids[inside], sentence_ids[inside]
        n = len(ids)
        rows, cols, vals = [], [], []
        for offset in range(1, window + 1):
            left = np.arange(max(0, n - offset))
            right = left + offset
            same = sentence_ids[left] == sentence_ids[right]
            a, b = ids[left[same]], ids[right[same]]
            weight = np.full(len(a), 1.0 / offset)
            rows += [a, b]
            cols += [b, a]
            vals += [weight, weight]
        if rows:
            pending.append(
                sp.csr_matrix(
                    (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(vocab_size, vocab_size)
                )
            )
            if sum(m.nnz for m in pending) >= total.nnz:
                total = sum(pending, total)
                pending = []
    return sum(pending, total)


def ppmi_factors(counts, dim: int, smoothing: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Word and context factors ``U sqrt(S)``, ``V sqrt(S)`` of the truncated SVD of the PPMI matrix.

    Their products approximate the PPMI matrix, the matrix SGNS factorises implicitly (Levy &
    Goldberg 2014), which is why they also serve as a start for ``sgns``. Deterministic: a
    fixed ARPACK start vector and each component's sign fixed (on both factors, so their
    products are unchanged).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    counts = sp.csr_matrix(counts, dtype=np.float64)
    size = counts.shape[0]
    total = counts.sum()
    word = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** smoothing
    context /= max(context.sum(), 1e-300)
    coo = counts.tocoo()
    with np.errstate(divide="ignore"):
        pmi = np.log(coo.data * 1.0 / total) - np.log(word[coo.row] / total) - np.log(context[coo.col])
    positive = pmi > 0
    ppmi = sp.csr_matrix((pmi[positive], (coo.row[positive], coo.col[positive])), shape=counts.shape)
    k = min(dim, size - 1)
    if k < 1 or ppmi.nnz == 0:
        return np.zeros((size, dim), dtype=np.float32), np.zeros((size, dim), dtype=np.float32)
    v0 = np.full(size, 1.0 / math.sqrt(size))
    u, s, vt = svds(ppmi, k=k, v0=v0, solver="arpack")
    order = np.argsort(-s)
    root = np.sqrt(s[order])
    words, contexts = u[:, order] * root, vt[order].T * root
    signs = np.sign(words[np.abs(words).argmax(axis=0), np.arange(words.shape[1])])
    signs = np.where(signs == 0, 1, signs)
    words, contexts = words * signs, contexts * signs
    if k < dim:
        pad = np.zeros((size, dim - k))
        words, contexts = np.hstack([words, pad]), np.hstack([contexts, pad])
    return words.astype(np.float32), contexts.astype(np.float32)


def ppmi_svd(counts, dim: int, smoothing: float = 0.75) -> np.ndarray:
    """Word vectors ``U sqrt(S)`` of the PPMI matrix (see ``ppmi_factors``)."""
    return ppmi_factors(counts, dim, smoothing)[0]


# ---------------------------------------------------------------------------- subwords


def fnv1a_32(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


def char_ngrams(word: str, min_n: int = 3, max_n: int = 6) -> list[str]:
    token = f"<{word}>"
    return [token[i : i + n] for n in range(min_n, max_n + 1) for i in range(len(token) - n + 1)]


def ngram_buckets(word: str, buckets: int, min_n: int = 3, max_n: int = 6) -> list[int]:
    return [fnv1a_32(g.encode("utf-8")) % buckets for g in char_ngrams(word, min_n, max_n)]


def fit_subwords(
    words: list[str],
    vectors: np.ndarray,
    buckets: int,
    min_n: int = 3,
    max_n: int = 6,
    l2: float = 1e-4,
    steps: int = 100,
    dims_per_solve: int = 32,
) -> np.ndarray:
    """Bucket vectors Z minimising sum_w ||mean(Z[ngrams(w)]) - v_w||^2 + l2 ||Z||^2.

    A linear least-squares problem: the normal equations (A^T A + l2 I) Z = A^T V, with A the
    words x buckets matrix of n-gram means, solved by conjugate gradients with a Jacobi
    (diagonal) preconditioner for a fixed number of ``steps``, over the buckets some word uses
    (the others stay zero), ``dims_per_solve`` vector dimensions at a time to bound memory.
    Each step is two sparse products; on IMDB's 42,503 words it reaches the loss that 300
    full-batch Adam steps over all 200,000 buckets reached, in a small fraction of the time.
    """
    import scipy.sparse as sp

    lengths, cols = [], []
    for word in words:
        ids = ngram_buckets(word, buckets, min_n, max_n)
        lengths.append(len(ids))
        cols += ids
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(words)), lengths_arr)
    vals = np.repeat(1.0 / np.maximum(lengths_arr, 1), lengths_arr).astype(np.float32)
    used, local = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
    a = sp.csr_matrix((vals, (rows, local)), shape=(len(words), len(used)))
    a.sum_duplicates()  # an n-gram twice in a word, or two n-grams in one bucket: their weights add
    a_t = a.T.tocsr()
    diagonal = (np.asarray(a.multiply(a).sum(axis=0)).ravel() + l2).astype(np.float32)[:, None]
    target = np.asarray(vectors, dtype=np.float32)
    z = np.zeros((buckets, target.shape[1]), dtype=np.float32)
    for start in range(0, target.shape[1], dims_per_solve):
        b = a_t @ target[:, start : start + dims_per_solve]
        x = np.zeros_like(b)
        r = b.copy()
        pr = r / diagonal
        p = pr.copy()
        rz = (r * pr).sum(axis=0)
        for _ in range(steps):
            mp = a_t @ (a @ p) + l2 * p
            alpha = rz / np.maximum((p * mp).sum(axis=0), 1e-30)
            x += alpha * p
            r -= alpha * mp
            pr = r / diagonal
            rz_next = (r * pr).sum(axis=0)
            p = pr + (rz_next / np.maximum(rz, 1e-30)) * p
            rz = rz_next
        z[used, start : start + dims_per_solve] = x
    return z


class SubwordVectors:
    """Word vectors with a fastText-style fallback for unseen words."""

    def __init__(
        self, words: list[str], vectors: np.ndarray, ngram_vectors: np.ndarray | None, min_n: int = 3, max_n: int = 6
    ) -> None:
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.ngram_vectors = None if ngram_vectors is None else np.asarray(ngram_vectors, dtype=np.float32)
        self.min_n, self.max_n = min_n, max_n
        self.dim = self.vectors.shape[1]
        # A bucket no training n-gram hashed to keeps its zero start: it knows nothing.
        self.trained = None if self.ngram_vectors is None else np.any(self.ngram_vectors != 0, axis=1)
        self.alphabet = set().union(*words) if words else set()

    def vector_for(self, word: str) -> np.ndarray | None:
        """A known word: the mean of its n-gram vectors and its own vector. An unseen word: the mean of
        its n-gram vectors, when at least one was trained and at least half its characters occur in
        the vocabulary; else None.

        A word of characters the corpus never had (Cyrillic in an English model, emoji, zero-width
        spaces) or of n-grams no training word had (letter salad) got the zero vector of untrained
        buckets and counted as known: a document of only such words was an all-zero vector
        instead of null with "no known tokens". A collision of its n-grams with trained ones
        (common where buckets are dense) no longer makes such a word known."""
        i = self.index.get(word)
        parts = []
        if self.ngram_vectors is not None:
            buckets = ngram_buckets(word, len(self.ngram_vectors), self.min_n, self.max_n)
            if i is not None:
                parts = [self.ngram_vectors[b] for b in buckets]
            elif any(self.trained[b] for b in buckets) and 2 * sum(c in self.alphabet for c in word) >= len(word):
                parts = [self.ngram_vectors[b] for b in buckets]  # all of them, as fastText and earlier models
        if i is not None:
            parts.append(self.vectors[i])
        return np.mean(parts, axis=0) if parts else None

    def most_similar(self, vector: np.ndarray, topn: int = 10, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        norms = np.linalg.norm(self.vectors, axis=1) * (np.linalg.norm(vector) + 1e-12) + 1e-12
        sims = self.vectors @ vector / norms
        skip = {self.index[w] for w in exclude if w in self.index}
        best = [i for i in np.argsort(-sims) if i not in skip][:topn]
        return [(self.words[i], float(sims[i])) for i in best]
