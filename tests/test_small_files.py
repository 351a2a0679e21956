"""Many small files (issue 39, item 5): read in a few packed tasks, every record once, in order.

5,000 small CSV files of 15,000 rows took 273 s where one file of the same rows took 3.2 s: the
strict reader ran one Spark task per file and handed each task the plan of every file. Spark's
own readers listed 5,000 exact paths with a distributed job (11-16 s before reading a byte).
``local_files`` packs pieces into tasks by bytes; ``text_files`` of local files is read by the
same packed Python reader; Spark's readers list local files on the driver. The speed is measured
in tests/benchmarks/bench_small_files.py; these tests prove the packing and that it loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmill.data import io, local_files
from textmill.data.csv_records import TOO_LONG
from textmill.data.io import CsvConf, TextFilesConf, strict_csv_spec
from textmill.runtime.errors import ColumnNotFoundError
from textmill.runtime.session_kinds import default_parallelism

SIZES = st.lists(st.integers(0, 3 * local_files.SPLIT_BYTES), min_size=1, max_size=300)


@given(sizes=SIZES, parallelism=st.integers(1, 64))
def test_packing_keeps_every_piece_once_in_order_within_the_task_size(sizes, parallelism):
    limit = local_files.task_bytes(sum(s + local_files.OPEN_COST_BYTES for s in sizes), parallelism)
    starts = local_files.pack(sizes, limit)
    bounds = [*starts, len(sizes)]
    assert starts[0] == 0 and bounds == sorted(set(bounds)), starts  # contiguous, ordered, none empty
    for a, b in zip(bounds, bounds[1:]):
        cost = sum(s + local_files.OPEN_COST_BYTES for s in sizes[a:b])
        assert cost <= limit or b - a == 1, (a, b, cost, limit)  # only a piece larger than a task is alone
        if b < len(sizes):  # a task is closed only when the next piece would not fit
            assert cost + sizes[b] + local_files.OPEN_COST_BYTES > limit
    assert limit <= local_files.SPLIT_BYTES


def test_packing_gives_every_core_a_task_and_no_task_over_a_split():
    small = [1000] * 5000
    total = sum(s + local_files.OPEN_COST_BYTES for s in small)
    assert len(local_files.pack(small, local_files.task_bytes(total, 8))) == 8
    big = [local_files.SPLIT_BYTES] * 10
    assert len(local_files.pack(big, local_files.task_bytes(10 * local_files.SPLIT_BYTES, 2))) == 10


def _csv_files(root: Path, counts: list[int]) -> list[tuple[str, str]]:
    files = []
    n = 0
    for i, count in enumerate(counts):
        path = root / f"f{i:04d}.csv"
        lines = ["id,text"] + [f"k{n + j},text {n + j}" for j in range(count)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        n += count
        files.append((str(path), f"file:{path}"))
    return files


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.lists(st.integers(0, 4), min_size=40, max_size=200))
def test_many_small_csv_files_are_read_by_a_few_tasks_every_record_once_in_order(spark, counts):
    root = Path(tempfile.mkdtemp(prefix="textmill-small-csv-"))
    try:
        files = _csv_files(root, counts)
        spec, _ = strict_csv_spec(files, CsvConf())
        on_executors = io.csv_records.frame(spark, spec, on_driver=False)
        rows = [(r["id"], r["_tm_source"]) for r in on_executors.collect()]
        expected = [(f"k{sum(counts[:i]) + j}", uri) for i, (_, uri) in enumerate(files) for j in range(counts[i])]
        assert rows == expected
        assert rows == [(r["id"], r["_tm_source"]) for r in io.csv_records.frame(spark, spec, on_driver=True).collect()]
        # One task per file before: a few now, however many files.
        assert on_executors.rdd.getNumPartitions() <= 2 * default_parallelism(spark), len(files)
    finally:
        shutil.rmtree(root, ignore_errors=True)


CONTENTS = st.one_of(
    st.text(min_size=1, max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=60),  # often not UTF-8: latin-1 then decodes it
    st.sampled_from([b"title\nbody", b"\xff\xfe", b"x" * 95, b"x" * 96, b"x" * 97, b"\r\n", b"a\r\nb"]),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    contents=st.lists(CONTENTS, min_size=1, max_size=40),
    title=st.booleans(),
    encodings=st.sampled_from([["utf-8", "latin-1"], ["utf-8"], ["utf-16"]]),
)
def test_local_text_files_read_by_textmill_equal_spark_s_binary_file_reader(spark, contents, title, encodings):
    """The packed Python reader of local files against Spark's binaryFile reader (what reads other
    schemes), driver and executors alike: the same text, title, folder, name, relpath and errors."""
    root = Path(tempfile.mkdtemp(prefix="textmill-small-text-"))
    try:
        (root / "in").mkdir()
        uris = []
        for i, content in enumerate(contents):
            path = root / "in" / f"d{i:03d}.txt"
            path.write_bytes(content)
            uris.append(f"file:{path}")
        conf = TextFilesConf(encodings=encodings, first_line_is_title=title)
        columns = ["text", *(["title"] if title else []), "folder", "name", "relpath", io.DECODE_ERROR]

        def rows(df):
            return sorted((tuple(r) for r in df.select(*columns, io.SUSPECT).collect()), key=lambda r: r[-3])

        def ours(max_bytes):
            read = {}
            saved = local_files.DRIVER_READ_BYTES
            for where, threshold in (("driver", saved), ("executors", -1)):
                local_files.DRIVER_READ_BYTES = threshold
                try:
                    read[where] = rows(io.read_text_files(spark, uris, conf, max_bytes=max_bytes))
                finally:
                    local_files.DRIVER_READ_BYTES = saved
            assert read["driver"] == read["executors"]
            return read["driver"]

        whole = ours(None)
        assert whole == rows(io.read_text_files(spark, str(root / "in"), conf))
        # A file over max_bytes is never read: its row says so, with no text; the rest are as before.
        limited = ours(96)
        for row, full in zip(limited, whole):
            name = full[columns.index("name")]
            if len(contents[int(name[1:4])]) > 96:
                assert row[0] is None and row[-1].startswith(TOO_LONG) and row[-2] is None, row
            else:
                assert row == full
    finally:
        shutil.rmtree(root, ignore_errors=True)


FLAT_VALUES = st.one_of(
    st.text(max_size=12), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.none(), st.booleans()
)
KEYS = st.sampled_from(["id", "text", "title", "label", "", "a b", "é", "😀", "Z", "_x"])
FLAT_LINES = st.builds(
    lambda pairs, ascii_only: json.dumps(dict(pairs), ensure_ascii=ascii_only).encode("utf-8"),
    st.lists(st.tuples(KEYS, FLAT_VALUES), max_size=5),
    st.booleans(),
)
# What only Spark's inference may read: nested values, top-level arrays (of objects: records),
# and lines Python's strict parser refuses that Jackson may read (single quotes, NaN, trailing text,
# bytes that are not UTF-8, a tab).
NEEDS_SPARK_LINES = [
    b'{"id": "n1", "meta": {"a": 1}}',
    b'{"id": "n2", "tags": ["x", "y"]}',
    b'[{"id": "r1"}, {"id": "r2"}]',
    b"[1, 2]",
    b"{'id': 'single-quoted'}",
    b'{"id": "nan", "score": NaN}',
    b'{"id": "t1"} trailing',
    b"{not json",
    b'{"id": "bad \xff byte"}',
    b"\t",
]
# Lines that are no object, blank lines, a repeated key, and a key that clashes in case with "id".
OTHER_ODD_LINES = [b'"just a string"', b"5", b"", b"   ", b'{"id": "d1", "id": "d2"}', b'{"ID": "upper"}']
ODD_LINES = st.sampled_from(NEEDS_SPARK_LINES + OTHER_ODD_LINES)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(
        st.lists(
            st.tuples(
                st.one_of(FLAT_LINES, FLAT_LINES, ODD_LINES), st.sampled_from([b"", b"\xef\xbb\xbf"]), st.booleans()
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=5,
    ),
    final_newline=st.booleans(),
)
def test_local_line_files_read_by_textmill_equal_spark_s_line_readers(spark, files, final_newline):
    """JSON Lines and text lines of local files read by the packed Python reader (and the JSON
    schema found in Python) against Spark's readers on the same folder: the same columns and rows,
    driver and executors alike; the same one-line error for a repeated key or keys that differ only
    in case; and Spark's inference exactly where Python cannot vouch for a line."""
    root = Path(tempfile.mkdtemp(prefix="textmill-small-lines-"))
    try:
        (root / "in").mkdir()
        uris = []
        for i, lines in enumerate(files):
            body = b"\n".join(bom + line + (b"\r" if cr else b"") for line, bom, cr in lines)
            path = root / "in" / f"f{i:03d}.jsonl"
            path.write_bytes(body + (b"\n" if final_newline else b"") or b"\n")
            uris.append(f"file:{path}")
        listed = io.local_line_files(uris)
        assert listed is not None and [u for u, _ in listed] == uris

        def outcome(read, *args):
            try:
                df = read(spark, *args)
            except ColumnNotFoundError as exc:
                return "error", str(exc)
            return "spark infers" if df is None else (df.columns, sorted((tuple(r) for r in df.collect()), key=repr))

        needs_spark = any(line in NEEDS_SPARK_LINES for lines in files for line, _, _ in lines)
        for fmt, spark_reader in (("text_lines", io.read_text_lines), ("jsonl", io.read_jsonl)):
            ours = {}
            saved = local_files.DRIVER_READ_BYTES
            for where, threshold in (("driver", saved), ("executors", -1)):
                local_files.DRIVER_READ_BYTES = threshold
                try:
                    ours[where] = outcome(io.read_local_line_files, listed, fmt)
                finally:
                    local_files.DRIVER_READ_BYTES = saved
            assert ours["driver"] == ours["executors"]
            if fmt == "jsonl" and needs_spark:
                assert ours["driver"] == "spark infers"
                continue
            theirs = outcome(spark_reader, f"file:{root / 'in'}", True)
            assert ours["driver"] == theirs, fmt
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_spark_s_readers_list_local_files_in_the_driver_only_while_reading_them(spark):
    key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
    before = spark.conf.get(key)
    with io.reading_local_files(spark, ["file:/data/a.jsonl"]):
        assert spark.conf.get(key) == io.LOCAL_FILES_SQL_CONF[key]
        assert spark.conf.get("spark.sql.files.openCostInBytes") == str(local_files.OPEN_COST_BYTES)
    assert spark.conf.get(key) == before
    try:
        with io.reading_local_files(spark, ["file:/data/a.jsonl"]):
            raise KeyError("a job's error")
    except KeyError:
        pass
    assert spark.conf.get(key) == before
    with io.reading_local_files(spark, ["s3a://bucket/a.jsonl", "file:/data/b.jsonl"]):
        assert spark.conf.get(key) == before  # an object store keeps Spark's distributed listing


