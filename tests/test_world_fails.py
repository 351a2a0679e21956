"""The world fails halfway, and the result is still true (issue 39, item 3)."""

from __future__ import annotations

import subprocess
import sys
import time

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
