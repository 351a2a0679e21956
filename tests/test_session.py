"""The SparkSession helper, the Java check (one clear sentence when Java is missing or old) and io's input helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from textmill.data import io
from textmill.runtime.errors import ColumnNotFoundError, InputNotFoundError, JavaError
from textmill.runtime.session import check_java, get_spark

REPO = Path(__file__).resolve().parents[1]


def test_check_java_finds_the_system_java():
    info = check_java()
    assert info.major >= 17


def test_missing_java_is_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(JavaError) as err:
        check_java()
    message = str(err.value)
    assert message.startswith("Spark needs Java 17 or newer, but none was found")
    assert "\n" not in message


def test_too_old_java_is_refused(tmp_path, monkeypatch):
    # A stand-in 'java' that reports an old version exactly as Java 11 does.
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.21\" 2023-10-17' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(JavaError, match=r"is Java 11\.0\.21; install Java 17"):
        check_java()


def test_cli_reports_missing_java_without_a_traceback(tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java"), "PATH": "/usr/bin:/bin"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    (tmp_path / "in.txt").write_text("one document\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "prepare.py"),
            "--set",
            f"io.input={tmp_path / 'in.txt'}",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            "prepare.format=text_lines",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "textmill: error: Spark needs Java 17 or newer, but none was found" in proc.stderr
    assert "Traceback" not in proc.stderr and "Py4J" not in proc.stderr


def test_get_spark_reuses_the_active_session(spark):
    assert get_spark() is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.sparkContext.master == "local[2]"


def test_task_partitions_fill_every_core_in_each_wave(spark):
    cores = spark.sparkContext.defaultParallelism
    assert io.task_partitions(spark, 10, 20_000) == 2 * cores
    many = io.task_partitions(spark, 20_000 * 2 * cores + 1, 20_000)
    assert many % cores == 0 and many >= 2 * cores + 1
    assert io.task_partitions(spark, 10**9, 20_000, given=3) == 3


def test_read_input_names_missing_columns_and_what_is_there(spark, tmp_path):
    spark.createDataFrame([("a", "x")], "doc_id string, body string").write.parquet(str(tmp_path / "in"))
    assert io.read_input(spark, str(tmp_path / "in"), ["doc_id", "body"]).count() == 1
    with pytest.raises(
        ColumnNotFoundError, match=r"column\(s\) text, label not in the input; available: doc_id, body \(a hint\)"
    ):
        io.read_input(spark, str(tmp_path / "in"), ["doc_id", "text", "label"], "a hint")
    with pytest.raises(InputNotFoundError, match="io.input: nothing exists at"):
        io.read_input(spark, str(tmp_path / "missing"), ["doc_id"])


LOG_PROBE = """
import sys
from textmill.runtime.config import SparkConf
from textmill.runtime.session import get_spark
spark = get_spark(SparkConf(master="local[1]", ui_enabled=False, conf=dict(arg.split("=", 1) for arg in sys.argv[1:])))
log4j = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager
log4j.getLogger("org.apache.spark.scheduler.DAGScheduler").warn("probe: a warning of Spark's own")
log4j.getLogger("org.apache.spark.scheduler.DAGScheduler").info("probe: an info record")
print("root", log4j.getRootLogger().getLevel().toString())
spark.stop()
"""


@pytest.mark.slow
@pytest.mark.parametrize("user_options", [False, True])
def test_the_driver_logs_spark_warnings_but_not_the_startup_banner(tmp_path, user_options):
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_GATEWAY_PORT", "SPARK_CONF_DIR")}
    extra = ["spark.driver.extraJavaOptions=-Dtextmill.probe=1"] if user_options else []
    proc = subprocess.run(
        [sys.executable, "-c", LOG_PROBE, *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARN DAGScheduler: probe: a warning of Spark's own" in proc.stderr  # Spark's warnings are never hidden
    assert "probe: an info record" not in proc.stderr
    if user_options:  # the user's own JVM options: Spark's default profile, banner and all
        assert "Using Spark's default log4j profile" in proc.stderr
    else:
        assert "Using Spark's default log4j profile" not in proc.stderr and "NativeCodeLoader" not in proc.stderr
        assert "root WARN" in proc.stdout
