"""The ``watch`` job: new files processed exactly once, with real Spark streaming and real files.

In-process tests use the shared SparkSession; the kill -9 and SIGTERM tests run the job as
a subprocess (``jobs/watch.py``, its own Spark) and kill it for real.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from textmill.jobs import run_job
from textmill.runtime.config import load_conf, validate_conf
from textmill.runtime.errors import ConfigError
from textmill.streaming.batches import BatchLog
from textmill.streaming.watch import BatchFailedError, WatchJobConf

REPO = Path(__file__).resolve().parents[1]


def drop_file(inbox: Path, name: str, content: bytes, outgoing: Path) -> None:
    """The inbox convention: write elsewhere, then rename into the inbox."""
    staged, target = outgoing / name, inbox / name
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(content)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staged, target)


def csv_bytes(ids: range, words: str = "Alice met Bob in Paris", day_offset: int = 0) -> bytes:
    return ("id,text\n" + "".join(f"{i},{words} on day {i - day_offset}\n" for i in ids)).encode()


def wave(inbox: Path, outgoing: Path, first: int, files: int, rows: int, tag: str, day_offset: int = 0) -> set[str]:
    """``files`` CSV files of ``rows`` rows with ids from ``first``; row i says "... on day
    i - day_offset" (with an offset, a copy of an earlier wave's text)."""
    ids = set()
    for f in range(files):
        start = first + f * rows
        sub = f"{tag}/" if f % 2 else ""  # nested folders are picked up too
        drop_file(inbox, f"{sub}{tag}-{f}.csv", csv_bytes(range(start, start + rows), day_offset=day_offset), outgoing)
        ids |= {str(i) for i in range(start, start + rows)}
    return ids


def watch_conf(job_conf, inbox: Path, out: Path, **watch) -> dict:
    return job_conf(
        io={"output": str(out)},
        watch={"inbox": str(inbox), "steps": ["prepare", "tokenize"], **watch},
        prepare={"columns": {"doc_id": "id"}},
        nlp={"model": "blank:en"},
    )


def published_ids(spark, out: Path, step: str = "prepare") -> Counter:
    return Counter(r["doc_id"] for r in spark.read.parquet(str(out / step)).select("doc_id").collect())


