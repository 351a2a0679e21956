"""The `build_index` job: id + vector Parquet -> sharded Annoy index, manifest and measured recall.

spark-submit --py-files dist/textmill-<version>.zip jobs/build_index.py \\
    --conf conf/build_index.yaml --env cluster --set io.input=... --set io.output=...
textmill run build_index --conf conf/build_index.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("build_index", argv)


if __name__ == "__main__":
    sys.exit(main())
