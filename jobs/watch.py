"""New files in an inbox -> prepare (+ annotate/ner/tokenize, classify, embed_docs), each file exactly once.

spark-submit --py-files dist/textmill-<version>.zip jobs/watch.py \\
    --conf conf/watch.yaml --env cluster --set watch.inbox=... --set io.output=...
textmill run watch --conf conf/watch.yaml --env local   # the same code, Spark started on local[*]

With watch.trigger: available_now (the default) it processes every file not seen yet and
exits: what a scheduler or a file-arrival trigger calls. With {every: 30s} it keeps running
until SIGTERM/SIGINT, which stop it after the batch in progress.
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("watch", argv)


if __name__ == "__main__":
    sys.exit(main())
