"""Outputs never delete what textmill did not write; one writer at a time; publishes are one unit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from textmill.data import io, storage
from textmill.jobs import run_job
from textmill.runtime.errors import OutputError


def prepare_conf(job_conf, source: Path, output: Path, **io_extra):
    return job_conf(io={"input": str(source), "output": str(output), **io_extra}, prepare={"format": "text_lines"})


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_output_that_contains_the_input_is_refused_and_nothing_is_deleted(spark, job_conf, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("one\ntwo\n")
    (data / "unrelated.csv").write_text("keep me\n")
    before = tree(data)
    with pytest.raises(OutputError, match=r"io.output .* contains the input .*in.txt"):
        run_job("prepare", prepare_conf(job_conf, data / "in.txt", data), spark)
    with pytest.raises(OutputError, match=r"io.output .* is inside the input"):
        run_job("prepare", prepare_conf(job_conf, data, data / "out"), spark)
    with pytest.raises(OutputError, match=r"io.quarantine .* contains the input"):
        run_job("prepare", prepare_conf(job_conf, data / "in.txt", tmp_path / "out", quarantine=str(data)), spark)
    assert tree(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no lock, staging or output left behind


def test_a_directory_or_file_textmill_did_not_write_is_replaced_only_when_asked(spark, job_conf, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.docx").write_bytes(b"years of work")
    with pytest.raises(
        OutputError, match=r"textmill did not write \(no _textmill.json; it holds 1 entry, e.g. 'thesis.docx'\)"
    ):
        run_job("prepare", prepare_conf(job_conf, source, theirs), spark)
    assert (theirs / "thesis.docx").read_bytes() == b"years of work"

    a_file = tmp_path / "report.parquet"
    a_file.write_bytes(b"not ours")
    with pytest.raises(OutputError, match="is an existing file"):
        run_job("prepare", prepare_conf(job_conf, source, a_file), spark)
    assert a_file.read_bytes() == b"not ours"

    metrics = run_job("prepare", prepare_conf(job_conf, source, theirs, replace_unmarked=True), spark)
    assert metrics["rows_out"] == 2 and not (theirs / "thesis.docx").exists()
    assert storage.read_marker(spark, str(theirs))["schema"] == "prepare/v1"
    # Now it is ours: a plain rerun replaces it without the flag.
    assert run_job("prepare", prepare_conf(job_conf, source, theirs), spark)["rows_out"] == 2


def test_rename_never_nests_into_an_existing_directory(spark, tmp_path):
    staged, final = tmp_path / "staged", tmp_path / "final"
    staged.mkdir(), final.mkdir()
    (staged / "new.txt").write_text("new")
    (final / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="could not move the new output into place"):
        storage.move(spark, str(staged), str(final))
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert (staged / "new.txt").exists()


def test_a_second_writer_fails_with_the_holders_name_and_a_killed_holder_is_taken_over(spark, job_conf, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\nthree\n")
    output = tmp_path / "out"
    run_job("prepare", prepare_conf(job_conf, source, output), spark)
    before = tree(output)
    lock = Path(f"{output}{storage.LOCK_SUFFIX}")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import json, os, socket, sys, time\n"
                f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
                "os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'started': 'now'}).encode())\n"
                "os.close(fd); print('locked', flush=True); time.sleep(120)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        source.write_text("changed\n")
        with pytest.raises(
            OutputError, match=rf"being written by another textmill run \(host {socket.gethostname()}, pid {holder.pid}"
        ):
            run_job("prepare", prepare_conf(job_conf, source, output), spark)
        assert tree(output) == before
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        metrics = run_job("prepare", prepare_conf(job_conf, source, output), spark)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert metrics["rows_out"] == 1 and not lock.exists()


def test_two_runs_at_once_never_nest_or_mix_outputs(spark, job_conf, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("".join(f"line {i}\n" for i in range(3)))
    output = tmp_path / "out"
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def writer() -> None:
        start.wait()
        try:
            outcomes.append(run_job("prepare", prepare_conf(job_conf, source, output), spark)["rows_out"])
        except OutputError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert 3 in outcomes
    assert all(o == 3 or "being written by another" in str(o) for o in outcomes)
    assert spark.read.parquet(str(output)).count() == 3
    assert pq.read_table(output).num_rows == 3  # pyarrow sees no nested copy either
    assert [p.name for p in output.iterdir() if p.is_dir()] == []


def test_torn_publish_is_detected_by_readers_and_repaired_with_leftovers_by_the_next_run(spark, job_conf, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("good line\n\n")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_job("prepare", prepare_conf(job_conf, source, run_a), spark)
    run_job("prepare", prepare_conf(job_conf, source, run_b), spark)
    # What a kill -9 between the two renames leaves: run A's output beside run B's quarantine.
    shutil.rmtree(f"{run_a}_quarantine")
    shutil.copytree(f"{run_b}_quarantine", f"{run_a}_quarantine")
    marker = json.loads(Path(f"{run_a}_quarantine/_textmill.json").read_text())
    marker["published_with"] = [str(run_a)]
    Path(f"{run_a}_quarantine/_textmill.json").write_text(json.dumps(marker))
    with pytest.raises(OutputError, match="were published by different runs"):
        io.read_input(spark, str(run_a), ["doc_id", "text"])
    with pytest.raises(OutputError, match="were published by different runs"):
        run_job(
            "annotate",
            job_conf(io={"input": str(run_a), "output": str(tmp_path / "ann")}, nlp={"model": "blank:en"}),
            spark,
        )
    # ...and killed runs' staging and set-aside directories.
    for leftover in (
        f"{run_a}.__textmill_tmp-dead0001",
        f"{run_a}.__textmill_old-dead0002",
        f"{run_a}_quarantine.__textmill_tmp-dead0003",
    ):
        Path(leftover).mkdir()
        (Path(leftover) / "part-0.parquet").write_bytes(b"partial")
    run_job("prepare", prepare_conf(job_conf, source, run_a), spark)
    storage.check_published_together(spark, str(run_a))
    assert [p.name for p in tmp_path.iterdir() if "__textmill" in p.name] == []


def test_a_previous_output_left_aside_by_a_kill_is_restored(spark, job_conf, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("keep this\n")
    output = tmp_path / "out"
    run_job("prepare", prepare_conf(job_conf, source, output), spark)
    before = tree(output)
    output.rename(f"{output}.__textmill_old-cafe0001")  # killed after moving it aside, before the new one arrived
    with storage.output_lock(spark, str(output)):
        assert tree(output) == before
    assert [p.name for p in tmp_path.iterdir() if "__textmill" in p.name] == []


def test_an_output_of_another_kind_is_not_mixed_or_replaced(spark, job_conf, tmp_path):
    from textmill.data.storage import claimed_container

    source = tmp_path / "in.txt"
    source.write_text("one\n")
    prepared = tmp_path / "prepared"
    run_job("prepare", prepare_conf(job_conf, source, prepared), spark)
    with pytest.raises(
        OutputError, match="holds a textmill dataset; replacing it with the outputs of train_embeddings"
    ):
        run_job("train_embeddings", job_conf(io={"input": str(source), "output": str(prepared)}), spark)
    container = tmp_path / "embeddings"
    with claimed_container(spark, str(container), "train_embeddings"):
        (container / "vocab").mkdir()
    with pytest.raises(
        OutputError, match="holds the outputs of textmill's train_embeddings job; replacing it with a dataset"
    ):
        run_job("prepare", prepare_conf(job_conf, source, container), spark)
    assert (container / "vocab").is_dir() and spark.read.parquet(str(prepared)).count() == 1
