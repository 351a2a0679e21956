"""jobs/ner.py through spark-submit on a real Spark standalone cluster (master + 2 workers).

The cluster runs from the installed pyspark on 127.0.0.1, each worker with 1 core; the job
gets textmill through the ``--py-files`` zip; the executors' worker report (logged to
MLflow as workers.json) shows that every Python worker loaded spaCy exactly once.
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

from test_annotate import real_looking_texts

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
        self.env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
                    "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}

    def _start(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("w")
        self.procs.append(subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self) -> "StandaloneCluster":
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui_port))
        for i in range(self.n_workers):
            work = self.workdir / f"worker{i}"
            work.mkdir()
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                        "--cores", "1", "--memory", "2g", "--webui-port", str(free_port()),
                        "--work-dir", str(work), self.url)
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
def test_ner_job_on_a_standalone_cluster_loads_spacy_once_per_python_worker(cluster, spark, tmp_path):
    docs = tmp_path / "prepared"
    texts = real_looking_texts(120)
    spark.createDataFrame([(f"d{i:04d}", t) for i, t in enumerate(texts)], "doc_id string, text string").write.parquet(str(docs))
    pyfiles = build_pyfiles(tmp_path / "dist")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "entities"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")}
    env.update({"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable})
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"), "--master", cluster.url, "--name", "textmill-ner-it",
        "--total-executor-cores", "2", "--executor-cores", "1", "--executor-memory", "1g",
        "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
        "--py-files", str(pyfiles),
        str(REPO / "jobs" / "ner.py"), "--conf", str(REPO / "conf" / "ner.yaml"), "--env", "cluster",
        "--set", f"io.input={docs}", "--set", f"io.output={out}", "--set", "nlp.partitions=8",
        "--set", f"mlflow.tracking_uri={tracking}", "--set", f"mlflow.artifact_location={(tmp_path / 'art').as_uri()}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])

    result = spark.read.parquet(str(out))
    assert result.count() == len(texts)
    assert result.where("error is not null").count() == 0
    assert result.selectExpr("sum(size(entities))").first()[0] > len(texts)

    client = MlflowClient(tracking)
    run = client.search_runs([client.get_experiment_by_name("textmill-ner").experiment_id])[0]
    assert run.data.tags["spark.master"] == cluster.url
    workers = json.loads(Path(client.download_artifacts(run.info.run_id, "workers.json")).read_text())["workers"]
    # Two executors (one core each) ran 8 tasks: at least one Python worker each, each loaded spaCy once.
    assert len(workers) >= 2, workers
    assert all(stats["loads"] == 1 for stats in workers.values()), workers
    assert all(".zip" in stats["textmill_from"] for stats in workers.values()), workers
    assert run.data.metrics["python_workers"] == len(workers)