def test_three_waves_each_row_once_and_each_run_reads_only_new_files(spark, job_conf, tmp_path, caplog):
    inbox, out, outgoing = tmp_path / "inbox", tmp_path / "out", tmp_path / "outgoing"
    inbox.mkdir()
    conf = watch_conf(job_conf, inbox, out, max_files_per_batch=2)
    expected: set[str] = set()
    runs = []
    for n, (files, tag) in enumerate([(3, "a"), (2, "b"), (4, "c")]):
        expected |= wave(inbox, outgoing, 1000 * n, files, 25, tag)
        metrics = run_job("watch", conf, spark)
        runs.append(metrics)
        assert metrics["files"] == files  # only the new files
        assert metrics["batches"] == -(-files // 2)  # max_files_per_batch
        assert published_ids(spark, out) == Counter({i: 1 for i in expected})
        assert published_ids(spark, out, "tokenize") == Counter({i: 1 for i in expected})

    log = BatchLog(spark, str(out))
    records = log.records()
    assert [r["batch_id"] for r in records] == list(range(int(sum(r["batches"] for r in runs))))
    seen_files = [f for r in records for f in r["files"]]
    assert len(seen_files) == len(set(seen_files)) == 9
    for r in records:
        p = r["steps"]["prepare"]
        assert p["rows_in"] == p["rows_out"] + p["rows_quarantined"] == r["steps"]["tokenize"]["rows_out"]
    assert (
        log.batch_ids("prepare")
        == log.batch_ids("tokenize")
        == log.batch_ids("quarantine")
        == [r["batch_id"] for r in records]
    )

    client = mlflow.tracking.MlflowClient(conf["mlflow"]["tracking_uri"])
    run = client.search_runs(
        [client.get_experiment_by_name("textmill-watch").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.tags["textmill.watch.checkpoint"].endswith(str(out / "_checkpoint"))
    history = client.get_metric_history(run.info.run_id, "rows_in")
    assert sorted(m.step for m in history) == [r["batch_id"] for r in records[-2:]]
    assert sum(m.value for m in history) == 4 * 25
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "batch_seconds")) == sorted(
        m.step for m in history
    )

    with caplog.at_level(logging.INFO, logger="textmill"):
        again = run_job("watch", conf, spark)
    assert again["batches"] == again["files"] == 0
    assert "no new files" in caplog.text
    assert published_ids(spark, out) == Counter({i: 1 for i in expected})


def test_a_batch_published_before_a_crash_is_not_run_again_and_a_foreign_checkpoint_is_refused(
    spark, job_conf, tmp_path
):
    inbox, out, outgoing = tmp_path / "inbox", tmp_path / "out", tmp_path / "outgoing"
    inbox.mkdir()
    conf = watch_conf(job_conf, inbox, out)
    ids = wave(inbox, outgoing, 0, 2, 10, "a")
    assert run_job("watch", conf, spark)["batches"] == 1
    # The driver died after publishing batch 0 and before Spark committed it: Spark replays batch 0.
    for name in ("0", ".0.crc"):
        (out / "_checkpoint" / "commits" / name).unlink()
    replay = run_job("watch", conf, spark)
    assert (replay["batches"], replay["batches_skipped"]) == (0, 1)
    assert published_ids(spark, out) == Counter({i: 1 for i in ids})

    # A checkpoint that is not this output's: batch 0 would name other files than the commit log.
    wave(inbox, outgoing, 100, 1, 10, "b")
    for path in sorted((out / "_checkpoint").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(
        BatchFailedError,
        match=r"batch 0 .* committed with other files .*checkpoint and the output do not belong together",
    ):
        run_job("watch", conf, spark)
    assert published_ids(spark, out) == Counter({i: 1 for i in ids})


def test_bad_rows_are_quarantined_and_a_broken_file_fails_its_batch_until_fixed(spark, job_conf, tmp_path):
    inbox, out, outgoing = tmp_path / "inbox", tmp_path / "out", tmp_path / "outgoing"
    inbox.mkdir()
    conf = watch_conf(job_conf, inbox, out)
    drop_file(
        inbox,
        "mixed.csv",
        b'id,text\n1,fine text\n2,"too","many","fields"\n3,bad \xff\xfe bytes\n4,\n1,dup\n',
        outgoing,
    )
    first = run_job("watch", conf, spark)
    assert (first["total_rows_in"], first["total_rows_out"], first["total_rows_quarantined"]) == (5, 1, 4)
    bad = {r["doc_id"]: r["reason"] for r in spark.read.parquet(str(out / "quarantine")).collect()}
    assert sorted(bad.values()) == ["duplicate_doc_id", "malformed_record", "null_text", "undecodable_bytes"]

    # A file that cannot be read at all fails its batch; nothing of the batch is published.
    drop_file(inbox, "late.csv.gz", b"this is not gzip data" * 10, outgoing)
    drop_file(inbox, "ok.csv", csv_bytes(range(10, 15)), outgoing)
    with pytest.raises(
        BatchFailedError, match=r"batch 1 \(2 file\(s\).*failed: .*Nothing of it was published; the next run retries"
    ):
        run_job("watch", conf, spark)
    log = BatchLog(spark, str(out))
    assert [r["batch_id"] for r in log.records()] == [0] and log.batch_ids("prepare") == [0]
    assert not any((out / "_staging").iterdir())

    # Still broken: the next run fails the same batch again.
    with pytest.raises(BatchFailedError, match=r"batch 1 "):
        run_job("watch", conf, spark)
    # Fixed (replaced by rename, as producers do): the next run retries the same batch and succeeds.
    drop_file(inbox, "late.csv.gz", gzip.compress(csv_bytes(range(20, 23))), outgoing)
    fixed = run_job("watch", conf, spark)
    assert (fixed["batches"], fixed["files"], fixed["total_rows_out"]) == (1, 2, 8)
    assert log.batch_ids("prepare") == [0, 1]
    assert published_ids(spark, out) == Counter({i: 1 for i in ["1", *map(str, range(10, 15)), "20", "21", "22"]})


def test_archive_moves_processed_files_and_a_doc_id_seen_in_an_earlier_batch_is_quarantined(spark, job_conf, tmp_path):
    inbox, out, outgoing, archive = tmp_path / "inbox", tmp_path / "out", tmp_path / "outgoing", tmp_path / "archive"
    inbox.mkdir()
    conf = watch_conf(job_conf, inbox, out, archive=str(archive))
    ids = wave(inbox, outgoing, 0, 2, 5, "a")
    run_job("watch", conf, spark)
    ids |= wave(inbox, outgoing, 100, 1, 5, "b")
    drop_file(inbox, "again.csv", b"id,text\n0,the first document delivered twice\n", outgoing)
    second = run_job("watch", conf, spark)  # Spark archives a batch's files once the next batch has started
    assert sorted(p.name for p in archive.rglob("*.csv")) == ["a-0.csv", "a-1.csv"]
    assert sorted(p.name for p in inbox.rglob("*.csv")) == ["again.csv", "b-0.csv"]
    assert published_ids(spark, out) == Counter({i: 1 for i in ids})
    # A doc_id an earlier batch published is quarantined, not published twice.
    assert second["total_rows_quarantined"] == 1
    [dup] = spark.read.parquet(str(out / "quarantine")).collect()
    assert (dup.doc_id, dup.reason, dup.detail, dup.batch) == (
        "0",
        "duplicate_doc_id",
        "doc_id 0 seen in an earlier batch",
        1,
    )


def test_an_inbox_that_is_missing_a_file_or_a_glob_is_named(spark, job_conf, tmp_path):
    from textmill.runtime.errors import InputNotFoundError, TextmillError

    (tmp_path / "one.csv").write_text("id,text\n1,a\n")
    with pytest.raises(InputNotFoundError, match=r"watch.inbox: nothing exists at"):
        run_job("watch", watch_conf(job_conf, tmp_path / "missing", tmp_path / "out1"), spark)
    out2 = tmp_path.with_name(f"{tmp_path.name}-out2")  # outside the folder the glob searches (that is refused too)
    for inbox in (tmp_path / "one.csv", tmp_path / "*.csv"):
        with pytest.raises(TextmillError, match=r"watch.inbox .* must be one directory"):
            run_job("watch", watch_conf(job_conf, inbox, out2), spark)
    assert not (tmp_path / "out1").exists() and not out2.exists()


def test_a_replayed_batch_replaces_its_own_output_everywhere(spark, tmp_path):
    out = tmp_path / "out"
    log = BatchLog(spark, str(out))
    first = log.new_attempt(7)
    spark.range(5).write.parquet(f"{first}/prepare")
    spark.range(3).write.parquet(f"{first}/ner")
    log.publish(7, {"prepare": f"{first}/prepare", "ner": f"{first}/ner"})
    replay = log.new_attempt(7)
    assert not Path(first).exists()  # an unfinished attempt at the same batch is cleared
    spark.range(100, 104).write.parquet(f"{replay}/prepare")
    log.publish(7, {"prepare": f"{replay}/prepare"})
    assert sorted(r["id"] for r in spark.read.parquet(str(out / "prepare")).collect()) == [100, 101, 102, 103]
    assert not (out / "ner" / "batch=7").exists()  # what the replay no longer writes is not left behind
    assert [p.name for p in (out / "_staging").iterdir()] == [Path(replay).name]  # the old batch=7 was not left aside


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"watch": {"steps": ["prepare", "cluster"]}},
            r"'cluster' needs the whole corpus and cannot run per micro-batch",
        ),
        ({"watch": {"steps": ["ner"]}}, r"the first step must be 'prepare'"),
        ({"watch": {"steps": ["prepare", "classify", "ner"]}}, r"steps must keep the order"),
        ({"watch": {"steps": ["prepare", "ner", "tokenize"]}}, r"at most one of annotate, ner, tokenize"),
        (
            {"watch": {"trigger": {"every": "soon"}}},
            r"'watch.trigger': given \{'every': 'soon'\}.*interval above zero such as 30s",
        ),
        ({"watch": {"trigger": "once"}}, r"'watch.trigger': given 'once' .*available_now, or \{every: <interval>\}"),
        ({"watch": {"checkpoint": "IN/ck"}}, r"'watch.checkpoint' .* may not contain one another"),
        ({"io": {"input": "x"}}, r"'io.input' is not used by watch: set 'watch.inbox'"),
        ({"watch": {"steps": ["prepare", "classify"]}}, r"'classify.model_uri' is required with the classify step"),
        ({"watch": {"steps": ["prepare", "ner", "dedup"]}}, r"steps must keep the order prepare, dedup, annotate"),
        (
            {"watch": {"steps": ["prepare", "dedup"], "duplicates_across_batches": False}},
            r"the dedup step needs unique doc_ids across batches",
        ),
        (
            {"watch": {"steps": ["prepare", "dedup"]}, "dedup": {"representative": "earliest", "time_column": "t"}},
            r"'dedup.representative: earliest' does not apply in watch",
        ),
    ],
)
def test_watch_conf_problems_are_named(tmp_path, change, message):
    from textmill.runtime.config import deep_merge

    base = {"io": {"output": str(tmp_path / "out")}, "watch": {"inbox": str(tmp_path / "IN")}}
    change = json.loads(json.dumps(change).replace("IN/", str(tmp_path / "IN") + "/"))
    with pytest.raises(ConfigError, match=message):
        validate_conf(WatchJobConf, deep_merge(base, change))


