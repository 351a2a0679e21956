"""A raw corpus -> clean, partitioned Parquet plus a quarantine of bad records.

spark-submit --py-files dist/textmill-<version>.zip jobs/prepare.py \\
    --conf conf/prepare.yaml --env cluster --set io.output=...
textmill run prepare --conf conf/prepare.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("prepare", argv)


if __name__ == "__main__":
    sys.exit(main())
