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
"""
from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal

PAD, UNK = 0, 1
_TAG = re.compile(r"<[^<>]{0,40}>")
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")
_BIGRAM_SALT = b"\x1f2:"


def crc_bucket(text: str, n_buckets: int, salt: bytes = b"") -> int:
    return zlib.crc32(salt + text.encode("utf-8")) % n_buckets


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
        return [self.ids(t) for t in texts]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Featurizer":
        return cls(**data)
