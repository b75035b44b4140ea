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

# Three seeds (the profile's runtime.seeds): the main tables and the claims' paired comparisons
# need them; the figures notebook also rewrites the claims blocks of docs/methods/*.md.
reproduce: $(STAMP)
	$(BIN)/mmcl reproduce --profile tiny --seeds 0 1 2 --update-docs

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean-runs:
	rm -rf runs
