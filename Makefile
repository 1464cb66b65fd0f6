# rlgen: `make test` sets up its own virtual environment on a fresh machine, lints and tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check rlgen tests benchmarks

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_ppo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
