"""The end-to-end pipeline job (the README's first command) and the --py-files artifact."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from textmill.cli import build_pyfiles
from textmill.sample import BROKEN_LINES

from test_prepare import load_job

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_generates_sample_prepares_it_and_logs_nested_runs(spark, mlflow_uri, tmp_path):
    n_docs = 120
    code = load_job("pipeline").main([
        "--conf", str(REPO / "conf" / "pipeline.yaml"), "--env", "local",
        "--set", f"io.output={tmp_path / 'run'}", "--set", f"pipeline.sample.n_docs={n_docs}",
        "--set", f"mlflow.tracking_uri={mlflow_uri}", "--set", "mlflow.experiment=pipeline-e2e",
        "--set", f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
    ])
    assert code == 0
    prepared = spark.read.parquet(str(tmp_path / "run" / "prepared"))
    quarantine = spark.read.parquet(str(tmp_path / "run" / "prepared_quarantine"))
    assert prepared.count() == n_docs
    assert quarantine.count() == len(BROKEN_LINES)
    assert {r.label for r in prepared.select("label").distinct().collect()} == {"World", "Sports", "Business", "Sci_Tech"}
    annotated = spark.read.parquet(str(tmp_path / "run" / "annotated"))
    assert annotated.count() == n_docs and annotated.where("error is not null").count() == 0
    assert annotated.columns == ["doc_id", "tokens", "n_tokens", "entities", "entity_counts", "error", "label"]
    doc_vectors = spark.read.parquet(str(tmp_path / "run" / "doc_vectors"))
    assert doc_vectors.count() == n_docs and doc_vectors.where("vector is null").count() == 0
    classified = spark.read.parquet(str(tmp_path / "run" / "classified"))
    assert classified.count() == n_docs and classified.where("label is null").count() == 0

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("pipeline-e2e")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags["textmill.job"] == "pipeline")
    child = next(r for r in runs if r.data.tags["textmill.job"] == "prepare")
    annotate = next(r for r in runs if r.data.tags["textmill.job"] == "annotate")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert annotate.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert annotate.data.metrics["rows_out"] == n_docs
    trained = next(r for r in runs if r.data.tags["textmill.job"] == "train_classifier")
    assert trained.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.metrics["train_classifier.val_accuracy"] == trained.data.metrics["val_accuracy"]
    assert parent.data.metrics["classify.rows_out"] == n_docs
    assert child.data.metrics["rows_in"] == n_docs + len(BROKEN_LINES)
    assert parent.data.metrics["prepare.rows_out"] == n_docs
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary.json")).read_text())
    assert summary["documents"] == n_docs
    assert sum(summary["quarantined"].values()) == len(BROKEN_LINES)
    assert summary["annotate"]["row_errors"] == 0 and "PERSON" in summary["annotate"]["top_entity_types"]
    assert sum(summary["classify"].values()) == n_docs
    assert summary["embeddings"]["dim"] == 32 and summary["embeddings"]["vocab_size"] > 50
    clusters = spark.read.parquet(str(tmp_path / "run" / "clusters"))
    assert clusters.count() == n_docs and summary["clusters"]["count"] >= 1
    assert spark.read.parquet(str(tmp_path / "run" / "neighbors")).count() == n_docs


def test_pyfiles_zip_is_importable_on_its_own(tmp_path):
    target = build_pyfiles(tmp_path / "dist")
    names = zipfile.ZipFile(target).namelist()
    assert "textmill/__init__.py" in names and "textmill/pipelines/prepare.py" in names
    assert not any("__pycache__" in n for n in names)
    # A fresh interpreter that only has the zip on its path imports textmill from it.
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import textmill.cleaning as c; print(c.__file__)"
    proc = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout


def test_job_files_do_not_shadow_the_standard_library():
    # spark-submit puts the script's folder first on sys.path: jobs/tokenize.py would hide `tokenize`.
    clashes = [p.name for p in (REPO / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert clashes == []


def test_notebook_widgets_fall_back_to_defaults_outside_databricks():
    from textmill.notebook import widget

    assert widget({}, "input", "out/x") == "out/x"

    class Widgets:  # the two dbutils.widgets calls a notebook makes, recorded
        def __init__(self):
            self.values = {"input": "dbfs:/corpus"}

        def text(self, name, default):
            self.values.setdefault(name, default)

        def get(self, name):
            return self.values[name]

    dbutils = type("DBUtils", (), {"widgets": Widgets()})()
    assert widget({"dbutils": dbutils}, "input", "out/x") == "dbfs:/corpus"
    assert widget({"dbutils": dbutils}, "output", "out/y") == "out/y"
