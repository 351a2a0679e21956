"""Near-duplicate detection (issue 40): MinHash and banding properties, connected components
against union-find on generated graphs, and the ``dedup`` job on a generated corpus with planted
exact and near duplicates against the exact Jaccard of every pair (the ground truth)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmill.dedup import minhash
from textmill.dedup.components import component_labels, in_one_task, union_find
from textmill.dedup.transforms import DedupConf


def union_find_labels(nodes: set, edges: list[tuple]) -> dict:
    parent = {n: n for n in nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = {n: find(n) for n in nodes}
    smallest: dict = {}
    for n, r in roots.items():
        smallest[r] = min(smallest.get(r, n), n)
    return {n: smallest[r] for n, r in roots.items()}


# ------------------------------------------------------------------------------- minhash (no Spark)


@given(threshold=st.floats(0.3, 0.95), num_perm=st.sampled_from([32, 64, 128, 256]))
@settings(max_examples=30, deadline=None)
def test_the_chosen_bands_put_the_s_curve_near_the_threshold_and_fit_the_permutations(threshold, num_perm):
    b = minhash.choose_bands(threshold, num_perm)
    assert 1 <= b.bands * b.rows <= num_perm
    assert 0 <= b.false_positive <= threshold and 0 <= b.false_negative <= 1 - threshold
    # The S-curve 1 - (1 - s^r)^b climbs steepest near (1/b)^(1/r): that must be near the threshold.
    assert abs((1 / b.bands) ** (1 / b.rows) - threshold) < 0.2, b
    # No other split of the same permutations errs less.
    error = (b.false_positive + b.false_negative) / 2
    for bands, rows in [(max(1, b.bands - 1), b.rows), (b.bands, b.rows + 1), (b.bands + 1, b.rows)]:
        if bands * rows <= num_perm:
            other = minhash.false_positive_probability(threshold, bands, rows)
            other += minhash.false_negative_probability(threshold, bands, rows)
            assert error <= other / 2 + 1e-12


@given(
    common=st.sets(st.integers(0, 2**32 - 1), min_size=1, max_size=300),
    only_a=st.sets(st.integers(0, 2**32 - 1), max_size=100),
    only_b=st.sets(st.integers(0, 2**32 - 1), max_size=100),
)
@settings(max_examples=40, deadline=None)
def test_signatures_agree_in_about_the_jaccard_share_of_permutations(common, only_a, only_b):
    a = np.unique(np.array(sorted(common | only_a), dtype=np.uint32))
    b = np.unique(np.array(sorted(common | (only_b - only_a)), dtype=np.uint32))
    true = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
    perms = minhash.Permutations.make(256, seed=3)
    estimate = float(np.mean(minhash.signature(a, perms) == minhash.signature(b, perms)))
    assert abs(estimate - true) < 0.15  # 256 draws: 4.7 standard deviations at worst
    assert np.array_equal(minhash.signature(a, perms), minhash.signature(a, minhash.Permutations.make(256, seed=3)))


@given(pairs=st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=60))
@settings(max_examples=100, deadline=None)
def test_the_one_task_union_find_labels_every_node_with_its_component_s_smallest(pairs):
    labels = union_find(pairs)
    assert labels == union_find_labels({x for p in pairs for x in p}, pairs)


def test_normalisation_and_shingles():
    assert minhash.normalize("Ｈｅｌｌｏ,  WORLD!\n") == minhash.normalize("hello world") == "hello world"
    assert minhash.normalize("a.b", punctuation=False) == "a.b"
    short = minhash.shingle_hashes("two words", "word", 5)
    assert short.size == 1  # shorter than one shingle: the text itself
    assert minhash.shingle_hashes("", "word", 5).size == 0
    six = minhash.shingle_hashes("a b c d e f", "word", 5)
    assert six.size == 2 and six.dtype == np.uint32
    assert minhash.shingle_hashes("abcdef", "char", 3).size == 4
    assert minhash.exact_key("x") == minhash.exact_key("x") != minhash.exact_key("y")


def test_band_settings_are_checked():
    with pytest.raises(ValueError, match="together"):
        DedupConf(bands=4)
    with pytest.raises(ValueError, match="over dedup.num_perm"):
        DedupConf(bands=20, rows=10, num_perm=128)
    with pytest.raises(ValueError, match="time_column"):
        DedupConf(representative="earliest")


# ------------------------------------------------------------------------------- Spark


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 60),
    edges=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=80),
    chain=st.integers(0, 40),
)
def test_components_equal_union_find_on_generated_graphs(spark, n, edges, chain):
    """Random edges, self-loops and repeats, plus a long chain (what min-label propagation needs
    as many rounds as its length for): every node labelled with its component's smallest node."""
    pairs = [(f"n{a % n:03d}", f"n{b % n:03d}") for a, b in edges]
    pairs += [(f"c{i:03d}", f"c{i + 1:03d}") for i in range(chain)]
    if not pairs:
        pairs = [("n000", "n001")]
    df = spark.createDataFrame(pairs, "u string, v string")
    labels, rounds = component_labels(df)
    got = {r["node"]: r["label"] for r in labels.collect()}
    nodes = {x for p in pairs for x in p}
    assert got == union_find_labels(nodes, pairs)
    assert rounds <= 12, rounds
    assert {r["node"]: r["label"] for r in in_one_task(df).collect()} == got


