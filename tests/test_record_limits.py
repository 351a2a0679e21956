"""The reader's limits hold, and nothing else cuts a record (issue 39, item 1).

Python's ``csv`` module refuses a field over 131,072 characters: every longer CSV document was
quarantined as ``malformed_record`` with a null id, and with ``multiline`` the inside of a long
quoted field was read again as rows (a ticket with a pasted 4,100-line export became 4,100
documents). The rules now: a record up to ``MAX_RECORD_BYTES`` is read whole, whatever its
fields' length; a longer one is one quarantined record (``text_too_long``), with the fields
before the long one (the id) when its first line holds them, and reading resumes at its end.
Generated records around each limit: just under, at, just over.
"""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmill.data.csv_records import TOO_LONG, CsvDialect, _physical_lines, read_records

FIELD_LIMIT = 131_072  # Python's csv.field_size_limit() default


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def body(length: int, lines: int, seed: int) -> str:
    """Text of exactly ``length`` characters over ``lines`` lines, with quotes and commas inside."""
    unit = f'word{seed}, "quoted" é '
    text = (unit * (length // len(unit) + 1))[:length]
    if lines > 1:
        step = max(1, length // lines)
        chars = list(text)
        for i in range(step, length, step)[: lines - 1]:
            chars[i] = "\n"
        text = "".join(chars)
    return text


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(2_000, 6_000),
    sizes=st.lists(st.integers(-40, 40), min_size=1, max_size=6),
    lines=st.integers(1, 30),
    multiline=st.booleans(),
    seed=st.integers(0, 9),
)
def test_records_around_the_record_limit_are_read_whole_or_quarantined_whole(limit, sizes, lines, multiline, seed):
    lines = lines if multiline else 1
    rows = [["id", "text", "label"]]
    for i, delta in enumerate(sizes):
        # the record's bytes: id, separators, quotes and the label around a text of `limit + delta` bytes
        rows.append([f"id{i}", body(max(1, limit + delta - 40), lines, seed + i), "x"])
        rows.append([f"short{i}", f"after {i}", "y"])
    data = csv_bytes(rows)
    records = list(
        read_records(
            _physical_lines(io.BytesIO(data)), CsvDialect(multiline=multiline), width=3, max_record_bytes=limit
        )
    )
    assert len(records) == len(rows), [r.problem for r in records]  # one record per record written, none made up
    for record, row in zip(records, rows):
        size = len(csv_bytes([row]))
        if size <= limit:
            assert record.fields == row, (record.problem, size)
        else:
            assert record.fields is not None and record.problem.startswith(TOO_LONG), (record.problem, size)
            assert record.fields[0] == row[0] and record.fields[1:] == [None, None]


@settings(max_examples=12, deadline=None)
@given(delta=st.integers(-3, 3), lines=st.integers(1, 4_100), multiline=st.booleans())
def test_a_field_around_pythons_131072_character_limit_is_one_record(delta, lines, multiline):
    lines = min(lines, 4_100) if multiline else 1
    rows = [["id", "text", "label"], ["t1", body(FIELD_LIMIT + delta, lines, 1), "z"], ["t2", "next", "z"]]
    records = list(read_records(_physical_lines(io.BytesIO(csv_bytes(rows))), CsvDialect(multiline=multiline), width=3))
    assert [r.fields for r in records] == rows, [r.problem for r in records]


def test_a_pasted_4100_line_export_inside_a_ticket_is_one_document():
    export = "\n".join(f"{i},row {i} of the nightly export and its columns,{i * 3}" for i in range(4_100))
    assert len(export) > FIELD_LIMIT
    rows = [
        ["id", "text", "label"],
        ["ticket-1", f"Please see the export:\n{export}\nThanks", "bug"],
        ["ticket-2", "ok", "q"],
    ]
    records = list(read_records(_physical_lines(io.BytesIO(csv_bytes(rows))), CsvDialect(multiline=True), width=3))
    assert [r.fields for r in records] == rows


ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "utf-8-sig", "shift_jis", "koi8-r"]


@settings(max_examples=60, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    texts=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8),
    crlf=st.booleans(),
    multiline=st.booleans(),
)
def test_a_declared_encoding_is_decoded_record_for_record(tmp_path_factory, encoding, texts, crlf, multiline):
    """``prepare.csv.encoding: UTF-16`` on a UTF-16 file with its BOM quarantined every record as
    undecodable bytes, 0 rows out, exit 0. Any encoding Python knows is decoded as declared."""
    from textmill.data.csv_records import header_of, open_lines

    keep = [t for t in texts if _encodable(t, encoding) and "\x00" not in t]
    keep = [t.replace("\r", "") for t in keep if multiline or "\n" not in t]
    rows = [["id", "text"]] + [[f"d{i}", t] for i, t in enumerate(keep) if t.strip(" \n")]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL).writerows(rows)
    path = tmp_path_factory.mktemp("enc") / "f.csv"
    path.write_bytes(out.getvalue().encode(encoding))
    dialect = CsvDialect(multiline=multiline, encoding=encoding)
    assert header_of(str(path), dialect) == ["id", "text"]
    with open_lines(str(path), dialect) as stream:
        records = list(read_records(_physical_lines(stream), dialect, width=2))
    assert [r.fields for r in records] == [[v or None for v in row] for row in rows], [r.problem for r in records]
    assert not any(r.undecodable for r in records)


