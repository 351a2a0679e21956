"""prepare output -> tokens and entities from one parse of each text.

spark-submit --py-files dist/textmill-<version>.zip jobs/annotate.py \\
    --conf conf/annotate.yaml --env cluster --set io.input=... --set io.output=...
textmill run annotate --conf conf/annotate.yaml --env local   # the same code, Spark started on local[*]
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("annotate", argv)


if __name__ == "__main__":
    sys.exit(main())
