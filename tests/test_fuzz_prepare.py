"""Property-based fuzzing of prepare's readers: generated corpora with planted faults (``fuzz_corpora``).

Two levels, both seeded and bounded here (CI); ``tests/benchmarks/fuzz_prepare.py`` (``make fuzz``)
runs the same properties with thousands of examples:

- the strict CSV parser alone, on the bytes of generated files (no Spark: fast);
- the whole ``prepare`` job on one shared SparkSession, every input format, checking that every
  good record is published once and byte for byte, every planted bad record is quarantined
  with its reason, rows in = out + quarantined, links are never followed and nothing outside
  ``io.output`` changes.

Failing examples that Hypothesis shrank are kept as plain regression tests at the end.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fuzz_corpora import FORMATS, Corpus, CorpusFile, Record, check_outcome, corpora, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmill.data.csv_records import CsvDialect, _physical_lines, frame, plan_parts, read_records
from textmill.data.io import CsvConf, strict_csv_spec
from textmill.jobs import run_job

PARSER_EXAMPLES = int(os.environ.get("TEXTMILL_FUZZ_PARSER_EXAMPLES", "300"))
JOB_EXAMPLES = int(os.environ.get("TEXTMILL_FUZZ_JOB_EXAMPLES", "20"))
DRIVER_EXAMPLES = int(os.environ.get("TEXTMILL_FUZZ_DRIVER_EXAMPLES", "25"))
CSV_FORMATS = ["csv", "csv_headerless", "csv_multiline"]


def parse_file(corpus: Corpus, f: CorpusFile) -> list:
    dialect = CsvDialect(multiline=corpus.fmt == "csv_multiline")
    records = list(read_records(_physical_lines(io.BytesIO(corpus._file_bytes(f))), dialect, width=3))
    return records[1:] if corpus.fmt != "csv_headerless" else records


def check_parsed(corpus: Corpus, f: CorpusFile) -> None:
    """The parser's view of one file: one record per generated record, the bad ones rejected or undecodable."""
    parsed = parse_file(corpus, f)
    assert len(parsed) == len(f.records), ([r.raw for r in parsed], f.records)
    order = f.header_order or ["id", "title", "text"]
    for want, got in zip(f.records, parsed):
        assert (want.doc_id or want.key).encode() in got.raw
        if want.fault in ("unclosed_quote", "wrong_field_count"):
            assert got.fields is None and got.problem, (want, got)
        elif want.bad_bytes is not None:
            assert got.undecodable and want.bad_bytes in got.raw
        else:
            values = dict(zip(order, got.fields))
            assert (values["id"], values["text"]) == (want.doc_id, corpus.expected_text(want)), (want, got)


