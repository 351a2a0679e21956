"""Named exceptions for every failure kind that textmill reports to users.

Raised on the driver while a job is being planned, before any Spark action, so that a
bad config or a missing input costs seconds, not a cluster run. The CLI prints
`TextmillError` messages as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re

_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\r``, ``\\n``, ``\\x00``), for a one-line
    message: a raw carriage return in a column name rewrote the terminal line it was printed on."""
    return text.translate(_CONTROL)


class TextmillError(Exception):
    """Base class: a user-facing problem with a message that says what to change."""

    exit_code = 2  # what the CLI exits with after printing the message


class ConfigError(TextmillError):
    """The configuration is invalid: unknown key, missing value or wrong type."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n  - ".join(problems)
        super().__init__(f"invalid {source} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  - {lines}")


class StaticSettingError(TextmillError):
    """A ``spark.conf`` setting that a Spark Connect session cannot take at runtime."""


class ConnectError(TextmillError):
    """A Spark Connect server cannot be reached or does not answer, or its URL is not one."""


class JavaError(TextmillError):
    """Java is missing or too old to start Spark."""


class InputNotFoundError(TextmillError):
    """The configured input path does not exist or matches no files."""


class EmptyInputError(InputNotFoundError):
    """The input exists but holds no records (every file empty, or nothing parsed)."""


class ColumnNotFoundError(TextmillError):
    """A configured source column is not in the input."""


class ColumnTypeError(ColumnNotFoundError):
    """A configured column has the wrong type (e.g. an int64 ``text`` column)."""


class AccountingError(TextmillError):
    """rows_in != rows_out + rows_quarantined: a row was lost or duplicated."""


class TrackingWriteError(TextmillError):
    """The MLflow store stopped taking writes during a run. Exit 3 when the outputs were published
    anyway (the data is there, its record is not), 2 when nothing was."""

    def __init__(self, message: str, published: bool) -> None:
        super().__init__(message)
        self.exit_code = 3 if published else 2


class OutputError(TextmillError):
    """The output location is unusable (e.g. it is the input itself)."""


class UnreadableInputError(InputNotFoundError):
    """An input file cannot be read: truncated or corrupt (a cut gzip stream), or its files disagree on a
    column's type."""


class CsvHeaderError(InputNotFoundError):
    """A CSV header cannot be read, repeats a name, or lists other columns than the other files'."""


_FAILED_READ = re.compile(
    r"\[FAILED_READ_FILE\.(\w+)\] Encountered error while reading file (\S+?)\.?\s+(.*?)(?:SQLSTATE|$)", re.S
)
_TEXTMILL_UNREADABLE = re.compile(r"TEXTMILL_UNREADABLE_FILE\[(\S+)\]: ([^\n]+)")
_CAUSE = re.compile(r"Caused by: ([\w.$]+)(?:: ([^\n]*))?")
_CORRUPT_HINTS = (
    "EOF",
    "end of input stream",
    "Zip",
    "GZIP",
    "gzip",
    "header check",
    "stored block",
    "CRC",
    "compressed",
)


def from_read_failure(exc: BaseException) -> TextmillError | None:
    """The one-line user error for a Spark task that failed reading an input file (a truncated
    or corrupt file, Parquet files that disagree on a column's type), or None for anything else.

    Spark 4 wraps every such failure as ``FAILED_READ_FILE`` naming the file, on classic and
    Connect sessions alike; textmill's CSV reader marks its own (``csv_records.UNREADABLE``).
    """
    text = str(exc)
    own = _TEXTMILL_UNREADABLE.search(text)
    if own:
        return UnreadableInputError(
            f"io.input: cannot read {own.group(1)}: {own.group(2).strip()[:200]} "
            "(a truncated or corrupt file?); repair or remove it and rerun"
        )
    failed = _FAILED_READ.search(text)
    if failed is None:
        return None
    kind, path, detail = failed.group(1), failed.group(2), " ".join(failed.group(3).split())
    if kind == "PARQUET_COLUMN_DATA_TYPE_MISMATCH":
        return UnreadableInputError(
            f"io.input: the Parquet files disagree on a column's type: {path}: {detail.rstrip('. ')}; "
            "rewrite the files with one type for the column"
        )
    cause = _CAUSE.search(text)
    why = f"{cause.group(1).rsplit('.', 1)[-1]}: {(cause.group(2) or '').strip()}"[:200] if cause else kind
    corrupt = any(hint in why for hint in _CORRUPT_HINTS)
    return UnreadableInputError(
        f"io.input: cannot read {path}: {why}"
        + (" (the file is truncated or corrupt)" if corrupt else "")
        + "; repair or remove it and rerun"
    )


