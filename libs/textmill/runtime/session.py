"""Build or reuse the SparkSession that every job runs in.

``get_spark`` is the one place a session is made:

- an active session (a notebook, a test fixture, a parent pipeline) is reused as it is;
- under ``spark-submit`` the master and resources come from spark-submit and are never
  overridden; only the user's explicit ``spark.conf`` settings are applied;
- a Spark Connect session is made with PySpark's own conventions: ``spark.remote`` in the
  job's config or ``$SPARK_REMOTE`` (``sc://host:port``; ``local[N]`` starts a server in
  this process), or ``spark.api.mode=connect`` (``spark-submit --conf``, ``$SPARK_API_MODE``).
  Only runtime settings can be set on a Connect session: a static one (``spark.driver.memory``,
  ``spark.sql.warehouse.dir``...) in ``spark.conf`` fails with one line that names it;
- otherwise (plain ``textmill run``, or a library call) textmill starts Spark itself, on
  ``spark.master`` or ``local[*]``, with settings sized for this machine, after checking
  that a usable Java is installed so that the user gets one clear sentence instead of a
  Py4J stack trace. The driver JVM then logs with ``log4j2.properties`` beside this module
  (Spark's defaults at WARN, without Hadoop's native-library notice) unless the user brings
  a log4j2 configuration of their own.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from textmill.runtime.config import SparkConf
from textmill.runtime.errors import ConnectError, JavaError, StaticSettingError
from textmill.runtime.redact import redact_text

logger = logging.getLogger(__name__)

MIN_JAVA = 17


@dataclass(frozen=True)
class JavaInfo:
    path: str
    major: int
    version: str


def find_java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def check_java(minimum: int = MIN_JAVA) -> JavaInfo:
    """Return the Java that Spark will use, or raise JavaError saying what is wrong."""
    java = find_java()
    if java is None:
        where = (
            f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java"
            if os.environ.get("JAVA_HOME")
            else "no 'java' on PATH"
        )
        raise JavaError(
            f"Spark needs Java {minimum} or newer, but none was found ({where}); install Java {minimum} and set "
            "JAVA_HOME."
        )
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaError(f"Spark needs Java {minimum} or newer, but {java} could not be run ({exc}).") from exc
    match = re.search(r'version "([^"]+)"', proc.stderr + proc.stdout)
    if proc.returncode != 0 or match is None:
        raise JavaError(f"Spark needs Java {minimum} or newer, but '{java} -version' did not report a version.")
    version = match.group(1)
    parts = version.split(".")
    major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(re.match(r"\d+", parts[0]).group(0))
    if major < minimum:
        raise JavaError(
            f"Spark needs Java {minimum} or newer, but {java} is Java {version}; install Java {minimum} and set "
            "JAVA_HOME."
        )
    return JavaInfo(java, major, version)


def under_spark_submit() -> bool:
    """spark-submit's Python runner hands the driver its JVM gateway through this variable."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _local_driver_memory() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "2g"
    gib = max(1, min(8, total // 4 // 2**30))
    return f"{gib}g"


LOG4J2_PROPERTIES = Path(__file__).with_name("log4j2.properties")


def _log4j2_options(conf: SparkConf) -> str | None:
    """``-Dlog4j2.configurationFile=...`` for textmill's driver log config, or None where the user
    configures logging themselves (their extraJavaOptions, or a log4j2 file in SPARK_CONF_DIR)."""
    if "spark.driver.extraJavaOptions" in conf.conf or not LOG4J2_PROPERTIES.is_file():
        return None
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        os.environ.get("SPARK_HOME") and str(Path(os.environ["SPARK_HOME"]) / "conf")
    )
    if conf_dir and any(
        (Path(conf_dir) / name).is_file() for name in ("log4j2.properties", "log4j2.xml", "log4j2.yaml")
    ):
        return None
    return f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES.as_uri()}"


