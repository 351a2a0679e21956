"""Document vectors from trained word vectors: loading, SIF weighting, subword fallback.

``load_embeddings`` reads an ``export/`` directory written by ``train_embeddings``
(``embeddings.json`` says what is there). ``DocumentEmbedder`` turns token lists or texts
into the mean of their word vectors, optionally weighted by SIF (``a / (a + p(w))``, Arora
et al. 2017; the common-component removal step is not applied), and optionally using
subword vectors for words outside the vocabulary. It is used by the ``embed_docs`` UDF
(loaded once per worker) and by the ``embedder`` MLflow pyfunc (``models.embedder_pyfunc``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from textmill.vectors.embeddings import SubwordVectors

FORMAT = "textmill-embeddings/v1"


def load_embeddings(directory: str | Path) -> tuple[SubwordVectors, np.ndarray, dict]:
    """(vectors with subword fallback, word counts, manifest) from an export directory."""
    directory = Path(directory)
    manifest = json.loads((directory / "embeddings.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory}: not a {FORMAT} export (format={manifest.get('format')!r})")
    files = manifest["files"]
    words, counts = [], []
    for line in (directory / files["vocab"]).read_text(encoding="utf-8").splitlines():
        word, count = line.rsplit("\t", 1)
        words.append(word)
        counts.append(int(count))
    vectors = np.load(directory / files["vectors"]).astype(np.float32)
    ngrams = np.load(directory / files["ngrams"]).astype(np.float32) if files.get("ngrams") else None
    sub = manifest["subword"]
    return (
        SubwordVectors(words, vectors, ngrams, sub["min_n"], sub["max_n"]),
        np.asarray(counts, dtype=np.float64),
        manifest,
    )


class DocumentEmbedder:
    def __init__(
        self, directory: str | Path, sif: bool = True, sif_a: float = 1e-3, subword_fallback: bool = True
    ) -> None:
        self.vectors, counts, self.manifest = load_embeddings(directory)
        probs = counts / counts.sum()
        self.weights = sif_a / (sif_a + probs) if sif else np.ones_like(probs)
        self.sif = sif
        self.sif_a = sif_a
        self.subword_fallback = subword_fallback and self.vectors.ngram_vectors is not None
        self.lowercase = self.manifest.get("lowercase", True)
        # Unseen words get the weight of the rarest known word.
        self.unseen_weight = float(self.weights.max()) if len(self.weights) else 1.0

    def embed_tokens(self, tokens: Iterable[str] | None) -> tuple[np.ndarray | None, int]:
        """(document vector, number of tokens that had a vector); (None, 0) when none had one."""
        total, weight_sum, known = np.zeros(self.vectors.dim, dtype=np.float64), 0.0, 0
        for token in tokens or ():
            token = token.lower() if self.lowercase else token
            i = self.vectors.index.get(token)
            if i is not None:
                total += self.weights[i] * self.vectors.vectors[i]
                weight_sum += self.weights[i]
                known += 1
            elif self.subword_fallback:
                vector = self.vectors.vector_for(token)
                if vector is not None:
                    total += self.unseen_weight * vector
                    weight_sum += self.unseen_weight
                    known += 1
        if known == 0:
            return None, 0
        return (total / weight_sum).astype(np.float32), known

    def embed_texts(self, texts: Iterable[str | None]) -> list[np.ndarray | None]:
        from textmill.text.featurize import Featurizer

        featurizer = Featurizer(lowercase=self.lowercase, max_tokens=10**9)
        return [self.embed_tokens(featurizer.tokens(t))[0] for t in texts]
