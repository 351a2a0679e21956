"""Word embeddings: vocabulary, subsampling/negatives maths, training, subwords, exports, embed_docs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textmill.jobs import run_job
from textmill.pipelines.train_embeddings import EmbeddingsDivergedError, EmbeddingsMemoryError, count_vocabulary
from textmill.vectors import embeddings as emb
from textmill.vectors.docvectors import DocumentEmbedder, load_embeddings

ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "elephant"]
VEHICLES = ["car", "truck", "bus", "train", "bicycle", "tractor"]


def topic_corpus(n_docs: int = 600, seed: int = 4) -> list[tuple[str, str]]:
    """Two topics whose words only co-occur within their topic."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        words, verbs = (ANIMALS, ["eats", "sleeps", "runs"]) if i % 2 == 0 else (VEHICLES, ["drives", "stops", "parks"])
        sentence = []
        for _ in range(rng.randint(6, 14)):
            sentence += [rng.choice(words), rng.choice(verbs)]
        docs.append((f"d{i:04d}", " ".join(sentence)))
    return docs


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------- maths


def test_vocabulary_counts_match_a_hand_count(spark):
    df = spark.createDataFrame(
        [("a", ["the", "cat", "the"]), ("b", ["the", "dog"]), ("c", ["cat", "bird"]), ("d", [])],
        "doc_id string, tokens array<string>",
    )
    vocab = count_vocabulary(df, min_count=2, max_vocab=None)
    assert list(zip(vocab["word"], vocab["count"])) == [("the", 3), ("cat", 2)]
    assert list(count_vocabulary(df, 1, 2)["word"]) == ["the", "cat"]


def test_subsampling_follows_mikolovs_formula():
    counts = np.array([1000, 100, 10, 1])
    keep = emb.keep_probabilities(counts, sample=1e-2)
    t = 1e-2 * counts.sum()
    expected = [min(1.0, (np.sqrt(f / t) + 1) * t / f) for f in counts]
    assert np.allclose(keep, expected)
    assert keep[0] < keep[1] <= 1.0 and keep[-1] == 1.0
    assert np.all(emb.keep_probabilities(counts, 0) == 1.0)


def test_negatives_are_drawn_from_unigram_to_the_three_quarters():
    counts = np.array([810, 160, 10])
    probs = emb.negative_distribution(counts)
    assert np.allclose(probs, counts**0.75 / (counts**0.75).sum())
    draws = torch.multinomial(
        torch.tensor(probs, dtype=torch.float32), 200_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    assert np.allclose(np.bincount(draws.numpy(), minlength=3) / 200_000, probs, atol=0.01)


def test_window_pairs_stay_inside_sentences():
    ids = np.array([1, 2, 3, 4, 5, 6])
    sentence = np.array([0, 0, 0, 1, 1, 1])
    centers, contexts = emb.dynamic_window_pairs(ids, sentence, window=5, rng=np.random.default_rng(0))
    pairs = set(zip(centers.tolist(), contexts.tolist()))
    assert pairs and all((a <= 3) == (b <= 3) for a, b in pairs)
    centers, contexts = emb.dynamic_window_pairs(ids, np.zeros(6, int), window=1, rng=np.random.default_rng(0))
    assert sorted(zip(centers.tolist(), contexts.tolist())) == sorted(
        [(a, a + 1) for a in range(1, 6)] + [(a + 1, a) for a in range(1, 6)]
    )


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 5000), min_size=1, max_size=40), batch=st.integers(1, 2048), cap=st.integers(1, 64)
)
def test_row_shares_cap_every_rows_expected_updates_per_batch_and_spare_the_rest(counts, batch, cap):
    rows = np.repeat(np.arange(len(counts)), counts)
    if len(rows) == 0:
        return
    shares = emb.row_shares(rows, batch, cap)
    per_batch = min(batch, len(rows)) / len(rows)
    expected_full = np.bincount(rows, minlength=len(counts)) * per_batch
    expected_scaled = np.bincount(rows, weights=shares, minlength=len(counts)) * per_batch
    assert (expected_scaled <= cap * (1 + 1e-5)).all()
    under = expected_full <= cap
    assert np.all(shares[under[rows]] == 1.0)
    # A row over the cap keeps exactly cap full steps' worth, not less.
    assert np.allclose(expected_scaled[~under & (expected_full > 0)], cap, rtol=1e-5)


