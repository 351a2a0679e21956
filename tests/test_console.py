"""What a person sees: step lines, progress, the end report, --json/--quiet/--verbose.

The pipeline CLI's whole console (no warnings, step lines, the table) is checked in test_pipeline.py."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_prepare import load_job

from textmill.cli import mlflow_ui_hint
from textmill.runtime import console

REPO = Path(__file__).resolve().parents[1]


def _prepare_args(tmp_path, mlflow_uri, *extra: str) -> list[str]:
    src = tmp_path / "docs.txt"
    src.write_text("one\ntwo\n\nthree\n")
    return [
        "--conf",
        str(REPO / "conf" / "prepare.yaml"),
        "--set",
        f"io.input={src}",
        "--set",
        f"io.output={tmp_path / 'out'}",
        "--set",
        "prepare.format=text_lines",
        "--set",
        f"mlflow.tracking_uri={mlflow_uri}",
        "--set",
        f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
        *extra,
    ]


def test_json_puts_only_the_report_on_stdout(spark, mlflow_uri, tmp_path, capsys):
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri, "--json")) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert (
        report["job"] == "prepare"
        and report["metrics"]["rows_out"] + report["metrics"]["rows_quarantined"] == report["metrics"]["rows_in"]
    )
    assert MlflowClient(mlflow_uri).get_run(report["run_id"]).data.metrics["rows_out"] == report["metrics"]["rows_out"]
    assert report["outputs"]["io.output"] == str(tmp_path / "out")
    assert "textmill prepare … done in" in err and f"MLflow run  {report['run_id']}" in err
    # --quiet --json: the JSON alone, for scripts.
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri, "--json", "--quiet")) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["metrics"]["rows_in"] == report["metrics"]["rows_in"] and "textmill prepare" not in err


def test_default_run_prints_the_step_line_and_where_to_look(spark, mlflow_uri, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri)) == 0
    out, _ = capsys.readouterr()
    assert re.search(
        r"^textmill prepare … done in [\d.]+ s \(4 rows in, 3 out, 1 quarantined; 1 input file\(s\), quarantine reasons: empty_text 1\)$",
        out,
        re.M,
    ), out
    assert f"outputs     {tmp_path / 'out'}" in out
    # "mlflow" when the virtualenv is activated, else the venv's own path (as `make demo` runs it).
    assert re.search(
        r"^  look at it  (mlflow|\S+/bin/mlflow) ui --backend-store-uri sqlite:///\S+/mlflow\.db   then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}$",
        out,
        re.M,
    ), out
    assert not [r for r in caplog.records if r.name.startswith("textmill") and r.levelno < logging.WARNING]


def test_quiet_prints_nothing_and_verbose_logs_info(spark, mlflow_uri, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri, "--quiet")) == 0
    assert capsys.readouterr().out == ""
    assert not [r for r in caplog.records if r.name.startswith("textmill") and r.levelno < logging.WARNING]
    caplog.clear()
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri, "--verbose")) == 0
    assert "textmill prepare … done in" in capsys.readouterr().out
    assert any(r.name == "textmill.pipelines.prepare" and r.levelno == logging.INFO for r in caplog.records)


def test_textmill_log_level_from_the_environment(spark, mlflow_uri, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEXTMILL_LOG_LEVEL", "info")
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri)) == 0
    assert any(r.name == "textmill.pipelines.prepare" and r.levelno == logging.INFO for r in caplog.records)
    monkeypatch.setenv("TEXTMILL_LOG_LEVEL", "LOUD")
    assert load_job("prepare").main(_prepare_args(tmp_path, mlflow_uri)) == 2
    assert (
        "log level 'LOUD' (TEXTMILL_LOG_LEVEL or --log-level) must be one of DEBUG, INFO, WARNING, ERROR"
        in capsys.readouterr().err
    )


def test_progress_prints_plain_lines_in_a_log(capsys, monkeypatch):
    monkeypatch.setenv("TEXTMILL_VERBOSITY", "normal")
    monkeypatch.setenv("TEXTMILL_LINES_TO", "stdout")
    monkeypatch.setattr(console, "LINE_EVERY_SECONDS", 0.0)
    logging.getLogger("textmill").setLevel(logging.WARNING)
    with console.Progress("sgns", 3, unit="rounds") as progress:
        progress.advance(loss=2.5)
        progress.advance(loss=2.25)
    assert capsys.readouterr().out.splitlines() == [
        "      sgns: 1/3 rounds (loss 2.5)",
        "      sgns: 2/3 rounds (loss 2.25)",
    ]
    monkeypatch.setattr(console, "LINE_EVERY_SECONDS", 3600.0)
    with console.Progress("chinese whispers", 30, unit="rounds") as progress:
        for changed in (40, 3):
            progress.advance(changed=changed)
        progress.close("converged")  # and the with block closes it again: one line
    assert capsys.readouterr().out.splitlines() == ["      chinese whispers: 2/30 rounds (changed 3; converged)"]
    with pytest.raises(RuntimeError):
        with console.Progress("sgns", 5, unit="rounds") as progress:
            progress.advance(loss=9.5)
            raise RuntimeError("diverged")
    assert capsys.readouterr().out.splitlines() == ["      sgns: 1/5 rounds (loss 9.5)"]  # where it stopped, once
    monkeypatch.setenv("TEXTMILL_VERBOSITY", "quiet")
    with console.Progress("sgns", 2) as progress:
        progress.advance()
    assert capsys.readouterr().out == ""


def test_steps_table_and_headlines():
    steps = [
        {
            "name": "prepare",
            "seconds": 16.04,
            "metrics": {"rows_in": 2003, "rows_out": 2000, "rows_quarantined": 3},
            "headline": console.headline(
                ["{input_files:,.0f} input file(s)"],
                {"input_files": 1, "quarantined.null_text": 1, "quarantined.empty_text": 0},
            ),
        },
        {
            "name": "train_classifier",
            "seconds": 9.5,
            "metrics": {"rows_in": 2000, "rows_train": 1600, "rows_val": 400},
            "headline": console.headline(
                ["val accuracy {val_accuracy:.3f}", "ECE {val_ece:.3f}"], {"val_accuracy": 0.96875}
            ),
        },
    ]
    assert steps[0]["headline"] == "1 input file(s), quarantine reasons: null_text 1"
    assert steps[1]["headline"] == "val accuracy 0.969"  # no ECE metric, so no ECE part
    lines = console.steps_table(steps).splitlines()
    assert lines[0].split() == [
        "step",
        "rows",
        "in",
        "rows",
        "out",
        "quarantined",
        "row",
        "errors",
        "seconds",
        "result",
    ]
    assert lines[2].split()[:6] == ["prepare", "2,003", "2,000", "3", "-", "16.0"]
    assert lines[3].split()[:6] == ["train_classifier", "2,000", "2,000", "-", "-", "9.5"]
    end = lines[0].index("rows in") + len("rows in")  # numbers are right-aligned under their header
    assert lines[2][:end].endswith(" 2,003") and lines[3][:end].endswith(" 2,000")


def test_mlflow_ui_hint_names_the_store_or_the_server():
    assert mlflow_ui_hint("http://127.0.0.1:5000", "3", "abc") == "open http://127.0.0.1:5000/#/experiments/3/runs/abc"
    hint = mlflow_ui_hint("sqlite:////data/mlflow.db", "1", "abc")
    assert "ui --backend-store-uri sqlite:////data/mlflow.db" in hint and hint.endswith("#/experiments/1/runs/abc")


def test_a_console_that_cannot_encode_the_ellipsis_gets_three_dots(monkeypatch):
    monkeypatch.setenv("TEXTMILL_VERBOSITY", "normal")
    monkeypatch.setenv("TEXTMILL_LINES_TO", "stdout")
    raw = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(raw, encoding="latin-1"))
    console.step_started("[1/9] prepare")
    console.step_done("[1/9] prepare", 1.5, {"rows_in": 3, "rows_out": 3})
    sys.stdout.flush()
    assert raw.getvalue().decode("latin-1").splitlines() == [
        "[1/9] prepare ...",
        "[1/9] prepare ... done in 1.5 s (3 rows in, 3 out)",
    ]
