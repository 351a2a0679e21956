"""Config merge order, override parsing, validation messages, and the shipped conf files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from textmill.jobs import JOBS
from textmill.pipelines.prepare import PrepareJobConf
from textmill.runtime.config import flatten, load_conf, parse_override, validate_conf
from textmill.runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_layers_merge_job_file_then_env_then_set(tmp_path):
    job = write(
        tmp_path / "conf" / "prepare.yaml",
        {
            "io": {"input": "in.csv", "output": "from-job"},
            "prepare": {"max_chars": 10, "csv": {"header": True, "delimiter": ";"}},
        },
    )
    write(tmp_path / "conf" / "env" / "test.yaml", {"io": {"output": "from-env"}, "prepare": {"max_chars": 20}})
    conf = load_conf(PrepareJobConf, job, env="test", overrides=["prepare.max_chars=30"])
    assert conf.io.input == "in.csv"  # job file only
    assert conf.io.output == "from-env"  # env beats job file
    assert conf.prepare.max_chars == 30  # --set beats env
    assert conf.prepare.csv.delimiter == ";"  # deep merge keeps siblings
    assert conf.prepare.csv.header is True


def test_override_values_are_yaml_and_dict_keys_may_hold_dots():
    assert parse_override("prepare.max_chars=12", PrepareJobConf) == {"prepare": {"max_chars": 12}}
    assert parse_override("io.quarantine=null", PrepareJobConf) == {"io": {"quarantine": None}}
    assert parse_override("prepare.columns.extra=[a, b]", PrepareJobConf) == {
        "prepare": {"columns": {"extra": ["a", "b"]}}
    }
    assert parse_override('prepare.csv.quote="', PrepareJobConf) == {"prepare": {"csv": {"quote": '"'}}}
    assert parse_override("spark.conf.spark.sql.shuffle.partitions=8", PrepareJobConf) == {
        "spark": {"conf": {"spark.sql.shuffle.partitions": 8}}
    }


# What users type in paths and names: spaces, a YAML comment's '#', URL and glob characters, '=',
# quotes and letters beyond ASCII (issue 39).
PATH_CHARACTERS = st.sampled_from(list("ab XY09#%?*[]:=,;&!@$(){}~^`+'\"-_.é中ß"))


@given(name=st.text(PATH_CHARACTERS, min_size=1, max_size=24))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_a_path_or_name_given_with_set_is_taken_whole_whatever_it_holds(name):
    """``--set io.input=data/in put #1 é`` once became ``data/in put``: YAML read ' #1 é' as a comment."""
    path = f"data/{name}x"
    conf = load_conf(
        PrepareJobConf,
        overrides=[
            f"io.input={path}",
            f"io.output=out/{name}y",
            f"mlflow.run_name= {name}z ",
            f"io.quarantine=q{name}",
        ],
    )
    # only white space at the ends is trimmed, as a shell user expects
    assert (conf.io.input, conf.io.output, conf.mlflow.run_name) == (path, f"out/{name}y", f"{name}z".strip())
    assert conf.io.quarantine == f"q{name}".strip()


@given(number=st.integers(1, 10**9), comment=st.text(PATH_CHARACTERS, max_size=12))
@settings(max_examples=100, deadline=None, derandomize=True)
def test_a_value_yaml_would_cut_at_a_comment_is_refused_in_one_line(number, comment):
    for item in (f"prepare.max_chars={number} #{comment}", f"prepare.columns.extra=[a, b] #{comment}"):
        with pytest.raises(ConfigError, match=r"YAML would drop the text from '#' on as a comment") as caught:
            load_conf(PrepareJobConf, overrides=["io.input=a", "io.output=b", item])
        assert len(caught.value.problems) == 1