def test_combine_averages_rows_by_updates_and_keeps_untouched_rows():
    current = np.zeros((3, 2))
    weighted = np.array([[2.0, 4.0], [0.0, 0.0], [3.0, 3.0]])
    updates = np.array([2.0, 0.0, 3.0])
    assert np.allclose(emb.combine(current, weighted, updates), [[1, 2], [0, 0], [1, 1]])


def test_fnv1a_matches_the_reference_values():
    # Published FNV-1a 32-bit test vectors.
    assert emb.fnv1a_32(b"") == 0x811C9DC5
    assert emb.fnv1a_32(b"a") == 0xE40C292C
    assert emb.fnv1a_32(b"foobar") == 0xBF9CF968
    assert emb.char_ngrams("cat", 3, 4) == ["<ca", "cat", "at>", "<cat", "cat>"]


def test_subword_fit_reaches_the_exact_least_squares_solution():
    rng = np.random.default_rng(1)
    letters = "abcdefghij"
    words = sorted({"".join(rng.choice(list(letters), size=rng.integers(3, 9))) for _ in range(400)})
    targets = rng.normal(size=(len(words), 6)).astype(np.float32)
    buckets, l2 = 3_000, 1e-4
    rows, cols, vals = [], [], []
    for i, word in enumerate(words):
        ids = emb.ngram_buckets(word, buckets)
        rows += [i] * len(ids)
        cols += ids
        vals += [1.0 / len(ids)] * len(ids)
    a = np.zeros((len(words), buckets))
    np.add.at(a, (rows, cols), vals)
    # The exact minimiser of mean ||A z - v||^2 + l2 ||z||^2 / V: (A^T A + l2 I) z = A^T v.
    exact = np.linalg.solve(a.T @ a + l2 * np.eye(buckets), a.T @ targets)

    def loss(z):
        return ((a @ z - targets) ** 2).sum(1).mean() + l2 * (z**2).sum() / len(words)

    fitted = emb.fit_subwords(words, targets, buckets, steps=100, dims_per_solve=4)
    assert fitted.shape == (buckets, 6) and fitted.dtype == np.float32
    assert loss(fitted) <= loss(exact) * 1.02
    assert loss(fitted) < 0.5 * loss(np.zeros_like(exact))
    unused = np.setdiff1d(np.arange(buckets), cols)
    assert not fitted[unused].any()  # no word uses them: they stay zero


# ---------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "prepared"
    rows = topic_corpus() + [("empty", "zzz qqq"), ("tiny", "cat"), ("blank", "")]
    spark.createDataFrame(rows, "doc_id string, text string").write.parquet(str(path))
    return path


def train(spark, job_conf, corpus, out: Path, **embeddings):
    settings = {
        "dim": 16,
        "window": 3,
        "epochs": 3,
        "min_count": 3,
        "negative": 4,
        "lr": 0.05,
        "sample": 0,
        "batch_pairs": 256,
        "subword": {"buckets": 20_000, "steps": 200},
        **embeddings,
    }
    return run_job(
        "train_embeddings", job_conf(io={"input": str(corpus), "output": str(out)}, embeddings=settings), spark
    )


@pytest.fixture(scope="module")
def sgns(spark, corpus, tmp_path_factory, mlflow_uri):
    out = tmp_path_factory.mktemp("sgns") / "embeddings"
    conf = lambda **s: {
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "emb-tests"},
        **s,
    }
    metrics = train(spark, conf, corpus, out, partitions=3, rounds_per_epoch=2)
    return out, metrics, conf


def test_sgns_puts_related_words_closer_than_unrelated(sgns):
    out, metrics, _ = sgns
    vectors, counts, manifest = load_embeddings(out / "export")
    v = {w: vectors.vectors[vectors.index[w]] for w in ANIMALS + VEHICLES}
    within = np.mean([cos(v[a], v[b]) for a in ANIMALS for b in ANIMALS if a != b])
    across = np.mean([cos(v[a], v[b]) for a in ANIMALS for b in VEHICLES])
    assert within > across + 0.3, (within, across)
    assert metrics["vocab_size"] == len(vectors.words) == 18  # 12 nouns + 6 verbs; zzz/qqq under min_count
    assert manifest["method"] == "sgns" and manifest["dim"] == 16


def test_unseen_words_and_misspellings_get_sensible_vectors(sgns):
    out, _, _ = sgns
    vectors, _, _ = load_embeddings(out / "export")
    assert vectors.vector_for("qwxz") is None  # n-grams no training word had: nothing known, no zero vector
    for typo, word in [("elephnt", "elephant"), ("tractr", "tractor"), ("bicycles", "bicycle")]:
        assert typo not in vectors.index
        nearest = vectors.most_similar(vectors.vector_for(typo), topn=1)[0][0]
        assert nearest == word, (typo, nearest)


