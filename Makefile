# ELIT Lab: every target sets up .venv on first use (Python 3.11 and make are all it needs).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= $(or $(ELIT_PROFILE),quick)

.PHONY: reproduce test lint format lab bench clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## Run every notebook headless (papermill) and write results/: executed notebooks, figures, metrics.json, summary.md.
reproduce: $(STAMP)
	$(BIN)/elit reproduce --profile $(PROFILE) --out results

## Lint, unit tests, doctests and every notebook (nbval) in the smoke profile.
test: lint
	ELIT_PROFILE=smoke ELIT_RESULTS="$$(mktemp -d)" MPLBACKEND=Agg $(BIN)/python -m pytest

## ruff (lint and format) and a check that committed notebooks carry no outputs.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/nbstripout --verify notebooks/*.ipynb

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/nbstripout notebooks/*.ipynb

## Open JupyterLab on the notebooks.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## Benchmarks (print tables; not part of the tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_ensemble.py

clean-cache:
	rm -rf data/cache
