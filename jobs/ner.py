"""prepare output -> doc_id, entities (+ entity_counts), error; spaCy loaded once per Python worker.

spark-submit --py-files dist/textmill-<version>.zip jobs/ner.py \\
    --conf conf/ner.yaml --env cluster --set io.input=... --set io.output=...
textmill run ner --conf conf/ner.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("ner", argv)


if __name__ == "__main__":
    sys.exit(main())
