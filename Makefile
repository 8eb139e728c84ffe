# qdbpool — the commands a newcomer needs. Everything runs in a local virtualenv (.venv),
# made and filled on first use: `make test` alone works on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
# Written after the install; older than pyproject.toml means the install is out of date.
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?=

# `make test-py PY_VERSION=3.13`: the tests that need no server, on another Python, in its
# own virtualenv. The interpreter is pyenv's if it has that version, else pythonX.Y on PATH;
# set PY_INTERPRETER to choose another.
PY_VERSION ?= 3.10
PY_INTERPRETER ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/$(PY_VERSION).*/bin/python$(PY_VERSION)) $(shell command -v python$(PY_VERSION) 2>/dev/null))
PY_VENV = .venv-py$(PY_VERSION)
# The tests that need no server: quick enough to run on every supported Python.
SERVER_FREE_TESTS := tests/core tests/dsn tests/aio
# The floors in pyproject.toml are tested: `make test-lowest` installs the lowest version
# each one admits (uv's lowest-direct resolution) on the oldest Python we support, builds
# the docs and runs the tests that need no server with them.
LOWEST_PY_VERSION := 3.10
LOWEST_VENV := .venv-lowest

.PHONY: help install test test-core test-py test-oldest test-lowest lint typecheck \
	bench bench-quick soak demo demo-ha docs docs-serve clean

help:
	@echo "make install   create .venv and install qdbpool with every extra (dev, bench, docs);"
	@echo "               the targets below do this themselves when pyproject.toml is newer"
	@echo "make test      run the whole test suite (starts its own PostgreSQL and MariaDB)"
	@echo "make test-core the tests that need no server"
	@echo "make test-py PY_VERSION=3.13  the tests that need no server, on another Python"
	@echo "make test-oldest  the same on Python 3.10, the oldest we support"
	@echo "make test-lowest  the same and the docs, with the lowest version of every dependency"
	@echo "make lint      ruff + mypy --strict"
	@echo "make bench     benchmarks against peers, printing ratios measured in one run"
	@echo "make bench-quick  the same, short (a smoke run: checks the scripts, judges nothing)"
	@echo "make soak      a long mixed workload against real servers (SOAK_ARGS=... for options)"
	@echo "make demo      a small multi-threaded SQLite program using @with_conn"
	@echo "make demo-ha   a live failover: 3-node local PostgreSQL, primary killed mid-run"
	@echo "make docs      build the documentation site (mkdocs --strict) into site/"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench,docs]'
	touch $@

install: | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench,docs]'
	touch $(INSTALLED)

# uv makes the other interpreters' virtualenvs in seconds, and knows lowest-version resolution.
$(UV): | $(PY)
	$(PY) -m pip install --quiet uv

test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

test-core: $(INSTALLED)
	$(PY) -m pytest $(SERVER_FREE_TESTS) $(PYTEST_ARGS)

test-py: $(UV)
	@test -n "$(PY_INTERPRETER)" || { echo "test-py: no python$(PY_VERSION) found; set PY_INTERPRETER=/path/to/python$(PY_VERSION)"; exit 1; }
	test -x $(PY_VENV)/bin/python || $(UV) venv --quiet --python $(PY_INTERPRETER) $(PY_VENV)
	VIRTUAL_ENV=$(PY_VENV) $(UV) pip install --quiet -e '.[dev,bench]'
	$(PY_VENV)/bin/python -m pytest -p no:cacheprovider $(SERVER_FREE_TESTS) $(PYTEST_ARGS)

test-oldest:
	$(MAKE) test-py PY_VERSION=3.10

test-lowest: $(UV)
	@test -n "$(PY_INTERPRETER)" || { echo "test-lowest: no python$(LOWEST_PY_VERSION) found; set PY_INTERPRETER"; exit 1; }
	rm -rf $(LOWEST_VENV)
	$(UV) venv --quiet --python $(PY_INTERPRETER) $(LOWEST_VENV)
	VIRTUAL_ENV=$(LOWEST_VENV) $(UV) pip install --quiet --resolution lowest-direct -e '.[dev,bench,docs]'
	VIRTUAL_ENV=$(LOWEST_VENV) $(UV) pip freeze --quiet | tr '\n' ' '; echo
	$(LOWEST_VENV)/bin/python -m mkdocs build --quiet --strict --site-dir $(LOWEST_VENV)/site
	# A few examples of the pool state machine: the floors are what this run proves
	QDBPOOL_HYPOTHESIS_PROFILE=quick $(LOWEST_VENV)/bin/python -m pytest -p no:cacheprovider $(SERVER_FREE_TESTS) $(PYTEST_ARGS)
test-lowest: PY_VERSION = $(LOWEST_PY_VERSION)

lint: $(INSTALLED)
	$(PY) -m ruff check qdbpool tests bench examples
	$(PY) -m ruff format --check qdbpool tests bench examples
	$(PY) -m mypy --strict qdbpool
	$(PY) -m mypy --strict tests/typing

typecheck: $(INSTALLED)
	$(PY) -m mypy --strict qdbpool

BENCHES := overhead acquire aio_acquire pg_throughput aio_throughput failover mysql_throughput bounded_routing

bench: $(INSTALLED)
	@for b in $(BENCHES); do echo; echo "== bench.$$b"; $(PY) -m bench.$$b $(BENCH_ARGS) || exit 1; done

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick

soak: $(INSTALLED)
	$(PY) -m bench.soak $(SOAK_ARGS)

demo: $(INSTALLED)
	$(PY) examples/demo_sqlite.py

demo-ha: $(INSTALLED)
	$(PY) examples/demo_ha.py $(DEMO_ARGS)

docs: $(INSTALLED)
	$(PY) -m mkdocs build --strict

docs-serve: $(INSTALLED)
	$(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) .venv-py3.* $(LOWEST_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis \
		build dist site *.egg-info
