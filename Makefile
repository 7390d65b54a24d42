# Every target sets itself up: a local virtual environment in .venv, made or reused.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint perf perf-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,metrics]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -n auto
	$(PY) -m ruff check remus tests perf examples
	$(PY) -m mypy

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check remus tests perf examples
	$(PY) -m ruff format --check remus tests perf examples
	$(PY) -m mypy

perf: $(STAMP)
	$(PY) -m perf

perf-quick: $(STAMP)
	$(PY) -m perf --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
