"""Models and how MLflow holds them: the torch classifiers and their training (``classifier``,
``logistic_solver``), spaCy's textcat (``spacy_textcat``), report plots (``plots``), and every
MLflow model textmill logs: the classifier and embedder pyfuncs (``classifier_pyfunc``,
``embedder_pyfunc``, entered through ``from_code``) and spaCy pipelines (``spacy_flavor``).

Imports ``runtime``, ``data``, ``text`` and ``vectors``.
"""
