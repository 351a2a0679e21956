"""Workflow definitions: the Airflow DAG run for real on a standalone cluster, the Databricks bundle
validated offline.

Airflow gets its own virtualenv (``.venv-airflow/``, built once from
``jobs/workflows/airflow/requirements.txt`` and reused while that file is unchanged), so its
pins never touch textmill's. The DAG runs with ``dag.test()`` with its ``spark_default``
connection on a real Spark standalone master with one 2-core worker (``standalone_cluster``):
every task is a real ``spark-submit`` of ``jobs/<job>.py`` with the ``--py-files`` zip, to a
cluster, so this one run proves both runners (it replaced tests/test_cluster.py, see tests/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import airflow_venv
import pytest
from conftest import TEST_SPARK_DEFAULTS
from mlflow.tracking import MlflowClient
from standalone_cluster import StandaloneCluster

REPO = Path(__file__).resolve().parents[1]
TEXTMILL_BIN = Path(sys.executable).parent


RUN_DAG = textwrap.dedent("""
    import json, sys
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[1])
    print(json.dumps({"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids)}))
    dag = bag.get_dag("textmill_news")
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    for task in dag.tasks:
        task.retries = 0  # a failure should fail the test now, not be retried in five minutes
    run = dag.test(logical_date=pendulum.datetime(2026, 11, 21, tz="UTC"))
    tis = run.get_task_instances()
    states = {ti.task_id: str(ti.state) for ti in tis}
    seconds = {ti.task_id: round((ti.end_date - ti.start_date).total_seconds(), 1) for ti in tis if ti.end_date}
    print(json.dumps({"state": str(run.state), "tasks": states, "upstream": upstream, "seconds": seconds,
                      "schedule": str(dag.schedule), "catchup": dag.catchup}))
""")

# The jobs that ship a model or an index to the executors, by the DAG task that runs them.
SHIPPING_TASKS = {"watch_inbox": "watch", "classify": "classify", "embed_docs": "embed_docs", "neighbors": "neighbors"}


@pytest.fixture
def cluster(tmp_path):
    # One worker of 2 cores: each application then starts one executor JVM, not two, on the 2-core machine.
    cluster = StandaloneCluster(tmp_path / "cluster", workers=1, cores=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.airflow
def test_the_airflow_dag_runs_every_task_as_spark_submit_on_a_standalone_cluster(spark, cluster, tmp_path):
    from textmill.cli import build_pyfiles
    from textmill.data.sample import write_sample_csv

    python = airflow_venv.python()
    build_pyfiles(REPO / "dist")
    inbox, data, home = tmp_path / "inbox", tmp_path / "data", tmp_path / "airflow"
    inbox.mkdir()
    home.mkdir()
    # Cluster-wide Spark defaults, as an operator sets them in $SPARK_CONF_DIR/spark-defaults.conf:
    # each application takes the worker's 2 cores in one executor; the tests' JVM options (conftest).
    (tmp_path / "spark-conf").mkdir()
    (tmp_path / "spark-conf" / "spark-defaults.conf").write_text(
        "spark.sql.shuffle.partitions 4\nspark.ui.enabled false\nspark.cores.max 2\nspark.executor.cores 2\n"
        f"spark.executor.memory 1g\nspark.driver.host 127.0.0.1\nspark.pyspark.python {sys.executable}\n"
        + TEST_SPARK_DEFAULTS
    )
    os.rename(write_sample_csv(tmp_path / "incoming" / "news.csv", n_docs=240, seed=3), inbox / "news.csv")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "jobs" / "workflows" / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": cluster.url}),
        "AIRFLOW_VAR_TEXTMILL_INBOX": str(inbox),
        "AIRFLOW_VAR_TEXTMILL_DATA": str(data),
        # What an Airflow worker that runs textmill has: spark-submit on PATH and textmill's Python for Spark.
        "PATH": f"{TEXTMILL_BIN}{os.pathsep}{os.environ['PATH']}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": str(tmp_path / "spark-conf"),
        "MLFLOW_TRACKING_URI": tracking,
    }
    env.pop("PYTHONPATH", None)
    migrate = subprocess.run(
        [str(airflow_venv.VENV / "bin" / "airflow"), "db", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    proc = subprocess.run(
        [str(python), "-c", RUN_DAG, env["AIRFLOW__CORE__DAGS_FOLDER"]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(lines) == 2, (proc.stdout[-3000:], proc.stderr[-5000:])
    loaded, result = lines
    print("task seconds:", result["seconds"])
    assert loaded == {"import_errors": {}, "dags": ["textmill_news"]}
    logs = {log.parent.name: log.read_text()[-4000:] for log in home.glob("logs/**/attempt=*.log")}
    assert result["state"] == "success", (
        result["tasks"],
        {k: v for k, v in logs.items() if "failed" in v.lower()} or logs,
    )
    assert set(result["tasks"].values()) == {"success"} and len(result["tasks"]) == 8
    assert result["upstream"]["classify"] == ["train_classifier"] and result["upstream"]["cluster"] == ["neighbors"]
    assert result["catchup"] is False

    # Every task's output, checked.
    watched, day = data / "watched", data / "runs" / "2026-11-21"
    prepared = spark.read.parquet(str(watched / "prepare"))
    assert prepared.count() == 240 and spark.read.parquet(str(watched / "quarantine")).count() == 3
    assert spark.read.parquet(str(watched / "annotate")).count() == 240
    classified = spark.read.parquet(str(day / "classified")).join(
        prepared.select("doc_id", prepared.label.alias("truth")), "doc_id"
    )
    assert classified.count() == 240 and classified.where("label = truth").count() / 240 > 0.8
    assert (day / "embeddings" / "export" / "embeddings.json").is_file()
    assert spark.read.parquet(str(day / "doc_vectors")).where("vector is not null").count() == 240
    assert json.loads((day / "index" / "manifest.json").read_text())["n_items"] == 240
    neighbors = spark.read.parquet(str(day / "neighbors"))
    assert neighbors.count() == 240 and neighbors.where("error is null").count() == 240
    assert spark.read.parquet(str(day / "clusters")).count() == 240

    # Every task ran on the standalone master, and each Python worker on its executors loaded each model
    # or index once (the executors' worker reports, logged as workers.json).
    client = MlflowClient(tracking)
    runs = {
        r.data.tags["textmill.job"]: r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
    }
    assert set(runs) == {
        "watch",
        "train_classifier",
        "classify",
        "train_embeddings",
        "embed_docs",
        "build_index",
        "neighbors",
        "cluster",
    }
    assert {job: run.data.tags["spark.master"] for job, run in runs.items()} == {job: cluster.url for job in runs}
    for job in SHIPPING_TASKS.values():
        workers = json.loads(Path(client.download_artifacts(runs[job].info.run_id, "workers.json")).read_text())[
            "workers"
        ]
        assert len(workers) >= 2, (job, workers)  # both task slots took part, each in its own Python worker
        assert all(stats["loads"] == 1 for stats in workers.values()), (job, workers)
        assert runs[job].data.metrics["max_model_loads_per_worker"] == 1
    # The spaCy workers imported textmill from the --py-files zip, not from the checkout.
    watch_workers = json.loads(Path(client.download_artifacts(runs["watch"].info.run_id, "workers.json")).read_text())
    assert all(".zip" in stats["textmill_from"] for stats in watch_workers["workers"].values()), watch_workers


# ---------------------------------------------------------------------------- Databricks


BUNDLE = REPO / "jobs" / "workflows" / "databricks" / "databricks.yml"


def _bundle() -> dict:
    import yaml

    return yaml.safe_load(BUNDLE.read_text())


def _substitute(text: str, variables: dict[str, str]) -> str:
    """The bundle's own substitutions as a deploy would make them, with sample runtime values."""
    text = text.replace("${workspace.file_path}", str(REPO)).replace("{{job.parameters.day}}", "2026-11-21")
    for name, value in variables.items():
        text = text.replace(f"${{var.{name}}}", value)
    assert "${" not in text and "{{" not in text, text
    return text


def test_the_databricks_bundle_validates_and_every_task_is_a_valid_textmill_command(tmp_path):
    from databricks.bundles.jobs import Job

    from textmill.jobs import get_job
    from textmill.runtime.config import load_conf

    bundle = _bundle()
    variables = {name: spec["default"] for name, spec in bundle["variables"].items()}
    jobs = bundle["resources"]["jobs"]
    assert set(jobs) == {"textmill_news_daily", "textmill_news_daily_serverless", "textmill_news_on_arrival"}
    checked = []
    for key, spec in jobs.items():
        job = Job.from_dict(spec)  # rejects unknown fields and wrong shapes
        assert job.as_dict()["name"] == spec["name"]
        for task in spec["tasks"]:
            python_file = (BUNDLE.parent / task["spark_python_task"]["python_file"]).resolve()
            assert python_file.is_file() and python_file.parent == REPO / "jobs", python_file
            name = "tokenize" if python_file.stem == "tokenize_text" else python_file.stem
            args = [_substitute(a, variables) for a in task["spark_python_task"]["parameters"]]
            conf_file = args[args.index("--conf") + 1]
            env_file = args[args.index("--env") + 1]
            overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            assert Path(conf_file).is_file() and Path(env_file).is_file()
            load_conf(get_job(name).conf_model, conf_file, env=env_file, overrides=overrides)  # raises ConfigError
            for library in task.get("libraries", []):
                if "whl" in library:
                    assert (BUNDLE.parent / library["whl"]).parent.resolve() == REPO / "dist"
            checked.append((key, task["task_key"], name))
    daily = jobs["textmill_news_daily"]
    assert daily["schedule"]["quartz_cron_expression"].split()[0] == "0"  # quartz: seconds first
    keys = [t["task_key"] for t in daily["tasks"]]
    for task in daily["tasks"]:
        assert all(dep["task_key"] in keys[: keys.index(task["task_key"])] for dep in task.get("depends_on", []))
    arrival = jobs["textmill_news_on_arrival"]
    assert arrival["trigger"]["file_arrival"]["url"] == "${var.inbox}"
    assert [name for key, _, name in checked if key == "textmill_news_on_arrival"] == ["watch"]
    # The serverless variant: the same tasks, no cluster, every task in a declared environment holding the wheel.
    serverless = jobs["textmill_news_daily_serverless"]
    assert "job_clusters" not in serverless and all(
        "job_cluster_key" not in t and "libraries" not in t for t in serverless["tasks"]
    )
    environments = {e["environment_key"]: e["spec"] for e in serverless["environments"]}
    assert {t["environment_key"] for t in serverless["tasks"]} == set(environments)
    for spec in environments.values():
        wheels = [d for d in spec["dependencies"] if d.endswith(".whl")]
        assert len(wheels) == 1 and (BUNDLE.parent / wheels[0]).parent.resolve() == REPO / "dist"
    assert [t["task_key"] for t in serverless["tasks"]] == keys
    assert [name for key, _, name in checked if key == "textmill_news_daily_serverless"] == [
        name for key, _, name in checked if key == "textmill_news_daily"
    ]
    watch_task = next(t for t in serverless["tasks"] if t["task_key"] == "watch_inbox")
    watch_args = [_substitute(a, variables) for a in watch_task["spark_python_task"]["parameters"]]
    watch_conf = load_conf(
        get_job("watch").conf_model,
        watch_args[watch_args.index("--conf") + 1],
        overrides=[watch_args[i + 1] for i, a in enumerate(watch_args) if a == "--set"],
    )
    assert watch_conf.watch.trigger == "available_now"  # the one trigger serverless allows
    assert len(checked) == 17


def test_a_wrong_field_or_a_wrong_textmill_key_in_the_bundle_is_caught():
    from databricks.bundles.jobs import Job

    from textmill.pipelines.classify import ClassifyJobConf
    from textmill.runtime.config import load_conf
    from textmill.runtime.errors import ConfigError

    spec = _bundle()["resources"]["jobs"]["textmill_news_daily"]
    broken = json.loads(json.dumps(spec))
    broken["tasks"][0]["spark_python_task"]["python_fil"] = broken["tasks"][0]["spark_python_task"].pop("python_file")
    with pytest.raises(ValueError, match="python_fil"):
        Job.from_dict(broken)
    with pytest.raises(ConfigError, match="classify.model_urii"):
        load_conf(
            ClassifyJobConf,
            REPO / "conf" / "classify.yaml",
            overrides=["io.input=a", "io.output=b", "classify.model_urii=x"],
        )
