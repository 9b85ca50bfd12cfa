# One command sets up and runs each job on a fresh machine (Python 3.11, pip; no GPU needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitrieval-installed

.PHONY: setup demo lint docs test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test,docs]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vitrieval demo --output runs/demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# The documentation site from docs/ (mkdocs.yml) into site/: --strict turns any warning into a failure; offline.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs site build dist src/*.egg-info .pytest_cache
