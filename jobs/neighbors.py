"""The `neighbors` job: batch kNN over a sharded Annoy index (all items, or a query file).

spark-submit --py-files dist/textmill-<version>.zip jobs/neighbors.py \\
    --conf conf/neighbors.yaml --env cluster --set io.input=... --set io.output=...
textmill run neighbors --conf conf/neighbors.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("neighbors", argv)


if __name__ == "__main__":
    sys.exit(main())
