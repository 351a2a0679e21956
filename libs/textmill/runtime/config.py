"""Job configuration: YAML files plus explicit overrides, validated on the driver.

Every job has a pydantic model (``JobConf`` subclass, defined next to the job's pipeline
in ``textmill.pipelines.<job>``). ``load_conf`` deep-merges, lowest to highest:

1. the model's own defaults,
2. the job file (``--conf conf/<job>.yaml``),
3. the env overlay (``--env local`` -> ``conf/env/local.yaml``),
4. ``--set a.b=c`` overrides (text keys take the value as typed, others YAML: ``parse_override``),

then validates the result. Every problem (unknown key, missing required value, wrong
type or value) is collected into one ``ConfigError`` that names the key, what was given
and what is allowed. Called by the CLI and by tests (which pass plain dicts).
"""

from __future__ import annotations

import copy
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from textmill.runtime.errors import ConfigError
from textmill.runtime.redact import REDACTED, is_secret_key, redact_text

C = TypeVar("C", bound="JobConf")


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1; in a config that is a typo, not a number.
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            allowed = _unwrap(cls.model_fields[info.field_name].annotation)
            if bool not in allowed and any(t in (int, float) for t in allowed):
                raise ValueError("a number, not true/false")
        return value


def registered_model_name(value: str | None) -> str | None:
    """MLflow's rule for registered model names (no '/', no ':', not blank), checked when the
    config is read: MLflow checks it only after the model was logged."""
    if value is not None and (not value.strip() or "/" in value or ":" in value or value.strip() in (".", "..")):
        raise ValueError(
            f"a registered model name may not be blank or contain '/' or ':' (MLflow's rule), got {value!r}"
        )
    return value


RegisteredModelName = Annotated[str | None, AfterValidator(registered_model_name)]


class IOConf(StrictModel):
    input: str | None = Field(None, description="input path, directory or glob")
    output: str | None = Field(None, description="output path; rewritten whole on every run")
    quarantine: str | None = Field(None, description="quarantine path; default <output>_quarantine")
    replace_unmarked: bool = Field(
        False, description="replace an existing output that textmill did not write (no _textmill.json)"
    )


class SparkConf(StrictModel):
    master: str | None = Field(None, description="only when textmill starts Spark itself; default local[*]")
    remote: str | None = Field(
        None,
        description="a Spark Connect server, sc://host:port (default $SPARK_REMOTE); "
        "local[N] starts one in this process",
    )
    app_name: str | None = Field(None, description="default textmill-<job>")
    shuffle_partitions: int | None = Field(None, gt=0, description="default 2 x cores in local mode")
    driver_memory: str | None = Field(None, description="local mode only; default: a quarter of RAM, 1g-8g")
    connect_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Spark Connect: how long to wait for the server to accept and answer, at the start and "
        "whenever it stops answering during a job",
    )
    ui_enabled: bool = Field(True, description="Spark web UI in local mode")
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict, description="extra spark.* settings")

    @field_validator("conf")
    @classmethod
    def _named_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        unnamed = [k for k in value if not k.strip()]
        if unnamed:
            raise ValueError("a mapping of Spark setting names to values, e.g. {spark.sql.shuffle.partitions: 8}")
        return value