def connect_url(conf: SparkConf) -> str | None:
    """The Spark Connect server the config or the environment asks for, else None (classic).

    ``SPARK_REMOTE`` set to nothing is refused: PySpark takes a set variable for a remote session
    whatever its value, and failed with a traceback on the empty URL."""
    remote = conf.remote or os.environ.get("SPARK_REMOTE")
    if not conf.remote and "SPARK_REMOTE" in os.environ and not os.environ["SPARK_REMOTE"].strip():
        raise ConnectError(
            "SPARK_REMOTE is set but empty: unset it for a classic session, or set it (or spark.remote) "
            "to a Spark Connect server, sc://host:port"
        )
    if remote:
        return remote.strip()
    mode = str(conf.conf.get("spark.api.mode") or os.environ.get("SPARK_API_MODE") or "").lower()
    return (conf.master or "local[*]") if mode == "connect" else None


def _set_runtime(spark: SparkSession, settings: dict[str, str]) -> None:
    """Apply ``spark.conf`` settings to a Connect session, naming the one that cannot be set at runtime."""
    from pyspark.errors import AnalysisException

    for key, value in settings.items():
        try:
            spark.conf.set(key, value)
        except AnalysisException as exc:
            if "CANNOT_MODIFY" not in str(exc):
                raise
            raise StaticSettingError(
                f"spark.conf.{key} cannot be set on a Spark Connect session (it is a static setting of the "
                "server); set it where the server is started, or remove it from the job's spark.conf"
            ) from None


def _connect_session(url: str, conf: SparkConf, app_name: str) -> SparkSession:
    settings = {
        k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in conf.conf.items() if k != "spark.api.mode"
    }
    if conf.shuffle_partitions:
        settings["spark.sql.shuffle.partitions"] = str(conf.shuffle_partitions)
    if not url.startswith("local"):
        host, port, secure = connect_target(url)
        logger.info("connecting to the Spark Connect server at %s", redact_text(f"sc://{host}:{port}"))
        _await_listener(url, host, port, conf.connect_timeout_s)
        _await_handshake(url, secure, conf.connect_timeout_s)
        try:
            spark = SparkSession.builder.remote(url).getOrCreate()
        except Exception as exc:  # the server answered, and refused: one line, the token redacted
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConnectError(
                f"the Spark Connect server at {redact_text(url)} refused the session: {redact_text(first)[:300]}"
            ) from exc
        bound_retries(spark, conf.connect_timeout_s)
        _set_runtime(spark, {"spark.sql.session.timeZone": "UTC", **settings})
        return spark
    # A local[N] server started in this process: its static settings are given when it starts.
    info = check_java()
    logger.info("starting a local Spark Connect server (%s) with Java %s", url, info.version)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.remote(url)
        .appName(conf.app_name or app_name)
        .config("spark.driver.memory", conf.driver_memory or _local_driver_memory())
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", str(conf.ui_enabled).lower())
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.connect.grpc.binding.address", "127.0.0.1")
    )
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def retry_backoffs_ms(timeout_s: float, initial_ms: int = 50, multiplier: float = 4.0, cap_ms: int = 5000) -> list[int]:
    """The waits between a Connect client's retries of a server that does not answer: PySpark's
    exponential backoff, capped, cut where their sum reaches ``timeout_s``."""
    waits: list[int] = []
    wait = float(initial_ms)
    while sum(waits) < timeout_s * 1000:
        waits.append(int(min(wait, cap_ms)))
        wait *= multiplier
    return waits


