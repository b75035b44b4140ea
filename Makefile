# Quick start: `make reproduce` (tiny pipeline, CPU, offline) and `make test`.
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmcl-installed
# Exact versions of every dependency (CPython 3.11, Linux x86_64), written by `make lock`.
LOCK   := requirements.lock

.PHONY: env lock reproduce test test-fast clean-runs

# The environment installs the lock, then the package itself without resolving again.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e '.[test]'
	@touch $(STAMP)

env: $(STAMP)

# Regenerate the lock from pyproject.toml (the test extra) and requirements.constraints.txt; versions
# already in the lock are kept while they still fit (UPGRADE=1: the newest that fit).
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --constraint requirements.constraints.txt \
		$(if $(UPGRADE),--upgrade) -o $(LOCK)

# Three seeds (the profile's runtime.seeds): the main tables and the claims' paired comparisons
# need them; the figures notebook also rewrites the claims blocks of docs/methods/*.md. The runs of
# each notebook go to a pool of single-threaded worker processes, one per core (--executor auto,
# the default; docs/performance.md); it ends with the time per notebook and the slowest runs.
reproduce: $(STAMP)
	$(BIN)/mmcl reproduce --profile tiny --seeds 0 1 2 --update-docs --executor auto
	$(BIN)/mmcl verify --profile tiny

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean-runs:
	rm -rf runs
