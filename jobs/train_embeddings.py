"""The `train_embeddings` job: tokens or text -> word vectors (sgns or ppmi_svd) with subword vectors, all
exports logged to MLflow.

spark-submit --py-files dist/textmill-<version>.zip jobs/train_embeddings.py \\
    --conf conf/train_embeddings.yaml --env cluster --set io.input=... --set io.output=...
textmill run train_embeddings --conf conf/train_embeddings.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("train_embeddings", argv)


if __name__ == "__main__":
    sys.exit(main())
