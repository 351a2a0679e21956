"""Airflow's own virtualenv (``.venv-airflow/``), never textmill's: built when missing or when the pins changed.

Building it is minutes of pip, mostly waiting on downloads and unpacking, so the test session starts
it in a thread as soon as it knows a test needs it (``conftest.pytest_collection_finish``) and the
tests that run Airflow wait for it (``python()``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-airflow"
REQUIREMENTS = REPO / "jobs" / "workflows" / "airflow" / "requirements.txt"
_lock = threading.Lock()
_build: threading.Thread | None = None
_error: list[BaseException] = []


def _ensure() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".textmill-requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
        timeout=900,
        capture_output=True,
        text=True,
    )
    stamp.write_text(wanted)
    return python


def _run() -> None:
    try:
        _ensure()
    except BaseException as exc:  # kept for python(), which raises it in the test that needs the venv
        _error.append(exc)


def start_building() -> None:
    global _build
    with _lock:
        if _build is None:
            _build = threading.Thread(target=_run, name="airflow-venv", daemon=True)
            _build.start()


def python() -> Path:
    """The virtualenv's Python, once built (waits for a build in progress; builds it now if none was started)."""
    with _lock:
        build = _build
    if build is not None:
        build.join()
        if _error:
            error = _error[0]
            if isinstance(error, subprocess.CalledProcessError):
                raise AssertionError(f"building {VENV} failed:\n{(error.stderr or '')[-3000:]}") from error
            raise error
    return _ensure()