WORDS = [f"w{i}" for i in range(5000)]


def corpus(seed: int = 5) -> tuple[list[dict], dict]:
    """Documents of 200 random words; planted: exact copies (case, punctuation, spacing changed),
    near copies (one or two words substituted: Jaccard about 0.9-0.95 of 5-word shingles), 60
    copies of one boilerplate text, each with one word of its own at the end, and bad rows."""
    rng = random.Random(seed)
    docs, planted = [], {}
    for i in range(120):
        words = rng.choices(WORDS, k=200)
        docs.append({"doc_id": f"d{i:04d}", "text": " ".join(words)})
        if i % 10 == 0:
            docs.append({"doc_id": f"e{i:04d}", "text": " ".join(words).upper().replace(" ", " ,  ")})
            planted[f"e{i:04d}"] = ("exact", f"d{i:04d}")
        if i % 10 == 1:
            edited = list(words)
            for _ in range(1 + i % 2):
                edited[rng.randrange(200)] = rng.choice(WORDS)
            docs.append({"doc_id": f"n{i:04d}", "text": " ".join(edited)})
            planted[f"n{i:04d}"] = ("near", f"d{i:04d}")
    boiler = rng.choices(WORDS, k=150)
    for j in range(60):
        docs.append({"doc_id": f"b{j:04d}", "text": " ".join(boiler) + f" tail{j}"})
    docs += [
        {"doc_id": None, "text": "no id"},
        {"doc_id": "x_empty", "text": "   "},
        {"doc_id": "x_null", "text": None},
        {"doc_id": "x_twice", "text": "one"},
        {"doc_id": "x_twice", "text": "two"},
    ]
    return docs, planted


def shingle_jaccard(a: str, b: str) -> float:
    sa = set(minhash.shingle_hashes(minhash.normalize(a), "word", 5).tolist())
    sb = set(minhash.shingle_hashes(minhash.normalize(b), "word", 5).tolist())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0  # two texts with no word: both normalise to ""


def test_dedup_finds_the_planted_duplicates_in_linear_pairs_and_accounts_for_every_row(spark, job_conf, tmp_path):
    from textmill.jobs import run_job

    docs, planted = corpus()
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(
        pa.Table.from_pylist(docs, schema=pa.schema([("doc_id", pa.string()), ("text", pa.string())])),
        src / "p.parquet",
    )
    out = tmp_path / "out"
    conf = job_conf(io={"input": str(src), "output": str(out)}, dedup={"threshold": 0.8})
    metrics = run_job("dedup", conf, spark)

    rows = {r["doc_id"]: r.asDict() for r in spark.read.parquet(str(out)).collect()}
    kept = {r["doc_id"] for r in spark.read.parquet(f"{out}_kept").collect()}
    bad = sorted((r["doc_id"] or "", r["reason"]) for r in spark.read.parquet(f"{out}_quarantine").collect())
    assert bad == [
        ("", "null_doc_id"),
        ("x_empty", "empty_text"),
        ("x_null", "null_text"),
        ("x_twice", "duplicate_doc_id"),
        ("x_twice", "duplicate_doc_id"),
    ]
    assert metrics["rows_in"] == len(docs) == metrics["rows_out"] + metrics["rows_quarantined"]
    assert kept == {d for d, r in rows.items() if r["is_representative"]}
    assert metrics["rows_kept"] + metrics["rows_removed"] == metrics["rows_out"] == len(rows)

    # Ground truth: the exact Jaccard of every pair of good documents, grouped by union-find.
    good = {d["doc_id"]: d["text"] for d in docs if d["doc_id"] in rows}
    ids = sorted(good)
    truth = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if shingle_jaccard(good[a], good[b]) >= 0.8]
    expected = union_find_labels(set(ids), truth)
    assert {d: r["dup_group"] for d, r in rows.items()} == expected
    for doc, (kind, original) in planted.items():
        assert rows[doc]["dup_of"] == original and rows[doc]["dup_kind"] == kind, rows[doc]
        assert rows[doc]["jaccard"] == 1.0 if kind == "exact" else 0.8 <= rows[doc]["jaccard"] < 1.0
    assert metrics["exact_duplicates"] == 12 and metrics["near_duplicates"] == 12 + 59

    # The boilerplate bucket: 60 documents give star edges (at most 59 per band), never 60 x 59 / 2 per band.
    assert metrics["candidate_pairs"] <= metrics["bands"] * (59 + 12 + 12) < 60 * 59 / 2 * metrics["bands"]
    # The same input gives the same groups, on the distributed components path too.
    assert metrics["component_rounds"] == 0  # a small graph: union-find in one task
    conf["dedup"]["local_max_edges"] = 0
    assert run_job("dedup", conf, spark)["component_rounds"] >= 1
    again = {r["doc_id"]: (r["dup_group"], r["dup_of"], r["dup_kind"]) for r in spark.read.parquet(str(out)).collect()}
    assert again == {d: (r["dup_group"], r["dup_of"], r["dup_kind"]) for d, r in rows.items()}


