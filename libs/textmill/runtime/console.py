"""What a person sees while a job runs: verbosity, log levels, step lines, progress and the end report.

Three verbosities, chosen by ``textmill run --quiet/--verbose`` (``configure``) and inherited by child
processes (DDP ranks) through ``TEXTMILL_VERBOSITY``:

- ``normal`` (default): one line per step as it starts and ends, a progress bar for long driver-side
  loops on a terminal (a plain line at most every ``LINE_EVERY_SECONDS`` in a log), the end report;
  log records at WARNING and above;
- ``verbose``: the same lines plus INFO log records; the per-iteration INFO records (one per epoch,
  round, iteration) then are the progress, so no bars are drawn between them;
- ``quiet``: warnings and errors only (and the JSON report when ``--json`` asks for it).

``TEXTMILL_LOG_LEVEL`` (or ``--log-level``) sets the log level explicitly, e.g. for spark-submit runs
whose log should keep every INFO record. Only textmill's own lines go to stdout; logs, warnings and
progress bars go to stderr, so ``--json > report.json`` stays parseable.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Verbosity = Literal["quiet", "normal", "verbose"]
VERBOSITIES = ("quiet", "normal", "verbose")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LINE_EVERY_SECONDS = 10.0
_USER_MLFLOW_LEVEL = os.environ.get("MLFLOW_LOGGING_LEVEL")


class ConsoleError(ValueError):
    pass


def verbosity() -> Verbosity:
    value = os.environ.get("TEXTMILL_VERBOSITY", "normal")
    return value if value in VERBOSITIES else "normal"  # type: ignore[return-value]


def log_level(verbosity_: Verbosity, explicit: str | None = None) -> str:
    """The log level: ``--log-level``, else ``TEXTMILL_LOG_LEVEL``, else by verbosity."""
    level = explicit or os.environ.get("TEXTMILL_LOG_LEVEL")
    if level:
        level = level.strip().upper()
        if level not in LOG_LEVELS:
            raise ConsoleError(
                f"log level {level!r} (TEXTMILL_LOG_LEVEL or --log-level) must be one of {', '.join(LOG_LEVELS)}"
            )
        return level
    return "INFO" if verbosity_ == "verbose" else "WARNING"


def configure(verbosity_: Verbosity = "normal", explicit_level: str | None = None, json_on_stdout: bool = False) -> str:
    """Set up logging for a command-line run; returns the log level used.

    With ``json_on_stdout`` the human-readable lines go to stderr, so stdout is only the JSON report.
    """
    level = log_level(verbosity_, explicit_level)
    os.environ["TEXTMILL_VERBOSITY"] = verbosity_
    os.environ["TEXTMILL_LINES_TO"] = "stderr" if json_on_stdout else "stdout"
    # MLflow's artifact-download bars (drawn whenever a logged model is re-read to check its input
    # example) say nothing a user can act on; a user who wants them sets the variable to true.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A no-op where the host (a notebook, pytest) has configured logging already: then only the
    # levels below change, and records still reach the host's handlers.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("textmill").setLevel(level)
    # Third-party loggers: never chattier than WARNING unless DEBUG is asked for; their INFO
    # records (database migrations, "validating input example") are not the user's business.
    third_party = (
        "DEBUG" if level == "DEBUG" else logging.getLevelName(max(logging.WARNING, logging.getLevelName(level)))
    )
    # MLflow sets its logger's level from this variable when it is imported (later, in most runs);
    # a level the user set before textmill started wins.
    os.environ["MLFLOW_LOGGING_LEVEL"] = (_USER_MLFLOW_LEVEL or third_party).upper()
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    for name in ("alembic", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(third_party)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # one DEBUG record per JVM call
    # MLflow logs every database error it then raises with its traceback; textmill reports the
    # raised one in one line (tracking.store_write_failure), so the log record says nothing more.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)
    return level


def _emit(line: str) -> None:
    if verbosity() != "quiet":
        stream = sys.stderr if os.environ.get("TEXTMILL_LINES_TO") == "stderr" else sys.stdout
        if "…" in line and (stream.encoding or "").lower().replace("-", "") != "utf8":
            line = line.replace("…", "...")  # a Latin-1 or ASCII console cannot encode the ellipsis
        print(line, file=stream, flush=True)


def _logs_info() -> bool:
    return logging.getLogger("textmill").getEffectiveLevel() <= logging.INFO


# ----------------------------------------------------------------------------------------- progress


class Progress:
    """Progress of a driver-side loop: a tqdm bar on a terminal, a plain line now and then in a log.

    Nothing is drawn when quiet, when INFO records are logged (they already say each step), or when
    not ``enabled`` (a DDP rank other than 0). Use it as a context manager, so that a loop that raises
    clears its bar before the error is printed; ``close(note)`` may end it earlier with a note.
    """

    def __init__(self, label: str, total: int | None, unit: str = "it", enabled: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.done, self.fields = 0, {}
        self._bar = None
        self._mode = "off"
        if enabled and verbosity() == "normal" and not _logs_info():
            self._mode = "bar" if sys.stderr.isatty() else "lines"
        if self._mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
        self._last_line = time.monotonic()
        self._printed = 0

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields = fields
        if self._bar is not None:
            self._bar.set_postfix_str(_fields_text(fields), refresh=False)
            self._bar.update(n)
        elif self._mode == "lines" and (time.monotonic() - self._last_line >= LINE_EVERY_SECONDS):
            self._line()

    def _line(self, note: str = "") -> None:
        of = f"/{self.total}" if self.total else ""
        said = "; ".join(x for x in (_fields_text(self.fields), note) if x)
        _emit(f"      {self.label}: {self.done}{of} {self.unit}" + (f" ({said})" if said else ""))
        self._last_line, self._printed = time.monotonic(), self.done

    def close(self, note: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._mode == "lines" and (self._printed != self.done or note):
            self._line(note)
        self._mode = "off"  # closing twice (close(note), then the with block's exit) prints once

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fields_text(fields: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_number(v)}" for k, v in fields.items() if v is not None)


# ----------------------------------------------------------------------------------------- steps


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4g}"


@dataclass(frozen=True)
class StepRows:
    rows_in: float | None
    rows_out: float | None
    quarantined: float | None
    errors: float | None


def step_rows(metrics: Mapping[str, float]) -> StepRows:
    """Rows in/out/quarantined/with a row error, from a job's metrics (None where the job has none)."""
    out = metrics.get("rows_out")
    if out is None and "rows_train" in metrics:
        out = metrics["rows_train"] + metrics.get("rows_val", 0)
    if out is None:
        out = metrics.get("items")
    return StepRows(metrics.get("rows_in"), out, metrics.get("rows_quarantined"), metrics.get("rows_error"))