def test_set_reads_and_writes_the_folders_the_user_named_not_cut_ones(spark, mlflow_uri, tmp_path):
    """The issue's examples: a comment-cut io.input read the wrong folder; a cut io.output replaced another output."""
    from textmill.jobs import run_job

    for folder, ids in (("in put", "12"), ("in put #1 é", "345")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f.csv").write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in ids))
    assert (
        run_job(
            "prepare",
            load_conf(
                PrepareJobConf,
                overrides=[
                    f"io.input={tmp_path / 'in put'}",
                    f"io.output={tmp_path / 'out' / 'reports'}",
                    "prepare.columns.doc_id=id",
                    f"mlflow.tracking_uri={mlflow_uri}",
                    "spark.ui_enabled=false",
                ],
            ),
            spark,
        )["rows_out"]
        == 2
    )
    conf = load_conf(
        PrepareJobConf,
        overrides=[
            f"io.input={tmp_path / 'in put #1 é'}",
            f"io.output={tmp_path / 'out' / 'reports #2'}",
            "prepare.columns.doc_id=id",
            f"mlflow.tracking_uri={mlflow_uri}",
            "spark.ui_enabled=false",
        ],
    )
    assert run_job("prepare", conf, spark)["rows_out"] == 3
    ids = lambda name: sorted(r.doc_id for r in spark.read.parquet(str(tmp_path / "out" / name)).collect())
    assert ids("reports #2") == ["3", "4", "5"] and ids("reports") == ["1", "2"]


def test_text_values_keep_yaml_where_the_user_asks_for_it():
    assert parse_override("io.quarantine=null", PrepareJobConf) == {"io": {"quarantine": None}}
    assert parse_override("io.quarantine=", PrepareJobConf) == {"io": {"quarantine": None}}
    assert parse_override('prepare.csv.delimiter="\\t"', PrepareJobConf) == {"prepare": {"csv": {"delimiter": "\t"}}}
    assert parse_override("mlflow.run_name='#1 run'", PrepareJobConf) == {"mlflow": {"run_name": "#1 run"}}
    assert parse_override("prepare.max_chars='12'", PrepareJobConf) == {"prepare": {"max_chars": "12"}}


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
        validate_conf(
            PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"max_chars": "lots", "format": "xls"}}
        )
    message = str(err.value)
    assert "2 problems" in message
    assert "'prepare.max_chars': given 'lots' (str)" in message and "valid integer" in message
    assert (
        "'prepare.format': given 'xls' (str)" in message
        and "'csv', 'jsonl', 'parquet', 'text_lines' or 'text_files'" in message
    )


def test_bad_values_are_rejected_with_their_key():
    with pytest.raises(ConfigError, match=r"'prepare.max_chars': given -1 \(int\)"):
        validate_conf(PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"max_chars": -1}})
    with pytest.raises(ConfigError, match="must differ from 'io.input'"):
        validate_conf(PrepareJobConf, {"io": {"input": "same", "output": "same"}})
    with pytest.raises(ConfigError, match="may not carry \\['text'\\]"):
        validate_conf(
            PrepareJobConf, {"io": {"input": "a", "output": "b"}, "prepare": {"columns": {"extra": ["text"]}}}
        )


def test_missing_conf_file_and_env_overlay_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_conf(PrepareJobConf, tmp_path / "nope.yaml")
    job = write(tmp_path / "job.yaml", {})
    with pytest.raises(ConfigError, match="--env staging: no overlay found"):
        load_conf(PrepareJobConf, job, env="staging")


def test_label_map_keys_read_from_yaml_as_ints_become_text():
    conf = validate_conf(
        PrepareJobConf,
        {"io": {"input": "a", "output": "b"}, "prepare": {"csv": {"header": True}, "label_map": {1: "World"}}},
    )
    assert conf.prepare.label_map == {"1": "World"}


