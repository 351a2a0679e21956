# Databricks notebook source
# MAGIC %md
# MAGIC # 4. Incremental processing with `watch`
# MAGIC New files land in an inbox all day. `watch` takes each one exactly once (Spark Structured Streaming's file
# MAGIC source, `available_now`), runs `prepare` and `annotate` on it, and publishes each micro-batch whole under
# MAGIC `<output>/<step>/batch=<id>/`. Run it as often as you like: files already seen are never read again.
# MAGIC On Databricks, a job with a file-arrival trigger runs the same job (see `jobs/workflows/databricks/`).

# COMMAND ----------

import json
import os
from pathlib import Path

from pyspark.sql import functions as F

from textmill.data.sample import write_sample_csv
from textmill.jobs import run_job
from textmill.notebook import widget
from textmill.runtime.config import load_conf
from textmill.runtime.session import get_spark
from textmill.streaming.watch import WatchJobConf

if "display" not in globals():  # a plain Python run; Databricks provides display
    from textmill.notebook import display

conf_dir = widget(globals(), "conf_dir", "conf")
output_root = widget(globals(), "output", "out/notebooks/watch")
inbox = widget(globals(), "inbox", f"{output_root}/inbox")
spark = get_spark()
Path(inbox).mkdir(parents=True, exist_ok=True)


def deliver(name: str, n_docs: int, seed: int) -> None:
    """A producer: write elsewhere, then rename into the inbox (never write into it directly)."""
    staged = write_sample_csv(f"{output_root}/outgoing/{name}", n_docs=n_docs, seed=seed, id_prefix=Path(name).stem)
    os.rename(staged, f"{inbox}/{name}")


def watch() -> dict:
    conf = load_conf(
        WatchJobConf,
        f"{conf_dir}/workflows/news_watch.yaml",
        overrides=[f"watch.inbox={inbox}", f"io.output={output_root}/watched", "watch.max_files_per_batch=2"],
    )
    return run_job("watch", conf, spark)


# COMMAND ----------

# MAGIC %md
# MAGIC ## Morning: three files arrive

# COMMAND ----------

for i in range(3):
    deliver(f"morning-{i}.csv", n_docs=40, seed=100 + i)
morning = watch()
print(
    f"{morning['batches']:.0f} batches, {morning['files']:.0f} files, {morning['total_rows_out']:.0f} documents "
    "published"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Afternoon: one more file; only it is read

# COMMAND ----------

deliver("afternoon-0.csv", n_docs=40, seed=200)
afternoon = watch()
again = watch()  # nothing new: nothing to do
print(f"afternoon: {afternoon['files']:.0f} file(s); a run with nothing new read {again['files']:.0f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## What was published, batch by batch

# COMMAND ----------

watched = spark.read.parquet(f"{output_root}/watched/prepare")
display(
    watched.groupBy("batch")
    .agg(F.count("*").alias("documents"), F.countDistinct("source").alias("files"))
    .orderBy("batch")
)
commit_log = [
    json.loads(p.read_text())
    for p in sorted(Path(f"{output_root}/watched/_batches").glob("*.json"), key=lambda p: int(p.stem))
]
for record in commit_log:
    steps = record["steps"]
    print(
        f"batch {record['batch_id']}: {len(record['files'])} file(s), prepare {steps['prepare']['rows_out']} rows "
        f"(+{steps['prepare']['rows_quarantined']} quarantined), annotate {steps['annotate']['rows_out']} rows"
    )
annotated = spark.read.parquet(f"{output_root}/watched/annotate")
display(annotated.select(F.explode("entities.label").alias("label")).groupBy("label").count().orderBy(F.desc("count")))
