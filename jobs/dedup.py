"""The `dedup` job: exact and near-duplicate documents (MinHash LSH), marked and removed.

spark-submit --py-files dist/textmill-<version>.zip jobs/dedup.py \\
    --conf conf/dedup.yaml --env cluster --set io.input=... --set io.output=...
textmill run dedup --conf conf/dedup.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("dedup", argv)


if __name__ == "__main__":
    sys.exit(main())