UNKNOWN_ALPHABETS = {
    "cyrillic": "абвгдежзиклмнопрстуфхцчшщыэюя",
    "digits": "0123456789",
    "emoji": "😀😂🚀🌍🔥🎉💡🧠",
    "zero_width": "\u200b\u200c\u200d\u2060",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
}


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(
        st.tuples(st.sampled_from(sorted(UNKNOWN_ALPHABETS)), st.integers(1, 12), st.randoms(use_true_random=False)),
        min_size=1,
        max_size=8,
    ),
    typo=st.sampled_from(ANIMALS + VEHICLES).filter(lambda w: len(w) >= 5),
    drop=st.integers(1, 3),
)
def test_a_word_made_of_nothing_the_model_saw_is_unknown_and_a_typo_is_not(words, typo, drop):
    """The subword fallback gave an all-zero vector, counted as known, to words whose n-grams no
    training word had: a document of only such words got a zero vector and no error. Words of
    alphabets the vocabulary lacks are unknown whatever their buckets hold (here every one of
    their n-grams also collides with a trained bucket); a typo of a known word is not."""
    vocab = ANIMALS + VEHICLES + ["grass", "road", "farm", "wheel", "field", "engine"]
    rng = np.random.default_rng(0)
    ngrams = np.zeros((2**20, 8), dtype=np.float32)
    for word in vocab:
        for bucket in emb.ngram_buckets(word, len(ngrams)):
            ngrams[bucket] = rng.normal(size=8)
    vectors = emb.SubwordVectors(vocab, rng.normal(size=(len(vocab), 8)).astype(np.float32), ngrams)
    unknown = ["".join(r.choice(UNKNOWN_ALPHABETS[a]) for _ in range(n)) for a, n, r in words]
    for word in unknown:  # the worst case: every bucket of the word trained (a dense model's collisions)
        vectors.ngram_vectors[emb.ngram_buckets(word, len(ngrams))] = 1.0
    vectors.trained = np.any(vectors.ngram_vectors != 0, axis=1)
    assert all(vectors.vector_for(w) is None for w in unknown), unknown
    salad = "qzxvjq"  # Latin letters, but n-grams no vocabulary word has
    assert vectors.vector_for(salad) is None
    misspelt = typo[:drop] + typo[drop + 1 :]  # one letter dropped: most of its n-grams are the word's
    assert misspelt in vocab or vectors.vector_for(misspelt) is not None


def test_a_document_of_only_unknown_words_gets_no_vector(sgns):
    out, _, _ = sgns
    embedder = DocumentEmbedder(out / "export")
    for doc in ["привет мир", "12345 67890", "😀 🚀", "\u200b\u200b", "qzxv jqkw", "Ωμέγα"]:
        assert embedder.embed_tokens(doc.split()) == (None, 0), doc
    vector, known = embedder.embed_tokens(["elephnt", "привет"])
    assert vector is not None and known == 1


def test_every_export_format_round_trips(sgns, spark):
    from gensim.models import KeyedVectors

    out, _, _ = sgns
    vectors, counts, _ = load_embeddings(out / "export")
    kv = KeyedVectors.load_word2vec_format(str(out / "export" / "vectors.w2v.txt"), binary=False)
    assert kv.index_to_key == vectors.words
    assert np.allclose(kv["dog"], vectors.vectors[vectors.index["dog"]], atol=1e-3)
    parquet = {r.word: (r["count"], np.array(r.vector)) for r in spark.read.parquet(str(out / "vectors")).collect()}
    assert set(parquet) == set(vectors.words)
    assert np.allclose(parquet["cat"][1], vectors.vectors[vectors.index["cat"]], atol=1e-2)  # float16 export vs float32
    assert parquet["cat"][0] == counts[vectors.index["cat"]]
    assert np.load(out / "export" / "vectors.f16.npy").dtype == np.float16
    meta = (out / "export" / "projector" / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "word\tcount" and len(meta) - 1 == len(
        np.loadtxt(out / "export" / "projector" / "vectors.tsv", ndmin=2)
    )
    assert {r.word for r in spark.read.parquet(str(out / "vocab")).collect()} == set(vectors.words)


def test_embedder_pyfunc_turns_texts_into_document_vectors(sgns, mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("emb-tests").experiment_id], order_by=["start_time ASC"])[0]
    mlflow.set_tracking_uri(mlflow_uri)
    embedder = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/embedder")
    out = embedder.predict(pd.Series(["the cat eats", "a truck drives", "zzz"]))
    a, b = np.array(out["vector"][0]), np.array(out["vector"][1])
    assert len(a) == 16 and cos(a, b) < 0.9
    assert {p.path for p in client.list_artifacts(run.info.run_id, "embeddings")} >= {
        "embeddings/vectors.w2v.txt",
        "embeddings/vectors.f16.npy",
        "embeddings/vocab.tsv",
        "embeddings/embeddings.json",
    }


