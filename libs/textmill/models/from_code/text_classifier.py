"""MLflow models-from-code entry for textmill's torch text classifier (see __init__.py)."""

import mlflow

from textmill.models.classifier_pyfunc import TextClassifierPyfunc

mlflow.models.set_model(TextClassifierPyfunc())
