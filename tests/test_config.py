"""Config merge order, override parsing, validation messages, and the shipped conf files."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from textmill.config import flatten, load_conf, parse_override, validate_conf
from textmill.errors import ConfigError
from textmill.jobs import JOBS
from textmill.pipelines.prepare import PrepareJobConf

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_layers_merge_job_file_then_env_then_set(tmp_path):
    job = write(tmp_path / "conf" / "prepare.yaml", {
        "io": {"input": "in.csv", "output": "from-job"},
        "prepare": {"max_chars": 10, "csv": {"header": True, "delimiter": ";"}},
    })
    write(tmp_path / "conf" / "env" / "test.yaml", {"io": {"output": "from-env"}, "prepare": {"max_chars": 20}})
    conf = load_conf(PrepareJobConf, job, env="test", overrides=["prepare.max_chars=30"])
    assert conf.io.input == "in.csv"            # job file only
    assert conf.io.output == "from-env"         # env beats job file
    assert conf.prepare.max_chars == 30         # --set beats env
    assert conf.prepare.csv.delimiter == ";"    # deep merge keeps siblings
    assert conf.prepare.csv.header is True


def test_override_values_are_yaml_and_dict_keys_may_hold_dots():
    assert parse_override("prepare.max_chars=12", PrepareJobConf) == {"prepare": {"max_chars": 12}}
    assert parse_override("io.quarantine=null", PrepareJobConf) == {"io": {"quarantine": None}}
    assert parse_override("prepare.columns.extra=[a, b]", PrepareJobConf) == {"prepare": {"columns": {"extra": ["a", "b"]}}}
    assert parse_override('prepare.csv.quote="', PrepareJobConf) == {"prepare": {"csv": {"quote": '"'}}}
    assert parse_override("spark.conf.spark.sql.shuffle.partitions=8", PrepareJobConf) == {
        "spark": {"conf": {"spark.sql.shuffle.partitions": 8}}
    }


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_conf(PrepareJobConf, overrides=["io.output"])


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"cleaning": {"ag_newz": True}}})
    message = str(err.value)
    assert "unknown key 'prepare.cleaning.ag_newz'" in message
    assert "allowed keys at prepare.cleaning: ag_news, fold_whitespace" in message


def test_missing_required_value_says_how_to_set_it():
    with pytest.raises(ConfigError) as err:
        validate_conf(PrepareJobConf, {"io": {"input": "a"}})
    assert "'io.output' is required but was not set" in str(err.value)
    assert "--set io.output=" in str(err.value)


def test_wrong_type_says_what_was_given_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"max_chars": "lots", "format": "xls"}})
    message = str(err.value)
    assert "2 problems" in message
    assert "'prepare.max_chars': given 'lots' (str)" in message and "valid integer" in message
    assert "'prepare.format': given 'xls' (str)" in message and "'csv', 'jsonl', 'parquet', 'text_lines' or 'text_files'" in message


def test_bad_values_are_rejected_with_their_key():
    with pytest.raises(ConfigError, match=r"'prepare.max_chars': given -1 \(int\)"):
        validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"max_chars": -1}})
    with pytest.raises(ConfigError, match="must differ from 'io.input'"):
        validate_conf(PrepareJobConf, {"io": {"input": "same", "output": "same"}})
    with pytest.raises(ConfigError, match="may not carry \\['text'\\]"):
        validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"columns": {"extra": ["text"]}}})


def test_missing_conf_file_and_env_overlay_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_conf(PrepareJobConf, tmp_path / "nope.yaml")
    job = write(tmp_path / "job.yaml", {})
    with pytest.raises(ConfigError, match="--env staging: no overlay found"):
        load_conf(PrepareJobConf, job, env="staging")


def test_label_map_keys_read_from_yaml_as_ints_become_text():
    conf = validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"csv": {"header": True}, "label_map": {1: "World"}}})
    assert conf.prepare.label_map == {"1": "World"}


@pytest.mark.parametrize("path", sorted((REPO / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_conf_files_validate_and_document_every_key(path):
    data = yaml.safe_load(path.read_text())
    job = path.stem if path.stem in JOBS else path.stem.split("_")[0]
    model = JOBS[job].conf_model
    required_extra = {"classify": ["classify.model_uri=models:/news@champion"], "embed_docs": ["embed.embeddings=out/e"],
                      "neighbors": ["neighbors.index=out/i"]}.get(job, [])
    conf = load_conf(model, path, env="local", overrides=["io.input=x", "io.output=y", *required_extra])
    if path.stem == job:
        # The job's main file documents every key; sections it shares with other jobs (the
        # pipeline's prepare:, nlp:, ...) are documented in those jobs' files.
        common = {"io", "spark", "mlflow"}
        elsewhere = {f for name in set(JOBS) - {job} for f in JOBS[name].conf_model.model_fields} - common
        documented = set(flatten(data))
        expected = {k for k in flatten(conf.model_dump(mode="json")) if k.split(".")[0] not in elsewhere}
        assert expected - documented == set()


def test_env_overlays_validate():
    for env in ("local", "cluster"):
        conf = load_conf(PrepareJobConf, REPO / "conf" / "prepare.yaml", env=env, overrides=["io.input=x", "io.output=y"])
        assert conf.spark.master == ("local[*]" if env == "local" else None)
