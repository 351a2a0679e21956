"""Classifier: stable hashing, GRU pack/unpack order, split, train -> register -> classify, serving, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import free_port, wait_until_serving
from mlflow.tracking import MlflowClient

from textmill.data.sample import TOPICS, _document
from textmill.jobs import run_job
from textmill.models.classifier import (
    BestWeights,
    GRUClassifier,
    LinearClassifier,
    calibration_bins,
    collate,
    document_frequencies,
    expected_calibration_error,
    fit_temperature,
    model_inputs,
    softmax,
)
from textmill.pipelines.train_classifier import stratified_split
from textmill.runtime.errors import ConfigError
from textmill.text.featurize import Featurizer

# ---------------------------------------------------------------------------- units


def test_hashed_features_are_stable_across_processes():
    featurizer = Featurizer(n_buckets=1000)
    text = "The Quick brown fox <br />jumps!"
    here = featurizer.ids(text)
    # The same ids from another interpreter with a different hash seed.
    code = (
        "import json, sys; from textmill.text.featurize import Featurizer; "
        "print(json.dumps(Featurizer(n_buckets=1000).ids(sys.argv[1])))"
    )
    for seed in ("1", "987"):
        proc = subprocess.run(
            [sys.executable, "-c", code, text],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(proc.stdout) == here
    tokens = ["the", "quick", "brown", "fox", "jumps", "!"]
    assert featurizer.tokens(text) == tokens
    assert here[:6] == [zlib.crc32(t.encode()) % 1000 for t in tokens]
    assert len(here) == 6 + 5  # unigrams + bigrams


TRICKY_TEXTS = [
    None,
    "",
    "   ",
    "<br /><br />",
    "x",
    "x y",
    "Hello, World! It's 3.14 <br /><br />great",
    "Ünïcödé Straße İstanbul ǅ ﬁ",
    "emoji 🎉🎉 and 👍🏽 ok",
    "日本語のテキスト、中文。",
    "a" * 5000 + " b",
    "don't can't won't ''",
    "<b>bold</b> <notatag",
    "tab\tnew\nline\r\n",
    "combining e\u0301 \u200b zero\x00nul",
    "ß" * 100 + " " + "é" * 300,
    "the the the the",
    "x y",
]


@pytest.mark.parametrize("options", [{}, {"ngrams": 1}, {"n_buckets": 7}, {"max_tokens": 3}, {"n_buckets": 2**31 - 1}])
def test_vectorised_hashed_ngrams_equal_the_per_text_ids(options):
    featurizer = Featurizer(**options)
    rng = random.Random(7)
    alphabet = "ab é日🎉'<>/.,!\n"
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(300)]
    texts = TRICKY_TEXTS + fuzz
    expected = [featurizer.ids(t) for t in texts]
    assert featurizer.ids_batch(texts) == expected
    flat, lengths = featurizer.hashed_ngrams_batch(texts)
    assert lengths.tolist() == [len(e) for e in expected]
    assert flat.tolist() == [i for e in expected for i in e]
    assert featurizer.hashed_ngrams_batch([])[0].size == 0


def test_bigram_ids_are_the_crc32_of_the_salted_pair():
    # Checked against zlib directly, not against the per-text code path.
    featurizer = Featurizer(n_buckets=2**31 - 1)
    flat, lengths = featurizer.hashed_ngrams_batch(["Straße 日本 🎉", "", "one"])
    tokens = ["straße", "日本", "🎉"]
    bigrams = [zlib.crc32(b"\x1f2:" + f"{a} {b}".encode()) % (2**31 - 1) for a, b in zip(tokens, tokens[1:])]
    assert flat.tolist() == [zlib.crc32(t.encode()) % (2**31 - 1) for t in tokens] + bigrams + [
        0,
        zlib.crc32(b"one") % (2**31 - 1),
    ]
    assert lengths.tolist() == [5, 1, 1]


def test_bigram_ids_after_very_long_tokens_are_the_crc32_of_the_pair():
    # Z_n is built by squaring: tokens of 1 to 300,000 bytes, all checked against zlib.
    featurizer = Featurizer(n_buckets=2**31 - 1, max_tokens=10**9)
    tokens = ["a", "x" * 4097, "é" * 1000, "y" * 300_000, "z"]
    flat, _ = featurizer.hashed_ngrams_batch([" ".join(tokens)])
    bigrams = [zlib.crc32(b"\x1f2:" + f"{a} {b}".encode()) % (2**31 - 1) for a, b in zip(tokens, tokens[1:])]
    assert flat.tolist()[len(tokens) :] == bigrams


@pytest.mark.parametrize("form, weighting", [("fasttext", "none"), ("logistic", "tfidf")])
def test_classify_arrow_output_equals_the_models_predict(tmp_path, form, weighting):
    # classify builds its Arrow struct without per-row dicts; it must say what predict says.
    import pyarrow as pa

    from textmill.models.classifier import ModelSpec
    from textmill.models.classifier_pyfunc import TextClassifier, save_model_dir
    from textmill.pipelines.classify import predictions_array

    torch.manual_seed(3)
    spec = ModelSpec(kind="linear", n_ids=1000, n_classes=3, dim=8, form=form, weighting=weighting)
    model = spec.build()
    if form == "logistic":  # zeros at initialisation: give it weights and an idf to carry through
        torch.nn.init.normal_(model.embedding.weight)
        model.set_idf(np.arange(1000) % 7, 20, min_df=2)
    save_model_dir(tmp_path, model, spec, Featurizer(n_buckets=1000), ["sport", "tech", "world"])
    scorer = TextClassifier(tmp_path)
    texts = ["Chip makers report strong sales", None, "", "  \n", "The match ended in a draw", "Elections abroad", "x"]

    class ThroughPredict:  # the path other models (spaCy's pyfunc) take
        def predict(self, batch):
            return scorer.predict(batch)

    expected = scorer.predict(texts)
    for model in (scorer, ThroughPredict()):
        got = predictions_array(model, texts, batch_size=2)
        assert got.type == pa.struct(
            [
                ("label", pa.string()),
                ("probability", pa.float64()),
                ("probabilities", pa.map_(pa.string(), pa.float64())),
                ("error", pa.string()),
            ]
        )
        rows = got.to_pylist()
        for i, row in enumerate(rows):
            if texts[i] is None or not texts[i].strip():
                assert row == {"label": None, "probability": None, "probabilities": None, "error": expected["error"][i]}
            else:
                assert row["label"] == expected["label"][i] and row["error"] is None
                assert row["probability"] == pytest.approx(expected["probability"][i], abs=1e-6)
                assert dict(row["probabilities"]) == pytest.approx(expected["probabilities"][i], abs=1e-6)
    assert [r["error"] for r in rows] == [None, "null text", "empty text", "empty text", None, None, None]
    assert len({r["label"] for r in rows if r["label"]}) >= 1


def test_temperature_fit_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(20_000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits, 2.5)])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(calibration_bins(softmax(logits).max(1), softmax(logits).argmax(1) == labels))
    after = expected_calibration_error(
        calibration_bins(softmax(logits, 2.5).max(1), softmax(logits, 2.5).argmax(1) == labels)
    )
    assert after < 0.02 < 0.1 < before


def test_expected_calibration_error_by_hand():
    table = calibration_bins(np.array([0.95, 0.95, 0.55, 0.55, 1.0]), np.array([1, 0, 1, 1, 1]))
    assert [b["rows"] for b in table if b["rows"]] == [2, 3]  # 1.0 falls in the last bin
    # bin 8: confidence 0.55, accuracy 1.0; bin 14: confidence 0.9667, accuracy 0.6667
    assert expected_calibration_error(table) == pytest.approx((2 * 0.45 + 3 * (0.96667 - 0.66667)) / 5, abs=1e-4)


def _tfidf_by_hand(docs: list[list[int]], idf: np.ndarray, normalize: str) -> np.ndarray:
    """Dense (documents x ids) weights: (1 + ln count) x idf per distinct id, normalised per row."""
    dense = np.zeros((len(docs), len(idf)))
    for row, doc in enumerate(docs):
        ids, counts = np.unique(np.array(doc, dtype=int), return_counts=True)
        if len(ids):
            dense[row, ids] = (1 + np.log(counts)) * idf[ids]
        norm = np.linalg.norm(dense[row]) if normalize == "l2" else dense[row].sum()
        dense[row] /= max(norm, 1e-12)
    return dense


@pytest.mark.parametrize("form", ["logistic", "fasttext"])
def test_tfidf_linear_model_equals_the_dense_tfidf_computation(form):
    # The weights are computed per occurrence inside the model (no de-duplication of ids);
    # the logits must equal the textbook dense tf-idf vector times the weight matrix.
    rng = np.random.default_rng(5)
    n_ids, n_classes = 40, 3
    docs = [list(rng.integers(0, 12, size=n)) for n in (1, 7, 0, 25, 3)] + [[4, 4, 4, 4], [39]]
    df = rng.integers(0, 6, size=n_ids)
    df[39] = 1  # below min_df: weighs 0
    model = LinearClassifier(n_ids, 5, n_classes, form=form, weighting="tfidf")
    model.set_idf(df, 30, min_df=2)
    idf = np.where(df >= 2, np.log(31 / (1 + df)) + 1, 0.0)
    assert model.idf.numpy() == pytest.approx(idf, rel=1e-6)
    torch.nn.init.normal_(model.embedding.weight)
    if form == "logistic":
        torch.nn.init.normal_(model.bias)
    batch = collate([(doc, 0) for doc in docs], "bag")
    with torch.no_grad():
        got = model(batch["ids"], batch["offsets"]).numpy()
        dense = _tfidf_by_hand(docs, idf, "l2" if form == "logistic" else "sum")
        table = model.embedding.weight.numpy().astype(np.float64)
        expected = (
            dense @ table + model.bias.numpy()
            if form == "logistic"
            else model.head(torch.tensor(dense @ table, dtype=torch.float32)).numpy()
        )
    assert got == pytest.approx(expected, abs=1e-5)
    assert got[2] == pytest.approx(
        got[6], abs=1e-6
    )  # no ids and only an id with idf 0 score alike: bias (or head) only


def test_document_frequencies_count_each_document_once(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [[1, 1, 2], [2, 3], [], [5, 5, 5, 5], [1]]
    pq.write_table(
        pa.table({"ids": pa.array(docs[:3], pa.list_(pa.int64())), "label_id": [0, 1, 0]}), tmp_path / "a.parquet"
    )
    pq.write_table(
        pa.table({"ids": pa.array(docs[3:], pa.list_(pa.int64())), "label_id": [1, 0]}), tmp_path / "b.parquet"
    )
    df, n = document_frequencies([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], 8, batch_rows=2)
    assert n == 5
    assert df.tolist() == [0, 2, 2, 1, 0, 1, 0, 0]


def test_best_weights_restores_the_best_epoch_and_ties_keep_the_later():
    model = torch.nn.Linear(2, 1)
    best = BestWeights()
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.7, 0.65], start=1):
        torch.nn.init.constant_(model.weight, float(epoch))
        best.offer(epoch, value, model)
    best.restore(model, last_epoch=5)
    assert best.epoch == 4 and best.value == 0.7
    assert model.weight.detach().tolist() == [[4.0, 4.0]]


def test_training_with_keep_best_ends_with_the_best_epochs_weights(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from textmill.models.classifier import (
        ModelSpec,
        ParquetExamples,
        TrainSettings,
        confusion,
        predict_logits,
        scores,
        train,
    )

    rng = np.random.default_rng(2)

    def write(path, n):  # label 1 docs lean on ids 0-19, label 0 on 20-39; noisy on purpose
        labels = rng.integers(0, 2, size=n)
        docs = [
            list(rng.integers(0, 40, size=6)) + list(rng.integers(20 * (1 - y), 20 * (2 - y), size=2)) for y in labels
        ]
        pq.write_table(pa.table({"ids": pa.array(docs, pa.list_(pa.int64())), "label_id": labels}), path)
        return [str(path)]

    train_files, val_files = write(tmp_path / "train.parquet", 400), write(tmp_path / "val.parquet", 200)
    spec = ModelSpec(kind="linear", n_ids=40, n_classes=2, dim=4, form="fasttext", weighting="tfidf")
    settings = TrainSettings(epochs=6, batch_size=8, lr=0.3, keep_best=True, threads=1)
    result = train(spec, settings, train_files, val_files, 400)
    values = [h["val_macro_f1"] for h in result.history]
    assert result.best_epoch == max(e for e, v in enumerate(values, start=1) if v == max(values))
    assert result.best_epoch < len(values)  # seeded so the last epoch is worse: the restore is exercised
    loader = torch.utils.data.DataLoader(
        ParquetExamples(val_files, shuffle=False), batch_size=64, collate_fn=lambda ex: collate(ex, "bag")
    )
    logits, y = predict_logits(result.model, iter(loader), torch.device("cpu"))
    assert scores(confusion(y, logits.argmax(1), 2))["macro_f1"] == pytest.approx(max(values))


def test_gru_outputs_line_up_with_inputs_on_a_shuffled_batch():
    torch.manual_seed(0)
    model = GRUClassifier(n_ids=50, dim=8, n_classes=3, hidden=6, bidirectional=True, dropout=0.0).eval()
    rng = random.Random(1)
    examples = [([rng.randrange(2, 50) for _ in range(length)], 0) for length in [3, 9, 1, 6, 12, 2, 7]]
    with torch.no_grad():
        alone = torch.cat([model(**model_inputs(collate([ex], "sequence"))) for ex in examples])
        order = list(range(len(examples)))
        rng.shuffle(order)
        shuffled = model(**model_inputs(collate([examples[i] for i in order], "sequence")))
    # Row k of the shuffled batch is example order[k], computed as if it were alone (no padding leaks in).
    assert torch.allclose(shuffled, alone[order], atol=1e-5)
    assert not torch.allclose(shuffled, alone, atol=1e-3)


def test_stratified_split_is_exact_per_label_and_seeded(spark):
    rows = [(f"d{i:03d}", "text", "a" if i < 70 else "b") for i in range(100)]
    df = spark.createDataFrame(rows, "doc_id string, text string, label string")
    train, val = stratified_split(df, "label", 0.2, seed=5)
    counts = {r["label"]: r["count"] for r in val.groupBy("label").count().collect()}
    assert counts == {"a": 14, "b": 6}
    assert train.count() == 80
    assert {r.doc_id for r in val.collect()} == {
        r.doc_id for r in stratified_split(df, "label", 0.2, seed=5)[1].collect()
    }
    assert {r.doc_id for r in val.collect()} != {
        r.doc_id for r in stratified_split(df, "label", 0.2, seed=6)[1].collect()
    }


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, spark):
    """A small labelled corpus with learnable topics, plus rows the trainer must quarantine."""
    path = tmp_path_factory.mktemp("labelled") / "prepared"
    rng = random.Random(11)
    topics = sorted(TOPICS)
    rows = [(f"t{i:04d}", _document(rng, topics[i % 4])[1], topics[i % 4]) for i in range(480)]
    rows += [("bad-null", None, "World"), ("bad-empty", "  ", "Sports"), ("bad-label", "some text", None)]
    spark.createDataFrame(rows, "doc_id string, text string, label string").write.parquet(str(path))
    return path, len(rows)


@pytest.fixture(scope="module")
def trained(labelled, spark, mlflow_uri, tmp_path_factory):
    """Train once, register as champion; returns (conf builder, run metrics)."""
    path, _ = labelled
    base = tmp_path_factory.mktemp("train")

    def conf(output: str, **classifier):
        return {
            "io": {"input": str(path), "output": str(base / output)},
            "classifier": {
                "validation_fraction": 0.25,
                "model": {"dim": 16, "n_buckets": 50_000},
                "training": {"solver": "sgd", "epochs": 3, "batch_size": 16, "lr": 0.05},
                "registry": {"name": "topics"},
                **classifier,
            },
            "spark": {"ui_enabled": False},
            "mlflow": {
                "tracking_uri": mlflow_uri,
                "experiment": "classifier-e2e",
                "artifact_location": (base / "art").as_uri(),
            },
        }

    metrics = run_job("train_classifier", conf("first"), spark)
    return conf, metrics


def test_training_logs_metrics_artifacts_and_registers_the_champion(trained, labelled, mlflow_uri):
    _, metrics = trained
    _, n_rows = labelled
    assert metrics["rows_in"] == n_rows == metrics["rows_train"] + metrics["rows_val"] + metrics["rows_quarantined"]
    assert metrics["rows_quarantined"] == 3 and metrics["rows_val"] == 120
    assert metrics["val_accuracy"] > 0.9 and metrics["promoted"] == 1.0

    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias("topics", "champion")
    run = client.get_run(version.run_id)
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [m.step for m in history if m.step > 0] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert run.data.params["classifier.model.kind"] == "linear"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert names == {
        "evaluation/confusion_matrix.png",
        "evaluation/training_curve.png",
        "evaluation/report.json",
        "evaluation/reliability.png",
        "evaluation/calibration.json",
    }
    calibration = json.loads(
        Path(client.download_artifacts(run.info.run_id, "evaluation/calibration.json")).read_text()
    )
    assert len(calibration["tables"]["calibrated"]) == 15
    assert sum(b["rows"] for b in calibration["tables"]["calibrated"]) == metrics["rows_val"]
    assert metrics["val_ece"] <= metrics["val_ece_uncalibrated"] + 1e-9
    assert run.data.metrics["temperature"] == pytest.approx(metrics["temperature"])
    label_map = json.loads(Path(client.download_artifacts(run.info.run_id, "label_map.json")).read_text())
    assert label_map == {"0": "Business", "1": "Sci_Tech", "2": "Sports", "3": "World"}
    assert (
        json.loads(Path(client.download_artifacts(run.info.run_id, "registry_decision.json")).read_text())["promoted"]
        is True
    )

    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model("models:/topics@champion")
    assert [c.type.name for c in model.metadata.signature.inputs.inputs] == ["string"]
    texts = [
        "Shares of the carmaker fell as the central bank raised inflation forecasts and earnings missed.",
        "The striker scored twice and the home side won the championship match.",
    ]
    for given in (pd.Series(texts), pd.DataFrame({"text": texts})):
        out = model.predict(given)
        assert list(out["label"]) == ["Business", "Sports"]
        assert all(abs(sum(p.values()) - 1) < 1e-5 for p in out["probabilities"])


def test_a_worse_model_does_not_take_the_champion_alias(trained, spark, mlflow_uri):
    conf, _ = trained
    metrics = run_job(
        "train_classifier", conf("worse", training={"solver": "sgd", "epochs": 1, "batch_size": 16, "lr": 1e-5}), spark
    )
    assert metrics["promoted"] == 0.0
    client = MlflowClient(mlflow_uri)
    versions = client.search_model_versions("name='topics'")
    champion = client.get_model_version_by_alias("topics", "champion")
    assert len(versions) >= 2 and str(champion.version) == "1"
    run = client.search_runs(
        [client.get_experiment_by_name("classifier-e2e").experiment_id], order_by=["start_time DESC"]
    )[0]
    decision = json.loads(Path(client.download_artifacts(run.info.run_id, "registry_decision.json")).read_text())
    assert decision["promoted"] is False and "does not beat version 1" in decision["reason"]


def test_classify_scores_every_row_and_evaluates(trained, labelled, spark, job_conf, tmp_path, mlflow_uri):
    path, n_rows = labelled
    out = tmp_path / "scored"
    conf = job_conf(
        io={"input": str(path), "output": str(out)}, classify={"model_uri": "models:/topics@champion", "evaluate": True}
    )
    metrics = run_job("classify", conf, spark)
    df = spark.read.parquet(str(out))
    assert df.columns == ["doc_id", "label", "probability", "probabilities", "error"]
    assert dict(df.dtypes)["probabilities"] == "map<string,double>"
    rows = {r.doc_id: r for r in df.collect()}
    assert len(rows) == n_rows == metrics["rows_out"] == metrics["rows_in"]
    assert rows["bad-null"].error == "null text" and rows["bad-null"].label is None
    assert rows["bad-empty"].error == "empty text"
    assert rows["bad-label"].error is None and rows["bad-label"].label in TOPICS
    assert metrics["rows_error"] == 2
    assert metrics["eval_accuracy"] > 0.9 and metrics["eval_rows"] == n_rows - 3
    assert metrics["max_model_loads_per_worker"] == 1
    assert 0 <= metrics["eval_ece"] < 0.5
    assert {f"eval_{m}.{t}" for m in ("precision", "recall", "f1") for t in ("Sports", "World")} <= set(metrics)
    client = MlflowClient(mlflow_uri)
    run = client.search_runs(
        [client.get_experiment_by_name("textmill-classify").experiment_id], order_by=["start_time DESC"]
    )[0]
    assert run.data.metrics["eval_ece"] == pytest.approx(metrics["eval_ece"])
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/report.json")).read_text())
    assert sum(b["rows"] for b in report["calibration"]) == metrics["eval_rows"]
    assert report["labels"]["Sports"]["f1"] == pytest.approx(metrics["eval_f1.Sports"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/confusion_matrix.png",
        "evaluation/reliability.png",
    }


def test_classify_keeps_the_gold_label_under_another_name(trained, labelled, spark, job_conf, tmp_path):
    path, n_rows = labelled
    conf = job_conf(
        io={"input": str(path), "output": str(tmp_path / "kept")},
        classify={"model_uri": "models:/topics@champion", "keep_as": {"label": "true_label"}},
    )
    run_job("classify", conf, spark)
    df = spark.read.parquet(str(tmp_path / "kept"))
    assert df.columns == ["doc_id", "label", "probability", "probabilities", "error", "true_label"]
    source = {r.doc_id: r.label for r in spark.read.parquet(str(path)).collect()}
    assert {r.doc_id: r.true_label for r in df.collect()} == source and len(source) == n_rows
    with pytest.raises(ConfigError, match=r"keep_as, e\.g\. \{label: true_label\}"):
        run_job(
            "classify",
            job_conf(
                io={"input": str(path), "output": str(tmp_path / "k2")},
                classify={"model_uri": "models:/topics@champion", "keep_columns": ["label"]},
            ),
            spark,
        )


def test_watch_classifies_new_files_with_the_registered_champion(trained, spark, job_conf, tmp_path):
    import csv
    import io

    rng = random.Random(5)
    inbox, out = tmp_path / "inbox", tmp_path / "watched"
    inbox.mkdir()
    truth = {}
    for f in range(2):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "body", "topic"])
        for i in range(60):
            topic = sorted(TOPICS)[i % 4]
            truth[f"n{f}-{i}"] = topic
            writer.writerow([f"n{f}-{i}", _document(rng, topic)[1], topic])
        (tmp_path / f"{f}.csv").write_text(buffer.getvalue())
        os.rename(tmp_path / f"{f}.csv", inbox / f"{f}.csv")
    conf = job_conf(
        io={"output": str(out)},
        watch={"inbox": str(inbox), "steps": ["prepare", "classify"], "max_files_per_batch": 1},
        prepare={"columns": {"doc_id": "id", "text": "body", "label": "topic"}},
        classify={"model_uri": "models:/topics@champion"},
    )
    metrics = run_job("watch", conf, spark)
    assert (metrics["batches"], metrics["total_rows_out"]) == (2, 120)
    scored = spark.read.parquet(str(out / "classify")).collect()
    assert sorted(r.doc_id for r in scored) == sorted(truth) and {r.batch for r in scored} == {0, 1}
    assert all(r.error is None for r in scored)
    assert sum(r.label == truth[r.doc_id] for r in scored) / len(scored) > 0.9
    assert metrics["max_model_loads_per_worker"] == 1  # across both micro-batches


def test_mlflow_spark_udf_runs_the_registered_classifier(trained, spark, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    udf = mlflow.pyfunc.spark_udf(
        spark,
        "models:/topics@champion",
        env_manager="local",
        result_type="label string, probability double, probabilities map<string,double>, error string",
    )
    texts = [
        "The striker scored twice in the final match of the season.",
        "Shares of the carmaker fell as the central bank raised inflation forecasts.",
        "",
        None,
    ]
    rows = spark.createDataFrame([(t,) for t in texts], "text string").select(udf("text").alias("p")).collect()
    expected = mlflow.pyfunc.load_model("models:/topics@champion").predict(pd.DataFrame({"text": texts}))
    assert [r.p.label for r in rows] == list(expected["label"]) == ["Sports", "Business", None, None]
    assert [r.p.error for r in rows] == [None, None, "empty text", "null text"]
    assert rows[0].p.probabilities == pytest.approx(expected["probabilities"][0])


@pytest.mark.slow
def test_two_process_distributed_training_is_close_to_single_process(trained, spark):
    conf, single = trained
    metrics = run_job("train_classifier", conf("ddp", distributed={"num_processes": 2}, registry={"name": None}), spark)
    assert metrics["rows_train"] == single["rows_train"]
    assert metrics["val_accuracy"] >= single["val_accuracy"] - 0.05


@pytest.mark.slow
def test_mlflow_serving_answers_rest_calls(trained, mlflow_uri, tmp_path, spark, job_conf):
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH, as with an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "models",
            "serve",
            "-m",
            "models:/topics@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=tmp_path,
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")

        def invoke(payload: dict) -> list[dict]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)["predictions"]

        predictions = invoke(
            {
                "inputs": [
                    "The striker scored twice in the final match of the season.",
                    "Researchers unveiled a faster processor for the web browser.",
                    "",
                    "\u00a0\t",
                ]
            }
        )
        assert [p["label"] for p in predictions] == ["Sports", "Sci_Tech", None, None]
        assert set(predictions[0]["probabilities"]) == set(TOPICS)
        # As the classify job answers them: no label, an error. (MLflow turns a null inside "inputs"
        # into the text "None"; nulls travel in dataframe_split or dataframe_records.)
        assert [p["error"] for p in predictions] == [None, None, "empty text", "empty text"]
        rows = invoke({"dataframe_split": {"columns": ["text"], "data": [["A goal in extra time."], [None]]}})
        assert [(p["label"], p["error"]) for p in rows] == [("Sports", None), (None, "null text")]
        # The served model and Spark's classify job (featurizing and weighting inside the Arrow UDF)
        # give the same probabilities for the same texts.
        rng = random.Random(4)
        texts = [_document(rng, topic)[1] for topic in sorted(TOPICS) for _ in range(3)] + [
            "Goal! Goal! goal goal.",
            "unseenword",
        ]
        served = invoke({"inputs": texts})
        spark.createDataFrame([(f"s{i}", t) for i, t in enumerate(texts)], "doc_id string, text string").write.parquet(
            str(tmp_path / "texts")
        )
        run_job(
            "classify",
            job_conf(
                io={"input": str(tmp_path / "texts"), "output": str(tmp_path / "scored")},
                classify={"model_uri": "models:/topics@champion"},
            ),
            spark,
        )
        scored = {r.doc_id: r for r in spark.read.parquet(str(tmp_path / "scored")).collect()}
        for i, prediction in enumerate(served):
            assert scored[f"s{i}"].label == prediction["label"]
            assert dict(scored[f"s{i}"].probabilities) == pytest.approx(prediction["probabilities"], abs=1e-6)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_invalid_utf8_is_a_row_error_in_classify_and_quarantined_in_training(trained, spark, job_conf, tmp_path):
    from pyspark.sql import functions as F

    source = tmp_path / "foreign"
    (
        spark.createDataFrame(
            [("d1", "The striker scored twice.", "Sports")], "doc_id string, text string, label string"
        )
        .union(
            spark.range(1).select(
                F.lit("d2").alias("doc_id"),
                F.unhex(F.lit("476F616CFF")).cast("string").alias("text"),
                F.lit("Sports").alias("label"),
            )
        )
        .write.parquet(str(source))
    )
    run_job(
        "classify",
        job_conf(
            io={"input": str(source), "output": str(tmp_path / "scored")},
            classify={"model_uri": "models:/topics@champion"},
        ),
        spark,
    )
    rows = {r.doc_id: r for r in spark.read.parquet(str(tmp_path / "scored")).collect()}
    assert rows["d1"].error is None and rows["d1"].label in TOPICS
    assert (rows["d2"].label, rows["d2"].error) == (None, "text is not valid UTF-8")

    from textmill.pipelines.train_classifier import ClassifierConf, _labelled

    good, bad = _labelled(spark.read.parquet(str(source)), ClassifierConf())
    assert [r.doc_id for r in good.collect()] == ["d1"]
    assert [(r.doc_id, r.reason) for r in bad.collect()] == [("d2", "undecodable_text")]


def test_patience_without_keep_best_is_a_config_error():
    from textmill.pipelines.train_classifier import TrainClassifierJobConf
    from textmill.runtime.config import validate_conf

    data = {"io": {"input": "in", "output": "out"}, "classifier": {"training": {"patience": 2}}}
    with pytest.raises(ConfigError, match="'classifier.training.patience' needs 'classifier.training.keep_best: true'"):
        validate_conf(TrainClassifierJobConf, data)
    data["classifier"]["training"]["keep_best"] = True
    assert validate_conf(TrainClassifierJobConf, data).classifier.training.patience == 2


def test_default_linear_training_reaches_the_l2_regularised_optimum(labelled, spark, job_conf, tmp_path, mlflow_uri):
    # The default solver (lbfgs) must leave the exported model at the optimum of
    # C * sum(log loss) + |W|^2 / 2 on its own tf-idf features: the objective's gradient at the
    # saved weights vanishes. The streaming solver stopped short of it.
    from textmill.models.classifier_pyfunc import TextClassifier
    from textmill.models.logistic_solver import tfidf_matrix

    path, _ = labelled
    out = tmp_path / "exact"
    metrics = run_job(
        "train_classifier",
        job_conf(
            io={"input": str(path), "output": str(out)},
            classifier={"validation_fraction": 0.25, "model": {"n_buckets": 50_000}},
        ),
        spark,
    )
    run = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("textmill-train_classifier").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.params["training.solver_used"] == "lbfgs"
    chosen = float(run.data.params["training.C_used"])
    assert chosen in (1.0, 4.0, 16.0, 64.0) and metrics["epochs"] == 4  # one record per C tried
    assert metrics["val_accuracy"] > 0.9

    classifier = TextClassifier(out / "model")
    model = classifier.model
    x, y = tfidf_matrix(model, sorted(str(p) for p in (out / "features" / "train").glob("*.parquet")))
    weights = model.embedding.weight.detach().numpy().astype(np.float64)  # n_ids x classes
    bias = model.bias.detach().numpy().astype(np.float64)
    logits = np.asarray(x @ weights) + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    residual = probs - np.eye(len(bias))[y]
    used = np.unique(x.indices)
    gradient = chosen * np.asarray(x.T @ residual)[used] + weights[used]
    # Scale: the gradient at W = 0 (the streaming solver's start).
    at_zero = chosen * np.asarray(x.T @ (np.full_like(probs, 1 / len(bias)) - np.eye(len(bias))[y]))[used]
    assert np.abs(gradient).max() < 0.02 * np.abs(at_zero).max(), (np.abs(gradient).max(), np.abs(at_zero).max())
    assert np.abs(chosen * residual.sum(axis=0)).max() < 0.02 * np.abs(at_zero).max()  # the bias is not penalised
    unused = np.setdiff1d(np.arange(weights.shape[0]), used)
    assert not weights[unused].any()


def test_solver_auto_keeps_streaming_where_lbfgs_would_not_fit(tmp_path):
    from textmill.pipelines.train_classifier import ClassifierConf, ClassifierMemoryError, solver_for

    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    ids = [rng.integers(0, 50_000, 300).astype(np.int32) for _ in range(400)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"ids": ids, "label_id": [i % 4 for i in range(400)]}), tmp_path / "train" / "part-0.parquet"
    )
    files = [str(tmp_path / "train" / "part-0.parquet")]
    assert solver_for(ClassifierConf(), files, 4, 50_000) == "lbfgs"
    assert solver_for(ClassifierConf(max_memory_mb=2), files, 4, 50_000) == "sgd"
    with pytest.raises(
        ClassifierMemoryError, match="solver lbfgs needs about .* MB on the driver .* over classifier.max_memory_mb=2"
    ):
        solver_for(ClassifierConf(max_memory_mb=2, training={"solver": "lbfgs"}), files, 4, 50_000)
    assert solver_for(ClassifierConf(model={"kind": "gru"}), files, 4, 50_000) == "sgd"
    assert solver_for(ClassifierConf(distributed={"num_processes": 2}), files, 4, 50_000) == "sgd"


def test_lbfgs_where_it_cannot_run_is_a_config_error():
    from textmill.pipelines.train_classifier import TrainClassifierJobConf
    from textmill.runtime.config import validate_conf

    base = {"io": {"input": "in", "output": "out"}}
    with pytest.raises(ConfigError, match="lbfgs needs the linear kind's logistic form"):
        validate_conf(
            TrainClassifierJobConf, {**base, "classifier": {"training": {"solver": "lbfgs"}, "model": {"kind": "gru"}}}
        )
    with pytest.raises(ConfigError, match="lbfgs trains in one process"):
        validate_conf(
            TrainClassifierJobConf,
            {**base, "classifier": {"training": {"solver": "lbfgs"}, "distributed": {"num_processes": 2}}},
        )
