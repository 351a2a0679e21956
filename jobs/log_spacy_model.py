"""A spaCy pipeline (package, saved directory, blank:<lang>) -> MLflow model (spaCy flavor + textmill pyfunc),
optionally registered.

textmill run log_spacy_model --conf conf/log_spacy_model.yaml --set spacy_model.registry.name=ner-en
spark-submit jobs/log_spacy_model.py --conf conf/log_spacy_model.yaml   # the same code; starts no Spark work
"""

from __future__ import annotations

import sys

from textmill.cli import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("log_spacy_model", argv)


if __name__ == "__main__":
    sys.exit(main())
