# Quick start: `make reproduce` (tiny pipeline, CPU, offline) and `make test`.
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmcl-installed

.PHONY: env reproduce test test-fast clean-runs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

env: $(STAMP)

# Two seeds by default (the README gives the measured time on 2 CPU cores);
# `mmcl reproduce --profile tiny --seeds 0 1 2` gives the three-seed tables.
reproduce: $(STAMP)
	$(BIN)/mmcl reproduce --profile tiny --seeds 0 1

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean-runs:
	rm -rf runs
