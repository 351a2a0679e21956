"""MinHash signatures of one document at a time, in plain Python and numpy (what a Python worker runs).

- ``normalize``: the text two documents must share to be exact duplicates (case, Unicode NFKC,
  punctuation, whitespace: each configurable);
- ``shingle_hashes``: the set of word n-grams (or character n-grams) of the normalised text, as
  sorted distinct 32-bit hashes (CRC-32: stable across processes, where Python's ``hash`` is
  salted per process). A text shorter than one shingle is one shingle, itself;
- ``signature``: ``num_perm`` minimum hashes under seeded permutations ``(a x + b) mod p``
  (p = 2^61 - 1, datasketch's scheme), vectorised over the shingles;
- ``band_keys``: one 64-bit key per band of ``rows`` signature values: documents that share a
  key in a band are candidates;
- ``choose_bands``: the bands x rows that minimise the weighted false-positive and
  false-negative probability at a Jaccard ``threshold`` (datasketch's ``_optimal_param``), with
  those probabilities.

This module imports only numpy and the standard library, so the worker that runs it starts fast.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass

import numpy as np

MERSENNE = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+", re.UNICODE)


def normalize(text: str, lowercase: bool = True, nfkc: bool = True, punctuation: bool = True) -> str:
    """``text`` as compared: NFKC (compatibility forms folded: full-width letters, ligatures),
    lowercased, punctuation removed (``punctuation``), whitespace runs made one space, trimmed."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if punctuation:
        text = _PUNCTUATION.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def exact_key(normalized: str) -> str:
    """The key two documents with the same normalised text share: a 128-bit BLAKE2 digest, hex."""
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def shingle_hashes(normalized: str, kind: str = "word", size: int = 5) -> np.ndarray:
    """Sorted distinct CRC-32 hashes (uint32) of the ``size``-grams of words (``kind: word``) or of
    characters (``char``) of a normalised text; a text shorter than one shingle is one shingle.
    An empty text has no shingle."""
    units: list[str] | str = normalized.split(" ") if kind == "word" else normalized
    if not normalized:
        return np.empty(0, dtype=np.uint32)
    joiner = " " if kind == "word" else ""
    if len(units) <= size:
        grams = [normalized]
    else:
        grams = [joiner.join(units[i : i + size]) for i in range(len(units) - size + 1)]
    hashes = [zlib.crc32(g.encode("utf-8", "surrogatepass")) for g in grams]
    return np.unique(np.asarray(hashes, dtype=np.uint32))


@dataclass(frozen=True)
class Permutations:
    """``num_perm`` seeded hash permutations ``(a x + b) mod p``, masked to 32 bits (datasketch's)."""

    a: np.ndarray
    b: np.ndarray

    @classmethod
    def make(cls, num_perm: int, seed: int) -> Permutations:
        rng = np.random.RandomState(seed)
        a = rng.randint(1, int(MERSENNE), size=num_perm, dtype=np.uint64)
        b = rng.randint(0, int(MERSENNE), size=num_perm, dtype=np.uint64)
        return cls(a, b)


def signature(hashes: np.ndarray, perms: Permutations) -> np.ndarray:
    """The MinHash signature (uint32, one value per permutation) of a set of shingle hashes; a set
    with no shingle has the all-maximum signature (it shares no band with anything real)."""
    if hashes.size == 0:
        return np.full(perms.a.size, MAX_HASH, dtype=np.uint32)
    # uint64 products wrap modulo 2^64 before the modulo p, as datasketch computes them.
    with np.errstate(over="ignore"):
        permuted = (np.outer(hashes.astype(np.uint64), perms.a) + perms.b) % MERSENNE & MAX_HASH
    return permuted.min(axis=0).astype(np.uint32)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One signed 64-bit key per band: the first 8 bytes of BLAKE2 over the band's ``rows`` values.
    Equal bands give equal keys; different bands collide with probability about 2^-64."""
    keys = np.empty(bands, dtype=np.int64)
    for i in range(bands):
        digest = hashlib.blake2b(sig[i * rows : (i + 1) * rows].tobytes(), digest_size=8).digest()
        keys[i] = int.from_bytes(digest, "little", signed=True)
    return keys


def _integral(f, lo: float, hi: float, steps: int = 200) -> float:
    xs = np.linspace(lo, hi, steps + 1)
    ys = f(xs)
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2)


def false_positive_probability(threshold: float, bands: int, rows: int) -> float:
    """The probability mass of pairs under ``threshold`` that share a band (integrated over Jaccard)."""
    return _integral(lambda s: 1 - (1 - s**rows) ** bands, 0.0, threshold)


def false_negative_probability(threshold: float, bands: int, rows: int) -> float:
    """The probability mass of pairs at or over ``threshold`` that share no band."""
    return _integral(lambda s: 1 - (1 - (1 - s**rows) ** bands), threshold, 1.0)


@dataclass(frozen=True)
class Banding:
    bands: int
    rows: int
    false_positive: float
    false_negative: float


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> Banding:
    """The bands x rows (bands x rows <= num_perm) with the least ``fp_weight x FP + fn_weight x FN``."""
    best: Banding | None = None
    best_error = float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = false_positive_probability(threshold, bands, rows)
            fn = false_negative_probability(threshold, bands, rows)
            error = fp_weight * fp + fn_weight * fn
            if error < best_error - 1e-15:
                best, best_error = Banding(bands, rows, fp, fn), error
    assert best is not None
    return best
