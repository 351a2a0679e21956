"""Text -> integer ids, shared by classifier training (Spark, pandas UDF) and inference (pyfunc).

One ``Featurizer`` object, saved with the model as JSON, so training and serving cannot
drift apart. Kinds:

- ``hashed_ngrams`` (the ``linear`` model): word unigrams and bigrams hashed into
  ``n_buckets`` with ``zlib.crc32`` (stable across processes and machines; never Python's
  salted ``hash()``); bigrams are hashed as ``"a b"`` with a distinct prefix;
- ``word_ids`` (the ``gru`` model): ids from a vocabulary built on the training split,
  0 = padding, 1 = unknown;
- ``char_ids`` (the ``gru`` model over characters): code points folded into a fixed table.

Tokenization is a lower-casing regex over words, numbers and single punctuation marks,
with ``<br />``-style HTML tags removed first.

``hashed_ngrams_batch`` computes the same ids for a whole batch without a Python step per
token: the batch's tokens are dictionary-encoded (``pandas.factorize``), CRC-32 runs once
per distinct token, and each bigram's CRC is assembled from its two tokens' CRCs with the
CRC combination rule (``crc(a || b) = Z_len(b)(crc(a)) ^ crc(b)``, where ``Z_n`` is the
linear map "feed n zero bytes", applied through four 256-entry tables per length, as zlib's
``crc32_combine`` does it bit-serially). Python loops over documents (the regex) and distinct
tokens only; everything per token or bigram is a numpy array operation.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

PAD, UNK = 0, 1
_TAG = re.compile(r"<[^<>]{0,40}>")
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")
_BIGRAM_SALT = b"\x1f2:"
_MAX_CACHED_TABLES = 4096


def crc_bucket(text: str, n_buckets: int, salt: bytes = b"") -> int:
    return zlib.crc32(salt + text.encode("utf-8")) % n_buckets


def _crc_byte_table() -> np.ndarray:
    """The reflected CRC-32 table (polynomial 0xEDB88320) that zlib uses."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_byte_table()
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)  # 256 x 8


