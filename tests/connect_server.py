"""Start and stop a real Spark Connect server from the installed pyspark package (tests, benchmarks).

``sbin/start-connect-server.sh`` daemonises a server JVM (``local[N]``, bound to 127.0.0.1 on
the given port); its Python workers run this interpreter, so they import textmill from the
same environment a user's server would need it installed in.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyspark

HOME = Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    run_dir: Path, cores: int = 2, driver_memory: str = "2g", timeout: float = 180
) -> tuple[str, Callable[[], None]]:
    """Start a server; return its ``sc://`` URL and a function that stops it (fails with the log if it does not start)."""
    port = free_port()
    logs = run_dir / "logs"
    env = {
        **os.environ,
        "SPARK_HOME": str(HOME),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(logs),
        "SPARK_PID_DIR": str(run_dir / "pids"),
        "SPARK_IDENT_STRING": f"textmill-{port}",
    }
    for variable in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
        env.pop(variable, None)

    def stop() -> None:
        subprocess.run(
            ["bash", str(HOME / "sbin" / "stop-connect-server.sh")], env=env, capture_output=True, timeout=120
        )

    subprocess.run(
        [
            "bash",
            str(HOME / "sbin" / "start-connect-server.sh"),
            "--master",
            f"local[{cores}]",
            "--driver-memory",
            driver_memory,
            "--conf",
            "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf",
            f"spark.connect.grpc.binding.port={port}",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            f"spark.sql.shuffle.partitions={cores}",
            "--conf",
            "spark.driver.host=127.0.0.1",
            "--conf",
            "spark.driver.bindAddress=127.0.0.1",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    deadline = time.time() + timeout
    while "Spark Connect server started at" not in "".join(p.read_text(errors="replace") for p in logs.glob("*.out")):
        if time.time() > deadline:
            log = "".join(p.read_text(errors="replace")[-3000:] for p in logs.glob("*.out"))
            stop()
            raise RuntimeError(f"the Spark Connect server did not start:\n{log}")
        time.sleep(1)
    return f"sc://127.0.0.1:{port}", stop
