"""MinHash signatures of one document at a time, in plain Python and numpy (what a Python worker runs).

- ``normalize``: the text two documents must share to be exact duplicates (case, Unicode NFKC,
  punctuation, whitespace: each configurable);
- ``shingle_hashes``: the set of word n-grams (or character n-grams) of the normalised text, as
  sorted distinct 32-bit hashes, stable across processes (where Python's ``hash`` is salted per
  process): a word n-gram's hash mixes its words' CRC-32s in numpy (one CRC per word, not one
  string and CRC per n-gram: 1.5x faster), a character n-gram's is its CRC-32. A text shorter
  than one shingle is one shingle, itself;
- ``signature``: ``num_perm`` minimum hashes under seeded multiply-shift hash functions
  ``((a x + b) mod 2^64) >> 32`` (a odd; Dietzfelbinger's universal family), vectorised over the
  shingles: no modulo by a prime, 2.7x faster than datasketch's ``(a x + b) mod (2^61 - 1)``;
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

MAX_HASH = np.uint64((1 << 32) - 1)
_SHIFT = np.uint64(32)
# Word n-gram mixing: a multiplier per position (golden-ratio based), then a 64-bit finaliser.
_MIX, _FINAL = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
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
    """Sorted distinct 32-bit hashes (uint32) of the ``size``-grams of words (``kind: word``: the
    words' CRC-32s mixed, position by position) or of characters (``char``: CRC-32) of a
    normalised text; a text shorter than one shingle is one shingle. An empty text has none."""
    if not normalized:
        return np.empty(0, dtype=np.uint32)
    if kind != "word":
        if len(normalized) <= size:
            grams = [normalized]
        else:
            grams = [normalized[i : i + size] for i in range(len(normalized) - size + 1)]
        return np.unique(np.fromiter((zlib.crc32(g.encode("utf-8", "surrogatepass")) for g in grams), np.uint32))
    words = normalized.split(" ")
    crcs = np.fromiter(
        (zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words), dtype=np.uint64, count=len(words)
    )
    n = max(1, len(words) - size + 1)
    width = min(size, len(words))  # a text shorter than one shingle: one shingle of all its words
    with np.errstate(over="ignore"):
        mixed = crcs[:n].copy()
        for k in range(1, width):
            mixed = mixed * _MIX + crcs[k : n + k]
        mixed ^= mixed >> np.uint64(31)
        mixed *= _FINAL
        mixed ^= mixed >> np.uint64(29)
    return np.unique((mixed >> _SHIFT).astype(np.uint32))


@dataclass(frozen=True)
class Permutations:
    """``num_perm`` seeded multiply-shift hash functions ``((a x + b) mod 2^64) >> 32``, a odd."""

    a: np.ndarray
    b: np.ndarray

    @classmethod
    def make(cls, num_perm: int, seed: int) -> Permutations:
        rng = np.random.RandomState(seed)
        a = rng.randint(0, 1 << 64, size=num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.randint(0, 1 << 64, size=num_perm, dtype=np.uint64)
        return cls(a, b)


def signature(hashes: np.ndarray, perms: Permutations) -> np.ndarray:
    """The MinHash signature (uint32, one value per permutation) of a set of shingle hashes; a set
    with no shingle has the all-maximum signature (it shares no band with anything real)."""
    if hashes.size == 0:
        return np.full(perms.a.size, MAX_HASH, dtype=np.uint32)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as multiply-shift needs
        permuted = (np.outer(hashes.astype(np.uint64), perms.a) + perms.b) >> _SHIFT
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
