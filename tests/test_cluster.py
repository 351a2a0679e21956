"""Every job through spark-submit on a real Spark standalone cluster (master + 2 workers).

The cluster runs from the installed pyspark on 127.0.0.1, each worker with 1 core; the jobs
get textmill through the ``--py-files`` zip; the executors' worker reports (logged to
MLflow as workers.json) show that every Python worker loaded each model or index once.
The cluster is stopped also when the test fails (the fixture's ``finally``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyspark
import pytest
from mlflow.tracking import MlflowClient

from textmill.cli import build_pyfiles

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    def __init__(self, workdir: Path, workers: int = 2) -> None:
        self.workdir = workdir
        self.n_workers = workers
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1",
        }

    def _start(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("w")
        self.procs.append(
            subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def start(self) -> StandaloneCluster:
        self._start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        )
        for i in range(self.n_workers):
            work = self.workdir / f"worker{i}"
            work.mkdir()
            self._start(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "2g",
                "--webui-port",
                str(free_port()),
                "--work-dir",
                str(work),
                self.url,
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as resp:
                    if json.load(resp).get("aliveworkers", 0) == self.n_workers:
                        return self
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"standalone cluster did not come up; logs in {self.workdir}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path):
    cluster = StandaloneCluster(tmp_path / "cluster")
    cluster.workdir.mkdir()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.slow
def test_the_whole_chain_runs_on_a_standalone_cluster_and_loads_each_model_once_per_python_worker(
    cluster, spark, tmp_path
):
    """prepare -> annotate -> train_classifier -> classify -> train_embeddings -> embed_docs -> build_index
    -> neighbors -> cluster, submitted as jobs/pipeline.py (one spark-submit, each step its own job and
    nested MLflow run), with a shared local directory as storage."""
    pyfiles = build_pyfiles(tmp_path / "dist")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "chain"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")
    }
    env.update({"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable})
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master",
        cluster.url,
        "--name",
        "textmill-chain-it",
        "--total-executor-cores",
        "2",
        "--executor-cores",
        "1",
        "--executor-memory",
        "1g",
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--py-files",
        str(pyfiles),
        str(REPO / "jobs" / "pipeline.py"),
        "--conf",
        str(REPO / "conf" / "pipeline.yaml"),
        "--env",
        "cluster",
        "--set",
        f"io.output={out}",
        "--set",
        "pipeline.sample.n_docs=300",
        "--set",
        "nlp.partitions=4",
        "--set",
        f"mlflow.tracking_uri={tracking}",
        "--set",
        f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    (tmp_path / "submit.log").write_text(proc.stdout + proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    assert proc.returncode == 0, (errors[-10:], f"full log: {tmp_path / 'submit.log'}")

    count = lambda name: spark.read.parquet(str(out / name)).count()  # noqa: E731
    assert count("prepared") == 300 and count("prepared_quarantine") == 3
    assert (
        count("annotated")
        == count("classified")
        == count("doc_vectors")
        == count("neighbors")
        == count("clusters")
        == 300
    )
    classified = spark.read.parquet(str(out / "classified")).join(
        spark.read.parquet(str(out / "prepared")).selectExpr("doc_id", "label as truth"), "doc_id"
    )
    assert classified.where("label = truth").count() / 300 > 0.8
    assert spark.read.parquet(str(out / "neighbors")).where("error is null").count() == 300

    client = MlflowClient(tracking)
    runs = {
        r.data.tags["textmill.job"]: r
        for r in client.search_runs([client.get_experiment_by_name("textmill-pipeline").experiment_id])
    }
    assert set(runs) == {
        "pipeline",
        "prepare",
        "annotate",
        "train_classifier",
        "classify",
        "train_embeddings",
        "embed_docs",
        "build_index",
        "neighbors",
        "cluster",
    }
    assert runs["pipeline"].data.tags["spark.master"] == cluster.url
    # Every job that ships a model or an index to the executors: each Python worker loaded it once.
    for job in ("annotate", "classify", "embed_docs", "neighbors"):
        workers = json.loads(Path(client.download_artifacts(runs[job].info.run_id, "workers.json")).read_text())[
            "workers"
        ]
        assert len(workers) >= 2, (job, workers)  # both executors took part
        assert all(stats["loads"] == 1 for stats in workers.values()), (job, workers)
        assert runs[job].data.metrics["max_model_loads_per_worker"] == 1
    spacy_workers = json.loads(
        Path(client.download_artifacts(runs["annotate"].info.run_id, "workers.json")).read_text()
    )["workers"]
    assert all(".zip" in stats["textmill_from"] for stats in spacy_workers.values()), spacy_workers
