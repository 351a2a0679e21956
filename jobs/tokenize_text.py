"""The `tokenize` job: prepare output -> doc_id, tokens, n_tokens (+ lemmas, pos, sentences), error.

(Not jobs/tokenize.py: spark-submit puts jobs/ first on sys.path, where that name would
shadow the standard library's tokenize module.)

spark-submit --py-files dist/textmill-<version>.zip jobs/tokenize_text.py \\
    --conf conf/tokenize.yaml --env cluster --set io.input=... --set io.output=...
textmill run tokenize --conf conf/tokenize.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("tokenize", argv)


if __name__ == "__main__":
    sys.exit(main())
