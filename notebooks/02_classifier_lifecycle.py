# Databricks notebook source
# MAGIC %md
# MAGIC # 2. A classifier through MLflow: train, register, move the alias, score, serve
# MAGIC `train_classifier` trains a torch text classifier on prepared news, logs it to MLflow and registers it
# MAGIC (the `champion` alias moves only when the validation metric improves). We then point a second alias,
# MAGIC `production`, at the version we accept, score the corpus with `models:/<name>@production`, and call the
# MAGIC model over REST. On Databricks, set `serving_url` to a Model Serving endpoint; left empty, the notebook
# MAGIC starts `mlflow models serve` on this machine for the REST cell.

# COMMAND ----------

import json
import urllib.request

from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from textmill.data.sample import write_sample_csv
from textmill.jobs import run_job
from textmill.notebook import serving, widget
from textmill.pipelines.classify import ClassifyJobConf
from textmill.pipelines.prepare import PrepareJobConf
from textmill.pipelines.train_classifier import TrainClassifierJobConf
from textmill.runtime.config import load_conf
from textmill.runtime.session import get_spark

if "display" not in globals():  # a plain Python run; Databricks provides display
    from textmill.notebook import display

conf_dir = widget(globals(), "conf_dir", "conf")
output_root = widget(globals(), "output", "out/notebooks/classifier")
model_name = widget(globals(), "model_name", "textmill-news-notebook")
n_docs = int(widget(globals(), "n_docs", "400"))
serving_url = widget(globals(), "serving_url", "")
spark = get_spark()

# COMMAND ----------

# MAGIC %md
# MAGIC ## Labelled data: a generated news sample, prepared

# COMMAND ----------

sample = write_sample_csv(f"{output_root}/sample/news.csv", n_docs=n_docs)
run_job(
    "prepare",
    load_conf(
        PrepareJobConf,
        f"{conf_dir}/workflows/news_prepare.yaml",
        overrides=[f"io.input={sample}", f"io.output={output_root}/prepared"],
    ),
    spark,
)
display(spark.read.parquet(f"{output_root}/prepared").groupBy("label").count().orderBy("label"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Train, log and register

# COMMAND ----------

train_conf = load_conf(
    TrainClassifierJobConf,
    f"{conf_dir}/train_classifier.yaml",
    overrides=[
        f"io.input={output_root}/prepared",
        f"io.output={output_root}/model",
        f"classifier.registry.name={model_name}",
    ],
)
trained = run_job("train_classifier", train_conf, spark)
print(f"validation accuracy {trained['val_accuracy']:.3f}, macro-F1 {trained['val_macro_f1']:.3f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The registry: versions, and moving the `production` alias to the champion we accept

# COMMAND ----------

client = MlflowClient()
champion = client.get_model_version_by_alias(model_name, "champion")
client.set_registered_model_alias(model_name, "production", champion.version)
versions = [
    (v.version, v.run_id, sorted(client.get_model_version(model_name, v.version).aliases))
    for v in client.search_model_versions(f"name = '{model_name}'")
]
print(versions)
production_uri = f"models:/{model_name}@production"

# COMMAND ----------

# MAGIC %md
# MAGIC ## Score the corpus with whatever `production` points at

# COMMAND ----------

classify_conf = load_conf(
    ClassifyJobConf,
    f"{conf_dir}/classify.yaml",
    overrides=[
        f"io.input={output_root}/prepared",
        f"io.output={output_root}/classified",
        f"classify.model_uri={production_uri}",
        "classify.evaluate=true",
    ],
)
scored = run_job("classify", classify_conf, spark)
classified = spark.read.parquet(f"{output_root}/classified")
display(classified.groupBy("label").agg(F.count("*").alias("docs"), F.avg("probability").alias("mean_probability")))
print(f"accuracy against the labels: {scored['eval_accuracy']:.3f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## REST: the same model behind an endpoint

# COMMAND ----------

texts = [
    "The striker scored twice in the final match of the season.",
    "Shares fell after the bank reported weaker quarterly profits.",
]


def invoke(url: str) -> list[dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps({"inputs": texts}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["predictions"]


if serving_url:
    rest_predictions = invoke(serving_url)
else:
    with serving(production_uri) as url:
        rest_predictions = invoke(url)
for text, prediction in zip(texts, rest_predictions):
    print(f"{prediction['label']:>10} {prediction['probability']:.2f}  {text}")