@pytest.mark.parametrize("path", sorted((REPO / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_conf_files_validate_and_document_every_key(path):
    data = yaml.safe_load(path.read_text())
    job = path.stem if path.stem in JOBS else path.stem.split("_")[0]
    model = JOBS[job].conf_model
    required_extra = {
        "classify": ["classify.model_uri=models:/news@champion"],
        "embed_docs": ["embed.embeddings=out/e"],
        "neighbors": ["neighbors.index=out/i"],
        "watch": ["io.input=null", "watch.inbox=in"],
    }.get(job, [])
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
        conf = load_conf(
            PrepareJobConf, REPO / "conf" / "prepare.yaml", env=env, overrides=["io.input=x", "io.output=y"]
        )
        assert conf.spark.master == ("local[*]" if env == "local" else None)


def test_bool_is_not_a_number_and_a_mapping_must_be_a_mapping(tmp_path):
    from textmill.pipelines.annotate import AnnotateJobConf

    with pytest.raises(
        ConfigError, match=r"'nlp.batch_size': given True \(bool\); expected: .*a number, not true/false"
    ):
        load_conf(AnnotateJobConf, overrides=["io.input=a", "io.output=b", "nlp.batch_size=true"])
    with pytest.raises(
        ConfigError, match=r"'spark.conf': given 5 \(int\); expected: Input should be a valid dictionary"
    ):
        load_conf(PrepareJobConf, overrides=["io.input=a", "io.output=b", "spark.conf=5"])
    job = write(
        tmp_path / "job.yaml",
        {"io": {"input": "a", "output": "b"}, "spark": {"conf": 5}, "prepare": {"max_chars": False}},
    )
    with pytest.raises(ConfigError) as err:
        load_conf(PrepareJobConf, job)
    assert "'spark.conf': given 5 (int)" in str(err.value) and "'prepare.max_chars': given False (bool)" in str(
        err.value
    )
    assert load_conf(AnnotateJobConf, overrides=["io.input=a", "io.output=b", "nlp.batch_size=7"]).nlp.batch_size == 7
    assert load_conf(PrepareJobConf, overrides=["io.input=a", "io.output=b", "spark.conf={spark.x: 1}"]).spark.conf == {
        "spark.x": 1
    }


def test_secret_looking_keys_and_uri_passwords_are_redacted():
    from textmill.runtime.redact import REDACTED, redact_text, redact_tree

    conf = {
        "spark": {
            "conf": {
                "spark.hadoop.fs.s3a.secret.key": "S3CR3T",
                "spark.hadoop.fs.s3a.access.key": "AKIA1",
                "spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net": "AZKEY",
                "spark.hadoop.fs.s3a.session.token": "TOK",
                "spark.sql.shuffle.partitions": 8,
            }
        },
        "mlflow": {"tracking_uri": "https://alice:pa55word@mlflow.example:5000/path"},
        "tokenize": {"lowercase": True},
        "embeddings": {"tokens_column": "tokens"},
    }
    redacted = redact_tree(conf)
    assert set(redacted["spark"]["conf"].values()) == {REDACTED, 8}
    assert redacted["mlflow"]["tracking_uri"] == f"https://alice:{REDACTED}@mlflow.example:5000/path"
    assert redacted["tokenize"] == {"lowercase": True} and redacted["embeddings"] == {"tokens_column": "tokens"}
    assert redact_text("jdbc and s3a://KEY:SECRET@bucket/x") == f"jdbc and s3a://KEY:{REDACTED}@bucket/x"
    with pytest.raises(ConfigError) as err:
        load_conf(
            PrepareJobConf,
            overrides=["io.input=a", "io.output=b", "spark.conf.spark.hadoop.fs.s3a.secret.key=[S3CR3T]"],
        )
    assert "S3CR3T" not in str(err.value)


def test_a_planted_secret_reaches_no_store_artifact_or_log(spark, mlflow_uri, tmp_path, capfd, caplog):
    import importlib.util
    import logging

    src = tmp_path / "docs.txt"
    src.write_text("one\ntwo\n")
    planted = {
        "spark.hadoop.fs.s3a.secret.key": "PLANTED-SECRET-7f3a9",
        "spark.hadoop.fs.s3a.access.key": "PLANTED-ACCESS-c01d",
    }
    spec = importlib.util.spec_from_file_location("job_prepare", REPO / "jobs" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    caplog.set_level(logging.DEBUG)
    artifacts = tmp_path / "art"
    code = module.main(
        [
            "--conf",
            str(REPO / "conf" / "prepare.yaml"),
            "--set",
            f"io.input={src}",
            "--log-level",
            "DEBUG",
            "--set",
            f"io.output={tmp_path / 'out'}",
            "--set",
            "prepare.format=text_lines",
            "--set",
            f"mlflow.tracking_uri={mlflow_uri}",
            "--set",
            "mlflow.experiment=secrets",
            "--set",
            f"mlflow.artifact_location={artifacts.as_uri()}",
            *[x for k, v in planted.items() for x in ("--set", f"spark.conf.{k}={v}")],
        ]
    )
    assert code == 0
    out, err = capfd.readouterr()
    places = {
        "stdout": out,
        "stderr": err,
        "log": caplog.text,
        "sqlite store": Path(mlflow_uri[len("sqlite:///") :]).read_bytes().decode("latin-1"),
    }
    places.update(
        {
            str(p): p.read_bytes().decode("latin-1")
            for p in [*artifacts.rglob("*"), *(tmp_path / "out").rglob("*")]
            if p.is_file()
        }
    )
    assert any("resolved.yaml" in name for name in places)
    for secret in planted.values():
        assert [name for name, text in places.items() if secret in text] == []
    assert "***redacted***" in places["sqlite store"]


def _code_defaults(job: str) -> dict:
    return flatten(JOBS[job].conf_model.model_validate({}).model_dump(mode="json"))


def _same(a, b) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return float(a) == float(b) if numbers else a == b


def test_job_conf_files_hold_the_code_defaults():
    # The demo pipeline sets its own values; tokenize deliberately defaults to blank:en (README says so).
    deliberate = {("tokenize", "nlp.model")}
    wrong = []
    for job in sorted(set(JOBS) - {"pipeline"}):
        defaults = _code_defaults(job)
        for key, value in flatten(yaml.safe_load((REPO / "conf" / f"{job}.yaml").read_text())).items():
            if key in defaults and not _same(defaults[key], value) and (job, key) not in deliberate:
                wrong.append(f"conf/{job}.yaml {key}: {value!r}, code default {defaults[key]!r}")
    assert wrong == []


def _readme_key_rows() -> list[tuple[str | None, str, str]]:
    """(job section, key, default cell) for every row of conf/README.md's key | default | meaning tables."""
    import re

    rows, section, in_table = [], None, False
    for line in (REPO / "conf" / "README.md").read_text().splitlines():
        heading = re.match(r"^###+ (.*)", line)
        if heading:
            names = re.findall(r"`(\w+)`", heading.group(1))
            section = names[0] if names and names[0] in JOBS else None
        if line.startswith("| key | default |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if not in_table or len(cells) < 3 or set(cells[0]) <= {"-", " "}:
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        values = [cells[1]] if len(keys) == 1 else [v.strip() for v in re.split(r", (?=\S)| / ", cells[1])]
        if len(values) != len(keys):
            continue
        for key, value in zip(keys, values):
            rows.append((section, key, value))
    return rows


def test_readme_key_tables_state_the_code_defaults():
    import re

    all_defaults: dict = {}
    for job in JOBS:
        if job != "pipeline":
            for key, value in _code_defaults(job).items():
                all_defaults.setdefault(key, value)
    checked, wrong, previous = 0, [], ""
    for section, key, cell in _readme_key_rows():
        defaults = _code_defaults(section) if section else all_defaults
        if key not in defaults:  # `recall.k` after `index.recall.queries`: relative to the row's first key
            parts = previous.split(".")
            key = next(
                (
                    ".".join(parts[:i] + [key])
                    for i in range(len(parts), 0, -1)
                    if ".".join(parts[:i] + [key]) in defaults
                ),
                key,
            )
        else:
            previous = key
        literal = re.fullmatch(r"`([^`<>$]*)`", cell) or re.fullmatch(r"(-?[\d,]+(?:\.\d+)?|true|false|null)", cell)
        if key not in defaults or defaults[key] is None or literal is None:
            continue  # derived defaults ("required", "<output>_quarantine", "default parallelism") are prose
        text = literal.group(1)
        try:
            value = yaml.safe_load(text.replace(",", "") if re.fullmatch(r"[\d,.-]+", text) else text)
        except yaml.YAMLError:
            value = text
        value = text if text in (",", '"') else value
        checked += 1
        if not _same(defaults[key], value):
            wrong.append(f"README {key}: {cell}, code default {defaults[key]!r}")
    assert wrong == []
    assert checked > 60


def _documented_keys() -> set[str]:
    """Every key conf/README.md's tables name: a row's later keys (`` `a.b.c` / `d` ``) sit beside its first."""
    import re

    documented: set[str] = set()
    for line in (REPO / "conf" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")] if line.startswith("| `") else []
        keys = re.findall(r"`([^`]+)`", cells[0]) if cells else []
        if keys:
            parent = keys[0].rpartition(".")[0]
            documented |= {keys[0], *(f"{parent}.{k}" if parent and "." not in k else k for k in keys[1:])}
    return documented


def test_conf_readme_documents_every_key_of_every_job():
    documented = _documented_keys()
    missing = {
        job: [
            k for k in _code_defaults(job) if k not in documented and not any(k.endswith("." + d) for d in documented)
        ]
        for job in JOBS
    }
    assert {job: keys for job, keys in missing.items() if keys} == {}
    assert {"prepare.columns.title", "index.vector_column", "tokenize.drop_space"} <= documented


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_used_but_never_shown(
    spark, tracking_server, tmp_path, capfd, caplog, monkeypatch
):
    import logging
    import os

    import mlflow

    from textmill.jobs import run_job

    port = tracking_server.url.rsplit(":", 1)[1]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    try:
        src = tmp_path / "docs.txt"
        src.write_text("one\ntwo\n")
        caplog.set_level(logging.DEBUG)
        conf = {
            "io": {"input": str(src), "output": str(tmp_path / "out")},
            "prepare": {"format": "text_lines"},
            "spark": {"ui_enabled": False},
            "mlflow": {"tracking_uri": f"http://alice:PLANTED-PW-91c2@127.0.0.1:{port}", "experiment": "creds"},
        }
        assert run_job("prepare", conf, spark)["rows_out"] == 2
        out, err = capfd.readouterr()
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "PLANTED-PW-91c2"  # MLflow authenticates with it
        store = (tracking_server.folder / "server.db").read_bytes().decode("latin-1")
        for name, text in {
            "stdout": out,
            "stderr": err,
            "log": caplog.text,
            "server store": store,
            "server log": (tracking_server.folder / "server.log").read_text(),
            "server artifacts": "".join(
                p.read_text(errors="replace") for p in (tracking_server.folder / "server-artifacts").rglob("*.yaml")
            ),
        }.items():
            assert "PLANTED-PW-91c2" not in text, name
        assert f"http://alice:***redacted***@127.0.0.1:{port}" in store
    finally:
        mlflow.set_tracking_uri(None)
