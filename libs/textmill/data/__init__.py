"""Corpora in, outputs out: reading inputs (``io``, ``csv_records``), cleaning text (``cleaning``),
publishing outputs atomically under a lock (``storage``), and the generated sample (``sample``).

Imports only ``runtime``.
"""
