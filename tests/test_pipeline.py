"""The end-to-end pipeline job (the README's first command) and the --py-files artifact."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from textmill.cli import build_pyfiles
from textmill.data.sample import BROKEN_LINES

REPO = Path(__file__).resolve().parents[1]


PYTHON_WARNING = re.compile(r"\b[A-Z]\w*Warning\b")  # UserWarning, FutureWarning, ... as Python prints them
LOGGED_WARNING = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d\S* WARNING ")
SPARK_WARN = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d WARN (\S+?):")
STEPS = [
    "prepare",
    "dedup",
    "annotate",
    "train_classifier",
    "classify",
    "train_embeddings",
    "embed_docs",
    "build_index",
    "neighbors",
    "cluster",
]


@pytest.mark.slow
def test_pipeline_cli_runs_every_step_with_a_clean_console_and_nested_runs(spark, pipeline_cli_run):
    """``textmill run pipeline`` as ``make demo`` runs it, in its own process with its own Spark:
    every step's output, the nested MLflow runs, and the console a person reads (issue 16)."""
    from conftest import PIPELINE_DOCS

    n_docs = PIPELINE_DOCS
    proc, tmp_path = pipeline_cli_run
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]

    prepared = spark.read.parquet(str(tmp_path / "run" / "prepared"))
    quarantine = spark.read.parquet(str(tmp_path / "run" / "prepared_quarantine"))
    assert prepared.count() == n_docs
    assert quarantine.count() == len(BROKEN_LINES)
    assert {r.label for r in prepared.select("label").distinct().collect()} == {
        "World",
        "Sports",
        "Business",
        "Sci_Tech",
    }
    # The sample plants copies of earlier documents; the steps after dedup read its kept table.
    marked = spark.read.parquet(str(tmp_path / "run" / "deduplicated"))
    kinds = {r["dup_kind"]: r["count"] for r in marked.groupBy("dup_kind").count().collect()}
    kept = spark.read.parquet(str(tmp_path / "run" / "deduplicated_kept")).count()
    assert marked.count() == n_docs and kinds[None] == kept < n_docs and kinds["exact"] >= 1 and kinds["near"] >= 1
    annotated = spark.read.parquet(str(tmp_path / "run" / "annotated"))
    assert annotated.count() == kept and annotated.where("error is not null").count() == 0
    assert annotated.columns == ["doc_id", "tokens", "n_tokens", "entities", "entity_counts", "error", "label"]
    doc_vectors = spark.read.parquet(str(tmp_path / "run" / "doc_vectors"))
    assert doc_vectors.count() == kept and doc_vectors.where("vector is null").count() == 0
    classified = spark.read.parquet(str(tmp_path / "run" / "classified"))
    assert classified.count() == kept and classified.where("label is null").count() == 0

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("pipeline-e2e")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags["textmill.job"] == "pipeline")
    child = next(r for r in runs if r.data.tags["textmill.job"] == "prepare")
    annotate = next(r for r in runs if r.data.tags["textmill.job"] == "annotate")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert annotate.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert annotate.data.metrics["rows_out"] == kept
    trained = next(r for r in runs if r.data.tags["textmill.job"] == "train_classifier")
    assert trained.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.metrics["train_classifier.val_accuracy"] == trained.data.metrics["val_accuracy"]
    assert parent.data.metrics["classify.rows_out"] == kept
    assert child.data.metrics["rows_in"] == n_docs + len(BROKEN_LINES)
    assert parent.data.metrics["prepare.rows_out"] == n_docs
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary.json")).read_text())
    assert summary["documents"] == n_docs
    assert sum(summary["quarantined"].values()) == len(BROKEN_LINES)
    assert summary["annotate"]["row_errors"] == 0 and "PERSON" in summary["annotate"]["top_entity_types"]
    assert sum(summary["classify"].values()) == kept
    assert summary["dedup"] == {"kept": kept, "exact": kinds["exact"], "near": kinds["near"]}
    assert summary["embeddings"]["dim"] == 32 and summary["embeddings"]["vocab_size"] > 50
    clusters = spark.read.parquet(str(tmp_path / "run" / "clusters"))
    assert clusters.count() == kept and summary["clusters"]["count"] >= 1
    assert spark.read.parquet(str(tmp_path / "run" / "neighbors")).count() == kept
    steps_logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "steps.json")).read_text())
    assert [s["name"] for s in steps_logged] == STEPS
    assert {s["run_id"] for s in steps_logged} == {r.info.run_id for r in runs if r.info.run_id != parent.info.run_id}

    # The console: no Python warnings, no logged warnings, no Spark WARN (textmill's driver log config
    # keeps Spark's warnings and drops only Hadoop's native-library notice, tests/test_session.py).
    assert not [line for line in err.splitlines() if PYTHON_WARNING.search(line)], err
    assert not [line for line in err.splitlines() if LOGGED_WARNING.match(line)], err
    assert not [line for line in err.splitlines() if SPARK_WARN.match(line)], err
    # What is left on stderr is the JVM's own notice that Spark uses an incubator module.
    assert [line for line in err.splitlines() if line.strip()] == [
        "WARNING: Using incubator modules: jdk.incubator.vector"
    ], err
    assert "Downloading artifacts" not in err and " INFO " not in err
    # One line as each step starts and one as it ends, in order.
    done = re.findall(r"^\[(\d+)/10\] (\w+) … done in ([\d.]+) s", out, flags=re.M)
    assert [name for _, name, _ in done] == STEPS, out
    assert [int(i) for i, _, _ in done] == list(range(1, 11))
    assert all(f"[{i}/10] {name} …\n" in out for i, name in enumerate(STEPS, start=1))
    # The table's rows say what the step runs logged.
    table = out[out.index("step  ") :]
    row = re.search(r"^prepare\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+-\s+([\d.]+)\s", table, flags=re.M)
    assert row, table
    assert [int(x.replace(",", "")) for x in row.groups()[:3]] == [
        int(child.data.metrics[k]) for k in ("rows_in", "rows_out", "rows_quarantined")
    ]
    accuracy = re.search(r"^train_classifier\s.*val accuracy ([\d.]+)", table, flags=re.M)
    assert accuracy and float(accuracy.group(1)) == round(trained.data.metrics["val_accuracy"], 3)
    rows_in = {"prepare": n_docs + len(BROKEN_LINES), "dedup": n_docs}
    for name in STEPS:
        assert re.search(rf"^{name}\s+{rows_in.get(name, kept)}\s", table, flags=re.M), name
    # Where to look next.
    assert f"MLflow run  {parent.info.run_id}" in out
    assert (
        f"mlflow ui --backend-store-uri {store}   then open http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
        in out
    )
    assert f"outputs     {tmp_path / 'run'}" in out
    # The pipeline's wall time over its rows is no rate; each step keeps its own.
    assert "docs_per_second" not in out and "docs_per_second" not in parent.data.metrics
    assert child.data.metrics["docs_per_second"] > 0
    # Models are logged from code (models-from-code): no pickled Python object in any of them.
    logged = [p.read_text() for p in (tmp_path / "art").rglob("MLmodel")]
    assert len([m for m in logged if "model_code_path" in m]) == 2  # the classifier and the embedder
    assert not list((tmp_path / "art").rglob("python_model.pkl"))


def test_pyfiles_zip_is_importable_on_its_own(tmp_path):
    target = build_pyfiles(tmp_path / "dist")
    names = zipfile.ZipFile(target).namelist()
    assert "textmill/__init__.py" in names and "textmill/pipelines/prepare.py" in names
    assert not any("__pycache__" in n for n in names)
    # A fresh interpreter that only has the zip on its path imports textmill from it.
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import textmill.data.cleaning as c; print(c.__file__)"
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
