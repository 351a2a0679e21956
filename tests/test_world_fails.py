"""The world fails halfway, and the result is still true (issue 39, item 3)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

RACER = """
import sys, time
uri, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
import mlflow
from textmill.runtime import tracking
while time.time() < start:
    time.sleep(0.001)
tracking.open_store(uri)
mlflow.set_tracking_uri(uri)
experiment = tracking.ensure_experiment("race", None)
with mlflow.start_run(experiment_id=experiment, run_name=name):
    mlflow.log_param("racer", name)
"""


@pytest.mark.slow
def test_jobs_that_start_at_once_on_a_new_sqlite_store_all_get_their_run(tmp_path):
    """Two jobs at once on a new store: one failed with alembic's 'table ... already exists' (13 of 15
    processes in 5 rounds of 3, measured before the fix). Two rounds of 3 processes, one new store,
    released at the same instant after their imports."""
    for round_ in range(2):
        uri = f"sqlite:///{tmp_path / f'r{round_}' / 'mlflow.db'}"
        start = time.time() + 6  # past every process's imports, on a loaded 2-core machine too
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, uri, str(start), f"job{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )
            for i in range(3)
        ]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in results), [err[-1500:] for code, err in results if code]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("race")
        names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
        assert names == ["job0", "job1", "job2"]


HOLDER = """
import sys, time
import mlflow
from textmill.data import storage
from textmill.runtime import tracking
uri, output = sys.argv[1], sys.argv[2]
tracking.open_store(uri)
mlflow.set_tracking_uri(uri)
experiment = tracking.ensure_experiment("killed", None)
with storage.output_lock(None, output), mlflow.start_run(experiment_id=experiment, run_name="killed") as run:
    storage.record_run(None, [output], run.info.run_id, uri)
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


def test_a_run_killed_while_it_held_its_output_is_marked_failed_by_the_next_run(spark, job_conf, tmp_path):
    """kill -9 mid-run left the MLflow run RUNNING forever. The process here holds the output's lock
    with its run recorded in it (what every job does), and is killed with SIGKILL; the next run on
    that output takes the lock over and ends the dead run FAILED, with the reason."""
    import signal

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store, str(out)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    dead_run = holder.stdout.readline().strip()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    client = MlflowClient(store)
    assert client.get_run(dead_run).info.status == "RUNNING"

    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    conf = job_conf(io={"input": str(src), "output": str(out)}, prepare={"format": "text_lines"})
    conf["mlflow"] = {"tracking_uri": store, "experiment": "next"}
    from textmill.jobs import run_job_report

    report = run_job_report("prepare", conf, spark)
    dead = client.get_run(dead_run)
    assert dead.info.status == "FAILED"
    assert f"run {report.run_id} took its lock over" in dead.data.tags["textmill.failure"]
    assert client.get_run(report.run_id).info.status == "FINISHED"
    assert spark.read.parquet(str(out)).count() == 2


def _read_only(folder) -> None:
    """Read-only for whoever runs the tests: mode 555, and for root (whom modes do not stop) the
    immutable attribute, which refuses new entries to root too."""
    import os

    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)


def _writable(folder) -> None:
    import os

    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_an_output_textmill_cannot_write_is_one_line_before_any_work(spark, job_conf, tmp_path):
    """A read-only output published, then failed with a PermissionError traceback, leaving
    ``__textmill_old-*`` beside it; a read-only parent failed the same way. Every folder textmill
    must write in, read-only in turn: the new output's nearest existing folder, the parent of an
    existing output, the output itself and a folder inside it. Each is refused in one line naming
    the folder, before any work, and the old output is left as it was."""

    from textmill.jobs import run_job
    from textmill.runtime.errors import OutputError

    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\nthree\n")
    base = tmp_path / "base"
    base.mkdir()
    existing = base / "out"
    run_job(
        "prepare", job_conf(io={"input": str(src), "output": str(existing)}, prepare={"format": "text_lines"}), spark
    )
    inner = next(p for p in existing.iterdir() if p.is_dir()) if any(p.is_dir() for p in existing.iterdir()) else None
    before = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    cases = [(base, base / "new" / "deeper"), (base, existing), (existing, existing)]
    if inner is not None:
        cases.append((inner, existing))
    else:  # prepare writes its Parquet files flat: make a folder inside the output to stand for one
        (existing / "nested").mkdir()
        cases.append((existing / "nested", existing))
        before = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    for locked, output in cases:
        _read_only(locked)
        try:
            with pytest.raises(OutputError) as caught:
                run_job(
                    "prepare",
                    job_conf(io={"input": str(src), "output": str(output)}, prepare={"format": "text_lines"}),
                    spark,
                )
        finally:
            _writable(locked)
        message = str(caught.value)
        assert "\n" not in message and "cannot write in" in message and str(locked) in message, message
        assert sorted(str(p.relative_to(base)) for p in base.rglob("*")) == before, (locked, output)
    assert spark.read.parquet(str(existing)).count() == 3