def later_batches(seed: int) -> tuple[dict, dict, dict]:
    """The generated corpus's good documents spread over three batches: originals in batches 0-1,
    their planted copies in a later batch than the original, half of the boilerplate copies in
    batches 1-2. Returns (texts, batch of each document, planted)."""
    docs, planted = corpus(seed=seed)
    good = {d["doc_id"]: d["text"] for d in docs if d["doc_id"] and d["text"] and d["text"].strip()}
    good.pop("x_twice")
    rng = random.Random(seed)
    batch = {d: (rng.randrange(2) if d.startswith("d") else 0) for d in good}
    for copy, (_, original) in planted.items():
        batch[copy] = batch[original] + 1 + rng.randrange(2 - batch[original])
    for j in range(30, 60):
        batch[f"b{j:04d}"] = 1 + j % 2
    # Punctuation only: no shingle, so no band bucket tells they are equal; their exact key does.
    good |= {"p0000": "?!", "p0001": "... --", "p0002": "-"}
    batch |= {"p0000": 0, "p0001": 2, "p0002": 2}
    planted |= {"p0001": ("exact", "p0000"), "p0002": ("exact", "p0000")}
    return good, batch, planted


def check_marks_against_earlier_batches(good: dict, batch: dict, planted: dict, marks: dict) -> None:
    """``marks``: {doc_id: (dup_group, dup_of, is_representative, dup_kind)} of every document,
    marked batch by batch at the defaults. Checked against the rule, computed here from the
    library's MinHash (its own properties are tested above): a later batch's exact
    representative joins the published group of an earlier document with its exact key, and of
    the smallest earlier exact representative of each band bucket it falls in when their
    Jaccard reaches 0.8 (a star edge, verified). No group holds documents of two true
    components; LSH misses aside, the true cross-batch pairs are found; the boilerplate copies
    over three batches are one group; the planted exact copies join their original."""
    c = DedupConf()
    banding, perms = c.banding(), minhash.Permutations.make(c.num_perm, c.seed)
    exact, buckets = {}, {}
    for d, text in good.items():
        normalized = minhash.normalize(text)
        exact[d] = minhash.exact_key(normalized)
        signature = minhash.signature(minhash.shingle_hashes(normalized), perms)
        buckets[d] = set(enumerate(minhash.band_keys(signature, banding.bands, banding.rows).tolist()))
    first_of_key = {}
    for d in sorted(good):
        first_of_key.setdefault((batch[d], exact[d]), d)
    exact_reps = set(first_of_key.values())
    assert set(marks) == set(good)
    checked = 0
    for late in sorted(exact_reps):
        earlier = [d for d in exact_reps if batch[d] < batch[late]]
        same = sorted(d for d in earlier if exact[d] == exact[late])
        centers = {min((d for d in earlier if bucket in buckets[d]), default=None) for bucket in buckets[late]} - {None}
        linked = same[:1] + sorted(d for d in centers if shingle_jaccard(good[d], good[late]) >= 0.8)
        for early in linked:
            assert not marks[late][2] and marks[late][0] == marks[early][0], (early, late, marks[early], marks[late])
            checked += 1
    assert checked >= 40
    ids = sorted(good)
    truth = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if shingle_jaccard(good[a], good[b]) >= 0.8]
    components = union_find_labels(set(ids), truth)
    for doc, (group, *_rest) in marks.items():
        assert components[doc] == components[group], doc
    later_pairs = [(a, b) if batch[a] < batch[b] else (b, a) for a, b in truth if batch[a] != batch[b]]
    found = sum(1 for early, late in later_pairs if marks[late][0] == marks[early][0] and not marks[late][2])
    assert found >= 0.9 * len(later_pairs) and len(later_pairs) >= 40
    for copy, (kind, original) in planted.items():
        if kind == "exact":
            assert marks[copy][1] == original and marks[copy][3] == kind, (copy, marks[copy])
    assert {marks[f"b{j:04d}"][0] for j in range(60)} == {"b0000"}


