# The two front doors: `make demo` and `make test`. Both build .venv from scratch when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA := data/4tops_synthetic.h5
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

.PHONY: setup data demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data: $(DATA)

$(DATA): $(STAMP)
	$(VENV)/bin/thesis-mlflow generate --output $(DATA)

demo: setup data
	@echo "Tracking store: $$MLFLOW_TRACKING_URI"
	$(VENV)/bin/thesis-mlflow info

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check thesis_mlflow steps tests benchmarks

bench: setup
	$(PY) benchmarks/data_difficulty.py

clean:
	rm -rf $(VENV) data mlflow.db mlruns mlartifacts outputs
