"""Start and stop a real Spark standalone cluster (a master and workers) from the installed pyspark.

Every process binds 127.0.0.1; each worker offers ``cores`` cores (1 by default) and 2 GB; the
master and workers run with the tests' JVM options (``conftest.TEST_JVM_OPTIONS``). tests/test_workflows.py
points Airflow's ``spark_default`` connection at it, so that every DAG task is a
``spark-submit`` to a standalone master. The processes run in their own sessions and are
stopped, with their children, by ``stop`` (SIGTERM, then SIGKILL after 30 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyspark
from conftest import TEST_JVM_OPTIONS, free_port

SPARK_HOME = Path(pyspark.__file__).resolve().parent


class StandaloneCluster:
    def __init__(self, workdir: Path, workers: int = 2, cores: int = 1) -> None:
        self.workdir = workdir
        self.n_workers = workers
        self.cores = cores
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1",
            "SPARK_DAEMON_JAVA_OPTS": TEST_JVM_OPTIONS,
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
        self.workdir.mkdir(parents=True, exist_ok=True)
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
                str(self.cores),
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