def test_keys_that_differ_only_in_case_on_different_lines_are_one_line_on_both_json_paths(spark, tmp_path):
    """Shrunk: Spark's inference merged ``id`` and ``ID`` of two lines into one column and read the
    other spelling's values as null (a document's text lost, exit 0); textmill's reader of many
    small files refused them. Both now refuse them in one line naming both."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "f.jsonl"
    path.write_bytes(b'{"id": "a", "text": "x"}\n{"ID": "b", "text": "y"}\n')
    for read in (
        lambda: io.read_jsonl(spark, f"file:{path}"),
        lambda: io.read_local_line_files(spark, io.local_line_files([f"file:{path}"]), "jsonl"),
    ):
        try:
            read()
        except ColumnNotFoundError as exc:
            assert "the JSON keys 'ID' and 'id' differ only in case" in str(exc)
        else:
            raise AssertionError("keys that differ only in case were read")
    # Told to tell them apart (what the error suggests), both readers give both columns.
    spark.conf.set("spark.sql.caseSensitive", "true")
    try:
        for df in (
            io.read_jsonl(spark, f"file:{path}"),
            io.read_local_line_files(spark, io.local_line_files([f"file:{path}"]), "jsonl"),
        ):
            assert sorted((tuple(r) for r in df.select("id", "ID", "text").collect()), key=lambda r: r[2]) == [
                ("a", None, "x"),
                (None, "b", "y"),
            ]
    finally:
        spark.conf.unset("spark.sql.caseSensitive")


def test_shrunk_a_byte_order_mark_that_starts_a_file_is_not_part_of_its_first_line():
    assert local_files.split_lines(b"\xef\xbb\xbf{\xff}\n\xef\xbb\xbfb") == [b"{\xff}", b"\xef\xbb\xbfb"]
    assert local_files.split_lines(b"\xef\xbb\xbf") == [] and local_files.split_lines(b"\n") == [b""]


def test_many_small_files_in_every_format_give_every_row_once(spark, job_conf, tmp_path, monkeypatch):
    """prepare end to end on 120 small files per format: rows in = out + quarantined, each once;
    the line formats both by Spark's readers and (from 100 files on) by textmill's."""
    from textmill.jobs import run_job
    from textmill.pipelines import prepare

    read_locally = []

    def counted(*args):
        read_locally.append(args[-1])
        return local_line_reader(*args)

    local_line_reader = io.read_local_line_files
    monkeypatch.setattr(io, "read_local_line_files", counted)
    cases = [("csv", None), ("jsonl", None), ("jsonl", 100), ("text_lines", None), ("text_lines", 100)]
    for fmt, min_files in [*cases, ("text_files", None)]:
        monkeypatch.setattr(prepare, "LOCAL_LINES_MIN_FILES", min_files or prepare.FOLDER_READ_MIN_FILES)
        folder = tmp_path / f"{fmt}-{min_files}"
        folder.mkdir()
        for i in range(120):
            if fmt == "csv":
                body = f"id,text\nk{i}a,a {i}\nk{i}b,b {i}\n"
            elif fmt == "jsonl":
                body = f'{{"id": "k{i}a", "text": "a {i}"}}\n{{"id": "k{i}b", "text": "b {i}"}}\n'
            elif fmt == "text_lines":
                body = f"a {i}\nb {i}\n"
            else:
                body = f"a {i} b {i}"
            (folder / f"f{i:03d}.{'txt' if fmt.startswith('text') else fmt}").write_text(body, encoding="utf-8")
        os.chmod(folder, 0o755)
        columns = {"doc_id": "id"} if fmt in ("csv", "jsonl") else {}
        out = tmp_path / f"out-{fmt}-{min_files}"
        metrics = run_job(
            "prepare",
            job_conf(io={"input": str(folder), "output": str(out)}, prepare={"format": fmt, "columns": columns}),
            spark,
        )
        texts = sorted(r.text for r in spark.read.parquet(str(out)).collect())
        per_file = 1 if fmt == "text_files" else 2
        assert metrics["input_files"] == 120 and metrics["rows_in"] == metrics["rows_out"] == 120 * per_file, fmt
        expected = (
            [f"a {i} b {i}" for i in range(120)]
            if fmt == "text_files"
            else [f"{x} {i}" for i in range(120) for x in "ab"]
        )
        assert texts == sorted(expected), fmt
    assert read_locally == ["jsonl", "text_lines"]