def test_shipped_watch_conf_and_the_every_trigger_validate():
    conf = load_conf(
        WatchJobConf,
        REPO / "conf" / "watch.yaml",
        overrides=[
            "watch.inbox=in",
            "io.output=out",
            "watch.trigger.every=2s",
            "watch.steps=[prepare, ner, classify]",
            "classify.model_uri=models:/news@champion",
        ],
    )
    assert conf.watch.trigger.every == "2s" and conf.watch.steps == ["prepare", "ner", "classify"]


# ---------------------------------------------------------------------------- as a process, killed for real


def _command(inbox: Path, out: Path, mlflow_uri: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "watch.py"),
        "--conf",
        str(REPO / "conf" / "watch.yaml"),
        "--set",
        f"watch.inbox={inbox}",
        "--set",
        f"io.output={out}",
        "--set",
        "prepare.columns.doc_id=id",
        "--set",
        "spark.master=local[2]",
        "--set",
        "spark.ui_enabled=false",
        "--set",
        "spark.shuffle_partitions=2",
        "--set",
        f"mlflow.tracking_uri={mlflow_uri}",
        *extra,
    ]


class BatchWatcher(threading.Thread):
    """Looks at <out>/<step>/batch=* while the job runs: every batch directory a reader can see
    must be complete (its marker present and its Parquet row count equal to the marker's)."""

    def __init__(self, out: Path, steps: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.out, self.steps = out, steps
        self.seen: set[str] = set()
        self.partial: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for step in self.steps:
                for batch in (self.out / step).glob("batch=*") if (self.out / step).exists() else []:
                    try:
                        marker = json.loads((batch / "_textmill.json").read_text())
                        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in batch.glob("*.parquet"))
                    except FileNotFoundError:
                        if batch.exists():  # not being replaced (moved away) right now: it is visible and incomplete
                            self.partial.append(str(batch))
                        continue
                    if rows != marker["rows"]:
                        self.partial.append(f"{batch}: {rows} rows, marker {marker['rows']}")
                    self.seen.add(str(batch))
            time.sleep(0.05)


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the watch exited ({proc.returncode}) before the expected moment:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _ids(out: Path, step: str) -> Counter:
    return Counter(
        t.as_py() for p in (out / step).rglob("*.parquet") for t in pq.read_table(p, columns=["doc_id"])["doc_id"]
    )