class MlflowConf(StrictModel):
    tracking_uri: str | None = Field(None, description="default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    experiment: str | None = Field(None, description="default textmill-<job>")
    run_name: str | None = None
    artifact_location: str | None = Field(None, description="for new experiments; default <cwd>/mlartifacts")


class JobConf(StrictModel):
    """Sections every job has. Subclasses add their own section and list required keys."""

    required: ClassVar[tuple[str, ...]] = ("io.input", "io.output")
    # True when io.output holds several outputs (model, features, ...) rather than being one dataset.
    container_output: ClassVar[bool] = False
    # docs_per_second = rows_in / wall time; meaningless for jobs that run other jobs or wait for input.
    rate_metric: ClassVar[bool] = True
    # False for jobs that do no Spark work (log_spacy_model): run_job then starts no session.
    uses_spark: ClassVar[bool] = True

    io: IOConf = Field(default_factory=IOConf)
    spark: SparkConf = Field(default_factory=SparkConf)
    mlflow: MlflowConf = Field(default_factory=MlflowConf)

    def input_paths(self) -> list[str]:
        """Everything the job reads; no output may contain or sit inside one of them."""
        return [self.io.input] if self.io.input else []

    def output_paths(self) -> dict[str, str]:
        """Config key -> directory the job writes (checked, locked and published by textmill)."""
        return {"io.output": self.io.output} if self.io.output else {}

    def cross_field_problems(self) -> list[str]:
        """Problems that involve several keys; subclasses extend this."""
        problems = []
        io = self.io
        if io.input and io.output and _same_path(io.input, io.output):
            problems.append(f"'io.output' ({io.output!r}) must differ from 'io.input': the output is rewritten whole")
        if io.quarantine and io.output and _same_path(io.quarantine, io.output):
            problems.append(f"'io.quarantine' ({io.quarantine!r}) must differ from 'io.output'")
        return problems


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


# ---------------------------------------------------------------------------- merging


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``overlay``; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# A config is a few hundred values. YAML aliases can make a 10-line file stand for billions
# (shared in memory, but anything that walks it, validation or repr, would hang).
MAX_CONFIG_VALUES = 100_000


def expanded_size(data: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values ``data`` holds with every YAML alias expanded (counted once per shared
    node, so the count itself is cheap); stops counting past ``limit``."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = limit + 1  # a node that contains itself is unbounded
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(node)] = min(total, limit + 1)
        return sizes[id(node)]

    return size(data)


def _load_bounded(text: str, where: str) -> Any:
    data = yaml.safe_load(text)
    if expanded_size(data) > MAX_CONFIG_VALUES:
        raise ConfigError(
            [
                f"{where} expands to more than {MAX_CONFIG_VALUES:,} values through YAML aliases (*name); "
                "write the values out instead of repeating aliases"
            ]
        )
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"])
    try:
        data = _load_bounded(path.read_text(encoding="utf-8"), str(path))
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path} must hold a mapping at the top level, got {type(data).__name__}"])
    return data


def _field_model(model: type[BaseModel], name: str) -> tuple[type[BaseModel] | None, bool]:
    """The section model behind ``model.name`` (or None), and whether the field is a free-form dict."""
    field = model.model_fields.get(name)
    if field is None:
        return None, False
    for tp in _unwrap(field.annotation):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp, False
        if typing.get_origin(tp) is dict or tp is dict:
            return None, True
    return None, False


