"""textmill: NLP batch jobs on Apache Spark.

The package is layered; a module imports only from its own layer and the layers below it
(``tests/test_layers.py`` checks this):

- ``runtime``: what every job runs on (config, sessions, files, MLflow tracking, console, errors);
- ``data``: corpora in, outputs out (reading, cleaning, publishing and locks, the sample);
- ``text``: per-document text processing on executors (featurizing, spaCy);
- ``vectors``: word and document vectors, the sharded nearest-neighbour index;
- ``models``: the classifiers and every MLflow model flavor and pyfunc;
- ``pipelines``: one module per job, and the runner that puts a job in an MLflow run;
- ``streaming``: the ``watch`` job, composing the pipelines' per-document steps;
- on top: ``jobs`` (``run_job``), ``cli`` (``textmill``), ``notebook`` (notebook helpers).
"""

__version__ = "0.1.0"

from textmill import _moved

_moved.install()
