"""The one module where a classic SparkSession and a Spark Connect session differ.

Everything else in textmill is written against the API both kinds share (DataFrames,
``mapInArrow``, ``observe``, ``addArtifacts``, ``spark.conf``), and never asks which kind
of session it holds. What only a classic session has (its JVM gateway, ``sparkContext``,
Hadoop's FileSystem, ``SparkFiles`` on the workers) is reached from here alone, and a
test (``tests/test_session_kinds.py``) fails when those names appear anywhere else.

- ``files_for``: the ``Files`` for a path: local paths and mounts from Python on both kinds;
  other schemes through Hadoop's FileSystem on a classic session (what Spark is configured
  for: ``hdfs://``, ``s3a://``), through pyarrow on a Connect session.
- ``default_parallelism``: ``sparkContext.defaultParallelism``, or under Connect the number
  of partitions Spark gives a ``range`` (the same value: leaf nodes default to it).
- ``shipped_file``: on a worker, where a file or archive added with ``addArtifacts`` is.
- ``release_checkpoint``: free a ``localCheckpoint``'s blocks now (each kind frees them its own way).
- ``rows_by_partition``: a DataFrame's rows to the driver one partition at a time.
- ``driver_jvm_exit_code``: how the driver JVM this process started ended, if it has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from textmill.runtime.filesystems import ArrowFiles, Entry, Files, LocalFiles, hidden, is_local

_parallelism: dict[str, int] = {}


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (``SparkSession.builder.remote``, ``SPARK_REMOTE``, serverless)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def forget_lost_session(spark: SparkSession) -> None:
    """Close a Spark Connect session whose server is gone without asking that server anything: each
    call would be retried for ``spark.connect_timeout_s`` (releasing the session, and MLflow's
    ``end_run``, which asks the active session for a registry URI). It is then no longer the active
    session. A classic session is left as it is."""
    if is_connect(spark):
        spark.release_session_on_close = False
        spark.stop()


def default_parallelism(spark: SparkSession) -> int:
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    key = spark.session_id
    if key not in _parallelism:
        from pyspark.sql import functions as F

        # A range without a partition count gets the cluster's default parallelism; 4,096 rows
        # leave no partition empty on any cluster smaller than that.
        _parallelism[key] = int(spark.range(0, 4096).select(F.spark_partition_id().alias("p")).distinct().count())
    return _parallelism[key]


def files_for(spark: SparkSession, path: str) -> Files:
    if is_local(path):
        return LocalFiles()
    if is_connect(spark):
        return ArrowFiles(path)
    return HadoopFiles(spark)


def shipped_file(name: str) -> str:
    """On a worker: the local path of a file or unpacked archive shipped under ``name``.

    Both kinds of session put artifacts in the directory ``SparkFiles`` names (on Connect, one
    per session)."""
    from pyspark import SparkFiles

    return SparkFiles.get(name)


class HadoopFiles:
    """``Files`` through the driver JVM's Hadoop FileSystem (classic sessions, non-local schemes).
    Failed renames raise ``OSError``, as the other ``Files`` do."""

    def __init__(self, spark: SparkSession):
        self._jvm = spark._jvm
        self._conf = spark._jsc.hadoopConfiguration()
        self._gateway = spark.sparkContext._gateway

    def _fs(self, path: str):
        hpath = self._jvm.org.apache.hadoop.fs.Path(path)
        return hpath.getFileSystem(self._conf), hpath

    def _entry(self, fs, status) -> Entry:
        path = status.getPath()
        return Entry(
            fs.makeQualified(path).toString().rstrip("/"),
            path.getName(),
            status.isDirectory(),
            0 if status.isDirectory() else status.getLen(),
        )

    def qualify(self, path: str) -> str:
        fs, hpath = self._fs(path)
        return fs.makeQualified(hpath).toString().rstrip("/") or "/"

    def info(self, path: str) -> Entry | None:
        fs, hpath = self._fs(path)
        return self._entry(fs, fs.getFileStatus(hpath)) if fs.exists(hpath) else None

    def glob(self, pattern: str) -> list[Entry]:
        fs, hpath = self._fs(pattern)
        return sorted((self._entry(fs, s) for s in (fs.globStatus(hpath) or [])), key=lambda e: e.uri)

    def children(self, path: str) -> list[Entry]:
        fs, hpath = self._fs(path)
        return (
            sorted((self._entry(fs, s) for s in fs.listStatus(hpath)), key=lambda e: e.name) if fs.exists(hpath) else []
        )

    def files_under(self, path: str) -> Iterator[Entry]:
        fs, hpath = self._fs(path)
        prefix = len(hpath.toUri().getPath().rstrip("/")) + 1
        found = []
        it = fs.listFiles(hpath, True)
        while it.hasNext():
            status = it.next()
            if not any(hidden(part) for part in status.getPath().toUri().getPath()[prefix:].split("/")):
                found.append(self._entry(fs, status))
        yield from sorted(found, key=lambda e: e.uri)

    def mkdirs(self, path: str) -> None:
        fs, hpath = self._fs(path)
        fs.mkdirs(hpath)

    def delete(self, path: str) -> None:
        fs, hpath = self._fs(path)
        if fs.exists(hpath):
            fs.delete(hpath, True)

    def rename(self, source: str, target: str) -> None:
        """Never nests ``source`` inside an existing ``target`` (FileContext's rename without OVERWRITE)."""
        jvm = self._jvm
        _, source_path = self._fs(source)
        fs, target_path = self._fs(target)
        if target_path.getParent() is not None:
            fs.mkdirs(target_path.getParent())
        try:
            context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(target_path.toUri(), self._conf)
        except Exception:  # noqa: BLE001 - no FileContext binding for this scheme: a checked rename below
            context = None
        if context is not None:
            options = self._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
            options[0] = jvm.org.apache.hadoop.fs.Options.Rename.NONE
            try:
                context.rename(source_path, target_path, options)
                return
            except Exception as exc:  # noqa: BLE001 - py4j wraps the Java exception
                raise OSError(str(exc).splitlines()[0][:300]) from exc
        if fs.exists(target_path) or not fs.rename(source_path, target_path):
            raise OSError(f"{target} exists, or the rename failed")

    def replace_file(self, source: str, target: str) -> None:
        self.delete(target)
        self.rename(source, target)

    def read_text(self, path: str) -> str | None:
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return None
        stream = fs.open(hpath)
        try:
            return self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()

    def write_text(self, path: str, text: str, exclusive: bool = False) -> bool:
        fs, hpath = self._fs(path)
        try:
            stream = fs.create(hpath, not exclusive)
        except Exception as exc:  # noqa: BLE001 - py4j wraps FileAlreadyExistsException
            if exclusive and ("FileAlreadyExists" in str(exc) or fs.exists(hpath)):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True


def spark_master(spark: SparkSession) -> str:
    """The master URL (the server's, under Connect): ``spark.master`` is readable on both kinds."""
    return spark.conf.get("spark.master", "") or ""


def describe(spark: SparkSession) -> dict[str, Any]:
    """Tags for MLflow: which kind of session ran the job, and its master."""
    return {"spark.session_kind": "connect" if is_connect(spark) else "classic", "spark.master": spark_master(spark)}


def observation_finished(observation: Any) -> bool:
    """Whether an ``Observation``'s action has finished (so that ``get`` will not wait for one
    that never ran): classic sessions complete a JVM future, Connect ones store the result."""
    if getattr(observation, "_jo", None) is not None:
        return bool(observation._jo.future().isCompleted())
    return getattr(observation, "_result", None) is not None or getattr(observation, "_error", None) is not None


def release_checkpoint(df: DataFrame) -> None:
    """Free the blocks of ``df``, a ``localCheckpoint``, now; ``df`` must not be read again.

    A classic session frees a checkpoint only once the JVM's garbage collector has collected its
    RDD and Spark's ContextCleaner has noticed: by default every 30 minutes. A loop that checkpoints
    each round (sgns's partial sums, cluster's labels) then keeps every round's blocks in the
    driver JVM until it runs out of heap. A Connect server frees a checkpoint when the client's
    reference to it is deleted: sent here at once, rather than whenever Python collects ``df``."""
    if not is_connect(df.sparkSession):
        # What RDD.unpersist does, less its warning that a local checkpoint cannot be recomputed
        # once freed (a WARN line per call on the console; freed is what it is meant to be here).
        sc = df.sparkSession.sparkContext
        sc._jsc.sc().unpersistRDD(df._jdf.logicalPlan().rdd().id(), False)
        return
    relation = df._plan
    if getattr(relation, "_relation_id", None) is not None:
        relation.__del__()  # the client's own release request
        relation._relation_id = None  # so that Python's collection of df sends no second one


def rows_by_partition(df: DataFrame) -> Iterator[Any]:
    """The rows of ``df`` on the driver, one partition after another, each partition its own Spark job:
    the driver holds one partition's rows at a time. Read a checkpoint with it, or every partition
    is computed again.

    A classic session's ``toLocalIterator`` does this too, but its serving thread leaves every
    partition it sent on the driver's heap until the JVM's garbage collector reaches the thread's
    objects: measured, 128 MB more live heap after each pass over 8 partitions of 16 MB, which
    no ``System.gc()`` freed. A job per partition (what ``SparkContext.runJob`` does for a list of
    partitions) frees each once it is read. A Connect client's ``toLocalIterator`` streams the
    server's Arrow batches in order and leaves nothing behind it."""
    if is_connect(df.sparkSession):
        yield from df.toLocalIterator()
        return
    from pyspark.serializers import BatchedSerializer, CPickleSerializer
    from pyspark.util import _load_from_socket

    sc = df.sparkSession.sparkContext
    pickled = df._jdf.javaToPython()  # what DataFrame.rdd and collect read: pickled batches of rows
    for partition in range(pickled.getNumPartitions()):
        served = sc._jvm.PythonRDD.runJob(sc._jsc.sc(), pickled, [partition])
        with _load_from_socket(served, BatchedSerializer(CPickleSerializer())) as stream:
            yield from stream


def driver_jvm_exit_code(spark: SparkSession, wait_seconds: float = 15.0) -> int | None:
    """The exit status of the driver JVM that this Python process started (a classic session in
    local mode, or a client-mode driver) if it has exited or is on its way out; None while it runs
    (its SparkContext answers that it is not stopped), and on Connect or under spark-submit, where
    Python did not start it. Spark exits 52 when a JVM ran out of memory; by then the failure
    Python sees is often a lost py4j connection, a job cancelled by the shutdown, or an error
    whose text the dead JVM can no longer give.

    A JVM that has exited is also forgotten as the active session: MLflow's ``end_run`` asks the
    active session for a registry URI, and a dead one answers with a second traceback."""
    if is_connect(spark):
        return None
    process = getattr(spark.sparkContext._gateway, "proc", None)
    if process is None:
        return None
    deadline = time.monotonic() + wait_seconds
    code = process.poll()
    while code is None and time.monotonic() < deadline:
        try:
            if not spark.sparkContext._jsc.sc().isStopped():
                return None
        except Exception:  # the JVM no longer answers: it is exiting, its status follows
            pass
        time.sleep(0.2)
        code = process.poll()
    if code is not None:
        SparkSession._instantiatedSession = None
        SparkSession._activeSession = None
    return code