def _unwrap(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


_YAML_NULLS = ("", "null", "Null", "NULL", "~")


def _is_text_field(model: type[BaseModel], parts: Sequence[str]) -> bool:
    """Whether ``a.b.c`` names a model field that holds text only (``str`` or ``str | None``)."""
    current: type[BaseModel] | None = model
    for part in parts[:-1]:
        current = _field_model(current, part)[0] if current is not None else None
    field = current.model_fields.get(parts[-1]) if current is not None else None
    return field is not None and _unwrap(field.annotation) == [str]


def _comment_in(raw: str) -> bool:
    """Whether YAML would drop part of ``raw`` as a comment (a ``#`` outside every token)."""
    try:
        tokens = list(yaml.scan(raw))
    except yaml.YAMLError:
        return False
    ends = [0, *(t.end_mark.index for t in tokens)]
    starts = [t.start_mark.index for t in tokens] + [len(raw)]
    return any("#" in raw[end:start] for end, start in zip(ends, starts))


_QUOTED = re.compile(r"""\A\s*(?:'(?:[^']|'')*'|"(?:[^"\\]|\\.)*")\s*\Z""", re.S)


def parse_override(item: str, model: type[BaseModel]) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``.

    A key that holds text (a path, a URI, a name) takes the rest of the line as it was typed,
    spaces, ``#``, ``%``, ``*``, ``[``, ``:`` and all (only the ends' white space is trimmed);
    ``null`` or nothing unsets it, and a value in quotes is read as YAML (``"\\t"`` is a tab).
    Any other value is parsed as YAML (``5`` -> int, ``null`` -> None, ``[a, b]`` -> list); text
    that is not valid YAML (e.g. a lone quote) is taken literally, and a value YAML would cut at
    a ``#`` comment is refused. Keys of free-form dict fields may contain dots:
    ``spark.conf.spark.sql.shuffle.partitions=8`` sets one key.
    """
    if "=" not in item:
        raise ConfigError([f"--set {item!r}: expected KEY=VALUE, e.g. io.output=out/run1"])
    dotted, raw = item.split("=", 1)
    parts = [p for p in dotted.strip().split(".")]
    if not dotted.strip() or any(not p for p in parts):
        raise ConfigError([f"--set {item!r}: the key must be dotted names, e.g. prepare.max_chars"])
    if _is_text_field(model, parts) and raw.strip() not in _YAML_NULLS and not _QUOTED.match(raw):
        value: Any = raw.strip()
    elif _comment_in(raw):
        raise ConfigError(
            [
                f"--set {dotted.strip()}: YAML would drop the text from '#' on as a comment; put the value in "
                "quotes if the '#' belongs to it"
            ]
        )
    else:
        try:
            value = _load_bounded(raw, f"--set {dotted.strip()}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw
    path: list[str] = []
    current: type[BaseModel] | None = model
    for i, part in enumerate(parts):
        path.append(part)
        if current is None:
            continue
        sub, is_dict = _field_model(current, part)
        if is_dict:
            if i + 1 < len(parts):  # else the value replaces the whole mapping (and must be one)
                path.append(".".join(parts[i + 1 :]))
            break
        current = sub
    tree: dict[str, Any] = {}
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return tree


# ---------------------------------------------------------------------------- validation


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        current, _ = _field_model(current, str(part))
    return sorted(current.model_fields) if current is not None else []


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlevel = 3


def _describe(value: Any, key: str = "") -> str:
    if is_secret_key(key):
        return f"{REDACTED} ({type(value).__name__})"
    text = _SHORT_REPR.repr(value)  # bounded: never renders a whole large value
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _format_errors(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "<top level>"
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = loc[:-1]
            allowed = ", ".join(_fields_at(model, parent)) or "(none)"
            where = ".".join(parent) or "the top level"
            problems.append(
                f"unknown key '{key}' (given {_describe(err['input'], key)}); allowed keys at {where}: {allowed}"
            )
        elif kind == "missing":
            problems.append(f"'{key}' is required but missing")
        else:
            problems.append(f"'{key}': given {_describe(err.get('input'), key)}; expected: {err['msg']}")
    return [redact_text(problem) for problem in problems]  # a value may hold a connection string's token


def _get_path(conf: BaseModel, dotted: str) -> Any:
    value: Any = conf
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate_conf(model: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    """Validate a merged dict against ``model``; raise one ConfigError listing every problem."""
    try:
        conf = model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, model), source) from None
    missing = [
        f"'{key}' is required but was not set (null); set it in the conf file or with --set {key}=..."
        for key in model.required
        if _get_path(conf, key) in (None, "")
    ]
    problems = missing + conf.cross_field_problems()
    if problems:
        raise ConfigError(problems, source)
    return conf


def env_overlay_path(env: str, conf_path: str | Path | None) -> Path:
    """Where ``--env NAME`` is read from: a YAML path as given, else env/NAME.yaml beside the
    job file's directory, else conf/env/NAME.yaml under the working directory."""
    given = Path(env)
    if given.suffix in (".yaml", ".yml"):
        if given.is_file():
            return given
        raise ConfigError([f"--env {env}: file not found"])
    candidates = []
    if conf_path is not None:
        candidates.append(Path(conf_path).resolve().parent / "env" / f"{env}.yaml")
    candidates.append(Path.cwd() / "conf" / "env" / f"{env}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError([f"--env {env}: no overlay found; looked in " + ", ".join(str(c) for c in candidates)])


def load_conf(
    model: type[C],
    path: str | Path | None = None,
    env: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> C:
    """Merge job file, env overlay and overrides (``["a.b=c", ...]`` or a nested dict); validate."""
    merged: dict[str, Any] = {}
    sources = []
    if path is not None:
        merged = deep_merge(merged, read_yaml(path))
        sources.append(str(path))
    if env:
        overlay = env_overlay_path(env, path)
        merged = deep_merge(merged, read_yaml(overlay))
        sources.append(str(overlay))
    if isinstance(overrides, Mapping):
        merged = deep_merge(merged, overrides)
        sources.append("overrides")
    elif overrides:
        for item in overrides:
            merged = deep_merge(merged, parse_override(item, model))
        sources.append("--set")
    return validate_conf(model, merged, source="config from " + (" + ".join(sources) or "defaults"))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def to_yaml(conf: BaseModel | Mapping[str, Any]) -> str:
    data = conf.model_dump(mode="json") if isinstance(conf, BaseModel) else dict(conf)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
