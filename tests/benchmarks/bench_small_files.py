"""prepare on many small files against one file of the same rows (issue 39, item 5).

AG News test descriptions, each made 3x longer (like forum posts; the input is then over the
4 MB that the driver parses itself, so Spark tasks read it), written as one file and as N
small files in the same format: CSV (3 rows a file at 5,000 files, 1 at 50,000), JSON Lines
and text lines (the same), and ``text_files`` (one document a file; its one file is text lines). One warm session runs every contender;
each time is the better of two runs. Reports the ratio many/one per format and file count, and
the driver JVM's live heap after each run (a full collection first), which must not grow with
the file count beyond the listing.

    python tests/benchmarks/bench_small_files.py [--files 5000 50000] [--formats csv jsonl text_files]
"""

from __future__ import annotations

import csv
import io as _io
import json
import tempfile
import time
from pathlib import Path

from common import SHARED, live_heap_mb, prepare_conf, report, require

AG = require(SHARED / "ag_news" / "test.csv")


def rows_for(n_files: int, fmt: str) -> list[tuple[str, str, str]]:
    with AG.open(newline="", encoding="utf-8") as fh:
        base = [(t, " ".join([d] * 3)) for _, t, d in csv.reader(fh)]
    n_rows = n_files if fmt == "text_files" or n_files >= 50_000 else 3 * n_files
    return [(f"d{i}", base[i % len(base)][0], f"{base[i % len(base)][1]} #{i}") for i in range(n_rows)]


def write(folder: Path, fmt: str, rows: list[tuple[str, str, str]], n_files: int) -> None:
    folder.mkdir(parents=True)
    per = -(-len(rows) // n_files)
    for f in range(n_files):
        chunk = rows[f * per : (f + 1) * per]
        if fmt == "csv":
            buf = _io.StringIO()
            csv.writer(buf).writerows([("id", "title", "text"), *chunk])
            (folder / f"f{f:06d}.csv").write_text(buf.getvalue(), encoding="utf-8")
        elif fmt == "jsonl":
            lines = "".join(json.dumps({"id": i, "title": t, "text": d}) + "\n" for i, t, d in chunk)
            (folder / f"f{f:06d}.jsonl").write_text(lines, encoding="utf-8")
        elif fmt == "text_lines":
            (folder / f"f{f:06d}.txt").write_text("".join(d + "\n" for _, _, d in chunk), encoding="utf-8")
        else:
            (folder / f"f{f:06d}.txt").write_text("\n\n".join(d for _, _, d in chunk), encoding="utf-8")


def main() -> None:
    import argparse

    from textmill.jobs import run_job
    from textmill.runtime.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--formats", nargs="+", default=["csv", "jsonl", "text_lines", "text_files"])
    args = parser.parse_args()

    def conf(inp: Path, out: Path, fmt: str):
        columns = {"doc_id": "id", "title": "title", "text": "text"} if fmt in ("csv", "jsonl") else {}
        extra = ["prepare.text_files.glob=*.txt"] if fmt == "text_files" else []
        return prepare_conf(inp, out, fmt, *[f"prepare.columns.{k}={v}" for k, v in columns.items()], *extra)

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spark = get_spark(conf(root, root / "o", "csv").spark, "textmill-bench-small-files")
        for fmt in args.formats:
            for n_files in args.files:
                rows = rows_for(n_files, fmt)
                one, many = root / f"{fmt}-{n_files}-one", root / f"{fmt}-{n_files}-many"
                write(one, fmt, rows if fmt != "text_files" else rows[:1], 1)
                if fmt == "text_files":  # one file of the same documents: text_lines, a line each
                    (one / "f000000.txt").write_text("\n".join(d for _, _, d in rows) + "\n", encoding="utf-8")
                write(many, fmt, rows, n_files)
                entry: dict = {"rows": len(rows)}
                for label, folder in (("one_file", one), ("many_files", many)):
                    fmt_one = "text_lines" if fmt == "text_files" and label == "one_file" else fmt
                    times = []
                    for attempt in range(2):
                        start = time.perf_counter()
                        metrics = run_job("prepare", conf(folder, root / f"out-{label}-{attempt}", fmt_one), spark)
                        times.append(time.perf_counter() - start)
                    entry[label] = {
                        "format": fmt_one,
                        "files": metrics["input_files"],
                        "rows_out": metrics["rows_out"],
                        "wall_seconds": round(min(times), 2),
                        "driver_live_heap_after_mb": round(live_heap_mb(spark, readings=3)),
                    }
                    print(json.dumps({fmt: {n_files: {label: entry[label]}}}), flush=True)
                entry["ratio_many_over_one"] = round(
                    entry["many_files"]["wall_seconds"] / entry["one_file"]["wall_seconds"], 2
                )
                results.setdefault(fmt, {})[str(n_files)] = entry
    report(
        "prepare_small_files",
        {
            "input": {"file": str(AG), "note": "descriptions x3; CSV/JSONL 3 rows a file at 5,000 files, 1 at 50,000"},
            "results": results,
            "target": "ratio_many_over_one <= 3 (issue 39, item 5)",
        },
    )


if __name__ == "__main__":
    main()
