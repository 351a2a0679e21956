"""Where the modules of textmill 0.1's flat package went, so that their old names still import.

Models logged before the package was split into layers name them: a classifier's or an
embedder's models-from-code file imports ``textmill.pyfunc_classifier`` or
``textmill.docvectors``, a spaCy model's MLmodel has ``loader_module: textmill.spacy_models``;
users' notebooks import ``textmill.config`` or ``textmill.session``. An old name is the new
module itself (``textmill.config is textmill.runtime.config``); ``textmill.docvectors``, whose
pyfunc moved apart from its vectors, forwards to both of its new homes. ``textmill.models`` is
now the models layer, not the worker cache (``textmill.runtime.worker_cache``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

MOVED: dict[str, tuple[str, ...]] = {
    f"textmill.{old}": tuple(f"textmill.{new}" for new in news)
    for old, news in {
        "errors": ("runtime.errors",),
        "redact": ("runtime.redact",),
        "config": ("runtime.config",),
        "console": ("runtime.console",),
        "session": ("runtime.session",),
        "session_kinds": ("runtime.session_kinds",),
        "filesystems": ("runtime.filesystems",),
        "tracking": ("runtime.tracking",),
        "registry": ("runtime.registry",),
        "partials": ("runtime.partials",),
        "io": ("data.io",),
        "storage": ("data.storage",),
        "cleaning": ("data.cleaning",),
        "csv_records": ("data.csv_records",),
        "sample": ("data.sample",),
        "featurize": ("text.featurize",),
        "udfs": ("text.udfs",),
        "nlp": ("text.spacy_annotator",),
        "embeddings": ("vectors.embeddings",),
        "docvectors": ("vectors.docvectors", "models.embedder_pyfunc"),
        "ann": ("vectors.ann",),
        "classifier": ("models.classifier",),
        "logistic_solver": ("models.logistic_solver",),
        "spacy_textcat": ("models.spacy_textcat",),
        "plots": ("models.plots",),
        "pyfunc_classifier": ("models.classifier_pyfunc",),
        "spacy_models": ("models.spacy_flavor",),
        "mlflow_models": ("models.from_code",),
    }.items()
}


class _Forward(types.ModuleType):
    """An old module whose names now live in several modules."""

    def __init__(self, name: str, targets: list[types.ModuleType]) -> None:
        super().__init__(name, f"moved to {', '.join(t.__name__ for t in targets)}")
        self._targets = targets

    def __getattr__(self, attribute: str):
        for target in self._targets:
            if hasattr(target, attribute):
                return getattr(target, attribute)
        raise AttributeError(
            f"module {self.__name__!r} (moved to {', '.join(t.__name__ for t in self._targets)}) "
            f"has no attribute {attribute!r}"
        )

    def __dir__(self):
        return sorted({name for target in self._targets for name in dir(target)})


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        targets = [importlib.import_module(name) for name in MOVED[spec.name]]
        return targets[0] if len(targets) == 1 else _Forward(spec.name, targets)

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
