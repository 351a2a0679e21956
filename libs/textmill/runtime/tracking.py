"""MLflow run context for jobs: params, metrics, tags and the resolved config.

``job_run`` wraps one job in an MLflow run (nested when a parent run is active, as in the
``pipeline`` job). It logs the flattened resolved config as params, the resolved YAML as
an artifact, and tags (textmill version, git commit, Spark version, master, job); on exit
it logs ``wall_seconds`` and, for jobs that process rows themselves (``JobConf.rate_metric``; not the
``pipeline`` or ``watch``, whose wall time is many steps' or waiting), ``docs_per_second``. The default store is
``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``: no server needed.
Called on the driver only, never inside UDFs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

import textmill
from textmill.runtime.config import JobConf, flatten, to_yaml
from textmill.runtime.errors import TextmillError
from textmill.runtime.redact import redact_text, redact_tree, split_credentials

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def log_workers(report: dict[str, dict], **extra: Any) -> dict[str, float]:
    """Log a WorkerReport's value (and ``extra``) as ``workers.json``; return its summary metrics."""
    from textmill.runtime.worker_cache import summarize_workers

    if mlflow.active_run() is not None:
        mlflow.log_dict({"workers": report, **extra}, "workers.json")
    return summarize_workers(report)


def tag_model_source(prefix: str, source: Mapping[str, Any] | None) -> None:
    """Tag the active run with the model a job used, e.g. ``textmill.nlp.model_version=3``."""
    if source and mlflow.active_run() is not None:
        mlflow.set_tags({f"{prefix}.model_{k}": str(v) for k, v in source.items()})


_CODE_COPY: list[str] = []


def package_code_path() -> str:
    """The textmill package directory, for MLflow's ``code_paths`` (logged models import it).

    Under ``spark-submit --py-files textmill.zip`` the package is imported from the zip, which
    MLflow cannot copy from; it is then extracted once per driver process to a temp folder.
    """
    package = Path(textmill.__file__).parent
    if package.is_dir():
        return str(package)
    if not _CODE_COPY:
        import atexit
        import shutil
        import tempfile
        import zipfile

        archive = getattr(textmill.__spec__.loader, "archive", None)
        if archive is None:
            raise RuntimeError(f"textmill was imported from {textmill.__file__}, which is neither a folder nor a zip")
        target = tempfile.mkdtemp(prefix="textmill-code-")
        atexit.register(shutil.rmtree, target, True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target, [n for n in zf.namelist() if n.startswith("textmill/")])
        _CODE_COPY.append(str(Path(target) / "textmill"))
    return _CODE_COPY[0]


def resolve_tracking_uri(conf_uri: str | None) -> str:
    """The tracking URI to use. Credentials written into it (``https://user:pw@host``) move to
    MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD, so no log line or run link can show them."""
    uri = conf_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    bare, user, password = split_credentials(uri)
    if user is not None and bare.startswith(("http://", "https://")):
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        return bare
    return uri


def open_store(conf_uri: str | None) -> None:
    """Open the tracking store ``job_run`` will use, so that its first call finds it ready: MLflow keeps
    one store per URI, and a new sqlite store is created and migrated here. Only for sqlite stores;
    a server or Databricks is left to ``job_run``, which bounds its retries first."""
    uri = resolve_tracking_uri(conf_uri)
    if uri.startswith("sqlite:"):
        with _creating(uri):
            MlflowClient(uri).search_experiments(max_results=1)


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """One process at a time creates and migrates a sqlite store: MLflow's migrations are not safe to
    race (two jobs started at once on a new store: 13 of 15 failed, measured, with alembic's
    'table ... already exists' or 'expected to match one row'). An exclusive lock on a file beside
    the database, held while MLflow opens it; a store that exists is opened at once after."""
    import fcntl

    database = uri[len("sqlite:") :].lstrip("/")
    if not database or database == ":memory:" or not uri.startswith("sqlite:///"):
        yield
        return
    database = "/" + database if uri.startswith("sqlite:////") else database
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.textmill-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(name: str, artifact_location: str | None) -> str:
    """Experiment id for ``name``; a new one keeps its artifacts where configured, else under
    ./mlartifacts with a local store, or where the tracking server says."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location
    if location is None and not mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks")):
        location = (Path.cwd() / "mlartifacts").as_uri()
    # With a tracking server, the server decides (proxied artifacts): a path on this machine would
    # be unreadable for everyone else on the team.
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:
        raced = client.get_experiment_by_name(name)  # another job created it meanwhile: use theirs
        if raced is None:
            raise
        logger.debug("experiment %s was created by another run at the same time: %s", name, exc)
        return raced.experiment_id


def end_dead_runs(holders: list[dict], shown_uri: str, by_run: str) -> list[str]:
    """Mark FAILED the MLflow runs of killed jobs whose output locks this run took over (their
    process was gone: kill -9, a lost machine), when they are in this run's store and still
    RUNNING, with the reason as the tag ``textmill.failure``. Returns their ids."""
    client = MlflowClient()
    ended = []
    for holder in holders:
        run_id = holder.get("run_id")
        if not run_id or holder.get("tracking_uri") != shown_uri:
            continue
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            logger.debug("the run %s of a killed job is not in this store: %s", run_id, exc)
            continue
        if run.info.status != "RUNNING":
            continue
        client.set_tag(
            run_id,
            "textmill.failure",
            f"killed: pid {holder.get('pid')} on {holder.get('host')} stopped without ending this run while it "
            f"wrote {holder.get('output')}; run {by_run} took its lock over",
        )
        client.set_terminated(run_id, status="FAILED")
        logger.warning("marked run %s FAILED: its job was killed while writing %s", run_id, holder.get("output"))
        ended.append(run_id)
    return ended


def git_commit() -> str | None:
    """HEAD of the repository textmill was installed from (editable installs), when there is one."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(textmill.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("no git commit tag: %s", exc)
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else ("null" if value is None else str(value))
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


