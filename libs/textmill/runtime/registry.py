"""Model URIs and the MLflow registry: which version a job uses, and when an alias moves.

Jobs name models by ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``runs:/<run_id>/<path>`` or a local directory. ``pin`` turns an alias into the version it
points at *now*, once, on the driver, so a job downloads, ships and records exactly one
version even if someone moves the alias while it runs. ``download`` fetches it (or, when the
artifact store is a folder on this machine, reads it in place: no copy of an 800 MB model);
a URI that does not resolve is a one-line ``ModelNotFoundError``. ``promote_if_better`` is the
"only on improvement" rule every registering job uses, with its decision logged.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from textmill.runtime.errors import TextmillError
from textmill.runtime.redact import redact_text

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_RUN = re.compile(r"^runs:/(?P<run_id>[^/]+)(/(?P<path>.*))?$")


class ModelNotFoundError(TextmillError):
    """A model URI or path cannot be resolved, or what it names is not the expected kind of model."""


def is_mlflow_uri(uri: str) -> bool:
    """True for what MLflow resolves (models:/, runs:/, remote schemes); False for local paths."""
    return uri.startswith(("models:/", "runs:/")) or ("://" in uri and not uri.startswith("file:"))


@dataclass(frozen=True)
class ModelSource:
    """One model as a job used it: what the config said, and the exact version behind it."""

    uri: str
    pinned_uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def pin(uri: str, key: str) -> ModelSource:
    """Resolve an alias to its current version (and a version or run to its run id)."""
    if not is_mlflow_uri(uri):
        return ModelSource(uri=uri, pinned_uri=uri)
    client = mlflow.MlflowClient()
    try:
        if m := _ALIAS.match(uri):
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
            return ModelSource(
                uri, f"models:/{m['name']}/{mv.version}", m["name"], str(mv.version), m["alias"], mv.run_id
            )
        if m := _VERSION.match(uri):
            mv = client.get_model_version(m["name"], m["version"])
            return ModelSource(uri, uri, m["name"], str(mv.version), None, mv.run_id)
        if m := _RUN.match(uri):
            client.get_run(m["run_id"])
            return ModelSource(uri, uri, run_id=m["run_id"])
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFoundError(
            f"{key} {uri!r} cannot be resolved at {redact_text(mlflow.get_tracking_uri())}: {_first_line(exc.message)}"
        ) from exc
    return ModelSource(uri=uri, pinned_uri=uri)


def download(source: ModelSource, into: str | Path, key: str) -> Path:
    """A local directory with the model ``source`` names (downloaded under ``into`` when remote)."""
    if not is_mlflow_uri(source.pinned_uri):
        local = Path(
            source.pinned_uri[len("file://") :] if source.pinned_uri.startswith("file://") else source.pinned_uri
        )
        if not local.exists():
            raise ModelNotFoundError(f"{key}: no model at {source.uri!r}")
        return local
    try:
        on_disk = _local_artifacts(source.pinned_uri)
        if on_disk is not None:  # a store on this machine: read it where it is, no copy of a large model
            return on_disk
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source.pinned_uri, dst_path=str(into)))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFoundError(f"{key} {source.uri!r} cannot be resolved: {_first_line(exc.message)}") from exc


def _local_artifacts(uri: str) -> Path | None:
    """The directory behind a ``models:/`` or ``runs:/`` URI when the artifact store is a local folder."""
    from urllib.parse import unquote, urlparse

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if uri.startswith("models:/"):
        underlying = ModelsArtifactRepository.get_underlying_uri(uri)
    elif uri.startswith("runs:/"):
        underlying = RunsArtifactRepository.get_underlying_uri(uri)
    else:
        return None
    parsed = urlparse(underlying)
    if parsed.scheme not in ("", "file") or parsed.netloc:
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_dir() else None


def _first_line(message: str) -> str:
    lines = str(message).strip().splitlines()
    return (lines[0] if lines else "")[:300]


def promote_if_better(name: str, version: str, metric: str | None, value: float | None, alias: str) -> dict[str, Any]:
    """Move ``alias`` to ``version`` only if ``value`` beats the current holder's ``metric``
    (or, with no metric, as asked); return the decision, which callers log."""
    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        current = None
    decision: dict[str, Any] = {"model": name, "version": version, "metric": metric, "value": value, "alias": alias}
    if current is not None and metric is not None:
        previous = client.get_run(current.run_id).data.metrics.get(metric) if current.run_id else None
        decision.update({"previous_version": current.version, "previous_value": previous})
        if previous is not None and value is not None and value <= previous:
            decision["promoted"] = False
            decision["reason"] = f"{metric}={value:.4f} does not beat version {current.version}'s {previous:.4f}"
            return decision
    client.set_registered_model_alias(name, alias, version)
    decision["promoted"] = True
    if current is None:
        decision["reason"] = "no previous holder of the alias"
    elif metric is None:
        decision["reason"] = f"no metric given: the alias moves from version {current.version} as asked"
    else:
        decision["reason"] = f"{metric} improved on version {current.version}"
    return decision
