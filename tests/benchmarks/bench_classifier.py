"""Classifier quality and speed on real data, through textmill's own jobs.

- IMDB (``imdb/train.jsonl``, 25,000 reviews, pos/neg), 10% stratified validation:
  ``linear``, ``spacy_textcat`` and ``gru``;
- BBC News (``bbc_news/``, 2,225 articles, 5 topics), 20% validation: ``linear`` and
  ``spacy_textcat`` (the same split for every kind: same seed, same fraction);
- batch scoring of the 25,000 IMDB reviews with the IMDB ``linear`` model, on the same model
  (``models:/imdb_linear@champion``) and texts: the ``classify`` job on ``local[*]`` (the
  whole job: MLflow run, model resolution and check, accounting), MLflow's own
  ``mlflow.pyfunc.spark_udf`` on the same ``local[*]`` session (creating the UDF, which
  resolves the model, then writing the same Parquet), and the raw single-process
  ``predict``; plus ``classify`` with the ``spacy_textcat`` model. Python workers are warmed
  by one ``classify`` run first.

Each corpus is first run through ``prepare``. Prints JSON with validation accuracy,
macro-F1, training seconds (the job's wall time, featurization included), docs/s and
the ratio classify/raw.

python tests/benchmarks/bench_classifier.py [--gru-epochs 3] [--skip-gru]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import SHARED, report, require, timer

IMDB = require(SHARED / "imdb" / "train.jsonl")
BBC = require(SHARED / "bbc_news")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gru-epochs", type=int, default=2)
    parser.add_argument("--skip-gru", action="store_true")
    args = parser.parse_args()

    from textmill.jobs import run_job
    from textmill.pipelines.classify import load_scorer
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    spark = get_spark(SparkConf(ui_enabled=False), "textmill-bench-classifier")
    spark.sparkContext.setLogLevel("ERROR")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        base = {
            "spark": {"ui_enabled": False},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "experiment": "textmill-bench-classifier",
            },
        }

        def job(name: str, **sections) -> tuple[dict, float]:
            started = time.perf_counter()
            metrics = run_job(name, {**base, **sections}, spark)
            return metrics, round(time.perf_counter() - started, 1)

        job(
            "prepare",
            io={"input": str(IMDB), "output": str(tmp_path / "imdb")},
            prepare={"format": "jsonl", "columns": {"doc_id": "id", "text": "text", "label": "label"}},
        )
        job(
            "prepare",
            io={"input": str(BBC), "output": str(tmp_path / "bbc")},
            prepare={
                "format": "text_files",
                "text_files": {"first_line_is_title": True},
                "columns": {"doc_id": "relpath", "label": "folder", "title": "title"},
            },
        )

        def trained(name: str, corpus: str, fraction: float, model: dict, training: dict) -> dict:
            metrics, wall = job(
                "train_classifier",
                io={"input": str(tmp_path / corpus), "output": str(tmp_path / name)},
                classifier={
                    "validation_fraction": fraction,
                    "model": model,
                    "training": training,
                    "registry": {"name": name},
                },
            )
            return {
                "val_accuracy": round(metrics["val_accuracy"], 4),
                "val_macro_f1": round(metrics["val_macro_f1"], 4),
                "rows_train": metrics["rows_train"],
                "rows_val": metrics["rows_val"],
                "train_loop_seconds": round(metrics["train_seconds"], 1),
                "job_wall_seconds": wall,
            }

        result["imdb_linear"] = trained("imdb_linear", "imdb", 0.1, {"kind": "linear"}, {"epochs": 4})
        result["bbc_linear"] = trained("bbc_linear", "bbc", 0.2, {"kind": "linear"}, {"epochs": 8, "batch_size": 16})
        result["imdb_spacy_textcat"] = trained("imdb_spacy", "imdb", 0.1, {"kind": "spacy_textcat"}, {})
        result["bbc_spacy_textcat"] = trained("bbc_spacy", "bbc", 0.2, {"kind": "spacy_textcat"}, {})
        if not args.skip_gru:
            result["imdb_gru"] = trained(
                "imdb_gru",
                "imdb",
                0.1,
                {"kind": "gru", "dim": 64, "hidden": 64, "max_tokens": 256, "vocab_size": 30000},
                {"epochs": args.gru_epochs, "lr": 0.003},
            )

        # Batch scoring: textmill classify on local[*] vs one process calling predict on the same texts.
        texts = [r.text for r in spark.read.parquet(str(tmp_path / "imdb")).select("text").collect()]
        raw: dict = {}
        scorer = load_scorer(str(tmp_path / "imdb_linear" / "model"))
        with timer(raw):
            for start in range(0, len(texts), 1024):
                scorer.predict(texts[start : start + 1024])
        raw["docs_per_second"] = round(len(texts) / raw["wall_seconds"], 1)
        job(
            "classify",
            io={"input": str(tmp_path / "imdb"), "output": str(tmp_path / "warmup")},
            classify={"model_uri": "models:/imdb_linear@champion"},
        )  # warm Python workers
        metrics, wall = job(
            "classify",
            io={"input": str(tmp_path / "imdb"), "output": str(tmp_path / "scored")},
            classify={"model_uri": "models:/imdb_linear@champion"},
        )
        textmill = {
            "wall_seconds": wall,
            "docs_per_second": round(metrics["rows_out"] / wall, 1),
            "rows": metrics["rows_out"],
            "python_workers": metrics["python_workers"],
            "model_loads": metrics["model_loads"],
        }

        import mlflow

        mlflow.set_tracking_uri(base["mlflow"]["tracking_uri"])
        # As a user runs it: resolve the same registered model, then score the same prepared Parquet.
        started = time.perf_counter()
        udf = mlflow.pyfunc.spark_udf(
            spark,
            "models:/imdb_linear@champion",
            env_manager="local",
            result_type="label string, probability double, probabilities map<string,double>, error string",
        )
        resolved = time.perf_counter()
        prepared = spark.read.parquet(str(tmp_path / "imdb"))
        prepared.select("doc_id", udf("text").alias("p")).select("doc_id", "p.*").write.parquet(
            str(tmp_path / "spark_udf")
        )
        udf_wall = round(time.perf_counter() - started, 1)
        spark_udf = {
            "wall_seconds": udf_wall,
            "of_which_resolve_seconds": round(resolved - started, 1),
            "docs_per_second": round(len(texts) / udf_wall, 1),
            "rows": spark.read.parquet(str(tmp_path / "spark_udf")).count(),
        }
        spacy_metrics, spacy_wall = job(
            "classify",
            io={"input": str(tmp_path / "imdb"), "output": str(tmp_path / "scored_spacy")},
            classify={"model_uri": "models:/imdb_spacy@champion"},
        )
        result["scoring_imdb_linear"] = {
            "textmill_classify_local": textmill,
            "mlflow_spark_udf_local": spark_udf,
            "raw_single_process_predict": raw,
            "ratio_textmill_over_raw": round(textmill["docs_per_second"] / raw["docs_per_second"], 3),
            "ratio_textmill_over_spark_udf": round(textmill["docs_per_second"] / spark_udf["docs_per_second"], 3),
        }
        result["scoring_imdb_spacy_textcat"] = {
            "textmill_classify_local": {
                "wall_seconds": spacy_wall,
                "docs_per_second": round(spacy_metrics["rows_out"] / spacy_wall, 1),
            }
        }
    spark.stop()
    report("classifier", result)


if __name__ == "__main__":
    main()
