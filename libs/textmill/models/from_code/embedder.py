"""MLflow models-from-code entry for textmill's document embedder (see __init__.py)."""

import mlflow

from textmill.models.embedder_pyfunc import EmbedderPyfunc

mlflow.models.set_model(EmbedderPyfunc())
