"""The SparkSession helper and the Java check: one clear sentence when Java is missing or old."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from textmill.errors import JavaError
from textmill.session import check_java, get_spark

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
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.21" 2023-10-17\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(JavaError, match=r"is Java 11\.0\.21; install Java 17"):
        check_java()


def test_cli_reports_missing_java_without_a_traceback(tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java"), "PATH": "/usr/bin:/bin"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    (tmp_path / "in.txt").write_text("one document\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "prepare.py"), "--set", f"io.input={tmp_path / 'in.txt'}",
         "--set", f"io.output={tmp_path / 'out'}", "--set", "prepare.format=text_lines"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "textmill: error: Spark needs Java 17 or newer, but none was found" in proc.stderr
    assert "Traceback" not in proc.stderr and "Py4J" not in proc.stderr


def test_get_spark_reuses_the_active_session(spark):
    assert get_spark() is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.sparkContext.master == "local[2]"
