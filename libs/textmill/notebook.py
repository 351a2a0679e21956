"""Helpers for Databricks-style notebooks: widget parameters with a local fallback, and a local
model server for the REST part of the classifier notebook.

``widget(globals(), "input", default)`` reads a Databricks widget when the notebook runs on
Databricks (where ``dbutils`` is a notebook global) and returns ``default`` elsewhere;
``display`` stands in for Databricks' own when a notebook runs as a plain Python file.
``serving(model_uri)`` starts ``mlflow models serve`` on 127.0.0.1 for the block and yields
its URL: what a Databricks Model Serving endpoint gives you, on your own machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def display(value: Any) -> None:
    """Databricks' ``display`` for plain Python: a DataFrame is shown, a figure is noted, the rest printed."""
    if hasattr(value, "show"):
        value.show(20, truncate=80)
    elif hasattr(value, "savefig"):
        print(f"<figure: {len(value.axes)} plot(s)>")
    else:
        print(value)


def widget(notebook_globals: Mapping[str, Any], name: str, default: str) -> str:
    dbutils = notebook_globals.get("dbutils")
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default)
    return dbutils.widgets.get(name)


@contextlib.contextmanager
def serving(model_uri: str, timeout: float = 180) -> Iterator[str]:
    """``mlflow models serve -m model_uri`` on a free 127.0.0.1 port, in this Python's environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    # mlflow starts uvicorn by name: this environment's bin must be on PATH.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tempfile.NamedTemporaryFile(prefix="textmill-serve-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"mlflow models serve did not start: {Path(log.name).read_text()[-2000:]}"
                    ) from None
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        os.unlink(log.name)