def bound_retries(spark: SparkSession, timeout_s: float) -> None:
    """PySpark's Connect client retries a server that stopped answering for at least 10 minutes (its
    DefaultPolicy), so a job whose server was stopped mid-run hung that long before it failed. textmill
    waits ``spark.connect_timeout_s`` for it, as it does at the start; a server restarted within that
    time is still reattached to."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    waits = retry_backoffs_ms(timeout_s)
    policy = DefaultPolicy(
        max_retries=len(waits),
        max_backoff=max(waits),
        jitter=0,  # the waits above are the whole bound
        max_server_retry_delay=int(timeout_s * 1000),
    )
    spark.client.set_retry_policies([policy])
    # PySpark warns once the retries are used up, then raises: the error that follows says it.
    warnings.filterwarnings("ignore", message=r"\[RETRIES_EXCEEDED\]", category=UserWarning)


def connect_target(url: str) -> tuple[str, int, bool]:
    """(host, port, whether the client will use TLS) of a Spark Connect URL, parsed as PySpark parses
    it; a URL PySpark would refuse is one line here, its token redacted."""
    from pyspark.errors import PySparkValueError
    from pyspark.sql.connect.client import DefaultChannelBuilder

    try:
        builder = DefaultChannelBuilder(url)
    except PySparkValueError as exc:
        detail = (exc.getMessageParameters() or {}).get("detail") or str(exc)
        raise ConnectError(
            f"spark.remote {redact_text(url)!r} is not a Spark Connect URL: {redact_text(detail)}"
        ) from None
    host, _, port = builder.endpoint.rpartition(":")
    return host, int(port), bool(builder.secure)


def _await_listener(url: str, host: str, port: int, timeout_s: float) -> None:
    """One line, within ``timeout_s``, when nothing listens at the server's address: the client
    itself retried a port where nothing listens for over 5 minutes."""
    import socket
    import time

    started = time.monotonic()
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout_s).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConnectError(
            f"no Spark Connect server answers at {redact_text(url)} ({why} after {time.monotonic() - started:.1f} s); "
            "start it, or point spark.remote (or SPARK_REMOTE) at one that runs"
        ) from None


def _await_handshake(url: str, secure: bool, timeout_s: float) -> None:
    """One line, within ``timeout_s``, when the server accepts connections but never completes gRPC's
    handshake: a token makes the client speak TLS, and against a server without TLS the client
    retried for 10 minutes, then printed a traceback. A channel of its own, closed here, leaves
    nothing retrying behind it."""
    import grpc
    from pyspark.sql.connect.client import DefaultChannelBuilder

    channel = DefaultChannelBuilder(url).toChannel()
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        tls = (
            " The URL has a token, so the client speaks TLS (use_ssl): does the server expect TLS? Put the "
            "token behind a TLS proxy, or leave it out for a plain server."
            if secure
            else ""
        )
        raise ConnectError(
            f"the Spark Connect server at {redact_text(url)} accepted the connection but did not complete "
            f"the handshake within {timeout_s:g} s (spark.connect_timeout_s).{tls}"
        ) from None
    finally:
        channel.close()


def get_spark(conf: SparkConf | None = None, app_name: str = "textmill") -> SparkSession:
    """Return the active session, or build one as described in the module docstring."""
    conf = conf or SparkConf()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    url = connect_url(conf)
    if url is not None and not under_spark_submit():
        return _connect_session(url, conf, app_name)
    builder = SparkSession.builder
    if under_spark_submit():
        logger.info("running under spark-submit: master and resources come from spark-submit")
    else:
        info = check_java()
        logger.info("starting Spark with Java %s (%s)", info.version, info.path)
        # Executors of a local master must run this interpreter, not whatever 'python3' is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        master = conf.master or "local[*]"
        cores = os.cpu_count() or 2
        builder = (
            builder.master(master)
            .appName(conf.app_name or app_name)
            .config("spark.driver.memory", conf.driver_memory or _local_driver_memory())
            .config("spark.sql.shuffle.partitions", str(conf.shuffle_partitions or 2 * cores))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", str(conf.ui_enabled).lower())
            .config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
        )
        log_config = _log4j2_options(conf)
        if log_config:
            builder = builder.config("spark.driver.extraJavaOptions", log_config)
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    for key, value in conf.conf.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    spark = builder.getOrCreate()
    if conf.shuffle_partitions and under_spark_submit():
        spark.conf.set("spark.sql.shuffle.partitions", str(conf.shuffle_partitions))
    return spark
