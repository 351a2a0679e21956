"""Batch scoring at 100,000 documents: textmill ``classify`` vs MLflow's ``spark_udf`` vs one process.

Corpus: IMDB reviews, the 25,000 of ``imdb/train.jsonl`` and the 50,000 of
``imdb_unsup/unsup.txt``, plus the train reviews a second time under new ids, 100,000 rows
of ``doc_id, text`` (there are only 75,000 distinct reviews in the shared data). Model: the
``linear`` classifier (defaults, 1 epoch: speed, not accuracy, is measured here) trained on
the train reviews and registered as ``imdb_scoring@champion``. Contenders, same model, same
Parquet, one warm ``local[*]`` session (Python workers warmed by one small ``classify`` run):

- the textmill ``classify`` job, whole (MLflow run, model pinning and check, accounting);
- ``mlflow.pyfunc.spark_udf(..., env_manager="local")``: creating the UDF (which resolves the
  model) and writing the same columns to Parquet;
- one Python process calling the model's ``predict`` in batches of 1,024.

Featurization alone, side by side on the same texts in chunks of 512 (the model's batch):
the per-text ``Featurizer.ids`` + ``collate`` path scoring used before, and the vectorised
``hashed_ngrams_batch`` that scoring and training use now (identical ids).

python tests/benchmarks/bench_scoring.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import SHARED, report, require

IMDB = require(SHARED / "imdb" / "train.jsonl")
UNSUP = require(SHARED / "imdb_unsup" / "unsup.txt")


def main() -> None:
    import mlflow
    from pyspark.sql import functions as F

    from textmill.jobs import run_job
    from textmill.pipelines.classify import load_scorer
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-scoring")
    spark.sparkContext.setLogLevel("ERROR")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        base = {
            "spark": {"ui_enabled": False},
            "mlflow": {"tracking_uri": tracking, "experiment": "textmill-bench-scoring"},
        }
        train = spark.read.json(str(IMDB)).select(F.col("id").alias("doc_id"), "text", "label")
        train.write.parquet(str(tmp_path / "train"))
        unsup = spark.read.text(str(UNSUP)).select(
            F.concat(F.lit("u"), F.monotonically_increasing_id().cast("string")).alias("doc_id"),
            F.col("value").alias("text"),
        )
        again = train.select(F.concat(F.lit("r"), "doc_id").alias("doc_id"), "text")
        train.select("doc_id", "text").unionByName(unsup).unionByName(again).write.parquet(str(tmp_path / "corpus"))
        corpus = spark.read.parquet(str(tmp_path / "corpus"))
        rows = corpus.count()
        run_job(
            "train_classifier",
            {
                **base,
                "io": {"input": str(tmp_path / "train"), "output": str(tmp_path / "model")},
                "classifier": {"training": {"epochs": 1}, "registry": {"name": "imdb_scoring"}},
            },
            spark,
        )
        uri = "models:/imdb_scoring@champion"
        corpus.limit(2000).write.parquet(str(tmp_path / "warm"))
        run_job(
            "classify",
            {
                **base,
                "io": {"input": str(tmp_path / "warm"), "output": str(tmp_path / "warm_out")},
                "classify": {"model_uri": uri},
            },
            spark,
        )

        started = time.perf_counter()
        metrics = run_job(
            "classify",
            {
                **base,
                "io": {"input": str(tmp_path / "corpus"), "output": str(tmp_path / "scored")},
                "classify": {"model_uri": uri},
            },
            spark,
        )
        wall = time.perf_counter() - started
        textmill = {
            "wall_seconds": round(wall, 1),
            "docs_per_second": round(rows / wall, 1),
            "rows_out": metrics["rows_out"],
            "partitions": metrics["partitions"],
            "model_loads": metrics["model_loads"],
        }

        mlflow.set_tracking_uri(tracking)
        started = time.perf_counter()
        udf = mlflow.pyfunc.spark_udf(
            spark,
            uri,
            env_manager="local",
            result_type="label string, probability double, probabilities map<string,double>, error string",
        )
        resolved = time.perf_counter()
        corpus.select("doc_id", udf("text").alias("p")).select("doc_id", "p.*").write.parquet(
            str(tmp_path / "spark_udf")
        )
        wall = time.perf_counter() - started
        spark_udf = {
            "wall_seconds": round(wall, 1),
            "of_which_resolve_seconds": round(resolved - started, 1),
            "docs_per_second": round(rows / wall, 1),
            "input_partitions": corpus.rdd.getNumPartitions(),
        }

        texts = [r.text for r in corpus.select("text").collect()]
        scorer = load_scorer(str(tmp_path / "model" / "model"))
        started = time.perf_counter()
        for start in range(0, len(texts), 1024):
            scorer.predict(texts[start : start + 1024])
        wall = time.perf_counter() - started
        raw = {"wall_seconds": round(wall, 1), "docs_per_second": round(rows / wall, 1)}

        import numpy as np
        import torch

        from textmill.models.classifier import collate

        featurizer = scorer.featurizer
        started = time.perf_counter()
        for start in range(0, len(texts), 512):
            collate([(featurizer.ids(t), 0) for t in texts[start : start + 512]], "bag")
        per_text = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, len(texts), 512):
            ids, lengths = featurizer.hashed_ngrams_batch(texts[start : start + 512])
            torch.from_numpy(ids), torch.from_numpy(np.cumsum(lengths) - lengths)
        vectorised = time.perf_counter() - started
        started = time.perf_counter()
        for t in texts:
            featurizer.tokens(t)
        tokenize_only = time.perf_counter() - started
        result["featurization"] = {
            "per_text_ids_and_collate_seconds": round(per_text, 2),
            "vectorised_seconds": round(vectorised, 2),
            "tokenize_only_seconds": round(tokenize_only, 2),
            "ratio_vectorised_over_per_text": round(per_text / vectorised, 3),
        }
        result.update(
            {
                "rows": rows,
                "textmill_classify": textmill,
                "mlflow_spark_udf": spark_udf,
                "raw_single_process_predict": raw,
                "ratio_textmill_over_raw": round(textmill["docs_per_second"] / raw["docs_per_second"], 3),
                "ratio_textmill_over_spark_udf": round(textmill["docs_per_second"] / spark_udf["docs_per_second"], 3),
            }
        )
    spark.stop()
    report("scoring", result)


if __name__ == "__main__":
    main()
