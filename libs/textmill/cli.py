"""The ``textmill`` command line.

- ``textmill run <job> --conf conf/<job>.yaml [--env local] [--set a.b=c ...] [--quiet|--verbose] [--json]``
- ``textmill jobs``: list the jobs;
- ``textmill package [--dist dist]``: zip ``libs/textmill`` for ``spark-submit --py-files``.

``jobs/<job>.py`` call ``job_main`` too, so ``spark-submit jobs/prepare.py ...`` and
``textmill run prepare ...`` run the same code and print the same console (``textmill.runtime.console``):
a line per step, the end report (the pipeline's step table, then the outputs, the run id and the
exact ``mlflow ui`` command), or with ``--json`` one JSON object on stdout. User errors
(``TextmillError``) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import textmill
from textmill.runtime import console
from textmill.runtime.errors import ConfigError, TextmillError
from textmill.runtime.redact import redact_text

if TYPE_CHECKING:
    from textmill.jobs import JobReport


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", help="job YAML file (e.g. conf/prepare.yaml); default: built-in defaults only")
    parser.add_argument("--env", help="overlay conf/env/<ENV>.yaml (or a YAML path), e.g. local or cluster")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set io.output=out/x (repeatable; a path or name is taken as typed, "
        "other values are YAML)",
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors (and --json)")
    loudness.add_argument("-v", "--verbose", action="store_true", help="also print textmill's INFO log records")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report (metrics, run id, outputs; the pipeline's steps and summary) as one JSON "
        "object on stdout; the human-readable lines then go to stderr",
    )
    parser.add_argument(
        "--log-level",
        choices=console.LOG_LEVELS,
        type=str.upper,
        help="log level (default WARNING, INFO with --verbose; env TEXTMILL_LOG_LEVEL)",
    )


def _configure_console(args: argparse.Namespace) -> None:
    verbosity = "quiet" if args.quiet else "verbose" if args.verbose else "normal"
    try:
        console.configure(verbosity, args.log_level, json_on_stdout=args.json)
    except console.ConsoleError as exc:
        raise ConfigError([str(exc)]) from exc


def mlflow_ui_hint(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person opens the run: the exact ``mlflow ui`` command for a local store, else the URL."""
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri.rstrip('/')}/{link}"
    if tracking_uri.startswith("databricks"):
        return f"open the run {run_id} in the Databricks workspace (experiment {experiment_id})"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    command = "mlflow"
    if mlflow_bin.exists() and not os.environ.get("VIRTUAL_ENV"):
        try:
            command = str(mlflow_bin.relative_to(Path.cwd()))
        except ValueError:
            command = str(mlflow_bin)
    store = tracking_uri if urlparse(tracking_uri).scheme else Path(tracking_uri).resolve().as_uri()
    return f"{command} ui --backend-store-uri {store}   then open http://127.0.0.1:5000/{link}"


def print_report(report: JobReport) -> None:
    """The end of a run as a person reads it (see the module docstring)."""
    steps = report.details.get("steps")
    if steps:
        console.report("")
        console.report(console.steps_table(steps))
    else:
        console.step_done(f"textmill {report.job}", report.seconds, report.metrics, report.headline)
    console.report("")
    output = report.outputs.get("io.output")
    if output:
        children = (
            sorted(p.name for p in Path(output).iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
            if Path(output).is_dir()
            else []
        )
        console.report(f"  outputs     {output}" + (f"  ({', '.join(children)})" if steps and children else ""))
    console.report(f"  MLflow run  {report.run_id}  (experiment {report.experiment_id}, store {report.tracking_uri})")
    console.report(f"  look at it  {mlflow_ui_hint(report.tracking_uri, report.experiment_id, report.run_id)}")
    if steps:
        console.report("  details     the run's summary.json and steps.json, or --json")
        console.report(f"textmill {report.job}: done in {report.seconds:.1f} s")


def _run(job_name: str, args: argparse.Namespace) -> int:
    from textmill.jobs import get_job, run_job_report
    from textmill.runtime.config import load_conf

    _configure_console(args)
    job = get_job(job_name)
    conf = load_conf(job.conf_model, args.conf, env=args.env, overrides=args.overrides)
    console.step_started(f"textmill {job_name}")
    report = run_job_report(job_name, conf)
    print_report(report)
    if args.json:
        print(
            json.dumps(
                {
                    "job": report.job,
                    "run_id": report.run_id,
                    "experiment_id": report.experiment_id,
                    "tracking_uri": report.tracking_uri,
                    "seconds": round(report.seconds, 3),
                    "outputs": report.outputs,
                    "metrics": report.metrics,
                    **report.details,
                },
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
    return 0


def _guarded(job_name: str, args: argparse.Namespace) -> int:
    """Run the job; a user error is one line on stderr and exit 2. With ``--json`` every outcome,
    a failure too, is one JSON object on stdout: ``{"job": ..., "error": {"type": ..., "message": ...}}``."""
    try:
        return _run(job_name, args)
    except BaseException as exc:
        if getattr(args, "json", False) and isinstance(exc, Exception):
            print(
                json.dumps(
                    {"job": job_name, "error": {"type": type(exc).__name__, "message": redact_text(str(exc))}},
                    ensure_ascii=False,
                )
            )
        if isinstance(exc, TextmillError):
            print(f"textmill: error: {redact_text(str(exc))}", file=sys.stderr)
            return exc.exit_code
        raise


def job_main(job_name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point for ``jobs/<job>.py``: the same arguments as ``textmill run <job>``."""
    parser = argparse.ArgumentParser(prog=f"jobs/{job_name}.py", description=f"textmill job '{job_name}'")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    return _guarded(job_name, args)


def build_pyfiles(dist: str | Path = "dist") -> Path:
    """Zip the textmill package for ``--py-files``; returns the zip's path."""
    package_dir = Path(textmill.__file__).resolve().parent
    dist = Path(dist)
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"textmill-{textmill.__version__}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                zf.write(path, Path("textmill") / path.relative_to(package_dir))
    tmp.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textmill", description=textmill.__doc__)
    parser.add_argument("--version", action="version", version=f"textmill {textmill.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job")
    run.add_argument("job", help="job name (see 'textmill jobs')")
    add_job_arguments(run)
    sub.add_parser("jobs", help="list the jobs")
    package = sub.add_parser("package", help="zip libs/textmill for spark-submit --py-files")
    package.add_argument("--dist", default="dist", help="output directory (default dist/)")
    args = parser.parse_args(argv)

    if args.command == "jobs":
        from textmill.jobs import JOBS

        for job in JOBS.values():
            print(f"{job.name:12s} {job.summary}")
        return 0
    if args.command == "package":
        print(build_pyfiles(args.dist))
        return 0
    return _guarded(args.job, args)


if __name__ == "__main__":
    sys.exit(main())
