"""The prepare job on every input format, broken files, reruns and its MLflow run."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from textmill.data import storage
from textmill.jobs import run_job
from textmill.pipelines.prepare import OUTPUT_COLUMNS, QUARANTINE_COLUMNS, PrepareJobConf
from textmill.runtime.config import load_conf
from textmill.runtime.errors import ColumnNotFoundError, EmptyInputError, InputNotFoundError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def prepare(spark, job_conf, tmp_path):
    """Run the prepare job on ``source``; return (metrics, output rows, quarantine rows)."""

    def run(source: Path, output: Path | None = None, **section):
        output = output or tmp_path / "out"
        conf = job_conf(io={"input": str(source), "output": str(output)}, prepare=section)
        metrics = run_job("prepare", conf, spark)
        out = spark.read.parquet(str(output))
        bad = spark.read.parquet(f"{output}_quarantine")
        assert out.columns[: len(OUTPUT_COLUMNS)] == OUTPUT_COLUMNS
        assert bad.columns == QUARANTINE_COLUMNS
        return metrics, [r.asDict() for r in out.collect()], [r.asDict() for r in bad.collect()]

    return run


def reasons(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    return counts


def content_id(title: str | None, text: str) -> str:
    return hashlib.sha256(f"{title or ''}\x1f{text}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- formats


def test_csv_with_header_maps_columns_and_carries_extras(prepare, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(
        'id,headline,body,topic,lang\n1,First,"Hello, world",news,en\n2,Second,"Quoted ""word"" here",sport,de\n'
    )
    metrics, out, bad = prepare(
        src,
        csv={"header": True},
        columns={"doc_id": "id", "text": "body", "title": "headline", "label": "topic", "extra": ["lang"]},
    )
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (2, 2, 0)
    by_id = {r["doc_id"]: r for r in out}
    assert by_id["2"]["text"] == 'Quoted "word" here'
    assert by_id["1"] == {
        "doc_id": "1",
        "text": "Hello, world",
        "title": "First",
        "label": "news",
        "source": src.as_uri().replace("file:///", "file:/"),
        "n_chars": 12,
        "lang": "en",
    }
    assert bad == []


def test_headerless_ag_news_layout_is_cleaned_and_labelled(spark, job_conf, tmp_path):
    src = tmp_path / "ag.csv"
    src.write_text(
        '"3","Oil Prices Rise (Reuters)","Reuters - Oil prices rose  on Monday\\after a report ""surprised"" traders, adding \\$2 to #36;40 a barrel."\n'
        '"2","Team #39;s Win","The home side won\\its first match of the season."\n'
        '"1","Talks Resume","Diplomats met in Geneva on quot;peace quot; talks."\n'
        '"4","Chip Update &lt;INTC.O&gt;","A chip designer said it would release a new processor."\n'
    )
    conf = load_conf(
        PrepareJobConf,
        REPO / "conf" / "prepare_ag_news.yaml",
        overrides=[f"io.input={src}", f"io.output={tmp_path / 'out'}"],
    )
    conf_dict = job_conf(**conf.model_dump(include={"io", "prepare"}))
    metrics = run_job("prepare", conf_dict, spark)
    assert (metrics["rows_out"], metrics["rows_quarantined"]) == (4, 0)
    rows = {r["label"]: r for r in spark.read.parquet(str(tmp_path / "out")).collect()}
    assert set(rows) == {"World", "Sports", "Business", "Sci_Tech"}
    assert (
        rows["Business"]["text"]
        == 'Reuters - Oil prices rose on Monday after a report "surprised" traders, adding $2 to $40 a barrel.'
    )
    assert rows["Sports"]["title"] == "Team 's Win"
    assert rows["World"]["text"] == 'Diplomats met in Geneva on "peace " talks.'
    assert rows["Sci_Tech"]["title"] == "Chip Update"
    assert rows["Sports"]["doc_id"] == content_id("Team 's Win", "The home side won its first match of the season.")


def test_jsonl_malformed_lines_are_quarantined_with_the_raw_line(prepare, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "0012", "text": "A good line.", "label": "pos", "meta": {"stars": 5}}),
        '{"id": "13", "text": "missing the closing brace"',
        "[1, 2, 3]",
        json.dumps({"id": "14", "text": None, "label": "neg"}),
        json.dumps({"id": "15", "text": "   ", "label": "neg"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    metrics, out, bad = prepare(src, format="jsonl", columns={"doc_id": "id", "label": "label", "extra": ["meta"]})
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (5, 1, 4)
    assert out[0]["doc_id"] == "0012" and out[0]["meta"]["stars"] == "5"
    assert reasons(bad) == {"malformed_record": 2, "null_text": 1, "empty_text": 1}
    assert {r["raw"] for r in bad if r["reason"] == "malformed_record"} == {lines[1], lines[2]}


def test_parquet_input_with_id_column_quarantines_null_ids_and_duplicates(prepare, spark, tmp_path):
    src = tmp_path / "in.parquet"
    spark.createDataFrame(
        [("a", "first text"), (None, "no id"), ("b", "second"), ("a", "same id again"), ("c", None)],
        "key string, body string",
    ).write.parquet(str(src))
    metrics, out, bad = prepare(src, format="parquet", columns={"doc_id": "key", "text": "body"})
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (5, 2, 3)
    assert sorted(r["doc_id"] for r in out) == ["a", "b"]
    assert reasons(bad) == {"null_doc_id": 1, "duplicate_doc_id": 1, "null_text": 1}
    assert metrics["quarantined.duplicate_doc_id"] == 1


def test_duplicates_can_be_kept(prepare, spark, tmp_path):
    src = tmp_path / "in.parquet"
    spark.createDataFrame([("a", "x"), ("a", "y")], "key string, text string").write.parquet(str(src))
    metrics, out, _ = prepare(src, format="parquet", columns={"doc_id": "key"}, duplicates="keep")
    assert metrics["rows_out"] == 2


def test_text_lines_one_document_per_line(prepare, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("first document\n\nsecond document \U0001f600 \u65e5\u672c\n")
    metrics, out, bad = prepare(src, format="text_lines", cleaning={"fold_whitespace": True})
    assert sorted(r["text"] for r in out) == ["first document", "second document \U0001f600 \u65e5\u672c"]
    assert reasons(bad) == {"empty_text": 1}
    assert metrics["rows_in"] == 3


def test_text_files_use_folder_as_label_and_fall_back_to_latin1(prepare, tmp_path):
    root = tmp_path / "corpus"
    (root / "sport").mkdir(parents=True)
    (root / "tech").mkdir()
    (root / "sport" / "001.txt").write_text("Cup final\n\nThe cup final was played on Sunday.\n", encoding="utf-8")
    (root / "sport" / "002.txt").write_bytes("Ticket prices\n\nTickets cost \xa350.\n".encode("latin-1"))
    (root / "tech" / "001.txt").write_text("Chips\n\nA new chip.\n", encoding="utf-8")
    (root / "tech" / "notes.md").write_text("not matched by the glob")
    metrics, out, bad = prepare(
        root,
        format="text_files",
        text_files={"first_line_is_title": True},
        columns={"doc_id": "relpath", "label": "folder", "title": "title"},
    )
    by_id = {r["doc_id"]: r for r in out}
    assert set(by_id) == {"sport/001.txt", "sport/002.txt", "tech/001.txt"}
    assert by_id["sport/002.txt"]["text"] == "Tickets cost \u00a350."
    assert by_id["sport/002.txt"]["title"] == "Ticket prices"
    assert by_id["tech/001.txt"]["label"] == "tech"
    assert bad == []

    metrics, out, bad = prepare(
        root,
        output=tmp_path / "strict",
        format="text_files",
        text_files={"encodings": ["utf-8"]},
        columns={"doc_id": "relpath"},
    )
    assert reasons(bad) == {"undecodable_bytes": 1}
    assert bad[0]["doc_id"] == "sport/002.txt" and "not decodable as any of utf-8" in bad[0]["detail"]
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"] == 3


# ---------------------------------------------------------------------------- broken input


def test_broken_csv_files_lose_no_row(prepare, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a_good.csv").write_text('"d1","Good text one","x"\n"d2","Good text two","y"\n')
    (root / "b_truncated_quote.csv").write_text('"d3","This quote never ends,"x"\n"d4","After the bad line","y"\n')
    (root / "c_bad_utf8.csv").write_bytes(b'"d5","caf\xe9 au lait","x"\n"d6","clean","y"\n')
    (root / "d_wrong_columns.csv").write_text('"d7","too","many","columns"\n"d8","too few"\n"d9","right","x"\n')
    (root / "e_empty.csv").write_text("")
    (root / "f_null_text.csv").write_text('"d10",,"x"\n"d11","","y"\n')
    physical_records = 2 + 2 + 2 + 3 + 0 + 2
    metrics, out, bad = prepare(
        root, csv={"header": False, "columns": ["id", "text", "label"]}, columns={"doc_id": "id", "label": "label"}
    )
    assert metrics["rows_in"] == physical_records
    assert metrics["rows_out"] + metrics["rows_quarantined"] == physical_records
    assert len(out) + len(bad) == physical_records
    assert metrics["empty_input_files"] == 1 and metrics["input_files"] == 6
    assert sorted(r["doc_id"] for r in out) == ["d1", "d2", "d4", "d6", "d9"]
    assert reasons(bad) == {"malformed_record": 3, "undecodable_bytes": 1, "null_text": 2}
    malformed = {r["raw"] for r in bad if r["reason"] == "malformed_record"}
    assert '"d7","too","many","columns"' in malformed and '"d8","too few"' in malformed
    assert all(r["source"].endswith(".csv") for r in bad)


def test_text_longer_than_max_chars_is_quarantined(prepare, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("short\n" + "x" * 500 + "\n")
    metrics, out, bad = prepare(src, format="text_lines", max_chars=100)
    assert [r["text"] for r in out] == ["short"]
    assert reasons(bad) == {"text_too_long": 1}
    assert bad[0]["detail"] == "n_chars=500 > max_chars=100"


def test_unknown_label_is_quarantined(prepare, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text,label\nfirst,1\nsecond,9\nthird,\n")
    metrics, out, bad = prepare(src, csv={"header": True}, columns={"label": "label"}, label_map={"1": "World"})
    assert sorted((r["text"], r["label"]) for r in out) == [("first", "World"), ("third", None)]
    assert reasons(bad) == {"unknown_label": 1}


def test_wrong_column_name_fails_before_any_output(spark, job_conf, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,hello\n")
    conf = job_conf(
        io={"input": str(src), "output": str(tmp_path / "out")},
        prepare={"csv": {"header": True}, "columns": {"text": "bdy"}},
    )
    with pytest.raises(
        ColumnNotFoundError,
        match=r"prepare.columns.text = 'bdy': not a column of the input. Available columns: id, body",
    ):
        run_job("prepare", conf, spark)
    assert not (tmp_path / "out").exists()


def test_missing_input_fails_clearly(spark, job_conf, tmp_path):
    conf = job_conf(
        io={"input": str(tmp_path / "nope.csv"), "output": str(tmp_path / "out")}, prepare={"csv": {"header": True}}
    )
    with pytest.raises(InputNotFoundError, match="io.input: nothing exists at"):
        run_job("prepare", conf, spark)


# ---------------------------------------------------------------------------- reruns and files


def test_rerun_is_idempotent_and_doc_ids_are_stable(prepare, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("alpha beta\ngamma delta\nalpha beta\n")
    _, first, bad1 = prepare(src, format="text_lines")
    _, second, bad2 = prepare(src, format="text_lines")
    assert first == second and bad1 == bad2
    assert sorted(r["doc_id"] for r in first) == sorted(
        [content_id(None, "alpha beta"), content_id(None, "gamma delta")]
    )
    assert reasons(bad1) == {"duplicate_doc_id": 1}

    src.write_text("epsilon\n")
    _, third, bad3 = prepare(src, format="text_lines")
    assert [r["text"] for r in third] == ["epsilon"] and bad3 == []
    leftovers = [p.name for p in tmp_path.iterdir() if "__textmill" in p.name]
    assert leftovers == []


def test_failed_job_leaves_the_previous_output_intact(spark, tmp_path):
    final = tmp_path / "out"
    spark.createDataFrame([("old",)], "v string").write.parquet(str(final))
    with pytest.raises(RuntimeError, match="boom"):
        with storage.staged_outputs(spark, str(final)) as (staged,):
            spark.createDataFrame([("new",)], "v string").write.parquet(staged)
            raise RuntimeError("boom")
    assert [r.v for r in spark.read.parquet(str(final)).collect()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_files_follow_rows_per_file_and_are_sorted_by_doc_id(prepare, spark, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("".join(f"document number {i}\n" for i in range(10)))
    metrics, _, _ = prepare(src, format="text_lines", files={"rows_per_file": 3})
    files = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert metrics["output_files"] == 4 and len(files) == 4
    ids = [r.doc_id for f in files for r in spark.read.parquet(str(f)).collect()]
    assert ids == sorted(ids) and len(ids) == 10
    assert storage.read_marker(spark, str(tmp_path / "out"))["schema"] == "prepare/v1"


# ---------------------------------------------------------------------------- end to end


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_prepare_run_logged(tracking_uri: str, experiment: str, rows_out: int) -> None:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["prepare.columns.text"] == "text"
    assert run.data.params["prepare.format"] == "text_lines"
    assert run.data.metrics["rows_out"] == rows_out
    assert run.data.metrics["rows_in"] == run.data.metrics["rows_out"] + run.data.metrics["rows_quarantined"]
    assert run.data.metrics["wall_seconds"] > 0 and run.data.metrics["docs_per_second"] > 0
    assert run.data.tags["textmill.job"] == "prepare"
    assert run.data.tags["spark.version"].startswith("4.")
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "config")]
    assert artifacts == ["config/resolved.yaml"]
    local = client.download_artifacts(run.info.run_id, "config/resolved.yaml")
    assert "format: text_lines" in Path(local).read_text()


def test_jobs_prepare_main_end_to_end(mlflow_uri, spark, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("one\ntwo\n\nthree\n")
    code = load_job("prepare").main(
        [
            "--conf",
            str(REPO / "conf" / "prepare.yaml"),
            "--env",
            "local",
            "--set",
            f"io.input={src}",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            "prepare.format=text_lines",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
            "--set",
            "mlflow.experiment=e2e-main",
            "--set",
            f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
        ]
    )
    assert code == 0
    assert sorted(r.text for r in spark.read.parquet(str(tmp_path / "out")).collect()) == ["one", "three", "two"]
    assert_prepare_run_logged(mlflow_uri, "e2e-main", rows_out=3)


@pytest.mark.slow
def test_textmill_run_prepare_cli_end_to_end(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "docs.txt"
    src.write_text("uno\ndos\n")
    textmill = Path(sys.executable).parent / "textmill"
    # mlflow.set_tracking_uri() in this process exports MLFLOW_TRACKING_URI; test the embedded default.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [
            str(textmill),
            "run",
            "prepare",
            "--conf",
            str(REPO / "conf" / "prepare.yaml"),
            "--env",
            "local",
            "--set",
            f"io.input={src}",
            "--set",
            "io.output=out",
            "--set",
            "prepare.format=text_lines",
            "--set",
            "spark.ui_enabled=false",
            "--set",
            "spark.master=local[1]",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(
        r"^textmill prepare … done in [\d.]+ s \(2 rows in, 2 out, 0 quarantined; 1 input file\(s\)\)$",
        proc.stdout,
        re.M,
    ), proc.stdout
    # The embedded defaults: sqlite:///<cwd>/mlflow.db and <cwd>/mlartifacts.
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert_prepare_run_logged(f"sqlite:///{tmp_path / 'mlflow.db'}", "textmill-prepare", rows_out=2)


# ---------------------------------------------------------------------------- inputs that used to lose rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "text_lines"])
def test_nested_files_are_read_and_counted(prepare, tmp_path, fmt):
    root = tmp_path / "in"
    (root / "2026" / "11").mkdir(parents=True)
    (root / ".hidden").mkdir()
    lines = {
        "csv": ("text\nalpha\n", "text\nbeta\ngamma\n"),
        "jsonl": ('{"text": "alpha"}\n', '{"text": "beta"}\n{"text": "gamma"}\n'),
        "text_lines": ("alpha\n", "beta\ngamma\n"),
    }[fmt]
    (root / "top.dat").write_text(lines[0])
    (root / "2026" / "11" / "deep.dat").write_text(lines[1])
    (root / ".hidden" / "skip.dat").write_text(lines[1])
    metrics, out, bad = prepare(root, format=fmt)
    assert sorted(r["text"] for r in out) == ["alpha", "beta", "gamma"] and bad == []
    assert (metrics["input_files"], metrics["rows_in"]) == (2, 3)
    assert {r["source"].rsplit("/", 1)[-1] for r in out} == {"top.dat", "deep.dat"}


def test_unclosed_quote_in_multiline_csv_is_quarantined_not_merged_silently(prepare, tmp_path):
    src = tmp_path / "in.csv"
    records = [f"d{i},Text of record {i},x" for i in range(1, 201)]
    records[99] = 'd100,"This quote never closes,x'  # reads on through d101 and d102 up to d103's quote
    records[102] = 'd103,"Quoted text",x'
    records[149] = 'd150,"Two\nlines, legitimately, with ""quotes""",y'
    src.write_text("id,text,label\n" + "\n".join(records) + "\n")
    metrics, out, bad = prepare(src, csv={"multiline": True}, columns={"doc_id": "id", "label": "label"})
    ids = {r["doc_id"]: r for r in out}
    assert set(ids) == {f"d{i}" for i in range(1, 201)} - {"d100"} and metrics["rows_out"] == 199
    assert ids["d150"]["text"] == 'Two\nlines, legitimately, with "quotes"' and ids["d103"]["text"] == "Quoted text"
    assert reasons(bad) == {"malformed_record": 1}
    damaged = bad[0]
    assert damaged["raw"] == records[99] and "quote" in damaged["detail"] and "line 101" in damaged["detail"]
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"] == 200


