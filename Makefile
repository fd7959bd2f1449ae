# The two front doors: `make demo` and `make test`. Both build .venv from scratch when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA := data/4tops_synthetic.h5
.PHONY: setup data demo test test-fast mutation lint bench stop clean chromium postgres slurm

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# pip byte-compiles every installed module on one core (~85 s of a ~120 s install on 2 cores);
	# compileall does the same on every core (~49 s). Compiled here, not on first import: with
	# PYTHONDONTWRITEBYTECODE set (as on CI) every process would compile torch and MLflow again.
	# (A file that does not compile, e.g. a package's test fixture, is only left uncached.) The
	# packages' own test suites and pip are never imported here: skipped (52 s -> 40 s).
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[dev,postgres]'
	$(PY) -m compileall -q -j 0 -x 'site-packages/(pip/|.*/(tests?|testing/_internal|benchmarks)/)' \
	  "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	touch $(STAMP)

data: $(DATA)

$(DATA): $(STAMP)
	$(VENV)/bin/thesis-mlflow generate --output $(DATA)

# generate, start a tracking server, run all 36 cells at demo scale, build the report
demo: setup
	scripts/demo.sh

# The report test renders the dashboard in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "chromium is not installed and this is not root (no apt): ask for Debian's chromium; the browser tests need it"; \
	  else echo "installing Debian's chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

# The server tests start a throwaway PostgreSQL server (Debian's postgresql package).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "postgresql is not installed and this is not root (no apt): ask for Debian's postgresql; the database tests need it"; \
	  else echo "installing Debian's postgresql for the server tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi; }

# The SLURM tests start a one-node cluster of their own (Debian's slurmctld, slurmd, slurm-client,
# munge; root only). As an ordinary user there is no apt: they skip, saying why.
slurm:
	@command -v slurmctld >/dev/null 2>&1 || test -x /usr/sbin/slurmctld || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian's SLURM and munge for the scheduler tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null; \
	  else echo "SLURM is not installed and this is not root: the SLURM tests will skip (a root's make test installs it)"; fi; }

# two workers, a group of tests each at a time: a test file, or all the files that share the
# session's tracking server (tests/conftest.py makes the groups, longest first; its module's
# server and fixtures stay in one worker): the suite waits on servers and subprocesses as much
# as it computes; three workers were no faster on 2 cores (457 s against 432 s for two, the same
# code within the hour, 2026-12-08; benchmarks/RESULTS.md)
TEST_WORKERS ?= 2
test: setup chromium postgres slurm
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

# the quick loop while editing: no tracking store, server, browser or subprocess (pytest -m "not slow")
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

# mutants of the pure modules against their fast tests (not part of `make test`): score per module
mutation: setup
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,postgres,mutation]'
	scripts/mutation.sh

stop:
	-$(VENV)/bin/thesis-mlflow serve --root mlflow-server --stop

lint: setup
	$(VENV)/bin/ruff check thesis_mlflow steps tests benchmarks

bench: setup
	$(PY) benchmarks/data_difficulty.py
	$(PY) benchmarks/binning_speed.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/vqvae_codebook.py

clean:
	rm -rf $(VENV) data mlflow.db mlruns mlartifacts outputs mlflow-server condor slurm dashboards/*/ mutants mutants.log
