"""Vectors: word embeddings (sgns, ppmi_svd, subwords; ``embeddings``), document vectors
(``docvectors``) and the sharded Annoy index with exact-search recall (``ann``).

Imports ``runtime``, ``data`` and ``text``.
"""