def test_invalid_utf8_is_quarantined_with_its_exact_bytes_and_every_reader_can_read_the_outputs(prepare, tmp_path):
    import pandas as pd

    src = tmp_path / "lines"
    src.mkdir()
    (src / "a.txt").write_bytes(b"good line\nbad \xff\xfe bytes\ncaf\xc3\xa9 ok\n")
    (src / "b.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "also \xc3\x28 broken"}\n{"text": "broken \xff json\n')
    metrics, out, bad = prepare(src / "a.txt", format="text_lines")
    assert sorted(r["text"] for r in out) == ["café ok", "good line"]
    assert reasons(bad) == {"undecodable_bytes": 1} and bad[0]["detail"] == "bytes that are not valid UTF-8"
    assert bytes(bad[0]["raw_bytes"]) == b"bad \xff\xfe bytes" and "\ufffd" in bad[0]["raw"]
    for path in (tmp_path / "out", tmp_path / "out_quarantine"):
        assert len(pd.read_parquet(path)) in (1, 2)  # pyarrow decodes every string column

    metrics, out, bad = prepare(src / "b.jsonl", output=tmp_path / "j", format="jsonl")
    assert [r["text"] for r in out] == ["fine"]
    assert reasons(bad) == {"undecodable_bytes": 2}
    kept = sorted(bytes(r["raw_bytes"]) for r in bad)
    assert b"also \xc3\x28 broken" in kept[0] and b"broken \xff json" in kept[1]
    assert len(pd.read_parquet(tmp_path / "j_quarantine")) == 2


def test_whitespace_of_every_kind_is_empty_text(prepare, tmp_path):
    src = tmp_path / "in.jsonl"
    blanks = ["\t\t", "\u00a0", "\u2003\u3000", "\n\r\n", "\u2028\u2029", "\x1c\x1f", " \u202f\u205f "]
    src.write_text("\n".join(json.dumps({"text": t}) for t in blanks + ["real \u200b text"]) + "\n")
    metrics, out, bad = prepare(src, format="jsonl")
    assert [r["text"] for r in out] == ["real \u200b text"]
    assert reasons(bad) == {"empty_text": len(blanks)}


def test_blank_means_the_same_in_spark_and_python(spark):
    from pyspark.sql import functions as F

    from textmill.data.cleaning import BLANK_REGEX, is_blank

    chars = [chr(c) for c in range(0x3100) if not 0xD800 <= c <= 0xDFFF]
    df = spark.createDataFrame([(c,) for c in chars], "c string").select(
        "c", F.col("c").rlike(BLANK_REGEX).alias("blank")
    )
    spark_blank = {r["c"] for r in df.collect() if r["blank"]}
    assert spark_blank == {c for c in chars if is_blank(c)}
    assert len(spark_blank) == 29


def test_files_found_but_none_matching_the_glob_fails_and_says_what_matched(prepare, spark, job_conf, tmp_path):
    root = tmp_path / "20news"
    (root / "sci.space").mkdir(parents=True)
    for i in range(3):
        (root / "sci.space" / f"6100{i}").write_text(f"message {i}")
    conf = job_conf(io={"input": str(root), "output": str(tmp_path / "out")}, prepare={"format": "text_files"})
    with pytest.raises(
        InputNotFoundError, match=r"3 file\(s\) under .*none matches prepare.text_files.glob '\*.txt' \(e.g. '61000'\)"
    ):
        run_job("prepare", conf, spark)
    (root / "sci.space" / "readme.txt").write_text("one that matches")
    metrics, out, _ = prepare(root, format="text_files")
    assert [r["text"] for r in out] == ["one that matches"]
    assert (metrics["input_files"], metrics["skipped_input_files"]) == (1, 3)
    metrics, out, _ = prepare(root, format="text_files", text_files={"glob": "*"})
    assert metrics["rows_out"] == 4


def test_empty_csv_and_jsonl_files_hold_no_records_and_all_empty_is_said(prepare, spark, job_conf, tmp_path):
    for fmt, content in (("csv", "text\nhello\n"), ("jsonl", '{"text": "hello"}\n')):
        root = tmp_path / fmt
        root.mkdir()
        (root / "a_empty").write_text("")
        (root / "b_data").write_text(content)
        metrics, out, _ = prepare(root, output=tmp_path / f"out_{fmt}", format=fmt)
        assert [r["text"] for r in out] == ["hello"]
        assert (metrics["input_files"], metrics["empty_input_files"]) == (2, 1)
        (root / "b_data").write_text("")
        conf = job_conf(io={"input": str(root), "output": str(tmp_path / f"none_{fmt}")}, prepare={"format": fmt})
        with pytest.raises(EmptyInputError, match=r"all 2 input file\(s\) under .* are empty \(0 bytes\)"):
            run_job("prepare", conf, spark)
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("text\n")
    with pytest.raises(
        EmptyInputError, match=r"read 1 non-empty file\(s\) .* as csv but found no records \(header lines only"
    ):
        run_job(
            "prepare",
            job_conf(io={"input": str(header_only), "output": str(tmp_path / "h")}, prepare={"format": "csv"}),
            spark,
        )


def test_symlinked_directories_are_not_followed(prepare, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the corpus")
    root = tmp_path / "corpus"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("part of the corpus")
    (root / "docs" / "loop").symlink_to(root, target_is_directory=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    metrics, out, _ = prepare(root, format="text_files")
    assert [r["text"] for r in out] == ["part of the corpus"]
    assert metrics["skipped_links"] == 2