class OutOfMemoryError(TextmillError):
    """A job ran out of memory: a JVM's heap (the driver's, or an executor's in a stage) or the driver's Python."""


_JAVA_OOM = re.compile(r"java\.lang\.OutOfMemoryError(?:: ([^\n]*))?")
_STAGE = re.compile(r"in stage (\d+)(?:\.\d+)?")


JVM_OUT_OF_MEMORY_EXIT = 52  # SparkExitCode.OOM


def _chain(exc: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _chain_text(exc: BaseException) -> str:
    """The messages of ``exc`` and the exceptions it was raised from or while handling (a py4j error
    whose JVM has died cannot even be turned into a string)."""
    texts = []
    for e in _chain(exc):
        try:
            texts.append(str(e))
        except Exception:  # a dead JVM's exception has no text; the others' still count
            continue
    return "\n".join(texts)


def from_out_of_memory(
    exc: BaseException, job: str, local: bool, what_to_lower: str = "", jvm_exit: int | None = None
) -> TextmillError | None:
    """The one-line user error for a job that ran out of memory, or None for any other failure:
    which job, where (the stage, when Spark names one), and the settings to change. ``local``: the
    tasks run inside the driver JVM (``local[N]``), so its heap is the one to grow. ``jvm_exit``:
    the driver JVM's exit status, if it has exited (Spark's 52: out of memory)."""
    lower = f", or lower {what_to_lower}" if what_to_lower else ""
    if isinstance(exc, MemoryError):
        return OutOfMemoryError(
            f"{job} ran out of memory in the driver's Python process (MemoryError); run it on a machine "
            f"with more memory{lower}"
        )
    text = _chain_text(exc)
    found = _JAVA_OOM.search(text)
    if found is None and jvm_exit != JVM_OUT_OF_MEMORY_EXIT:
        return None
    stage = _STAGE.search(text)
    where = f"in stage {stage.group(1)}" if stage else "in the driver JVM"
    if jvm_exit == JVM_OUT_OF_MEMORY_EXIT:
        where += f", which exited with code {jvm_exit}"
    why = " ".join(((found and found.group(1)) or "").split())[:120] or "Java heap space"
    if local or not stage:
        grow = "raise spark.driver_memory (local mode runs every task in the driver JVM; default a quarter of RAM)"
    else:
        grow = "raise the executors' memory (spark.conf: {spark.executor.memory: ...}) or use more partitions"
    return OutOfMemoryError(f"{job} ran out of Java heap {where} (OutOfMemoryError: {why}); {grow}{lower}")


class NotASpacyModelError(TextmillError):
    """A model that was expected to be a spaCy pipeline is something else."""


# What a Spark Connect client is told when its server goes away during a job: a server being
# stopped fails the queries it runs (its SparkContext shuts down), and one that is gone leaves the
# channel UNAVAILABLE. Each with the few words the one line gives as the reason.
_CONNECT_LOST = (
    ("SparkContext was shut down", "its Spark context was shut down"),
    ("SparkContext has been shutdown", "its Spark context was shut down"),
    ("Cannot call methods on a stopped SparkContext", "its Spark context was shut down"),
    ("StatusCode.UNAVAILABLE", "it stopped answering"),
    ("failed to connect to all addresses", "it stopped answering"),
    ("Connection refused", "it stopped answering"),
    ("Socket closed", "it closed the connection"),
    ("RETRIES_EXCEEDED", "it stopped answering"),
)


def connect_server_lost(exc: BaseException) -> str | None:
    """Why a Spark Connect job failed when the failure is its server going away, else None. Only
    PySpark's and gRPC's own exceptions count: an MLflow server that refuses a connection is not
    the Spark Connect server, and an error textmill already put in one line stays as it is."""
    if isinstance(exc, TextmillError):
        return None
    for error in _chain(exc):
        if not type(error).__module__.startswith(("pyspark", "grpc")):
            continue
        try:
            text = str(error)
        except Exception:  # an exception that cannot say what it is says nothing here
            continue
        why = next((why for sign, why in _CONNECT_LOST if sign in text), None)
        if why is not None:
            return why
    return None


class ConnectServerLostError(ConnectError):
    """The Spark Connect server stopped or went away during a job. Exit 3 when the outputs were
    published before it did (the data is there, the job did not finish), 2 when nothing was."""

    def __init__(self, message: str, published: bool) -> None:
        super().__init__(message)
        self.exit_code = 3 if published else 2
