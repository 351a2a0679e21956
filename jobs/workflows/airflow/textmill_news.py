"""Airflow DAG ``textmill_news``: textmill's daily flow as spark-submit tasks.

    watch_inbox -> train_classifier -> classify
                -> train_embeddings -> embed_docs -> build_index -> neighbors -> cluster

``watch_inbox`` takes the files that arrived in the inbox since the last run (prepare +
annotate, each file once); the other tasks rebuild the corpus-level outputs of the day from
everything watched so far, under ``<data>/runs/<ds>/``. ``classify`` scores with the model
the registry alias points at (``models:/textmill-news@champion``), the hand-off from
``train_classifier``.

Settings, all read at run time:
- the Spark connection ``spark_default`` (master, deploy mode; e.g.
  ``AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "spark://master:7077"}'``);
- Airflow variables ``textmill_inbox`` and ``textmill_data`` (default ``<repo>/out/workflows``);
- the worker's environment: ``spark-submit`` on PATH, ``PYSPARK_PYTHON`` naming a Python with
  textmill's dependencies, ``MLFLOW_TRACKING_URI`` (the team's tracking server).

Paths to the code are relative to this file (the repository checkout the DAG sits in); the
``--py-files`` zip is ``dist/textmill-<version>.zip`` from ``make pyfiles``. The DAG holds no
logic: each task is the command a person would type.
"""

from __future__ import annotations

import re
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

REPO = Path(__file__).resolve().parents[3]
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "libs" / "textmill" / "__init__.py").read_text()).group(1)
PY_FILES = str(REPO / "dist" / f"textmill-{VERSION}.zip")
DATA = "{{ var.value.get('textmill_data', '%s') }}" % (REPO / "out" / "workflows")
INBOX = "{{ var.value.textmill_inbox }}"
WATCHED = f"{DATA}/watched"
DAY = f"{DATA}/runs/{{{{ ds }}}}"
MODEL = "textmill-news"

# task id -> (job, conf file, --set overrides); upstream tasks below.
TASKS: dict[str, tuple[str, str, list[str]]] = {
    "watch_inbox": ("watch", "conf/workflows/news_watch.yaml", [f"watch.inbox={INBOX}", f"io.output={WATCHED}"]),
    "train_classifier": (
        "train_classifier",
        "conf/train_classifier.yaml",
        [
            f"io.input={WATCHED}/prepare",
            f"io.output={DAY}/classifier",
            f"classifier.registry.name={MODEL}",
            "mlflow.run_name=train_classifier-{{ ds }}",
        ],
    ),
    "classify": (
        "classify",
        "conf/classify.yaml",
        [f"io.input={WATCHED}/prepare", f"io.output={DAY}/classified", f"classify.model_uri=models:/{MODEL}@champion"],
    ),
    "train_embeddings": (
        "train_embeddings",
        "conf/train_embeddings.yaml",
        [f"io.input={WATCHED}/annotate", f"io.output={DAY}/embeddings", "embeddings.subword.buckets=50000"],
    ),  # a news vocabulary: 50,000 n-gram buckets are plenty
    "embed_docs": (
        "embed_docs",
        "conf/embed_docs.yaml",
        [f"io.input={WATCHED}/annotate", f"io.output={DAY}/doc_vectors", f"embed.embeddings={DAY}/embeddings"],
    ),
    "build_index": (
        "build_index",
        "conf/build_index.yaml",
        [f"io.input={DAY}/doc_vectors", f"io.output={DAY}/index", "index.id_column=doc_id"],
    ),
    "neighbors": (
        "neighbors",
        "conf/neighbors.yaml",
        [
            f"io.input={DAY}/doc_vectors",
            f"io.output={DAY}/neighbors",
            f"neighbors.index={DAY}/index",
            "neighbors.id_column=doc_id",
        ],
    ),
    "cluster": ("cluster", "conf/cluster.yaml", [f"io.input={DAY}/neighbors", f"io.output={DAY}/clusters"]),
}
UPSTREAM = {
    "train_classifier": "watch_inbox",
    "classify": "train_classifier",
    "train_embeddings": "watch_inbox",
    "embed_docs": "train_embeddings",
    "build_index": "embed_docs",
    "neighbors": "build_index",
    "cluster": "neighbors",
}


def arguments(conf: str, overrides: list[str]) -> list[str]:
    args = ["--conf", str(REPO / conf), "--env", str(REPO / "conf" / "env" / "cluster.yaml")]
    for item in overrides:
        args += ["--set", item]
    return args


with DAG(
    dag_id="textmill_news",
    description="new news files -> prepare + annotate (watch) -> classifier, embeddings, index, neighbours, clusters",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=5)},
    tags=["textmill"],
) as dag:
    tasks = {
        task_id: SparkSubmitOperator(
            task_id=task_id,
            conn_id="spark_default",
            application=str(REPO / "jobs" / f"{job}.py"),
            py_files=PY_FILES,
            name=f"textmill-{job}-{{{{ ds_nodash }}}}",
            application_args=arguments(conf, overrides),
        )
        for task_id, (job, conf, overrides) in TASKS.items()
    }
    for task_id, upstream in UPSTREAM.items():
        tasks[upstream] >> tasks[task_id]
