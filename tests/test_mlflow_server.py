"""A shared MLflow tracking server, as a team runs it: jobs log to it, the registry hands models over.

``mlflow server`` (conftest's ``tracking_server``, one for the test session) runs on 127.0.0.1 with a
sqlite backend and proxied artifacts in a temp dir; the jobs only get
``mlflow.tracking_uri: http://127.0.0.1:<port>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from textmill.data.sample import write_sample_csv
from textmill.jobs import run_job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_jobs_share_one_tracking_server_and_hand_models_over_through_the_registry(
    spark, tracking_server, tmp_path, monkeypatch
):
    workdir = tmp_path / "job-machine"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # where a local store would put mlartifacts/: nothing may land here
    common = {
        "spark": {"ui_enabled": False},
        "mlflow": {"tracking_uri": tracking_server.url, "experiment": "team-news"},
    }
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
    client = MlflowClient(tracking_server.url)
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
    assert any((tracking_server.folder / "server-artifacts").rglob("MLmodel"))
    assert any((tracking_server.folder / "server-artifacts").rglob("resolved.yaml"))
    assert not (workdir / "mlartifacts").exists()
