"""What every job runs on: the ground floor, importing nothing else of textmill.

Config models and loading (``config``), the Spark session (``session``) and the one module that
knows classic from Spark Connect sessions (``session_kinds``), file systems without the JVM
(``filesystems``), MLflow runs and the registry (``tracking``, ``registry``), what a person sees
(``console``), named errors (``errors``), secret redaction (``redact``), the per-worker model
cache and its report (``worker_cache``), and partition results summed on the driver
(``partials``).
"""