_FIELD = re.compile(r"\{(\w+)")


def headline(templates: Iterable[str], metrics: Mapping[str, float]) -> str:
    """A job's headline: each template whose metrics are all present, plus any quarantine reasons."""
    parts = []
    for template in templates:
        names = _FIELD.findall(template)
        if names and all(metrics.get(n) is not None for n in names):
            parts.append(template.format(**{n: metrics[n] for n in names}))
    reasons = {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("quarantined.") and v}
    if reasons:
        parts.append("quarantine reasons: " + ", ".join(f"{k} {_number(v)}" for k, v in sorted(reasons.items())))
    return ", ".join(parts)


def status(log: logging.Logger, message: str, *args: Any) -> None:
    """A status line an operator needs even at the default level (a long-running job's batches, a stop
    being honoured): logged at INFO, and printed when INFO records are not shown, so it appears once."""
    log.info(message, *args)
    if verbosity() == "normal" and not log.isEnabledFor(logging.INFO):
        _emit("      " + (message % args if args else message))


def step_started(label: str) -> None:
    _emit(f"{label} …")


def step_done(label: str, seconds: float, metrics: Mapping[str, float], head: str = "") -> None:
    rows = step_rows(metrics)
    counts = []
    if rows.rows_in is not None:
        counts.append(f"{_number(rows.rows_in)} rows in")
    if rows.rows_out is not None:
        counts.append(f"{_number(rows.rows_out)} out")
    if rows.quarantined is not None:
        counts.append(f"{_number(rows.quarantined)} quarantined")
    if rows.errors:
        counts.append(f"{_number(rows.errors)} with a row error")
    said = [", ".join(counts)] if counts else []
    if head:
        said.append(head)
    _emit(f"{label} … done in {seconds:.1f} s" + (f" ({'; '.join(said)})" if said else ""))


def step_skipped(label: str, why: str) -> None:
    _emit(f"{label} … skipped: {why}")


def steps_table(steps: list[Mapping[str, Any]]) -> str:
    """The end-of-run table: one row per step (``name``, ``seconds``, ``metrics``, ``headline``)."""
    header = ("step", "rows in", "rows out", "quarantined", "row errors", "seconds", "result")
    rows = []
    for step in steps:
        r = step_rows(step["metrics"])
        cells = [_number(v) if v is not None else "-" for v in (r.rows_in, r.rows_out, r.quarantined, r.errors)]
        rows.append((step["name"], *cells, f"{step['seconds']:.1f}", step.get("headline") or ""))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def fmt(row):
        return "  ".join(
            (str(c).rjust(w) if i in right else str(c).ljust(w)) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *(fmt(r) for r in rows)])


def report(text: str) -> None:
    _emit(text)