def _encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def test_an_unknown_encoding_is_a_config_error():
    import pytest
    from pydantic import ValidationError

    from textmill.data.io import CsvConf, TextFilesConf

    with pytest.raises(ValidationError, match="unknown encoding 'utf-42'"):
        CsvConf(encoding="utf-42")
    with pytest.raises(ValidationError, match="unknown encoding 'nope'"):
        TextFilesConf(encodings=["utf-8", "nope"])


def test_prepare_keeps_long_fields_quarantines_an_oversized_record_with_its_id_and_reads_utf16(
    spark, job_conf, tmp_path
):
    """End to end through ``prepare`` (the strict reader on executors): a UTF-16 file with its BOM,
    a 150,000-character field (published whole), and a 65 MiB multi-line record between two good
    ones (one text_too_long row with its id, nothing made of its inside)."""
    from textmill.data.csv_records import MAX_RECORD_BYTES
    from textmill.jobs import run_job

    src = tmp_path / "in"
    src.mkdir()
    rows16 = [["id", "text"], ["u1", "héllo wörld"], ["u2", body(150_000, 50, 3)]]
    (src / "a.csv").write_bytes(csv_bytes(rows16).decode("utf-8").encode("utf-16"))
    line = "x" * 1023 + "\n"
    huge = line * (MAX_RECORD_BYTES // len(line) + 1024)  # just over the limit, over 66,000 lines
    with (src / "b.csv").open("w", encoding="utf-16", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(
            [["id", "text"], ["b1", "before"], ["big", huge], ["b2", "after"]]
        )
    metrics = run_job(
        "prepare",
        job_conf(
            io={"input": str(src), "output": str(tmp_path / "out")},
            prepare={"format": "csv", "columns": {"doc_id": "id"}, "csv": {"multiline": True, "encoding": "UTF-16"}},
        ),
        spark,
    )
    out = {r.doc_id: r.text for r in spark.read.parquet(str(tmp_path / "out")).collect()}
    bad = [r.asDict() for r in spark.read.parquet(str(tmp_path / "out_quarantine")).collect()]
    assert set(out) == {"u1", "u2", "b1", "b2"} and out["u1"] == "héllo wörld" and len(out["u2"]) == 150_000
    assert [(b["doc_id"], b["reason"]) for b in bad] == [("big", "text_too_long")], bad
    assert metrics["rows_in"] == 5 and metrics["rows_out"] == 4 and metrics["rows_quarantined"] == 1


def test_json_lines_around_jacksons_string_limit_are_text_too_long_with_their_id(spark, job_conf, tmp_path):
    """Jackson, Spark's JSON parser, refuses a string over 20,000,000 characters unless told: a 52 MB
    JSON line was malformed_record with a null id. Strings just under and just over that limit, between
    good lines: each is text_too_long (over prepare.max_chars) with its id."""
    import json

    from textmill.jobs import run_job

    src = tmp_path / "in"
    src.mkdir()
    lines = [{"id": "first", "text": "hello"}]
    lines += [{"id": f"long{n}", "text": "w" * n} for n in (20_000_000 - 1, 20_000_000 + 1)]
    lines += [{"id": "last", "text": "bye"}]
    (src / "f.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run_job(
        "prepare",
        job_conf(
            io={"input": str(src), "output": str(tmp_path / "out")},
            prepare={"format": "jsonl", "columns": {"doc_id": "id"}},
        ),
        spark,
    )
    assert sorted(r.doc_id for r in spark.read.parquet(str(tmp_path / "out")).collect()) == ["first", "last"]
    bad = sorted((r.doc_id, r.reason) for r in spark.read.parquet(str(tmp_path / "out_quarantine")).collect())
    assert bad == [("long19999999", "text_too_long"), ("long20000001", "text_too_long")]


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_chars=st.integers(50, 400), deltas=st.lists(st.integers(-2, 2), min_size=1, max_size=4, unique=True))
def test_a_text_file_over_what_max_chars_can_take_is_never_read(spark, job_conf, tmp_path_factory, max_chars, deltas):
    """A 1 GB file in text_files ran the driver JVM out of memory, read into one value. A file of more
    bytes than max_chars characters can take (4 bytes each) is text_too_long, unread; files around that
    bound, and a sparse 1 GiB file, which would take seconds and gigabytes to read."""
    from textmill.jobs import run_job

    tmp_path = tmp_path_factory.mktemp("files")
    src = tmp_path / "in"
    src.mkdir()
    bound = 4 * max_chars
    for delta in deltas:
        (src / f"f{bound + delta}.txt").write_bytes(b"\xc3\xa9" * ((bound + delta) // 2) + b"x" * ((bound + delta) % 2))
    with (src / "huge.txt").open("wb") as handle:
        handle.truncate(2**30)
    run_job(
        "prepare",
        job_conf(
            io={"input": str(src), "output": str(tmp_path / "out")},
            prepare={"format": "text_files", "max_chars": max_chars},
        ),
        spark,
    )
    bad = {
        r.source.rsplit("/", 1)[-1]: (r.reason, r.detail)
        for r in spark.read.parquet(f"{tmp_path}/out_quarantine").collect()
    }
    assert bad["huge.txt"][0] == "text_too_long" and "not read" in bad["huge.txt"][1]
    for delta in deltas:
        name = f"f{bound + delta}.txt"
        if delta > 0:
            assert bad[name][0] == "text_too_long" and "not read" in bad[name][1], bad
        else:  # read: its characters (2 bytes each, é) are then over max_chars
            assert bad[name][0] == "text_too_long" and "n_chars=" in bad[name][1], bad


def _nesting(column) -> int:
    """How deep the column's expression nests, from its text (one level per parenthesis)."""
    depth = deepest = 0
    for char in str(column):
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


def test_the_check_of_every_column_is_as_deep_for_300_columns_as_for_3(spark):
    """The JVM's stack overflowed planning a 20,000-column table: the UTF-8 check of every value was a
    chain of ORs as deep as the column count. Its depth must not grow with the width (string and
    nested columns; the bench_wide_tables benchmark runs the 20,000)."""
    from pyspark.sql import functions as F

    from textmill.pipelines.prepare import _any_invalid_utf8

    depths = {}
    for width in (3, 30, 300):
        df = spark.range(1).select(
            *[F.lit("a").alias(f"c{i}") for i in range(width - 1)], F.array(F.lit("b")).alias("nested")
        )
        depths[width] = _nesting(_any_invalid_utf8(df.columns, df))
    assert depths[3] == depths[30] == depths[300] < 10, depths


@pytest.mark.parametrize(
    "width, fmt",
    [
        (5_000, "csv"),
        pytest.param(500, "parquet", marks=pytest.mark.slow),
    ],
)
def test_a_table_of_thousands_of_columns_is_prepared_row_for_row(spark, job_conf, tmp_path, width, fmt):
    """A 20,000-column CSV ran 610 s, then overflowed the JVM's stack in prepare's check of every
    column (a chain of ORs as deep as the column count). Every row is read, its extra column kept,
    and a bad byte in the last column still quarantines its row. Parquet's values are checked one
    by one (its reader checks no bytes). The issue's 20,000 columns (70-100 s here) are measured by
    tests/benchmarks/bench_wide_tables.py, beside plain Spark on the same file."""
    root = tmp_path
    names = ["id", "text", *[f"c{i}" for i in range(width - 2)]]
    from textmill.jobs import run_job

    rows = [[f"k{r}", f"text {r}", *[str(r * i % 7) for i in range(width - 2)]] for r in range(3)]
    rows[-1][-1] = "LAST"
    if fmt == "csv":
        data = csv_bytes([names, *rows]).replace(b"LAST", b"L\xffST")  # a byte that is not UTF-8
        (root / f"in.{fmt}").write_bytes(data)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Strings whose bytes are not UTF-8, as other tools write them: Parquet readers do not check.
        values = {
            n: pa.array([r[i].encode() for r in rows], pa.binary()).view(pa.string()) for i, n in enumerate(names)
        }
        values[names[-1]] = pa.array([r[-1].encode() for r in rows[:-1]] + [b"L\xffST"], pa.binary()).view(pa.string())
        pq.write_table(pa.table(values), root / f"in.{fmt}")
    out = root / "out"
    metrics = run_job(
        "prepare",
        job_conf(
            io={"input": str(root / f"in.{fmt}"), "output": str(out)},
            prepare={"format": fmt, "columns": {"doc_id": "id", "extra": [names[-1]]}},
        ),
        spark,
    )
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (3, 2, 1), metrics
    good = sorted((r.doc_id, r.text, r[names[-1]]) for r in spark.read.parquet(str(out)).collect())
    assert good == [(f"k{r}", f"text {r}", str(r * (width - 3) % 7)) for r in range(2)]
