"""The `train_classifier` job: labelled prepare output -> a torch classifier logged (and registered) in MLflow.

spark-submit --py-files dist/textmill-<version>.zip jobs/train_classifier.py \\
    --conf conf/train_classifier.yaml --env cluster --set io.input=... --set io.output=...
textmill run train_classifier --conf conf/train_classifier.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("train_classifier", argv)


if __name__ == "__main__":
    sys.exit(main())
