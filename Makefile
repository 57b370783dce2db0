# ELIT Lab: every target sets up .venv on first use (Python 3.11 and make are all it needs).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= $(or $(ELIT_PROFILE),quick)

.PHONY: reproduce test test-browser test-colab dashboard lint format lab bench clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[lab,dev]'
	touch $(STAMP)

## Run every notebook headless (papermill) and write results/: executed notebooks, figures, metrics.json, summary.md.
reproduce: $(STAMP)
	$(BIN)/elit reproduce --profile $(PROFILE) --out results

## Lint, unit tests, doctests and every notebook (nbval) in the smoke profile.
test: lint
	ELIT_PROFILE=smoke ELIT_RESULTS="$$(mktemp -d)" MPLBACKEND=Agg $(BIN)/python -m pytest

## The widgets end to end in headless Chromium (Debian's chromium package): JupyterLab and the Voila dashboard, smoke profile.
## Screenshots go to results/browser/.
test-browser: $(STAMP)
	@command -v chromium >/dev/null || test -n "$$ELIT_CHROMIUM" || { echo "test-browser needs Chromium: apt-get install chromium (or set ELIT_CHROMIUM)" >&2; exit 1; }
	$(BIN)/python -m pytest -m browser tests/browser

## A Colab stand-in: build the wheel, install it into a fresh environment (no checkout), run every
## notebook alone and cold in an empty folder (smoke, no shared images), and the widget tests under ipywidgets 7.7.
test-colab: $(STAMP)
	$(BIN)/python .ci/colab_standin.py

## Serve the uncertainty explorer as a web page without code (Voila) at http://localhost:8866.
dashboard: $(STAMP)
	$(BIN)/voila dashboards/uncertainty_explorer.ipynb --port=8866

## ruff (lint and format) and a check that committed notebooks carry no outputs.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/nbstripout --verify notebooks/*.ipynb dashboards/*.ipynb

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/nbstripout notebooks/*.ipynb dashboards/*.ipynb

## Open JupyterLab on the notebooks.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## Benchmarks, full size (print tables beside atomai's; minutes). Each also runs at tiny sizes (--smoke) in make test.
## Notebook timings: $(BIN)/python benchmarks/bench_notebooks.py (an hour in the quick profile).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_ensemble.py
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_stream.py

clean-cache:
	rm -rf data/cache