@pytest.mark.slow
def test_a_tracking_store_that_turns_read_only_mid_run_is_one_line_that_says_what_was_published(
    spark, job_conf, tmp_path
):
    """The store turned read-only during a run: the output was published, then the job exited 1
    with 13 tracebacks and the run stayed RUNNING. The store is made read-only at a different
    moment of each round (a thread waits for the run to start, then for a delay): whenever it
    happens, the job fails with one line whose exit status says what happened (3: published, its
    record missing; 2: nothing published), and the published flag matches the output on disk."""
    import threading

    from textmill.jobs import run_job
    from textmill.runtime.errors import TrackingWriteError

    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}\n" for i in range(3000)))
    outcomes = set()
    for round_, delay in enumerate([0.0, 0.8, 2.5]):
        store_dir = tmp_path / f"store{round_}"
        store_dir.mkdir()
        db = store_dir / "mlflow.db"
        uri = f"sqlite:///{db}"
        out = tmp_path / f"out{round_}"
        conf = job_conf(io={"input": str(src), "output": str(out)}, prepare={"format": "text_lines"})
        conf["mlflow"] = {"tracking_uri": uri, "experiment": "ro"}
        run_job("prepare", conf, spark)  # an earlier output, and a store that exists
        marker_before = (out / "_textmill.json").read_text()
        locked = threading.Event()

        def lock_when_running(db=db, store_dir=store_dir, uri=uri, delay=delay, locked=locked) -> None:
            client = MlflowClient(uri)
            deadline = time.time() + 120
            while time.time() < deadline:
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
                if any(r.info.status == "RUNNING" for r in runs):
                    break
                time.sleep(0.02)
            time.sleep(delay)
            db.chmod(0o444)
            _read_only(store_dir)
            locked.set()

        watcher = threading.Thread(target=lock_when_running, daemon=True)
        watcher.start()
        try:
            try:
                run_job("prepare", conf, spark)
                failure = None
            except TrackingWriteError as exc:
                failure = exc
            watcher.join(timeout=150)
        finally:
            _writable(store_dir)
            db.chmod(0o644)
        if failure is None:  # the run ended before the store was locked: nothing to check this round
            assert locked.is_set()
            continue
        message = str(failure)
        assert "\n" not in message and "stopped taking writes" in message, message
        published = (out / "_textmill.json").read_text() != marker_before
        assert failure.exit_code == (3 if published else 2), (delay, message)
        assert ("the outputs were published" in message) == published, message
        assert spark.read.parquet(str(out)).count() == 3000
        outcomes.add(failure.exit_code)
    marker_now = (out / "_textmill.json").read_text()
    assert 3 in outcomes, "the store was never locked while a run was going"
    # Read-only before the run starts: nothing is published, and the line says so.
    _read_only(store_dir)
    db.chmod(0o444)
    try:
        try:
            run_job("prepare", conf, spark)
        except TrackingWriteError as exc:
            failure = exc
    finally:
        _writable(store_dir)
        db.chmod(0o644)
    assert failure.exit_code == 2 and "nothing was published" in str(failure), str(failure)
    assert (out / "_textmill.json").read_text() == marker_now
