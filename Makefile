# One command sets up and runs each job on a fresh machine (Python 3.11, pip; no GPU needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitrieval-installed

.PHONY: setup demo lint docs test test-avx2 test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test,docs]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vitrieval demo --output runs/demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks docs

# The documentation site from docs/ (mkdocs.yml) into site/: --strict turns any warning into a failure; offline.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: setup
	$(PY) -m pytest -q

# The cross-process equivalence, batching and live-write tests once more as a CPU without AVX-512 computes: torch's
# dispatch, oneDNN's convolutions and MKL's matrix products limited to AVX2 (on a box with AVX-512 they then sum in
# the other CPU kind's order; on an AVX2 box this changes nothing). CI runs it after `make test`.
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
AVX2_TESTS := tests/test_training_pk_distributed.py tests/test_training_tuple_distributed.py \
	tests/test_training_objectives_distributed.py tests/test_serve_batching.py tests/test_index_live.py

test-avx2: setup
	$(AVX2_ENV) $(PY) -m pytest -q $(AVX2_TESTS)

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs site build dist src/*.egg-info .pytest_cache
