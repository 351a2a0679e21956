# Databricks notebook source
# MAGIC %md
# MAGIC # 3. Word vectors, a nearest-neighbour index, and clusters
# MAGIC Train word vectors map-reduce style (`train_embeddings`, skip-gram with negative sampling), turn each document
# MAGIC into a vector (`embed_docs`), index the vectors with Annoy (`build_index`, recall measured), find every
# MAGIC document's nearest neighbours (`neighbors`) and group them without choosing k (`cluster`, Chinese Whispers).

# COMMAND ----------

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pyspark.sql import functions as F

from textmill.data.sample import write_sample_csv
from textmill.jobs import get_job, run_job
from textmill.notebook import widget
from textmill.pipelines.prepare import PrepareJobConf
from textmill.runtime.config import load_conf
from textmill.runtime.session import get_spark
from textmill.vectors.docvectors import load_embeddings

if "display" not in globals():  # a plain Python run; Databricks provides display
    from textmill.notebook import display

conf_dir = widget(globals(), "conf_dir", "conf")
output_root = widget(globals(), "output", "out/notebooks/vectors")
n_docs = int(widget(globals(), "n_docs", "400"))
spark = get_spark()


def job(name: str, *overrides: str) -> dict:
    conf = load_conf(get_job(name).conf_model, f"{conf_dir}/{name}.yaml", overrides=list(overrides))
    return run_job(name, conf, spark)


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

# COMMAND ----------

# MAGIC %md
# MAGIC ## Word vectors, and the nearest words of a few probes

# COMMAND ----------

embedded = job(
    "train_embeddings",
    f"io.input={output_root}/prepared",
    f"io.output={output_root}/embeddings",
    "embeddings.dim=32",
    "embeddings.min_count=3",
    "embeddings.subword.buckets=50000",
)
vectors, counts, manifest = load_embeddings(f"{output_root}/embeddings/export")
probes = [w for w in ("profits", "match", "software", "election") if w in vectors.index]
nearest_words = {
    w: [n for n, _ in vectors.most_similar(vectors.vectors[vectors.index[w]], topn=5, exclude=[w])] for w in probes
}
print(f"vocabulary {manifest['vocab_size']}, dim {manifest['dim']}")
for word, near in nearest_words.items():
    print(f"{word:>10}: {', '.join(near)}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Document vectors, the index, every document's neighbours, clusters

# COMMAND ----------

job(
    "embed_docs",
    f"io.input={output_root}/prepared",
    f"io.output={output_root}/doc_vectors",
    f"embed.embeddings={output_root}/embeddings",
)
indexed = job(
    "build_index",
    f"io.input={output_root}/doc_vectors",
    f"io.output={output_root}/index",
    "index.id_column=doc_id",
    "index.recall.queries=100",
)
job(
    "neighbors",
    f"io.input={output_root}/doc_vectors",
    f"io.output={output_root}/neighbors",
    f"neighbors.index={output_root}/index",
    "neighbors.id_column=doc_id",
)
clustered = job(
    "cluster", f"io.input={output_root}/neighbors", f"io.output={output_root}/clusters", "cluster.min_weight=0.5"
)
print(f"index recall@10 {indexed['recall_at_10']:.3f}; {clustered['clusters']:.0f} clusters")

prepared = spark.read.parquet(f"{output_root}/prepared").select("doc_id", "title", "label")
neighbours = spark.read.parquet(f"{output_root}/neighbors")
display(
    neighbours.join(prepared, F.col("id") == F.col("doc_id"))
    .select("title", "label", F.col("neighbors")[0]["id"].alias("nearest"))
    .limit(5)
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Do the clusters follow the topics? A plot

# COMMAND ----------

clusters = spark.read.parquet(f"{output_root}/clusters").join(prepared, F.col("id") == F.col("doc_id"))
purity = (
    clusters.groupBy("cluster_id", "label")
    .count()
    .groupBy("cluster_id")
    .agg(F.max("count").alias("top"), F.sum("count").alias("n"))
    .agg((F.sum("top") / F.sum("n")).alias("purity"))
    .first()["purity"]
)
rows = (
    spark.read.parquet(f"{output_root}/doc_vectors")
    .where("vector is not null")
    .join(clusters.select("id", "cluster_id", "label"), F.col("doc_id") == F.col("id"))
    .select("vector", "label", "cluster_id")
    .collect()
)
points = np.array([r["vector"] for r in rows])
points = points - points.mean(axis=0)
xy = points @ np.linalg.svd(points, full_matrices=False)[2][:2].T  # the first two principal components
labels = sorted({r["label"] for r in rows})
figure, (by_label, by_cluster) = plt.subplots(1, 2, figsize=(11, 4.5))
for label in labels:
    mask = np.array([r["label"] == label for r in rows])
    by_label.scatter(xy[mask, 0], xy[mask, 1], s=8, label=label)
by_label.legend(fontsize=8)
by_label.set_title("documents by topic (PCA of document vectors)")
by_cluster.scatter(xy[:, 0], xy[:, 1], s=8, c=[r["cluster_id"] for r in rows], cmap="tab20")
by_cluster.set_title(f"by cluster (purity {purity:.2f})")
figure.savefig(f"{output_root}/clusters.png", dpi=100)
display(figure)
print(f"cluster purity against the topics: {purity:.3f}")