@dataclass
class JobRun:
    """Handle a job body gets: the MLflow run id and a place to put metrics."""

    run_id: str
    job: str
    experiment_id: str = ""
    tracking_uri: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def log_metrics(self, metrics: Mapping[str, float | int], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.metrics.update(clean)
        mlflow.log_metrics(clean, step=step)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


class TrackingUnavailableError(TextmillError):
    """The MLflow tracking server does not answer."""


# What the requests/urllib3 message says when nobody answers, the most telling first.
_UNREACHABLE_WHY = (
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "timed out",
    "Failed to establish a new connection",
    "Max retries exceeded",
)


def _unreachable(exc: BaseException) -> bool:
    return any(why in str(exc) for why in _UNREACHABLE_WHY)


def _end_failed_run(run_id: str, status: str) -> None:
    """End the active run as failed; a store that cannot take the status is a warning here, as the
    failure already on its way out says what went wrong (MLflow's own exit chained a second
    traceback onto it)."""
    try:
        mlflow.end_run(status)
    except mlflow.exceptions.MlflowException as exc:
        logger.warning("MLflow run %s could not be marked %s: %s", run_id, status, store_write_failure(exc) or exc)


# How a store that stopped taking writes fails: sqlite (read-only file or folder, full disk, a
# removed file) and a tracking server that stopped answering.
_STORE_WRITE_WHY = (
    "attempt to write a readonly database",
    "unable to open database file",
    "readonly database",
    "disk I/O error",
    "database or disk is full",
    "no such table",
)


def store_write_failure(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` is the tracking store failing to take a write, else None."""
    text = str(exc)
    why = next((w for w in (*_STORE_WRITE_WHY, *_UNREACHABLE_WHY) if w in text), None)
    if why is None or not isinstance(exc, mlflow.exceptions.MlflowException):
        return None
    return why


def bound_http_retries(uri: str) -> None:
    """MLflow retries an unreachable server 7 times with exponential backoff (minutes) and then
    prints a long trace; textmill asks twice, quickly, unless the user set MLflow's own variables."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@contextmanager
def job_run(job: str, conf: JobConf, spark: Any = None) -> Iterator[JobRun]:
    """Run the block inside an MLflow run for ``job``; see the module docstring."""
    uri = resolve_tracking_uri(conf.mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)
    parent = mlflow.active_run()
    if parent is None:
        bound_http_retries(uri)
        open_store(uri)  # a new sqlite store is created by one job at a time
        try:
            experiment_id = ensure_experiment(
                conf.mlflow.experiment or f"textmill-{job}", conf.mlflow.artifact_location
            )
        except mlflow.exceptions.MlflowException as exc:
            if not _unreachable(exc):
                raise
            reason = next((why for why in _UNREACHABLE_WHY if why in str(exc)), "no answer")
            raise TrackingUnavailableError(
                f"mlflow.tracking_uri {redact_text(uri)}: no MLflow server answers ({reason}, "
                f"after {os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries); start the server, or point "
                "mlflow.tracking_uri at one that runs (or at sqlite:///mlflow.db)"
            ) from exc
    else:
        experiment_id = parent.info.experiment_id
    tags = {"textmill.job": job, "textmill.version": textmill.__version__}
    commit = git_commit()
    if commit:
        tags["textmill.git_commit"] = commit
    if spark is not None:
        tags["spark.version"] = spark.version
        from textmill.runtime.session_kinds import describe

        tags.update({name: redact_text(value) for name, value in describe(spark).items()})
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=conf.mlflow.run_name or job,
        nested=parent is not None,
        tags=tags,
    )
    try:
        shown_uri = redact_text(mlflow.get_tracking_uri())
        logger.info("MLflow run %s (experiment %s) at %s", run.info.run_id, experiment_id, shown_uri)
        # Secrets (spark.conf credentials, passwords in URIs) never reach the store or the artifacts.
        logged = redact_tree(conf.model_dump(mode="json"))
        mlflow.log_params({k: _param_value(v) for k, v in flatten(logged).items()})
        mlflow.log_text(to_yaml(logged), "config/resolved.yaml")
        handle = JobRun(run_id=run.info.run_id, job=job, experiment_id=experiment_id, tracking_uri=shown_uri)
        started = time.perf_counter()
        yield handle
        wall = time.perf_counter() - started
        final = {"wall_seconds": wall}
        rows_in = handle.metrics.get("rows_in")
        if rows_in is not None and wall > 0 and conf.rate_metric:
            final["docs_per_second"] = rows_in / wall
        handle.log_metrics(final)
    except BaseException as exc:
        _end_failed_run(run.info.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run()  # a store that stopped taking writes raises here: see store_write_failure
