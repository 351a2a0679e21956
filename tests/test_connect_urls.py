"""Spark Connect URLs are secrets where they hold a token, and an unreachable server is one line in
bounded time (issue 39, item 2).

Before: ``spark.remote=sc://host:port/;token=...`` was stored in clear in the MLflow param and in
``config/resolved.yaml``, echoed by a config type error, and printed with an invalid URL in an
exit-1 traceback and the ``--json`` message; a token over a plain connection made the client try
TLS for 10 minutes, a port where nothing listens hung past 5 minutes, and ``SPARK_REMOTE=`` (set,
empty) was a traceback. Tokens and parameter orders are generated; the servers here are real
sockets on 127.0.0.1 (one that listens and never answers, and a port where nothing listens).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textmill.pipelines.prepare import PrepareJobConf
from textmill.runtime.config import validate_conf
from textmill.runtime.errors import ConfigError, ConnectError
from textmill.runtime.redact import REDACTED, redact_text, redact_tree
from textmill.runtime.session import connect_target, connect_url

TOKENS = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_.~+%!$&()*,:@"),
    min_size=8,
    max_size=40,
)
OTHERS = st.lists(
    st.sampled_from(["user_id=alice", "use_ssl=false", "session_id=abc-1", "user_agent=textmill", "x-trace=1"]),
    max_size=3,
    unique=True,
)


def url_with(token: str, others: list[str], at: int, name: str = "token") -> str:
    params = list(others)
    params.insert(min(at, len(params)), f"{name}={token}")
    return "sc://127.0.0.1:15002/;" + ";".join(params)


@settings(max_examples=150, deadline=None)
@given(token=TOKENS, others=OTHERS, at=st.integers(0, 3), name=st.sampled_from(["token", "x-databricks-token"]))
def test_a_token_in_a_connect_url_is_redacted_wherever_textmill_shows_it(token, others, at, name):
    url = url_with(token, others, at, name)
    shown = [
        redact_text(url),
        redact_text(f"Invalid URL {url!r}: something"),
        json.dumps(redact_tree({"spark": {"remote": url}})),
    ]
    for text in shown:
        assert token not in text and REDACTED in text, text
        for other in others:
            assert other in text  # only the secret goes
    host, port, secure = connect_target(url)
    assert (host, port, secure) == ("127.0.0.1", 15002, name == "token")  # a token makes PySpark use TLS


@settings(max_examples=40, deadline=None)
@given(token=TOKENS, at=st.integers(0, 3))
def test_a_config_error_about_a_connect_url_never_echoes_its_token(token, at):
    url = url_with(token, ["user_id=bob"], at)
    for wrong in ([url], {"url": url}):  # a list, a mapping where a string belongs
        with pytest.raises(ConfigError) as err:
            validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "spark": {"remote": wrong}})
        assert token not in str(err.value) and "spark.remote" in str(err.value)


@pytest.mark.parametrize("path", ["/x", "/a/b"])
def test_a_url_pyspark_refuses_is_one_line_without_its_token(path):
    with pytest.raises(ConnectError) as err:
        connect_target(f"sc://127.0.0.1:15002{path};token=SECRET-TOKEN-1")
    assert "SECRET-TOKEN-1" not in str(err.value) and "not a Spark Connect URL" in str(err.value)


def test_an_empty_spark_remote_is_one_line(monkeypatch):
    from textmill.runtime.config import SparkConf

    for value in ("", "  "):
        monkeypatch.setenv("SPARK_REMOTE", value)
        with pytest.raises(ConnectError, match="SPARK_REMOTE is set but empty"):
            connect_url(SparkConf())
    monkeypatch.delenv("SPARK_REMOTE")
    assert connect_url(SparkConf()) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    tmp_path, remote: str, *extra: str, env_remote: str | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    if env_remote is not None:
        env["SPARK_REMOTE"] = env_remote
    args = ["--set", f"io.input={src}", "--set", f"io.output={tmp_path / 'out'}", "--set", "prepare.format=text_lines"]
    args += ["--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}", "--json", *extra]
    if remote:
        args += ["--set", f"spark.remote={remote}"]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "textmill.cli", "run", "prepare", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    return proc, time.monotonic() - started


def assert_one_line(proc: subprocess.CompletedProcess, secret: str, says: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert secret not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("textmill: error: ") and says in last, last
    assert says in json.loads(proc.stdout.strip().splitlines()[-1])["error"]["message"]


def test_a_port_where_nothing_listens_is_one_line_at_once(tmp_path):
    proc, seconds = run_cli(tmp_path, f"sc://127.0.0.1:{free_port()}/;user_id=u;token=SECRET-TOKEN-2")
    assert_one_line(proc, "SECRET-TOKEN-2", "no Spark Connect server answers")
    assert seconds < 60


def test_a_server_that_never_answers_is_one_line_after_the_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        proc, seconds = run_cli(
            tmp_path, f"sc://127.0.0.1:{port}/;token=SECRET-TOKEN-3", "--set", "spark.connect_timeout_s=3"
        )
    assert_one_line(proc, "SECRET-TOKEN-3", "did not complete the handshake within 3 s")
    assert "TLS" in proc.stderr  # the token made the client speak TLS: the line says so
    assert seconds < 60


@pytest.mark.parametrize(
    "remote, env_remote, says",
    [
        ("sc://127.0.0.1:1/path;token=SECRET-TOKEN-4", None, "not a Spark Connect URL"),
        ("", "", "SPARK_REMOTE is set but empty"),
    ],
)
def test_a_bad_url_or_an_empty_spark_remote_is_one_line(tmp_path, remote, env_remote, says):
    proc, _ = run_cli(tmp_path, remote, env_remote=env_remote)
    assert_one_line(proc, "SECRET-TOKEN-4", says)


@settings(max_examples=200, deadline=None)
@given(timeout_s=st.floats(0.01, 3600, allow_nan=False))
def test_a_server_that_stops_answering_is_retried_for_the_timeout_and_no_longer(timeout_s):
    """PySpark's client retried a gone server for at least 10 minutes, whatever spark.connect_timeout_s
    said; textmill's waits add up to the timeout, the last one crossing it, each capped at 5 s."""
    from textmill.runtime.session import retry_backoffs_ms

    waits = retry_backoffs_ms(timeout_s)
    assert sum(waits) >= timeout_s * 1000 > sum(waits[:-1])
    assert waits == sorted(waits) and max(waits) <= 5000


def test_only_the_spark_connect_clients_own_errors_say_its_server_was_lost():
    """The same words ("Connection refused") from an MLflow tracking server, or inside an error textmill
    already reported in one line, are not the Spark Connect server going away."""
    import mlflow
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException

    from textmill.runtime.errors import TrackingWriteError, connect_server_lost

    lost = SparkConnectGrpcException("status = StatusCode.UNAVAILABLE details = Connection refused")
    refused = mlflow.exceptions.MlflowException("HTTPConnectionPool(host='127.0.0.1'): Connection refused")
    assert connect_server_lost(lost) == "it stopped answering"
    assert connect_server_lost(refused) is None
    try:
        try:
            raise lost
        except SparkConnectGrpcException as inner:
            raise RuntimeError("a job's own wrapper") from inner
    except RuntimeError as wrapped:
        assert connect_server_lost(wrapped) == "it stopped answering"
    try:
        try:
            raise refused
        except mlflow.exceptions.MlflowException:
            raise TrackingWriteError("the MLflow store stopped taking writes", published=False) from None
    except TrackingWriteError as reported:
        assert connect_server_lost(reported) is None
