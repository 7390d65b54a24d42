# Every target sets itself up: a local virtual environment in .venv, made or reused.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint perf perf-quick clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,metrics,http]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# Debian's headless Chromium for the dashboard's browser test (tests/test_dashboard.py), installed
# when missing (31 s here, apt-get update included); where it cannot be, that test is skipped
# (and fails under CI=true).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (for tests/test_dashboard.py)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null \
	  || echo "could not install chromium: tests/test_dashboard.py will be skipped"; }

test: $(STAMP) chromium
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
