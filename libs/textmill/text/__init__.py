"""Per-document text processing that runs on executors: hashed features and tokens
(``featurize``), spaCy planned on the driver and run once per Python worker
(``spacy_annotator``), and the pandas UDFs that apply it (``udfs``).

Imports ``runtime`` and ``data``.
"""
