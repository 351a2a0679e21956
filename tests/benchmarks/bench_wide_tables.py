"""prepare on tables of thousands of columns, against plain Spark reading and writing the same file
(issue 39, item 4: a 20,000-column CSV planned for 610 s and then overflowed the JVM's stack).

Each table has 3 rows: an id, a text and width-2 short columns, a byte that is not UTF-8 in the
last column of the last row (prepare quarantines that row: both the strict CSV reader and the
Parquet value check must see it). Contenders, side by side in one warm ``local[2]`` session:
``prepare`` (every column kept in the quarantine's record, the last one as an extra column), and
plain PySpark reading the file and writing it as Parquet (the floor: Spark's own cost of that
many columns). Reports seconds, textmill / plain, and the growth from each width to the next
against the growth of the width (1.0 = linear).

The test suite proves the same at 5,000 CSV and 500 Parquet columns
(tests/test_record_limits.py); the issue's 20,000 columns live here, where their 70-100 s
belong.

    python tests/benchmarks/bench_wide_tables.py [--csv 1000 5000 20000] [--parquet 500 2000]
"""

from __future__ import annotations

import csv
import io as _io
import json
import tempfile
import time
from pathlib import Path

from common import prepare_conf, report


def table(width: int) -> tuple[list[str], list[list[str]]]:
    names = ["id", "text", *[f"c{i}" for i in range(width - 2)]]
    rows = [[f"k{r}", f"text {r}", *[str(r * i % 7) for i in range(width - 2)]] for r in range(3)]
    rows[-1][-1] = "LAST"
    return names, rows


def write(path: Path, fmt: str, width: int) -> None:
    names, rows = table(width)
    if fmt == "csv":
        buf = _io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([names, *rows])
        path.write_bytes(buf.getvalue().encode().replace(b"LAST", b"L\xffST"))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = {n: pa.array([r[i].encode() for r in rows], pa.binary()).view(pa.string()) for i, n in enumerate(names)}
    values[names[-1]] = pa.array([r[-1].encode() for r in rows[:-1]] + [b"L\xffST"], pa.binary()).view(pa.string())
    pq.write_table(pa.table(values), path)


def main() -> None:
    import argparse

    from textmill.jobs import run_job
    from textmill.runtime.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=int, nargs="*", default=[1000, 5000, 20000])
    parser.add_argument("--parquet", type=int, nargs="*", default=[500, 2000])
    args = parser.parse_args()

    def conf(inp: Path, out: Path, fmt: str, last: str):
        return prepare_conf(inp, out, fmt, "prepare.columns.doc_id=id", f"prepare.columns.extra=[{last}]")

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spark = get_spark(conf(root, root / "o", "csv", "x").spark, "textmill-bench-wide-tables")
        for fmt, widths in (("csv", args.csv), ("parquet", args.parquet)):
            previous = None
            for width in widths:
                source = root / f"{width}.{fmt}"
                write(source, fmt, width)
                entry: dict = {"columns": width}
                start = time.perf_counter()
                metrics = run_job("prepare", conf(source, root / f"out-{fmt}-{width}", fmt, f"c{width - 3}"), spark)
                entry["textmill_seconds"] = round(time.perf_counter() - start, 2)
                entry["rows"] = [metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]]
                assert entry["rows"] == [3, 2, 1], entry
                start = time.perf_counter()
                reader = spark.read.option("header", "true").csv if fmt == "csv" else spark.read.parquet
                reader(str(source)).write.mode("overwrite").parquet(str(root / f"plain-{fmt}-{width}"))
                entry["plain_spark_seconds"] = round(time.perf_counter() - start, 2)
                entry["textmill_over_plain"] = round(entry["textmill_seconds"] / entry["plain_spark_seconds"], 2)
                if previous is not None:
                    entry["growth_over_width_growth"] = round(
                        (entry["textmill_seconds"] / previous["textmill_seconds"]) / (width / previous["columns"]), 2
                    )
                previous = entry
                print(json.dumps({fmt: entry}), flush=True)
                results.setdefault(fmt, []).append(entry)
    report(
        "prepare_wide_tables",
        {
            "input": "generated: 3 rows, width-2 one-character columns, a byte that is not UTF-8 in the last cell",
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
