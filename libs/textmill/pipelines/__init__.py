"""One module per job. Each exposes ``JOB_CONF`` (its pydantic config model) and
``run(spark, conf) -> dict[str, float]`` (the metrics it produced)."""