def test_mlflow_spark_udf_runs_the_embedder(sgns, spark, mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("emb-tests").experiment_id], order_by=["start_time ASC"])[0]
    mlflow.set_tracking_uri(mlflow_uri)
    uri = f"runs:/{run.info.run_id}/embedder"
    udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="vector array<float>", env_manager="local")
    texts = ["the cat eats", "a truck drives", ""]
    rows = spark.createDataFrame([(t,) for t in texts], "text string").select("text", udf("text").alias("p")).collect()
    expected = mlflow.pyfunc.load_model(uri).predict(pd.Series(texts))["vector"]
    assert [len(v) for v in expected] == [16, 16, 0]  # no word, no vector
    for row, vector in zip(rows, expected):
        assert np.allclose(row.p.vector, vector, atol=1e-6) and len(row.p.vector) == len(vector)


def test_ppmi_svd_is_deterministic_and_meaningful(spark, corpus, tmp_path, job_conf):
    first = train(spark, job_conf, corpus, tmp_path / "p1", method="ppmi_svd", dim=4, subword={"enabled": False})
    train(spark, job_conf, corpus, tmp_path / "p2", method="ppmi_svd", dim=4, subword={"enabled": False}, partitions=5)
    a = np.load(tmp_path / "p1" / "export" / "vectors.f16.npy")
    b = np.load(tmp_path / "p2" / "export" / "vectors.f16.npy")
    assert np.array_equal(a, b)
    vectors, _, _ = load_embeddings(tmp_path / "p1" / "export")
    v = lambda w: vectors.vectors[vectors.index[w]]
    assert cos(v("cat"), v("dog")) > cos(v("cat"), v("car"))
    assert first["vocab_size"] == 18


def test_sgns_rerun_with_same_seed_is_reproducible(spark, corpus, tmp_path, job_conf):
    for name in ("r1", "r2"):
        train(spark, job_conf, corpus, tmp_path / name, epochs=1, partitions=2, subword={"enabled": False})
    a = np.load(tmp_path / "r1" / "export" / "vectors.f16.npy").astype(np.float32)
    b = np.load(tmp_path / "r2" / "export" / "vectors.f16.npy").astype(np.float32)
    assert np.allclose(a, b, atol=1e-3)


def planted_corpus(n_docs: int = 2400, groups: int = 12, per_group: int = 12, seed: int = 3):
    """Documents each about one of ``groups`` topics: Zipf-distributed topic words and 30% shared
    function words, so the corpus has frequent words every partition sees and rare ones few do."""
    rng = random.Random(seed)
    topics = [[f"g{g}w{i}" for i in range(per_group)] for g in range(groups)]
    fillers = ["the", "a", "of", "and", "to", "is"]
    zipf = [1.0 / (i + 1) for i in range(per_group)]
    docs = []
    for d in range(n_docs):
        topic = topics[rng.randrange(groups)]
        words = [
            rng.choice(fillers) if rng.random() < 0.3 else rng.choices(topic, zipf)[0]
            for _ in range(rng.randint(20, 40))
        ]
        docs.append((f"p{d:05d}", " ".join(words)))
    return docs, topics


def neighbour_purity(vectors, topics, k: int = 5) -> float:
    """Share of each topic word's k nearest words (cosine) that belong to its own topic."""
    words = [w for topic in topics for w in topic]
    m = np.stack([vectors.vectors[vectors.index[w]] for w in words])
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    sims = m @ m.T
    np.fill_diagonal(sims, -np.inf)
    topic_of = np.repeat(np.arange(len(topics)), len(topics[0]))
    nearest = np.argsort(-sims, axis=1)[:, :k]
    return float((topic_of[nearest] == topic_of[:, None]).mean())


