"""Subword vector fit: textmill's preconditioned conjugate gradients vs the full-batch Adam fit it replaced.

The problem ``train_embeddings`` solves after training: bucket vectors Z (FNV-1a hashed
character 3-6-grams, 200,000 buckets) such that the mean of a word's n-gram vectors
reproduces its vector, minimising ``mean_w ||mean(Z[ngrams(w)]) - v_w||^2 + l2 ||Z||^2 / V``.
Vocabulary: the words of ``imdb_unsup/unsup.txt`` seen at least 5 times (lower-cased
regex words, about 42,500). Targets: unit-scale random vectors (dim 100, seed 0), so the
comparison is of the solvers, not of the vectors. Contenders, in one run: textmill's
``fit_subwords`` at 50, 100 (default) and 200 steps, and the previous implementation
(torch full-batch Adam, lr 0.05, 300 steps over all buckets), kept here as the baseline.
Prints JSON: seconds, loss, and ratios.

python tests/benchmarks/bench_subwords.py [--adam-steps 300]
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import numpy as np
from common import SHARED, report, require

UNSUP = require(SHARED / "imdb_unsup" / "unsup.txt")


def loss(z, words, targets, buckets, l2=1e-4) -> float:
    from textmill.vectors.embeddings import ngram_buckets

    total = 0.0
    for i, word in enumerate(words):
        ids = ngram_buckets(word, buckets)
        total += float(((z[ids].mean(axis=0) - targets[i]) ** 2).sum())
    return total / len(words) + l2 * float((z.astype(np.float64) ** 2).sum()) / len(words)


def adam_fit(words, targets, buckets, steps, lr=0.05, l2=1e-4):
    """The fit train_embeddings used until 2026-11-22."""
    import torch

    from textmill.vectors.embeddings import ngram_buckets

    rows, cols, vals = [], [], []
    for i, word in enumerate(words):
        ids = ngram_buckets(word, buckets)
        rows += [i] * len(ids)
        cols += ids
        vals += [1.0 / len(ids)] * len(ids)
    a = torch.sparse_coo_tensor(
        torch.tensor([rows, cols]), torch.tensor(vals, dtype=torch.float32), (len(words), buckets)
    ).coalesce()
    target = torch.from_numpy(targets)
    z = torch.zeros(buckets, targets.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        value = ((torch.sparse.mm(a, z) - target) ** 2).sum(1).mean() + l2 * (z**2).sum() / len(words)
        value.backward()
        optimizer.step()
    return z.detach().numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adam-steps", type=int, default=300)
    args = parser.parse_args()
    from textmill.vectors.embeddings import fit_subwords

    counts = collections.Counter()
    with UNSUP.open(encoding="utf-8") as fh:
        for line in fh:
            counts.update(re.findall(r"[a-z']+", line.lower()))
    words = sorted(w for w, c in counts.items() if c >= 5)
    targets = np.random.default_rng(0).normal(size=(len(words), 100)).astype(np.float32)
    buckets = 200_000
    result: dict = {"words": len(words), "buckets": buckets, "dim": 100}
    for steps in (50, 100, 200):
        started = time.perf_counter()
        z = fit_subwords(words, targets, buckets, steps=steps)
        result[f"textmill_cg_{steps}"] = {
            "seconds": round(time.perf_counter() - started, 1),
            "loss": round(loss(z, words, targets, buckets), 5),
        }
    started = time.perf_counter()
    z = adam_fit(words, targets, buckets, args.adam_steps)
    result[f"previous_adam_{args.adam_steps}"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "loss": round(loss(z, words, targets, buckets), 5),
    }
    baseline = result[f"previous_adam_{args.adam_steps}"]
    for steps in (50, 100, 200):
        mine = result[f"textmill_cg_{steps}"]
        mine["speedup_over_adam"] = round(baseline["seconds"] / mine["seconds"], 1)
        mine["loss_over_adam"] = round(mine["loss"] / baseline["loss"], 4)
    report("subwords", result)


if __name__ == "__main__":
    main()
