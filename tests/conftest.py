"""Shared fixtures: one real local SparkSession for the whole run, a real MLflow sqlite store.

Nothing is mocked. The session is built by textmill's own ``get_spark`` (local[2], UI off,
2 shuffle partitions) and stopped at the end; tests that need small Arrow batches set
``spark.sql.execution.arrow.maxRecordsPerBatch`` through the ``small_arrow_batches`` fixture.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

# The JVMs the tests start live for seconds on small inputs, where the JIT's optimising tier costs
# more CPU than it saves: C1 only (-XX:TieredStopAtLevel=1), as an operator would set it in
# spark-defaults.conf. Measured on the 2-core machine (2026-12-07): the kill -9/SIGTERM watch test
# 95 -> 72 s, a CLI prepare 19.7 -> 15.2 s, a standalone-cluster task 25% faster; the long-lived shared
# session unchanged (176 vs 178 s over 56 tests). `spark.*.defaultJavaOptions` come before a user's
# or textmill's own extraJavaOptions, so textmill's log4j2 option still applies. Every process
# started from the tests inherits it (the CLI, watch, the Connect server, spark-submit); a
# SPARK_CONF_DIR set beforehand is kept as it is.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"
TEST_SPARK_DEFAULTS = (
    f"spark.driver.defaultJavaOptions {TEST_JVM_OPTIONS}\nspark.executor.defaultJavaOptions {TEST_JVM_OPTIONS}\n"
)
if "SPARK_CONF_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _conf_dir = tempfile.mkdtemp(prefix="textmill-tests-spark-conf-")
    Path(_conf_dir, "spark-defaults.conf").write_text(TEST_SPARK_DEFAULTS)
    os.environ["SPARK_CONF_DIR"] = _conf_dir
    atexit.register(shutil.rmtree, _conf_dir, True)


def pytest_collection_finish(session) -> None:
    """Start building Airflow's virtualenv now if a collected test runs Airflow: it overlaps the rest of the run."""
    if any(item.get_closest_marker("airflow") for item in session.items):
        import airflow_venv

        airflow_venv.start_building()


# What an in-process ``main()`` (textmill.cli, jobs/*.py) writes into os.environ for its own run. Kept
# from one test to the next, a test's DEBUG level reached the processes later tests started: a job's
# stderr then held MLflow's DEBUG lines beside its one error line.
CLI_ENVIRONMENT = (
    "TEXTMILL_VERBOSITY",
    "TEXTMILL_LINES_TO",
    "TEXTMILL_LOG_LEVEL",
    "MLFLOW_LOGGING_LEVEL",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)


@pytest.fixture(autouse=True)
def cli_environment_restored() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in CLI_ENVIRONMENT}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# Set to an ``sc://`` URL, the shared session is a Spark Connect client of that server instead
# (tests/test_connect.py reruns the notebook tests this way, in their own process).
REMOTE_VARIABLE = "TEXTMILL_TEST_SPARK_REMOTE"


@pytest.fixture(scope="session")
def spark():
    from textmill.runtime.config import SparkConf
    from textmill.runtime.session import get_spark

    remote = os.environ.get(REMOTE_VARIABLE)
    if remote:
        from pyspark.sql import SparkSession

        session = SparkSession.builder.remote(remote).getOrCreate()
        yield session
        session.stop()
        return
    session = get_spark(
        SparkConf(master="local[2]", shuffle_partitions=2, ui_enabled=False, driver_memory="2g"),
        app_name="textmill-tests",
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A real MLflow sqlite store in a temp dir, shared by the session (migrations run once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def small_arrow_batches(spark) -> Iterator[None]:
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, "2")
    yield
    spark.conf.set(key, old)


@pytest.fixture
def job_conf(tmp_path, mlflow_uri):
    """Build a job config dict: common test settings plus the given sections."""

    def build(**sections: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "spark": {"ui_enabled": False},
            "mlflow": {"tracking_uri": mlflow_uri, "artifact_location": (tmp_path / "mlartifacts").as_uri()},
        }
        conf.update(sections)
        return conf

    return build


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, server, log: Path, timeout: float = 120) -> None:
    """Poll ``url`` until it answers; fail with the server's log if it dies or the time runs out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise AssertionError(log.read_text()[-3000:]) from None
            time.sleep(1)


@dataclass(frozen=True)
class TrackingServer:
    url: str  # http://127.0.0.1:<port>
    folder: Path  # server.db, server.log, server-artifacts/


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> Iterator[TrackingServer]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts under the folder), one for
    the test session: tests/test_mlflow_server.py and tests/test_config.py share it, each in its own experiment."""
    import subprocess

    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        env=env,
        stdout=(folder / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health", server, folder / "server.log")
        yield TrackingServer(f"http://127.0.0.1:{port}", folder)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@dataclass(frozen=True)
class ConnectServer:
    url: str  # sc://127.0.0.1:<port>
    stop: Callable[[], None]  # stops it (SIGTERM, as stop-connect-server.sh does); again is harmless


@pytest.fixture(scope="module")
def connect_server_process(tmp_path_factory) -> Iterator[ConnectServer]:
    """A real Spark Connect server from the pyspark package (``tests/connect_server.py``: local[2],
    127.0.0.1, a free port), started once per test module that uses it (tests/test_connect.py) and
    stopped after it, so its JVM does not stay beside the rest of the run. Jobs reach it as users do,
    from their own process with ``spark.remote`` set: pyspark picks classic or Connect functions
    process-wide, so one process does not hold both kinds."""
    from connect_server import start

    url, stop = start(tmp_path_factory.mktemp("connect-server"))
    try:
        yield ConnectServer(url, stop)
    finally:
        stop()


@pytest.fixture(scope="module")
def connect_server(connect_server_process) -> str:
    """``connect_server_process``'s ``sc://`` URL."""
    return connect_server_process.url


@pytest.fixture(scope="session")
def pipeline_cli_run(tmp_path_factory):
    """``textmill run pipeline`` once, as ``make demo`` runs it (its own process and Spark, 120 generated
    documents, local[2] as on the 2-core CI machine, 2 shuffle partitions as the Connect test server has): tests/test_pipeline.py checks it, tests/test_connect.py
    compares the same run on a Connect server with it. Returns (process, folder): outputs under
    ``<folder>/run``, artifacts under ``<folder>/art``, the store ``<folder>/mlflow.db``, experiment ``pipeline-e2e``."""
    import subprocess

    root = tmp_path_factory.mktemp("pipeline-cli")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    for variable in (
        "TEXTMILL_LOG_LEVEL",
        "TEXTMILL_VERBOSITY",
        "TEXTMILL_LINES_TO",
        "MLFLOW_LOGGING_LEVEL",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
        "PYTHONWARNINGS",
        "MLFLOW_TRACKING_URI",
        "SPARK_REMOTE",
        "SPARK_CONNECT_MODE_ENABLED",
    ):
        env.pop(variable, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "textmill.cli",
            "run",
            "pipeline",
            "--conf",
            str(REPO / "conf" / "pipeline.yaml"),
            "--env",
            "local",
            "--set",
            f"io.output={root / 'run'}",
            "--set",
            f"pipeline.sample.n_docs={PIPELINE_DOCS}",
            "--set",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            "--set",
            "mlflow.experiment=pipeline-e2e",
            "--set",
            f"mlflow.artifact_location={(root / 'art').as_uri()}",
            "--set",
            "spark.ui_enabled=false",
            "--set",
            "spark.master=local[2]",
            "--set",
            "spark.shuffle_partitions=2",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=900,
    )
    return proc, root


PIPELINE_DOCS = 120