@pytest.mark.slow
def test_sgns_quality_holds_from_one_to_eight_partitions(spark, tmp_path, job_conf):
    # The guard for map-reduce training: from word2vec's random start the 8 partitions' models
    # drift apart and their average scored a purity of 0.19 here (1 partition: 1.0).
    docs, topics = planted_corpus()
    src = tmp_path / "planted"
    spark.createDataFrame(docs, "doc_id string, text string").write.parquet(str(src))
    purity = {}
    for partitions in (1, 8):
        out = tmp_path / f"p{partitions}"
        train(spark, job_conf, src, out, partitions=partitions, lr=0.025, sample=1e-3, subword={"enabled": False})
        purity[partitions] = neighbour_purity(load_embeddings(out / "export")[0], topics)
    assert purity[1] >= 0.9, purity
    assert purity[8] >= purity[1] - 0.05, purity


def repetitive_corpus(repeats: int = 60_000) -> list[tuple[str, str]]:
    """The topic corpus plus the posts that made sgns diverge on newsgroup text: a token
    repeated tens of thousands of times (uuencoded lines, ``>`` quote markers, ASCII art)."""
    return topic_corpus(2000) + [
        ("uuencoded", " ".join(["begin"] * repeats)),
        ("quoted", " ".join([">"] * repeats)),
        ("ascii-art", " ".join(["7 8 9"] * (repeats // 3))),
    ]


@pytest.mark.slow
def test_sgns_at_defaults_trains_on_pathological_repetition(spark, tmp_path, job_conf):
    src = tmp_path / "repetitive"
    spark.createDataFrame(repetitive_corpus(), "doc_id string, text string").write.parquet(str(src))
    run = lambda out, **e: run_job(
        "train_embeddings",
        job_conf(
            io={"input": str(src), "output": str(tmp_path / out)}, embeddings={"subword": {"enabled": False}, **e}
        ),
        spark,
    )
    # The corpus is a real trap: without the per-row cap the first round's weights overflow.
    with pytest.raises(EmbeddingsDivergedError, match=r"max_row_updates=0: words repeated many times within a batch"):
        run("uncapped", max_row_updates=0)
    metrics = run("defaults")
    # An untrained model scores (1 + negative) ln 2 = 4.16.
    assert np.isfinite(metrics["final_loss"]) and metrics["final_loss"] < 0.5 * 6 * np.log(2), metrics
    vectors = load_embeddings(tmp_path / "defaults" / "export")[0]
    assert np.isfinite(vectors.vectors).all()
    v = {w: vectors.vectors[vectors.index[w]] for w in ANIMALS + VEHICLES}
    within = np.mean([cos(v[a], v[b]) for a in ANIMALS for b in ANIMALS if a < b])
    across = np.mean([cos(v[a], v[b]) for a in ANIMALS for b in VEHICLES])
    assert within > across + 0.2, (within, across)


def test_tiny_corpus_more_partitions_than_documents_works(spark, tmp_path, job_conf):
    src = tmp_path / "tiny"
    spark.createDataFrame([("a", "cat dog"), ("b", "dog cat"), ("c", "")], "doc_id string, text string").write.parquet(
        str(src)
    )
    metrics = train(spark, job_conf, src, tmp_path / "out", min_count=1, window=5, partitions=8, epochs=1)
    assert metrics["vocab_size"] == 2 and metrics["empty_docs"] == 1


def test_a_vocabulary_too_large_for_memory_is_refused_up_front(spark, corpus, tmp_path, job_conf):
    with pytest.raises(
        EmbeddingsMemoryError, match=r"vocabulary 18 x dim 100000 needs about 27 MB .* over embeddings.max_memory_mb=1"
    ):
        train(spark, job_conf, corpus, tmp_path / "big", dim=100_000, max_memory_mb=1)
    assert not (tmp_path / "big").exists()


def test_embed_docs_gives_one_vector_per_document(sgns, corpus, spark, job_conf, tmp_path):
    out, _, _ = sgns
    metrics = run_job(
        "embed_docs",
        job_conf(io={"input": str(corpus), "output": str(tmp_path / "docvec")}, embed={"embeddings": str(out)}),
        spark,
    )
    rows = {r.doc_id: r for r in spark.read.parquet(str(tmp_path / "docvec")).collect()}
    assert len(rows) == metrics["rows_in"] == metrics["rows_out"] == 603
    assert rows["blank"].vector is None and rows["blank"].error == "no known tokens"
    assert metrics["rows_error"] == 2
    assert len(rows["d0000"].vector) == 16 and rows["d0000"].error is None
    # 'zzz qqq': no vocabulary word, and letters no vocabulary word has. The subword fallback gave
    # it the zero vector of untrained buckets, with n_known 2; it knows nothing of it.
    assert rows["empty"].vector is None and rows["empty"].error == "no known tokens"
    animal, vehicle = np.array(rows["d0000"].vector), np.array(rows["d0001"].vector)
    assert cos(animal, np.array(rows["d0002"].vector)) > cos(animal, vehicle)
    assert metrics["max_model_loads_per_worker"] == 1

    strict = DocumentEmbedder(out / "export", subword_fallback=False)
    assert strict.embed_tokens(["zzz", "qqq"]) == (None, 0)


def test_watch_embeds_new_documents_from_their_tokens(sgns, spark, job_conf, tmp_path):
    out, _, _ = sgns
    inbox, watched = tmp_path / "inbox", tmp_path / "watched"
    inbox.mkdir()
    docs = topic_corpus(n_docs=40, seed=9)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    os.rename(tmp_path / "docs.jsonl", inbox / "docs.jsonl")
    conf = job_conf(
        io={"output": str(watched)},
        watch={"inbox": str(inbox), "steps": ["prepare", "tokenize", "embed_docs"]},
        prepare={"format": "jsonl", "columns": {"doc_id": "id"}},
        nlp={"model": "blank:en"},
        embed={"embeddings": str(out)},
    )
    metrics = run_job("watch", conf, spark)
    assert metrics["total_rows_out"] == 40
    vectors = {r.doc_id: r for r in spark.read.parquet(str(watched / "embed_docs")).collect()}
    tokens = {r.doc_id: r for r in spark.read.parquet(str(watched / "tokenize")).collect()}
    assert set(vectors) == set(tokens) == {i for i, _ in docs}
    assert all(r.error is None and len(r.vector) == 16 for r in vectors.values())
    # Embedded from the batch's tokens: as many known words as tokens the vectors know.
    assert all(0 < vectors[i].n_known <= tokens[i].n_tokens for i in vectors)


def test_embed_docs_reports_invalid_utf8_text_as_a_row_error(sgns, spark, job_conf, tmp_path):
    from pyspark.sql import functions as F

    out, _, _ = sgns
    source = tmp_path / "foreign"
    (
        spark.createDataFrame([("d1", "the cat")], "doc_id string, text string")
        .union(
            spark.range(1).select(F.lit("d2").alias("doc_id"), F.unhex(F.lit("636174FF")).cast("string").alias("text"))
        )
        .write.parquet(str(source))
    )
    run_job(
        "embed_docs",
        job_conf(io={"input": str(source), "output": str(tmp_path / "v")}, embed={"embeddings": str(out)}),
        spark,
    )
    rows = {r.doc_id: r for r in spark.read.parquet(str(tmp_path / "v")).collect()}
    assert rows["d1"].error is None and rows["d1"].vector is not None
    assert (rows["d2"].vector, rows["d2"].error) == (None, "text is not valid UTF-8")


@pytest.mark.slow
def test_sgns_on_more_partitions_than_cores_leaves_the_driver_heap_as_it_found_it(spark, tmp_path, job_conf):
    """The regression of the 8-partition IMDB run (OutOfMemoryError after the fifth round): every
    round left its K partials on the driver's heap. Here 8 partitions on the session's 2 cores and
    a 12,000-word vocabulary at dim 64 (3 MB per weight matrix, 6 MB per partial, 48 MB a round)."""
    from benchmarks.common import live_heap_mb
    from test_partials import persisted_rdds

    rng = random.Random(11)
    words = [f"w{i:05d}" for i in range(12_000)]
    docs = [(f"d{i}", " ".join(rng.choice(words) for _ in range(60))) for i in range(2_400)]
    src = tmp_path / "wide"
    spark.createDataFrame(docs, "doc_id string, text string").write.parquet(str(src))
    before_rdds, before_heap = persisted_rdds(spark), live_heap_mb(spark)
    metrics = train(
        spark,
        job_conf,
        src,
        tmp_path / "out",
        dim=64,
        min_count=1,
        partitions=8,
        epochs=2,
        rounds_per_epoch=2,
        init="random",
        subword={"enabled": False},
    )
    assert metrics["vocab_size"] == 12_000
    round_of_partials_mb = 8 * 2 * 12_000 * 64 * 4 / 2**20
    assert not persisted_rdds(spark) - before_rdds
    # four rounds left 2-3x a round's partials each before; now less than two rounds' worth moves
    assert live_heap_mb(spark) - before_heap < 2 * round_of_partials_mb, before_heap
