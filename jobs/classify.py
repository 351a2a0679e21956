"""The `classify` job: score prepare output with a trained classifier (models:/name@champion, runs:/..., or a path).

spark-submit --py-files dist/textmill-<version>.zip jobs/classify.py \\
    --conf conf/classify.yaml --env cluster --set io.input=... --set io.output=...
textmill run classify --conf conf/classify.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("classify", argv)


if __name__ == "__main__":
    sys.exit(main())
