"""One module per job, and the runner that gives a job its session and MLflow run (``runner``).

Each job module exposes ``JOB_CONF`` (its pydantic config model) and ``run(spark, conf) ->
dict[str, float]`` (the metrics it produced); the per-document steps are DataFrame
transforms (``prepare_frame``, ``with_annotations``, ``with_predictions``, ``with_doc_vectors``)
that ``streaming`` composes too. Imports every layer below (``runtime`` to ``models``).
"""
