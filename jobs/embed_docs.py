"""The `embed_docs` job: tokens or text + trained word vectors -> one vector per document.

spark-submit --py-files dist/textmill-<version>.zip jobs/embed_docs.py \\
    --conf conf/embed_docs.yaml --env cluster --set io.input=... --set io.output=...
textmill run embed_docs --conf conf/embed_docs.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("embed_docs", argv)


if __name__ == "__main__":
    sys.exit(main())
