# textmill: the two README commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install demo test test-fast bench fuzz pyfiles clean

install: $(VENV)/.installed

# Re-installs when setup.py changes. pyspark 4.3.0 is a 456 MB sdist: the first build is
# slow, later ones come from pip's wheel cache.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/textmill run pipeline --conf conf/pipeline.yaml --env local

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python tests/benchmarks/run_all.py

# The long fuzz profile of prepare's readers (thousands of generated corpora; about an hour on 2 cores).
fuzz: install
	$(BIN)/python tests/benchmarks/fuzz_prepare.py $(FUZZ_ARGS)

pyfiles: install
	$(BIN)/textmill package --dist dist

clean:
	rm -rf out dist spark-warehouse mlruns .pytest_cache
