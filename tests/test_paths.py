"""Paths as users type them: a literal ``%XX`` in a folder's name is read as typed (issue 39, item 1).

``csv_records.local_file`` percent-decoded the literal ``file:`` URI that textmill's listing built:
with folders ``in%20put`` and ``in put`` side by side, the job read ``in put/f.csv`` and the
``source`` column still said ``in%20put``; with no decoded twin the error blamed "a truncated or
corrupt file". Spark's readers, meanwhile, label rows with a percent-encoded URI
(``_metadata.file_path``). One rule now (``runtime.filesystems``): textmill's URIs are literal,
and what Spark hands back is decoded once at that boundary. Generated folder names, each with its
percent-decoded twin beside it holding other rows, in every line and file format.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmill.jobs import run_job

PIECES = st.sampled_from(["%20", "%2F", "%25", "%41", "%", " ", "#", "+", "&", "=", ",", "'", "é", "中", "a", "b"])
NAMES = st.lists(PIECES, min_size=1, max_size=6).map("".join).filter(lambda n: n.strip() and not n.startswith("."))


def write_input(folder, fmt: str, marker: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        (folder / "f.csv").write_text(f"id,text\n{marker},{marker} text\n", encoding="utf-8")
    elif fmt == "jsonl":
        (folder / "f.jsonl").write_text(json.dumps({"id": marker, "text": f"{marker} text"}) + "\n", encoding="utf-8")
    elif fmt == "text_lines":
        (folder / "f.txt").write_text(f"{marker} text\n", encoding="utf-8")
    else:
        (folder / f"{marker}.txt").write_text(f"{marker} text", encoding="utf-8")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, fmt=st.sampled_from(["csv", "jsonl", "text_lines", "text_files"]))
def test_a_folder_is_read_by_its_literal_name_and_labelled_with_it(spark, job_conf, tmp_path_factory, name, fmt):
    root = tmp_path_factory.mktemp("paths")
    literal = root / name
    twin = root / unquote(name)
    if twin != literal and "/" not in unquote(name):
        write_input(twin, fmt, "decoded")
    write_input(literal, fmt, "literal")
    columns = {"doc_id": "id"} if fmt in ("csv", "jsonl") else {}
    out = root / "out"
    metrics = run_job(
        "prepare",
        job_conf(io={"input": str(literal), "output": str(out)}, prepare={"format": fmt, "columns": columns}),
        spark,
    )
    rows = spark.read.parquet(str(out)).collect()
    assert [r.text for r in rows] == ["literal text"] and metrics["rows_in"] == 1, (name, fmt, rows)
    (source,) = {r.source for r in rows}
    assert source.startswith("file:/") and source[len("file:") :].startswith(str(literal) + "/"), source


@given(name=NAMES)
def test_a_spark_uri_comes_back_to_the_literal_path(name):
    from urllib.parse import quote

    from textmill.runtime.filesystems import from_spark_uri

    path = f"/data/{name}/f.csv"
    assert from_spark_uri("file:" + quote(path)) == "file:" + path
    assert from_spark_uri("file://" + quote(path)) == "file:" + path
    assert from_spark_uri("hdfs://nn:8020" + quote(path)) == "hdfs://nn:8020" + path


def test_the_issues_twin_folders(spark, job_conf, tmp_path):
    write_input(tmp_path / "in put", "csv", "decoded")
    write_input(tmp_path / "in%20put", "csv", "literal")
    out = tmp_path / "out"
    run_job(
        "prepare",
        job_conf(io={"input": str(tmp_path / "in%20put"), "output": str(out)}, prepare={"columns": {"doc_id": "id"}}),
        spark,
    )
    assert [(r.doc_id, r.source) for r in spark.read.parquet(str(out)).collect()] == [
        ("literal", f"file:{tmp_path}/in%20put/f.csv")
    ]
