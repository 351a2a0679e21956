# textmill: the two README commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install demo lint fix test test-fast bench fuzz pyfiles clean

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

# ruff (pinned in the test extras, configured in .ruff.toml): lint and format check; seconds.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# What lint can fix by itself: safe fixes, then the formatter.
fix: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Everything, every runner for real (CI's command; the budget is 30 minutes on the 2-core machine).
test: lint
	$(BIN)/python -m pytest

# Before every commit: lint, then the tests that start no JVM of their own and no server (budget 10 minutes).
test-fast: lint
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
