# Databricks notebook source
# MAGIC %md
# MAGIC # textmill: prepare
# MAGIC Turn a raw corpus into clean Parquet (`doc_id, text, title, label, source, n_chars`) plus a quarantine.
# MAGIC Parameters come from widgets; outside Databricks the defaults below are used.
# MAGIC Install first: `%pip install /dbfs/path/to/textmill-<version>-py3-none-any.whl` (or the repo).

# COMMAND ----------

from textmill.config import load_conf
from textmill.notebook import widget
from textmill.jobs import run_job
from textmill.pipelines.prepare import PrepareJobConf
from textmill.session import get_spark



conf_path = widget(globals(), "conf", "conf/prepare_ag_news.yaml")
input_path = widget(globals(), "input", "../shared/data/ag_news/test.csv")
output_path = widget(globals(), "output", "out/notebook/ag_news")

# COMMAND ----------

conf = load_conf(PrepareJobConf, conf_path, overrides=[f"io.input={input_path}", f"io.output={output_path}"])
spark = get_spark(conf.spark, "textmill-prepare-notebook")  # reuses the notebook's session on Databricks
metrics = run_job("prepare", conf, spark)
metrics

# COMMAND ----------

# MAGIC %md
# MAGIC ## Look at the output and the quarantine

# COMMAND ----------

prepared = spark.read.parquet(output_path)
prepared.groupBy("label").count().show()
spark.read.parquet(conf.io.quarantine or f"{output_path}_quarantine").groupBy("reason").count().show()