@given(corpus=corpora(CSV_FORMATS))
@settings(max_examples=PARSER_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_csv_parser_reads_every_record_and_rejects_exactly_the_planted_faults(corpus):
    for f in corpus.files:
        check_parsed(corpus, f)


@given(corpus=corpora(CSV_FORMATS), split=st.one_of(st.none(), st.integers(1, 400)))
@settings(
    max_examples=DRIVER_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
def test_the_driver_and_the_executors_read_the_same_records(spark, corpus, split):
    """Small local CSV input is parsed in the driver (csv_records.reads_on_driver), the rest by Spark
    tasks: both give the same rows, in the same order, bad records included, whole files or byte ranges."""
    root = Path(tempfile.mkdtemp(prefix="textmill-driver-read-"))
    try:
        source = corpus.write(root)
        files = [(str(p), p.as_uri()) for p in sorted(source.rglob("*")) if p.is_file() and not p.is_symlink()]
        csv = corpus.prepare_conf()["csv"]
        spec, _ = strict_csv_spec(files, CsvConf(**csv))
        if split is not None and not csv["multiline"]:  # the byte ranges of a large single-line file, made small
            sizes = [(part["path"], part["uri"], os.path.getsize(part["path"])) for part in spec["pieces"]]
            orders = {part["uri"]: part["order"] for part in spec["pieces"]}
            spec["pieces"] = [
                {**part, "order": orders[part["uri"]]}
                for part in plan_parts(sizes, None, spec["columns"], split, splittable=True)
            ]
        on_driver, on_executors = (
            [tuple(r) for r in frame(spark, spec, on_driver=where).collect()] for where in (True, False)
        )
        assert on_driver == on_executors
        assert frame(spark, spec, on_driver=True).schema == frame(spark, spec, on_driver=False).schema
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_prepare(spark, mlflow_uri: str, corpus: Corpus, root: Path) -> tuple[dict, list[dict], list[dict]]:
    source = corpus.write(root)
    output = root / "out"
    before = snapshot(root, skip=(output, Path(f"{output}_quarantine")))
    conf = {
        "io": {"input": str(source), "output": str(output)},
        "prepare": corpus.prepare_conf(),
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": mlflow_uri, "artifact_location": (root.parent / "mlartifacts").as_uri()},
    }
    metrics = run_job("prepare", conf, spark)
    assert snapshot(root, skip=(output, Path(f"{output}_quarantine"))) == before, "a file outside io.output changed"
    out = [r.asDict() for r in spark.read.parquet(str(output)).collect()]
    bad = [r.asDict() for r in spark.read.parquet(f"{output}_quarantine").collect()]
    return metrics, out, bad


def check_job_example(spark, mlflow_uri: str, corpus: Corpus) -> None:
    """One generated corpus through the prepare job, in a folder of its own (Hypothesis runs many per test)."""
    root = Path(tempfile.mkdtemp(prefix="textmill-fuzz-"))
    try:
        metrics, out, bad = run_prepare(spark, mlflow_uri, corpus, root / "case")
        check_outcome(corpus, metrics, out, bad)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@given(corpus=corpora(FORMATS))
@settings(
    max_examples=JOB_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
def test_prepare_publishes_every_good_record_once_and_quarantines_every_planted_fault(spark, mlflow_uri, corpus):
    check_job_example(spark, mlflow_uri, corpus)


# ---------------------------------------------------------------------------- shrunk examples, kept


def test_shrunk_an_empty_text_file_is_an_empty_text_document(spark, mlflow_uri, tmp_path):
    """Spark's file scan skips 0-byte files, so an empty text file was neither read nor quarantined."""
    corpus = Corpus(
        "text_files",
        [
            CorpusFile("f0.txt", [Record("k0000", None, "k0000 w0", None)]),
            CorpusFile("f1.txt", [Record("k0001", None, "k0001 w0", None)]),
        ],
        empty_files=["empty.txt"],
    )
    metrics, out, bad = run_prepare(spark, mlflow_uri, corpus, tmp_path / "case")
    check_outcome(corpus, metrics, out, bad)
    assert [b["reason"] for b in bad] == ["empty_text"] and bad[0]["source"].endswith("empty.txt")


def test_shrunk_a_line_that_starts_exactly_at_a_range_boundary_is_read_once():
    data = b"k0,t,w\nk1,t,w\n"  # the second line starts at byte 7, the first range's end
    parts = plan_parts([("-", "-", len(data))], None, ["a", "b", "c"], 7, splittable=True)
    lines = [line for part in parts for _, line in _physical_lines(io.BytesIO(data), part["start"], part["end"])]
    assert lines == [b"k0,t,w\n", b"k1,t,w\n"]


def test_shrunk_a_multiline_record_with_a_field_too_many_is_quarantined_whole():
    """Its second line holds as many fields as a record, but an odd quote count: it continues the quoted field."""
    data = b'id,text,title\nk0,"w0\n0",title k0,one field too many\nk1,w1,title k1\n'
    records = list(read_records(_physical_lines(io.BytesIO(data)), CsvDialect(multiline=True), width=3))
    assert [(r.fields, r.problem) for r in records[1:]] == [
        (None, "4 field(s), expected 3"),
        (["k1", "w1", "title k1"], None),
    ]
    assert records[1].raw == b'k0,"w0\n0",title k0,one field too many\n'


@given(corpus=corpora(["csv_headerless"]), split=st.integers(1, 400))
@settings(max_examples=PARSER_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_byte_ranges_of_a_single_line_csv_hold_every_line_exactly_once(corpus, split):
    """A large single-line CSV is read in byte ranges by several tasks: together they give the whole file's records."""
    for f in corpus.files:
        data = corpus._file_bytes(f)
        whole = [(r.raw, r.fields, r.problem) for r in read_records(_physical_lines(io.BytesIO(data)), CsvDialect(), 3)]
        parts = plan_parts([("-", "-", len(data))], None, ["id", "title", "text"], split, splittable=True)
        ranged = [
            (r.raw, r.fields, r.problem)
            for part in parts
            for r in read_records(_physical_lines(io.BytesIO(data), part["start"], part["end"]), CsvDialect(), 3)
        ]
        assert ranged == whole
