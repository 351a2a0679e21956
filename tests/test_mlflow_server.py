"""A shared MLflow tracking server, as a team runs it: jobs log to it, the registry hands models over.

``mlflow server`` runs on 127.0.0.1 with a sqlite backend and proxied artifacts in a temp dir;
the jobs only get ``mlflow.tracking_uri: http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_until_serving
from mlflow.tracking import MlflowClient

from textmill.data.sample import write_sample_csv
from textmill.jobs import run_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=(tmp_path / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health", server, tmp_path / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.slow
def test_jobs_share_one_tracking_server_and_hand_models_over_through_the_registry(
    spark, tracking_server, tmp_path, monkeypatch
):
    workdir = tmp_path / "job-machine"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # where a local store would put mlartifacts/: nothing may land here
    common = {"spark": {"ui_enabled": False}, "mlflow": {"tracking_uri": tracking_server, "experiment": "team-news"}}
    sample = write_sample_csv(tmp_path / "news.csv", n_docs=240)
    prepare = {
        "io": {"input": str(sample), "output": str(tmp_path / "prepared")},
        "prepare": {"columns": {"doc_id": "id", "text": "body", "title": "title", "label": "topic"}},
        **common,
    }
    assert run_job("prepare", prepare, spark)["rows_out"] == 240
    trained = run_job(
        "train_classifier",
        {
            "io": {"input": str(tmp_path / "prepared"), "output": str(tmp_path / "model")},
            "classifier": {"registry": {"name": "team-news"}, "training": {"epochs": 3}},
            **common,
        },
        spark,
    )
    assert trained["promoted"] == 1

    # A reviewer accepts the champion and moves the production alias; scoring follows the alias.
    client = MlflowClient(tracking_server)
    champion = client.get_model_version_by_alias("team-news", "champion")
    client.set_registered_model_alias("team-news", "production", champion.version)
    scored = run_job(
        "classify",
        {
            "io": {"input": str(tmp_path / "prepared"), "output": str(tmp_path / "classified")},
            "classify": {"model_uri": "models:/team-news@production", "evaluate": True},
            **common,
        },
        spark,
    )
    assert scored["rows_out"] == 240 and scored["eval_accuracy"] > 0.8

    runs = client.search_runs([client.get_experiment_by_name("team-news").experiment_id])
    assert sorted(r.data.tags["textmill.job"] for r in runs) == ["classify", "prepare", "train_classifier"]
    assert client.get_experiment_by_name("team-news").artifact_location.startswith("mlflow-artifacts:")
    # Artifacts went through the server to its own store, none to the job machine.
    assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
    assert any((tmp_path / "server-artifacts").rglob("resolved.yaml"))
    assert not (workdir / "mlartifacts").exists()
