"""The `cluster` job: Chinese Whispers over the kNN graph, without choosing k.

spark-submit --py-files dist/textmill-<version>.zip jobs/cluster.py \\
    --conf conf/cluster.yaml --env cluster --set io.input=... --set io.output=...
textmill run cluster --conf conf/cluster.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("cluster", argv)


if __name__ == "__main__":
    sys.exit(main())
