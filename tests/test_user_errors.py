"""User mistakes end with exit status 2 and one line saying what to change, never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ann import write_vectors
from test_prepare import REPO, load_job


def run_main(job: str, capsys, mlflow_uri, tmp_path, *sets: str) -> tuple[int, str]:
    code = load_job(job).main(
        [
            "--conf",
            str(REPO / "conf" / f"{job}.yaml"),
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
            "--set",
            f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
            *[x for s in sets for x in ("--set", s)],
        ]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("textmill: error:")]
    return code, lines[0] if len(lines) == 1 else err


@pytest.fixture(scope="module")
def small_index(spark, tmp_path_factory, mlflow_uri):
    from textmill.jobs import run_job

    base = tmp_path_factory.mktemp("idx")
    write_vectors(spark, base / "vectors", np.random.default_rng(2).normal(size=(60, 4)).astype(np.float32))
    run_job(
        "build_index",
        {
            "io": {"input": str(base / "vectors"), "output": str(base / "index")},
            "index": {"shards": 2, "recall": {"queries": 10, "k": 3}},
            "spark": {"ui_enabled": False},
            "mlflow": {"tracking_uri": mlflow_uri},
        },
        spark,
    )
    return base


def test_classify_with_a_directory_that_is_not_a_model(spark, capsys, mlflow_uri, tmp_path):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("hello")
    spark.createDataFrame([("d1", "some text")], "doc_id string, text string").write.parquet(str(tmp_path / "in"))
    code, line = run_main(
        "classify",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={tmp_path / 'in'}",
        f"io.output={tmp_path / 'out'}",
        f"classify.model_uri={tmp_path / 'not_a_model'}",
    )
    assert code == 2 and "is not a model directory (no MLmodel or textmill_classifier.json)" in line, line


@pytest.mark.parametrize(
    "vectors, message",
    [
        ([("a", [1.0, 2.0])], "1 vector(s); nearest neighbours need at least 2"),
        ([("a", []), ("b", [])], "2 of 2 vector(s) are empty (length 0)"),
    ],
)
def test_build_index_refuses_what_cannot_be_indexed(vectors, message, spark, capsys, mlflow_uri, tmp_path):
    spark.createDataFrame(vectors, "id string, vector array<float>").write.parquet(str(tmp_path / "v"))
    code, line = run_main(
        "build_index", capsys, mlflow_uri, tmp_path, f"io.input={tmp_path / 'v'}", f"io.output={tmp_path / 'idx'}"
    )
    assert code == 2 and message in line, line
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("manifest", "manifest.json cannot be read as JSON"),
        ("truncate", "bytes, the manifest says"),
        ("halve", "bytes, the manifest says"),
        ("flip", "does not match the checksum in the manifest"),
        # an index built before shards had sizes and checksums in the manifest: what Annoy finds
        ("truncate_unsummed", "cannot be loaded (Index size is not a multiple of vector size"),
        ("halve_unsummed", "items, the manifest says 30 (truncated or replaced?)"),
        ("remove", "is missing"),
    ],
)
def test_neighbors_with_a_damaged_index(damage, message, small_index, spark, capsys, mlflow_uri, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(small_index / "index", index)
    manifest = json.loads((index / "manifest.json").read_text())
    shard = index / manifest["shards"][0]["file"]
    if damage.endswith("_unsummed"):
        damage = damage.removesuffix("_unsummed")
        for entry in manifest["shards"]:
            del entry["bytes"], entry["sha256"]
        (index / "manifest.json").write_text(json.dumps(manifest))
    if damage == "manifest":
        (index / "manifest.json").write_text('{"dim": 4, "metr')
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "halve":
        data = shard.read_bytes()
        node = 12 + 4 * 4  # an angular Annoy node of dimension 4: descendants, two children, the vector
        shard.write_bytes(data[: len(data) // 2 // node * node])  # a whole number of nodes, half of them
    elif damage == "flip":
        data = bytearray(shard.read_bytes())  # the right size, bytes of its nodes flipped
        for at in range(len(data) // 3, len(data) // 3 + 64):
            data[at] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    code, line = run_main(
        "neighbors",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={small_index / 'vectors'}",
        f"io.output={tmp_path / 'nn'}",
        f"neighbors.index={index}",
    )
    assert code == 2 and message in line, line


def test_cluster_names_neighbours_that_are_not_nodes(spark, capsys, mlflow_uri, tmp_path):
    spark.createDataFrame(
        [("a", [("b", 0.1)]), ("b", [("a", 0.1), ("zz", 0.2)])],
        "id string, neighbors array<struct<id:string,distance:float>>",
    ).write.parquet(str(tmp_path / "g"))
    code, line = run_main(
        "cluster", capsys, mlflow_uri, tmp_path, f"io.input={tmp_path / 'g'}", f"io.output={tmp_path / 'c'}"
    )
    assert code == 2 and "1 neighbour id(s) are not nodes of the graph (no row with that id), e.g. 'zz'" in line, line


@pytest.mark.slow
def test_a_job_that_runs_out_of_java_heap_says_so_in_one_line(tmp_path):
    """The driver JVM of a local run dies of OutOfMemoryError (Spark exits 52) while Python holds a
    job cancelled by the shutdown, or a py4j error with no text left: one line with the job, where,
    and the settings to change; exit 2; the MLflow run FAILED, not RUNNING. A 512 MB heap and one
    sgns partial of 100,000 words x 300 dimensions (240 MB) in each of 4 tasks."""
    import subprocess
    import sys

    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own: the one run in it is this job's
    words = [f"w{i:06d}" for i in range(100_000)]
    src = tmp_path / "in"
    src.mkdir()
    texts = [" ".join(words[(i * 50 + j) % len(words)] for j in range(50)) for i in range(2_000)]
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}), src / "p.parquet")
    sets = {
        "io.input": src,
        "io.output": tmp_path / "out",
        "mlflow.tracking_uri": mlflow_uri,
        "spark.driver_memory": "512m",
        "spark.ui_enabled": "false",
        "embeddings.dim": 300,
        "embeddings.min_count": 1,
        "embeddings.partitions": 4,
        "embeddings.epochs": 1,
        "embeddings.init": "random",
        "embeddings.subword.enabled": "false",
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    proc = subprocess.run(
        [sys.executable, "-m", "textmill.cli", "run", "train_embeddings", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("textmill: error: train_embeddings ran out of Java heap"), proc.stderr[-3000:]
    assert "spark.driver_memory" in last and "embeddings.max_vocab" in last and "exited with code 52" in last
    assert not (tmp_path / "out").exists()
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"] and list(runs["tags.textmill.job"]) == ["train_embeddings"]


@settings(max_examples=9, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["text", "doc_id", "body"]),
    variant=st.sampled_from(
        [str.upper, str.title, lambda s: s[0].upper() + s[1:].lower(), lambda s: s[:-1] + s[-1].upper()]
    ),
    fmt=st.sampled_from(["csv", "jsonl", "parquet"]),
)
def test_columns_that_differ_only_in_case_are_one_line_naming_both(
    spark, capsys, mlflow_uri, tmp_path_factory, name, variant, fmt
):
    """A CSV with the columns ``Text`` and ``text``: an AMBIGUOUS_REFERENCE traceback after planning.
    Generated pairs of names that differ only in case, in CSV, JSON Lines and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp_path = tmp_path_factory.mktemp("case")
    other = variant(name)
    if other == name:
        other = name.upper()
    columns = list(dict.fromkeys(["doc_id", "text", name, other]))
    rows = [{c: f"{c}-{i}" for c in columns} for i in range(3)]
    src = tmp_path / "in"
    src.mkdir()
    if fmt == "csv":
        (src / "f.csv").write_text(
            ",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows)
        )
    elif fmt == "jsonl":
        (src / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), src / "f.parquet")
    code, line = run_main(
        "prepare",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={src}",
        f"io.output={tmp_path / 'out'}",
        f"prepare.format={fmt}",
        "prepare.columns.doc_id=doc_id",
    )
    assert code == 2 and line.startswith(
        ("textmill: error: io.input: the columns", "textmill: error: io.input: the JSON keys")
    ), line
    assert repr(name) in line and repr(other) in line and "differ only in case" in line
    assert not (tmp_path / "out").exists()


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.text(alphabet="abcdefgh_", min_size=1, max_size=6), min_size=2, max_size=4, unique=True),
    rows=st.integers(1, 5),
    control=st.sampled_from(["\r", "\x0b", "\x1b[2K"]),
)
def test_an_error_naming_columns_escapes_their_control_characters(
    spark, capsys, mlflow_uri, tmp_path_factory, names, rows, control
):
    """CR-only line endings are refused in one line, but that line held the file's raw carriage returns
    (the header and the rows run together into column names). Generated CR-only files, and names with
    other control characters (a vertical tab, an escape sequence that clears the terminal line)."""
    tmp_path = tmp_path_factory.mktemp("cr")
    header = [n + (control if control != "\r" and i == 0 else "") for i, n in enumerate(names)]
    ending = "\r" if control == "\r" else "\n"
    body = ending.join([",".join(header)] + [",".join(f"v{r}{c}" for c in range(len(names))) for r in range(rows)])
    (tmp_path / "f.csv").write_text(body + ending)
    code, line = run_main(
        "prepare",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={tmp_path / 'f.csv'}",
        f"io.output={tmp_path / 'out'}",
        "prepare.columns.text=zz_not_there",
    )
    assert code == 2 and line.startswith("textmill: error: prepare.columns.text"), line
    assert not any(ch in line for ch in "\r\x0b\x1b"), repr(line)
    if control == "\r":
        assert "\\r" in line and "carriage returns" in line


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_an_output_below_a_file_is_one_line_before_any_work(spark, capsys, mlflow_uri, tmp_path, depth):
    """An output whose parent is a file: a FileExistsError traceback after the work. The file here
    is 1-3 folders above the output."""
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    blocker = tmp_path / "report.txt"
    blocker.write_text("not a folder")
    out = blocker.joinpath(*[f"d{i}" for i in range(depth - 1)], "out")
    code, line = run_main(
        "prepare", capsys, mlflow_uri, tmp_path, f"io.input={src}", f"io.output={out}", "prepare.format=text_lines"
    )
    assert code == 2 and "which is a file, not a folder" in line and str(blocker) in line, line
    assert blocker.read_text() == "not a folder"


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stem=st.text(alphabet="abcdef-_ ", min_size=1, max_size=8).filter(str.strip),
    glob=st.sampled_from(list("*?[]{}")),
    at=st.integers(0, 8),
)
def test_an_output_path_with_glob_characters_is_one_line_before_any_work(
    spark, capsys, mlflow_uri, tmp_path_factory, stem, glob, at
):
    """An output path with ?, *, [ or ]: Spark wrote it, then read it back as a glob and failed with a
    PATH_NOT_FOUND traceback after the work."""
    tmp_path = tmp_path_factory.mktemp("glob")
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    name = stem[:at] + glob + stem[at:]
    code, line = run_main(
        "prepare",
        capsys,
        mlflow_uri,
        tmp_path,
        f"io.input={src}",
        f"io.output={tmp_path / name}",
        "prepare.format=text_lines",
    )
    assert code == 2 and "which Spark reads as a glob pattern" in line and glob in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
