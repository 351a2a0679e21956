"""Event-driven runs: the ``watch`` job processes files as they arrive in an inbox.

- ``watch``: the job. Spark Structured Streaming's file source finds the new files and
  records each micro-batch's files in the checkpoint; ``foreachBatch`` runs the batch jobs'
  own DataFrame transforms (``prepare_frame``, ``with_annotations``, ``with_predictions``,
  ``with_doc_vectors``) on exactly those files.
- ``batches``: what makes it exactly-once for readers: per-batch staging, publishing by
  rename into ``<output>/<step>/batch=<id>/``, and the commit log ``<output>/_batches/``.

Imports ``pipelines`` and every layer below it.
"""
