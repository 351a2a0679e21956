"""prepare on AG News test.csv (7,600 rows; ``--copies N``: N copies in one file): textmill on local[*] vs one plain Python process.

Both read the same CSV, apply the same AG cleaning (textmill.data.cleaning.clean_text) and write
Parquet. textmill also hashes ids, classifies rows, and checks the row accounting.
Prints JSON with wall seconds, docs/s and the ratio textmill/baseline.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import REPO, SHARED, report, require, timer

AG = require(SHARED / "ag_news" / "test.csv")


def single_process(out: Path, source: Path) -> dict:
    from textmill.data.cleaning import clean_text
    from textmill.pipelines.prepare import PrepareJobConf
    from textmill.runtime.config import load_conf

    cleaning = load_conf(
        PrepareJobConf, REPO / "conf" / "prepare_ag_news.yaml", overrides=["io.output=x"]
    ).prepare.cleaning
    labels = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci_Tech"}
    result: dict = {}
    with timer(result):
        with source.open(newline="", encoding="utf-8") as fh:
            rows = [(clean_text(t, cleaning), clean_text(d, cleaning), labels[c]) for c, t, d in csv.reader(fh)]
        table = pa.table({"title": [r[0] for r in rows], "text": [r[1] for r in rows], "label": [r[2] for r in rows]})
        pq.write_table(table, out / "baseline.parquet")
    result["rows_out"] = len(rows)
    result["docs_per_second"] = round(len(rows) / result["wall_seconds"], 1)
    return result


def textmill_prepare(out: Path, source: Path, parser: str = "strict", repeat: int = 1) -> dict:
    from textmill.jobs import run_job
    from textmill.pipelines.prepare import PrepareJobConf
    from textmill.runtime.config import load_conf
    from textmill.runtime.session import get_spark

    conf = load_conf(
        PrepareJobConf,
        REPO / "conf" / "prepare_ag_news.yaml",
        env="local",
        overrides=[
            f"io.input={source}",
            f"io.output={out / 'textmill'}",
            "spark.ui_enabled=false",
            f"prepare.csv.parser={parser}",
        ],
    )
    result: dict = {}
    with timer(result, "spark_start_seconds"):
        spark = get_spark(conf.spark, "textmill-bench-prepare")
    run_job("prepare", conf, spark)  # warm-up: Python workers, JIT, MLflow store
    with timer(result):
        for _ in range(repeat):
            metrics = run_job("prepare", conf, spark)
    result["wall_seconds"] = round(result["wall_seconds"] / repeat, 3)
    result.update({k: metrics[k] for k in ("rows_in", "rows_out", "rows_quarantined")})
    result["docs_per_second"] = round(metrics["rows_in"] / result["wall_seconds"], 1)
    return result


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--copies", type=int, default=1, help="read N copies of test.csv in one file (repeats are duplicate_doc_id)"
    )
    copies = parser.parse_args().copies
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        source = AG
        if copies > 1:
            source = out / "ag_copies.csv"
            source.write_bytes(AG.read_bytes() * copies)
        baseline = single_process(out, source)
        # textmill's strict CSV reader (the default), then Spark's parser: 3 timed runs each, one warm session.
        strict = textmill_prepare(out, source, "strict", repeat=3)
        lenient = textmill_prepare(out, source, "spark", repeat=3)
    report(
        "prepare_ag_news" if copies == 1 else f"prepare_ag_news_x{copies}",
        {
            "input": {"file": str(AG), "copies": copies, "rows": 7600 * copies},
            "textmill_local": strict,
            "textmill_local_spark_csv_parser": lenient,
            "single_process_python": baseline,
            "ratio_textmill_over_single_process_docs_per_second": round(
                strict["docs_per_second"] / baseline["docs_per_second"], 3
            ),
            "ratio_strict_reader_over_spark_parser_docs_per_second": round(
                strict["docs_per_second"] / lenient["docs_per_second"], 3
            ),
            "note": "textmill time includes MLflow logging, id hashing, quarantine and the accounting check; warm Spark session",
        },
    )


if __name__ == "__main__":
    main()
