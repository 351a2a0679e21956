"""Issue 25's holes, one test each (the neighbours of each case are in ``test_fuzz_prepare``).

Data published wrong or lost (1-5), user errors that ended in a traceback (6-15), and the
smaller items. Each test failed before its fix.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from fuzz_corpora import BAD_UTF8
from test_prepare import REPO, load_job, reasons
from test_user_errors import run_main

from textmill.jobs import run_job
from textmill.pipelines.log_spacy_model import LogSpacyModelJobConf
from textmill.pipelines.prepare import PrepareJobConf
from textmill.pipelines.train_classifier import TrainClassifierJobConf
from textmill.runtime.config import load_conf
from textmill.runtime.errors import ConfigError, CsvHeaderError, OutputError, UnreadableInputError


@pytest.fixture
def prepare(spark, job_conf, tmp_path):
    def run(source: Path, output: Path | None = None, **section):
        output = output or tmp_path / "out"
        metrics = run_job("prepare", job_conf(io={"input": str(source), "output": str(output)}, prepare=section), spark)
        out = [r.asDict() for r in spark.read.parquet(str(output)).collect()]
        bad = [r.asDict() for r in spark.read.parquet(f"{output}_quarantine").collect()]
        return metrics, out, bad

    return run


# ---------------------------------------------------------------------------- 1-5: data published wrong or lost


def test_1_every_class_of_invalid_utf8_in_json_lines_is_quarantined_with_its_bytes(prepare, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [b'{"id": "good", "text": "left / fine"}']
    for name, bad in BAD_UTF8.items():
        lines.append(b'{"id": "%s", "text": "left %s overlong"}' % (name.encode(), bad))
    lines.append(b'{"id": "in_id_\xc0\xaf", "text": "the id is bad"}')
    src.write_bytes(b"\n".join(lines) + b"\n")
    metrics, out, bad = prepare(src, format="jsonl", columns={"doc_id": "id"})
    assert [(r["doc_id"], r["text"]) for r in out] == [("good", "left / fine")]
    assert reasons(bad) == {"undecodable_bytes": len(BAD_UTF8) + 1}
    by_raw = {r["raw_bytes"]: r for r in bad}
    assert set(by_raw) == set(lines[1:])  # the exact line, before any decoding


@pytest.mark.parametrize("where", [3, 30, 57])
def test_2_an_unclosed_quote_in_multiline_csv_swallows_no_record(prepare, tmp_path, where):
    records = [f'd{i},"Text {i}, with a comma"' for i in range(60)]
    records[where] = f'd{where},"Opened and never closed'
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "\n".join(records) + "\n")
    metrics, out, bad = prepare(src, csv={"multiline": True}, columns={"doc_id": "id"})
    assert sorted(r["doc_id"] for r in out) == sorted(f"d{i}" for i in range(60) if i != where)
    assert (metrics["rows_out"], metrics["rows_quarantined"]) == (59, 1)
    assert bad[0]["reason"] == "malformed_record" and bad[0]["raw"] == records[where]
    assert f"line {where + 2}" in bad[0]["detail"]


def test_3_csv_columns_are_mapped_by_each_files_header(prepare, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("title,text\nTitle A,Text A\n")
    (tmp_path / "in" / "b.csv").write_text("text,title\nText B,Title B\n")
    _, out, _ = prepare(tmp_path / "in", columns={"title": "title"})
    assert sorted((r["title"], r["text"]) for r in out) == [("Title A", "Text A"), ("Title B", "Text B")]


def test_3_csv_files_with_other_columns_are_refused_naming_both_headers(spark, job_conf, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("title,text\nTitle A,Text A\n")
    (tmp_path / "in" / "b.csv").write_text("text,heading\nText B,Title B\n")
    with pytest.raises(CsvHeaderError, match=r"a.csv has \['title', 'text'\], .*b.csv has \['text', 'heading'\]"):
        run_job("prepare", job_conf(io={"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}), spark)
    assert not (tmp_path / "out").exists()


def test_4_an_output_inside_the_input_through_a_link_or_a_glob_is_refused_and_leaves_nothing(spark, job_conf, tmp_path):
    data = tmp_path / "x" / "data"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("one\n")
    (tmp_path / "x" / "data_link").symlink_to(data, target_is_directory=True)
    before = sorted(p.name for p in data.iterdir())
    for given, output in [(str(data), tmp_path / "x" / "data_link" / "out"), (f"{data}/*", data / "out")]:
        with pytest.raises(OutputError, match="inside the input"):
            run_job(
                "prepare", job_conf(io={"input": given, "output": str(output)}, prepare={"format": "text_lines"}), spark
            )
        assert sorted(p.name for p in data.iterdir()) == before  # no lock, staging or output file in the input


def test_5_a_link_to_a_file_outside_the_input_is_not_read_and_is_counted(prepare, tmp_path):
    (tmp_path / "outside.txt").write_text("not part of the corpus\n")
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("part of the corpus\n")
    (root / "b.txt").symlink_to(tmp_path / "outside.txt")
    (root / "c.txt").symlink_to(root / "a.txt")  # inside too: it would read a.txt twice
    metrics, out, _ = prepare(root, format="text_lines")
    assert [r["text"] for r in out] == ["part of the corpus"] and metrics["skipped_links"] == 2


# ---------------------------------------------------------------------------- 6-15: one line, exit 2


def _gz(lines: int, body: bytes = b"d%d,some text %d\n") -> bytes:
    return gzip.compress(b"id,text\n" + b"".join(body % (i, i) for i in range(lines)), mtime=0)


@pytest.mark.parametrize(
    "fmt, damage", [("csv", "cut"), ("csv", "cut_second_member"), ("jsonl", "cut"), ("text_lines", "cut")]
)
def test_6_a_truncated_gzip_input_is_one_line_naming_the_file(spark, capsys, mlflow_uri, tmp_path, fmt, damage):
    body = {
        "csv": b"d%d,some text %d\n",
        "jsonl": b'{"id": "d%d", "text": "some text %d"}\n',
        "text_lines": b"line %d of %d\n",
    }[fmt]
    whole = _gz(5000, body)
    data = whole[: len(whole) // 2] if damage == "cut" else whole + _gz(5000, body)[:40]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"part.{fmt}.gz").write_bytes(data)
    code, line = run_main(
        "prepare",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={tmp_path / 'in'}",
        f"io.output={tmp_path / 'out'}",
        f"prepare.format={fmt}",
    )
    assert code == 2 and f"part.{fmt}.gz" in line and "truncated or corrupt" in line, line
    assert not (tmp_path / "out").exists()


def test_7_a_text_column_that_is_not_text_is_refused_with_its_type(spark, capsys, mlflow_uri, tmp_path):
    spark.createDataFrame([("d1", 12)], "doc_id string, text bigint").write.parquet(str(tmp_path / "in"))
    code = load_job("tokenize_text").main(
        [
            "--conf",
            str(REPO / "conf" / "tokenize.yaml"),
            "--set",
            f"io.input={tmp_path / 'in'}",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            "nlp.model=blank:en",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "textmill: error: io.input: column 'text' holds bigint values, not text (string)" in err, err


def test_8_a_package_that_is_not_a_spacy_pipeline_is_one_line(capsys, mlflow_uri, tmp_path):
    code, line = run_main("log_spacy_model", capsys, mlflow_uri, tmp_path, "spacy_model.source=numpy")
    assert code == 2 and "'numpy'" in line and "not a spaCy pipeline package" in line, line


@pytest.mark.parametrize("name", ["team/model", "models:x", " "])
def test_9_a_registry_name_mlflow_refuses_is_a_config_error_before_any_work(name):
    with pytest.raises(ConfigError, match="spacy_model.registry.name.*may not be blank or contain '/' or ':'"):
        load_conf(LogSpacyModelJobConf, overrides={"spacy_model": {"registry": {"name": name}}})
    with pytest.raises(ConfigError, match="classifier.registry.name"):
        load_conf(
            TrainClassifierJobConf,
            overrides={"io": {"input": "x", "output": "y"}, "classifier": {"registry": {"name": name}}},
        )


def test_10_parquet_files_that_disagree_on_the_label_type_are_one_line(spark, capsys, mlflow_uri, tmp_path):
    import pandas as pd

    (tmp_path / "in").mkdir()
    pd.DataFrame({"doc_id": ["a", "b"], "text": ["x y", "y z"], "label": [1, 2]}).to_parquet(
        tmp_path / "in" / "a.parquet"
    )
    pd.DataFrame({"doc_id": ["c", "d"], "text": ["x z", "z y"], "label": ["p", "q"]}).to_parquet(
        tmp_path / "in" / "b.parquet"
    )
    code, line = run_main(
        "train_classifier", capsys, mlflow_uri, tmp_path, f"io.input={tmp_path / 'in'}", f"io.output={tmp_path / 'out'}"
    )
    assert code == 2 and "disagree on a column's type" in line and "[label]" in line, line


def test_12_a_classifier_too_big_to_train_is_refused_before_training_with_the_numbers(
    spark, capsys, mlflow_uri, tmp_path
):
    rows = [(f"d{i}", f"text number {i}", f"label{i % 5000}") for i in range(10_000)]
    spark.createDataFrame(rows, "doc_id string, text string, label string").write.parquet(str(tmp_path / "in"))
    started = time.monotonic()
    code, line = run_main(
        "train_classifier",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={tmp_path / 'in'}",
        f"io.output={tmp_path / 'out'}",
        "classifier.validation_fraction=0.5",
    )
    assert (
        code == 2 and "2,000,000 ids x 5,000 labels needs about 114,441 MB" in line and "max_memory_mb=8,192" in line
    ), line
    assert time.monotonic() - started < 120


def test_13_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}" + f", *{chr(97 + i)}" * 8 + "]" for i in range(9)
    ]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\nio:\n  input: *j\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="more than 100,000 values through YAML aliases"):
        load_conf(PrepareJobConf, tmp_path / "bomb.yaml")
    assert time.monotonic() - started < 5


def test_14_a_tracking_server_that_does_not_answer_is_one_line_in_bounded_time(capsys, tmp_path, monkeypatch):
    from conftest import free_port

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    uri = f"http://user:s3cret@127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = load_job("log_spacy_model").main(
        ["--set", f"mlflow.tracking_uri={uri}", "--set", "spacy_model.source=blank:en"]
    )
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 60
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no MLflow server answers" in lines[0] and "Connection refused" in lines[0], err
    assert "s3cret" not in err


def test_15_a_user_error_inside_a_watch_batch_is_one_line(spark, capfd, mlflow_uri, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("id,body\n1,hello\n")
    (inbox / "b.csv").write_text("id,other\n2,hello\n")  # found only inside the batch
    code = load_job("watch").main(
        [
            "--conf",
            str(REPO / "conf" / "watch.yaml"),
            "--set",
            f"watch.inbox={inbox}",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            "prepare.columns.text=body",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
        ]
    )
    err = capfd.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if "error" in line.lower() or line.startswith(("\t", "Traceback"))] == [
        next(line for line in err.splitlines() if line.startswith("textmill: error: watch: batch 0"))
    ], err
    assert "different columns" in err


def test_15_a_config_error_a_watch_can_see_before_it_starts_is_found_there(spark, capfd, mlflow_uri, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("id,body\n1,hello\n")
    code = load_job("watch").main(
        [
            "--conf",
            str(REPO / "conf" / "watch.yaml"),
            "--set",
            f"watch.inbox={inbox}",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            "prepare.columns.text=nope",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
        ]
    )
    err = capfd.readouterr().err
    assert code == 2 and "textmill: error: prepare.columns.text = 'nope': not a column of the input" in err
    assert "watching" not in capfd.readouterr().out and not (tmp_path / "out" / "_checkpoint").exists()


# ---------------------------------------------------------------------------- the smaller items


def test_csv_columns_with_a_header_is_a_config_error():
    with pytest.raises(ConfigError, match="'prepare.csv.columns' names the columns of files without a header"):
        load_conf(
            PrepareJobConf,
            overrides={"io": {"input": "x", "output": "y"}, "prepare": {"csv": {"header": True, "columns": ["a"]}}},
        )


@pytest.mark.parametrize("fmt", ["text_lines", "jsonl", "csv"])
def test_lines_end_at_newline_or_crlf_only_in_every_line_reader(prepare, tmp_path, fmt):
    texts = ["one\rstill one", "two", "three \r and more"]
    src = tmp_path / f"in.{fmt}"
    if fmt == "text_lines":
        src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(texts).encode() + b"\n")
    elif fmt == "jsonl":
        src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps({"text": t}) for t in texts).encode() + b"\r\n")
    else:
        src.write_bytes(b"\xef\xbb\xbftext\r\n" + "\r\n".join(texts).encode() + b"\r\n")
    metrics, out, bad = prepare(src, format=fmt)
    assert sorted(r["text"] for r in out) == sorted(texts) and bad == [] and metrics["rows_in"] == 3


def test_json_on_a_failed_job_prints_one_json_object(capsys, mlflow_uri, tmp_path):
    code = load_job("prepare").main(
        [
            "--json",
            "--set",
            f"io.input={tmp_path / 'missing'}",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    report = json.loads(captured.out)
    assert report["job"] == "prepare" and report["error"]["type"] == "InputNotFoundError"
    assert "nothing exists at" in report["error"]["message"]


def test_a_glob_input_logs_no_stack_trace(prepare, capfd, tmp_path):
    for name in ("x", "y"):
        (tmp_path / "corpus" / name).mkdir(parents=True)
        (tmp_path / "corpus" / name / "a.txt").write_text(f"text of {name}\n")
    capfd.readouterr()
    _, out, _ = prepare(Path(f"{tmp_path}/corpus/{{x,y}}"), format="text_lines")
    assert sorted(r["text"] for r in out) == ["text of x", "text of y"]
    err = capfd.readouterr().err
    assert "FileNotFoundException" not in err and "\tat " not in err, err


def test_unreadable_file_errors_name_the_file_for_any_cause():
    from textmill.runtime.errors import from_read_failure

    spark_text = (
        "An error occurred while calling o32.count.\n: org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT] "
        "Encountered error while reading file file:///data/a.jsonl.gz.  SQLSTATE: KD001\n\tat x\nCaused by: "
        "java.io.EOFException: Unexpected end of input stream\n"
    )
    error = from_read_failure(RuntimeError(spark_text))
    assert isinstance(error, UnreadableInputError)
    assert str(error) == (
        "io.input: cannot read file:///data/a.jsonl.gz: EOFException: Unexpected end of input stream "
        "(the file is truncated or corrupt); repair or remove it and rerun"
    )
    assert from_read_failure(RuntimeError("[DIVIDE_BY_ZERO] Division by zero")) is None
