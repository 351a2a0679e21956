"""The ``textmill`` command line.

- ``textmill run <job> --conf conf/<job>.yaml [--env local] [--set a.b=c ...]``
- ``textmill jobs``: list the jobs;
- ``textmill package [--dist dist]``: zip ``libs/textmill`` for ``spark-submit --py-files``.

``jobs/<job>.py`` call ``job_main`` too, so ``spark-submit jobs/prepare.py ...`` and
``textmill run prepare ...`` run the same code. User errors (``TextmillError``) print one
line and exit 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import textmill
from textmill.errors import TextmillError

logger = logging.getLogger("textmill")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", help="job YAML file (e.g. conf/prepare.yaml); default: built-in defaults only")
    parser.add_argument("--env", help="overlay conf/env/<ENV>.yaml (or a YAML path), e.g. local or cluster")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set io.output=out/x (repeatable; values are YAML)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run(job_name: str, args: argparse.Namespace) -> int:
    from textmill.config import load_conf
    from textmill.jobs import get_job, run_job

    job = get_job(job_name)
    conf = load_conf(job.conf_model, args.conf, env=args.env, overrides=args.overrides)
    metrics = run_job(job_name, conf)
    summary = ", ".join(f"{k}={v:g}" for k, v in metrics.items() if "." not in k)
    print(f"textmill {job_name}: {summary}")
    return 0


def _guarded(func, *args) -> int:
    try:
        return func(*args)
    except TextmillError as exc:
        print(f"textmill: error: {exc}", file=sys.stderr)
        return 2


def job_main(job_name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point for ``jobs/<job>.py``: the same arguments as ``textmill run <job>``."""
    parser = argparse.ArgumentParser(prog=f"jobs/{job_name}.py", description=f"textmill job '{job_name}'")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    return _guarded(_run, job_name, args)


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
    _configure_logging(args.log_level)
    return _guarded(_run, args.job, args)


if __name__ == "__main__":
    sys.exit(main())
