"""MLflow models-from-code entry files for textmill's pyfunc models.

``mlflow.pyfunc.log_model(python_model=<path of one of these files>)`` copies the file into the
model and runs it on load, so no pickled Python object is stored in a model (MLflow warns about
pickles and they break across versions). Each file only builds its ``PythonModel`` and hands it to
``mlflow.models.set_model``; the weights travel as the model's artifacts. Never import these files:
running them is what registers a model. ``model_code(name)`` gives a file's path for ``log_model``.
"""

from __future__ import annotations

from pathlib import Path


def model_code(name: str) -> str:
    """Path of ``<name>.py`` in this folder, readable by MLflow even when textmill runs from a zip."""
    from textmill.runtime.tracking import package_code_path

    path = Path(package_code_path()) / "models" / "from_code" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no models-from-code file {path}")
    return str(path)
