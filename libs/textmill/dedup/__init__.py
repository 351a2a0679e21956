"""Duplicate and near-duplicate documents: MinHash signatures (``minhash``), connected components
on DataFrames (``components``), and the DataFrame transforms that the ``dedup`` job composes
(``transforms``)."""
