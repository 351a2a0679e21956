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