@pytest.mark.slow
def test_kill_9_mid_batch_then_sigterm_on_a_trigger_loses_and_duplicates_nothing(tmp_path, mlflow_uri):
    """The job as a process (jobs/watch.py, its own Spark), stopped both ways a scheduler stops it:
    killed with kill -9 mid-batch; restarted on a 2 s trigger, which replays the killed batch, takes
    new waves as they arrive and is stopped with SIGTERM mid-batch; then run once more to the end.
    A reader looking at the outputs all along never sees a partial batch. The dedup step's index
    (what later batches are compared with) is killed mid-write too: no half-written index is
    read, each document is indexed once, and a later wave of copies is marked as copies."""
    inbox, out, outgoing = tmp_path / "inbox", tmp_path / "out", tmp_path / "outgoing"
    inbox.mkdir()
    ids = wave(inbox, outgoing, 0, 6, 60, "w")
    steps = ("--set", "watch.steps=[prepare, dedup, ner]", "--set", "watch.max_files_per_batch=2")
    watcher = BatchWatcher(out, ("prepare", "quarantine", "dedup", "dedup_index", "ner"))
    watcher.start()

    # 1. kill -9 once batch 0 is committed and batch 1 has written its dedup index to staging.
    proc = _start(_command(inbox, out, mlflow_uri, *steps), tmp_path / "first.log")
    _wait_for(
        lambda: (
            (out / "_batches" / "0.json").exists()
            and any((out / "_staging").glob("batch=1-*/dedup_index/_textmill.json"))
        ),
        proc,
        tmp_path / "first.log",
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "_batches" / "1.json").exists()  # killed mid-batch, for real

    # 2. Restarted on a trigger: batches 1-2 take the rest of the first wave (batch 1 replayed), then one
    # batch per new wave; SIGTERM once batch 5 is under way.
    every = _command(
        inbox, out, mlflow_uri, *steps, "--set", "watch.trigger.every=2s", "--set", "mlflow.experiment=watch-sigterm"
    )
    log = tmp_path / "every.log"
    proc = _start(every, log)
    copies = {}
    for n, tag in enumerate("bcd", start=2):
        _wait_for(lambda n=n: (out / "_batches" / f"{n}.json").exists(), proc, log)
        offset = 1000 * n if tag == "c" else 0  # wave c: the texts of rows 0-49, copied
        new = wave(inbox, outgoing, 1000 * n, 1, 50, tag, day_offset=offset)
        copies |= {i: str(int(i) - offset) for i in new} if offset else {}
        ids |= new
    _wait_for(lambda: any((out / "_staging").glob("batch=5-*")), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "batch 1 " in text  # the killed batch was replayed
    assert "stop requested" in text and "Traceback" not in text
    # Cleanly: the batch in progress was finished (or abandoned, then replayed below); nothing partial is visible.
    for step in ("prepare", "dedup", "dedup_index", "ner"):
        for batch in (out / step).glob("batch=*"):
            marker = json.loads((batch / "_textmill.json").read_text())
            assert sum(pq.ParquetFile(p).metadata.num_rows for p in batch.glob("*.parquet")) == marker["rows"]
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("watch-sigterm").experiment_id], max_results=1)[0]
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "rows_in")) >= 3
    # The spaCy model was loaded once per Python worker, across all the micro-batches.
    assert run.data.metrics["max_model_loads_per_worker"] == 1 and run.data.metrics["python_workers"] >= 1

    # 3. Once more, to the end: every row of every wave published exactly once, in both steps.
    last = subprocess.run(
        _command(inbox, out, mlflow_uri, *steps),
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    watcher.done.set()
    watcher.join()
    assert last.returncode == 0, last.stderr[-3000:]
    assert watcher.partial == []
    assert len(watcher.seen) >= 3
    assert _ids(out, "prepare") == _ids(out, "dedup") == _ids(out, "dedup_index") == Counter({i: 1 for i in ids})
    assert _ids(out, "ner") == Counter({i: 1 for i in ids - set(copies)})
    marks = {
        r["doc_id"]: (r["dup_of"], r["dup_kind"])
        for p in (out / "dedup").rglob("*.parquet")
        for r in pq.read_table(p).to_pylist()
    }
    assert {i: m for i, m in marks.items() if m[0] is not None} == {i: (o, "exact") for i, o in copies.items()}
    records = [json.loads(p.read_text()) for p in sorted((out / "_batches").glob("*.json"))]
    assert sorted(f for r in records for f in r["files"]) == sorted(f"file:{p}" for p in inbox.rglob("*.csv"))
    assert not [p for p in (out / "_staging").iterdir()]