def test_later_batches_are_marked_against_the_index_of_earlier_ones(spark, tmp_path):
    """What ``watch``'s dedup step does, batch by batch, at the transform level (the fast tier's
    check; ``test_watch.py`` runs the same through the job): each batch is marked against itself
    and against the index of the earlier batches; the boilerplate copies of a later batch cost at
    most one candidate pair per document and band (star edges to the earlier bucket's smallest
    member)."""
    from textmill.dedup import transforms

    good, batch, planted = later_batches(seed=11)
    c = DedupConf()
    banding = c.banding()
    marks, index_dirs = {}, []
    for b in range(3):
        rows = [{"doc_id": d, "text": t} for d, t in sorted(good.items()) if batch[d] == b]
        earlier = spark.read.parquet(*index_dirs) if index_dirs else None
        found = transforms.mark_duplicates(
            spark.createDataFrame(rows, "doc_id string, text string"), c, banding, earlier
        )
        for r in found.rows.collect():
            assert r["doc_id"] not in marks
            marks[r["doc_id"]] = (r["dup_group"], r["dup_of"], r["is_representative"], r["dup_kind"])
        index_dirs.append(str(tmp_path / f"index{b}"))
        transforms.index_rows(found.rows, c).write.parquet(index_dirs[-1])
        if b:
            assert found.candidate_pairs <= banding.bands * len(rows)
            joined_earlier = sum(1 for d in good if batch[d] == b and batch[marks[d][0]] < b)
            assert found.earlier_copies == joined_earlier > 0
    check_marks_against_earlier_batches(good, batch, planted, marks)


def test_integer_ids_group_like_strings_and_dedup_output_is_refused_as_input(spark, job_conf, tmp_path):
    """Ids that are not strings (int64) are grouped and named as they are (``dup_group`` and
    ``dup_of`` of the id's type); a table that already
    has dedup's columns (its own output, run again) is refused in one line before any work."""
    from textmill.jobs import run_job
    from textmill.runtime.errors import ColumnNotFoundError

    words = " ".join(WORDS[:200])
    docs = [
        {"doc_id": 30, "text": words},
        {"doc_id": 7, "text": words.upper()},  # exact
        {"doc_id": 12, "text": words + " and one more"},  # near: Jaccard 196/199
        {"doc_id": 5, "text": " ".join(WORDS[300:500])},
    ]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    pq.write_table(
        pa.Table.from_pylist(docs, schema=pa.schema([("doc_id", pa.int64()), ("text", pa.string())])), src / "p.parquet"
    )
    conf = job_conf(io={"input": str(src), "output": str(out)})
    run_job("dedup", conf, spark)
    rows = {r["doc_id"]: (r["dup_group"], r["dup_of"], r["dup_kind"]) for r in spark.read.parquet(str(out)).collect()}
    # The rule's lowest id is 7 by number (the one-task union-find orders its labels as strings: "12" < "7").
    assert rows == {5: (5, None, None), 7: (7, None, None), 12: (7, 7, "near"), 30: (7, 7, "exact")}
    assert dict(spark.read.parquet(str(out)).dtypes)["dup_group"] == "bigint"
    again = job_conf(io={"input": str(out), "output": str(tmp_path / "again")})
    with pytest.raises(ColumnNotFoundError, match=r"already has column\(s\) dup_group, dup_of, is_representative"):
        run_job("dedup", again, spark)


def test_an_index_built_with_other_settings_is_refused_in_one_line(spark, tmp_path):
    """watch checks the latest earlier index before any batch: its keys depend on the
    normalisation, shingles, permutations and banding, so other settings would match nothing."""
    from textmill.data import storage
    from textmill.pipelines.dedup import check_index_settings, index_settings
    from textmill.runtime.errors import ConfigError

    index = tmp_path / "dedup_index" / "batch=4"
    index.mkdir(parents=True)
    storage.write_marker(spark, str(index), {"schema": "dedup/v1-index", "dedup": index_settings(DedupConf())})
    check_index_settings(spark, str(index), DedupConf(threshold=0.8, verify=False, sample_size=3))  # not key settings
    with pytest.raises(
        ConfigError, match=r"differ from those .*batch=4 was indexed with \(bands: 9 -> \d+, rows: 13 -> \d+\)"
    ):
        check_index_settings(spark, str(index), DedupConf(threshold=0.6))
    with pytest.raises(ConfigError, match=r"\(shingle: 'word' -> 'char'\)"):
        check_index_settings(spark, str(index), DedupConf(shingle="char"))
