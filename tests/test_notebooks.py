"""Every notebook under notebooks/ runs top to bottom, as Databricks would run it.

A small shim stands in for the notebook globals Databricks provides: ``spark`` (the shared
test session), ``dbutils.widgets`` (taking this test's overrides) and ``display`` (which
materialises what it is given, as the notebook UI does). Each notebook runs on small
generated data; the test then checks what it produced.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


class Widgets:
    def __init__(self, overrides: dict[str, str]) -> None:
        self.values = dict(overrides)
        self.declared: list[str] = []

    def text(self, name: str, default: str) -> None:
        self.declared.append(name)
        self.values.setdefault(name, default)

    def get(self, name: str) -> str:
        return self.values[name]


class DBUtils:
    def __init__(self, overrides: dict[str, str]) -> None:
        self.widgets = Widgets(overrides)


def run_notebook(path: Path, spark, **widgets: str) -> tuple[dict, list]:
    source = path.read_text()
    assert source.startswith("# Databricks notebook source\n")
    shown: list = []

    def display(value) -> None:
        shown.append(value.collect() if hasattr(value, "collect") else value)

    namespace = {"spark": spark, "dbutils": DBUtils(widgets), "display": display, "__name__": "__main__"}
    for number, cell in enumerate(source.split("# COMMAND ----------")):
        exec(compile(cell, f"{path.name} (cell {number})", "exec"), namespace)
    assert set(widgets) <= set(namespace["dbutils"].widgets.declared), "an override names no widget of the notebook"
    return namespace, shown


@pytest.fixture
def notebook_env(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    return {"conf_dir": str(REPO / "conf")}


def test_every_notebook_is_tested():
    assert [p.name for p in NOTEBOOKS] == [
        "01_ner_at_scale.py",
        "02_classifier_lifecycle.py",
        "03_embeddings_index_clusters.py",
        "04_incremental_watch.py",
    ]


def test_ner_at_scale_notebook(spark, tmp_path, notebook_env):
    ns, shown = run_notebook(NOTEBOOKS[0], spark, **notebook_env, output=str(tmp_path / "ner"), n_docs="120")
    assert ns["prepared_metrics"]["rows_out"] == 120 and ns["ner_metrics"]["rows_out"] == 120
    assert ns["ner_metrics"]["entities"] > 100 and ns["ner_metrics"]["max_model_loads_per_worker"] == 1
    counts = shown[-1]
    assert counts and {"label", "entity", "count"} <= set(counts[0].asDict())
    assert all(a["count"] >= b["count"] for a, b in zip(counts, counts[1:]))
    assert {e.label for r in shown[1] for e in r.entities} <= {"PERSON", "ORG", "GPE"}


@pytest.mark.slow
def test_classifier_lifecycle_notebook(spark, tmp_path, notebook_env):
    from mlflow.tracking import MlflowClient

    ns, shown = run_notebook(
        NOTEBOOKS[1], spark, **notebook_env, output=str(tmp_path / "clf"), n_docs="240", model_name="notebook-news"
    )
    assert ns["trained"]["val_accuracy"] > 0.8 and ns["scored"]["eval_accuracy"] > 0.8
    client = MlflowClient()
    assert client.get_model_version_by_alias("notebook-news", "production").version == ns["champion"].version
    assert [p["label"] for p in ns["rest_predictions"]] == ["Sports", "Business"]
    assert sum(r["docs"] for r in shown[-1]) == 240


def test_embeddings_index_clusters_notebook(spark, tmp_path, notebook_env):
    ns, shown = run_notebook(NOTEBOOKS[2], spark, **notebook_env, output=str(tmp_path / "vec"), n_docs="240")
    assert ns["nearest_words"] and all(len(v) == 5 for v in ns["nearest_words"].values())
    assert ns["indexed"]["recall_at_10"] > 0.8
    assert ns["purity"] > 0.5 and ns["clustered"]["rows_out"] == 240
    assert (tmp_path / "vec" / "clusters.png").stat().st_size > 10_000
    assert len(shown[0]) == 5 and all(r["nearest"] for r in shown[0])


def test_incremental_watch_notebook(spark, tmp_path, notebook_env):
    ns, shown = run_notebook(NOTEBOOKS[3], spark, **notebook_env, output=str(tmp_path / "watch"))
    assert (ns["morning"]["files"], ns["morning"]["batches"], ns["morning"]["total_rows_out"]) == (3, 2, 120)
    assert (ns["afternoon"]["files"], ns["afternoon"]["total_rows_out"]) == (1, 40)
    assert ns["again"]["files"] == 0
    assert [r["batch_id"] for r in ns["commit_log"]] == [0, 1, 2]
    assert [(r["batch"], r["documents"], r["files"]) for r in shown[0]] == [(0, 80, 2), (1, 40, 1), (2, 40, 1)]
