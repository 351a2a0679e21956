"""The ``embedder`` MLflow pyfunc: texts -> document vectors, from a ``train_embeddings`` export.

``models/from_code/embedder.py`` builds it when MLflow loads a logged embedder; the vectors
come from ``vectors.docvectors.DocumentEmbedder``, the same code the ``embed_docs`` UDF runs.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from textmill.models.classifier_pyfunc import texts_from
from textmill.vectors.docvectors import DocumentEmbedder


class EmbedderPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.embedder = DocumentEmbedder(context.artifacts["embeddings"])

    # A DataFrame hint (Series and lists are accepted too): MLflow infers no signature from it, so the
    # explicit one stays, and it does not warn about a missing hint.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        vectors = self.embedder.embed_texts(texts_from(model_input))
        # A text with no known word gets [] rather than null: mlflow.pyfunc.spark_udf cannot carry a null array.
        return pd.DataFrame({"vector": [v.tolist() if v is not None else [] for v in vectors]})