def _apply(columns: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A GF(2)-linear map on 32-bit CRC states, given by the images of the 32 basis bits, applied to ``x``."""
    bits = ((x[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool)
    return np.bitwise_xor.reduce(np.where(bits, columns[None, :], np.uint32(0)), axis=1)


_BASIS = np.uint32(1) << np.arange(32, dtype=np.uint32)
_ONE_ZERO_BYTE = _CRC_TABLE[_BASIS & 0xFF] ^ (_BASIS >> 8)  # Z_1 on each basis bit


def _zero_byte_tables(length: int) -> np.ndarray:
    """4 x 256 tables of the linear map ``Z_length``: CRC state -> state after ``length`` zero bytes.

    ``Z(x) = T[0][x & 255] ^ T[1][x >> 8 & 255] ^ T[2][x >> 16 & 255] ^ T[3][x >> 24]``.
    ``Z_length`` is built by squaring (``Z_{2n} = Z_n o Z_n``), in log2(length) steps, so a
    token of a million bytes costs no more than a short one.
    """
    columns, power = _BASIS.copy(), _ONE_ZERO_BYTE.copy()
    while length:
        if length & 1:
            columns = _apply(power, columns)
        power = _apply(power, power)
        length >>= 1
    tables = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        picked = np.where(_BYTE_BITS, columns[8 * k : 8 * k + 8][None, :], np.uint32(0))
        tables[k] = np.bitwise_xor.reduce(picked, axis=1)
    return tables


@dataclass
class Featurizer:
    kind: Literal["hashed_ngrams", "word_ids", "char_ids"] = "hashed_ngrams"
    lowercase: bool = True
    strip_html: bool = True
    n_buckets: int = 2_000_000
    ngrams: int = 2
    max_tokens: int = 1000
    vocab: list[str] = field(default_factory=list)
    n_chars: int = 2048

    def __post_init__(self) -> None:
        self._index = {w: i + 2 for i, w in enumerate(self.vocab)}

    @property
    def n_ids(self) -> int:
        """Size of the id space (embedding rows)."""
        if self.kind == "hashed_ngrams":
            return self.n_buckets
        if self.kind == "word_ids":
            return len(self.vocab) + 2
        return self.n_chars + 2

    def tokens(self, text: str | None) -> list[str]:
        if not text:
            return []
        if self.strip_html:
            text = _TAG.sub(" ", text)
        if self.lowercase:
            text = text.lower()
        return _TOKEN.findall(text)[: self.max_tokens]

    def ids(self, text: str | None) -> list[int]:
        """The ids for one text; never empty (an empty text gives [UNK]) so every model can run."""
        if self.kind == "char_ids":
            body = (text or "").lower() if self.lowercase else (text or "")
            ids = [2 + (ord(c) % self.n_chars) for c in body[: self.max_tokens]]
            return ids or [UNK]
        toks = self.tokens(text)
        if self.kind == "word_ids":
            return [self._index.get(t, UNK) for t in toks] or [UNK]
        ids = [crc_bucket(t, self.n_buckets) for t in toks]
        if self.ngrams >= 2:
            ids += [crc_bucket(f"{a} {b}", self.n_buckets, _BIGRAM_SALT) for a, b in zip(toks, toks[1:])]
        return ids or [crc_bucket("", self.n_buckets)]

    def ids_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        if self.kind == "hashed_ngrams":
            ids, lengths = self.hashed_ngrams_batch(texts)
            bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
            values = ids.tolist()
            return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return [self.ids(t) for t in texts]

    def hashed_ngrams_batch(self, texts: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``ids(t)`` for every text as one flat int64 array and the number of ids per text
        (the layout ``EmbeddingBag`` takes), vectorised over the batch (see the module docstring)."""
        if self.kind != "hashed_ngrams":
            raise ValueError(f"hashed_ngrams_batch needs kind='hashed_ngrams', not {self.kind!r}")
        docs = [self.tokens(t) for t in texts]
        counts = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=object, count=int(counts.sum()))
        codes, uniques = _factorize(flat)
        encoded = [u.encode("utf-8") for u in uniques]
        unigram_crc = np.fromiter(map(zlib.crc32, encoded), dtype=np.uint32, count=len(encoded))
        token_ids = (unigram_crc.astype(np.int64) % self.n_buckets)[codes]
        bigram_ids = np.zeros(0, dtype=np.int64)
        n_bigrams = np.zeros_like(counts)
        if self.ngrams >= 2 and len(flat):
            # Position i starts a bigram when token i + 1 is in the same document.
            starts_bigram = np.ones(len(flat) - 1, dtype=bool)
            last = np.cumsum(counts)[counts > 0] - 1
            starts_bigram[last[last < len(flat) - 1]] = False
            left, right = codes[:-1][starts_bigram], codes[1:][starts_bigram]
            salted = zlib.crc32(_BIGRAM_SALT)
            prefix_crc = np.fromiter(
                (zlib.crc32(b + b" ", salted) for b in encoded), dtype=np.uint32, count=len(encoded)
            )
            byte_len = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            lengths, length_index = np.unique(byte_len, return_inverse=True)
            # One flat table: 1,024 entries per distinct right-token length.
            tables = np.concatenate([self._tables(int(n)).ravel() for n in lengths])
            base = (length_index.astype(np.int64) * 1024)[right]
            x = prefix_crc[left]
            combined = (
                tables[base + (x & 0xFF)]
                ^ tables[base + (256 + ((x >> 8) & 0xFF))]
                ^ tables[base + (512 + ((x >> 16) & 0xFF))]
                ^ tables[base + (768 + (x >> 24))]
            ) ^ unigram_crc[right]
            bigram_ids = combined.astype(np.int64) % self.n_buckets
            n_bigrams = np.maximum(counts - 1, 0)
        # Per text: its unigram ids, then its bigram ids; an empty text gets the id of "".
        per_text = counts + n_bigrams
        empty = per_text == 0
        lengths_out = np.where(empty, 1, per_text)
        out_start = np.cumsum(lengths_out) - lengths_out
        out = np.empty(int(lengths_out.sum()), dtype=np.int64)
        out[np.arange(len(flat)) + np.repeat(out_start - (np.cumsum(counts) - counts), counts)] = token_ids
        if len(bigram_ids):
            shift = out_start + counts - (np.cumsum(n_bigrams) - n_bigrams)
            out[np.arange(len(bigram_ids)) + np.repeat(shift, n_bigrams)] = bigram_ids
        out[out_start[empty]] = crc_bucket("", self.n_buckets)
        return out, lengths_out

    def _tables(self, length: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_zero_tables", {})
        if length not in cache:
            if len(cache) >= _MAX_CACHED_TABLES:  # 4 KB each; only adversarial text has this many token lengths
                cache.clear()
            cache[length] = _zero_byte_tables(length)
        return cache[length]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Featurizer:
        return cls(**data)


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes into the distinct values, in order of first appearance (a C hash table, no Python loop)."""
    import pandas as pd

    if len(values) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)
