"""The end-to-end demo: generated sample (or io.input) -> prepare -> summary.

spark-submit --py-files dist/textmill-<version>.zip jobs/pipeline.py \\
    --conf conf/pipeline.yaml --env cluster --set io.output=...
textmill run pipeline --conf conf/pipeline.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("pipeline", argv)


if __name__ == "__main__":
    sys.exit(main())
