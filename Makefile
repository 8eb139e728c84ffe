# qdbpool — the commands a newcomer needs. Everything runs in a local virtualenv (.venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# The oldest Python pyproject.toml admits: `make test-oldest` runs the server-free tests on it.
OLDEST_PY ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) $(shell command -v python3.10 2>/dev/null))
OLDEST_VENV ?= .venv-py310

.PHONY: help install test test-core test-oldest lint typecheck bench bench-quick demo demo-ha docs docs-serve clean

help:
	@echo "make install   create .venv and install qdbpool with every extra (dev, bench, docs)"
	@echo "make test      run the whole test suite (starts its own PostgreSQL and MariaDB)"
	@echo "make test-oldest  the server-free tests on Python 3.10, the oldest we support"
	@echo "make lint      ruff + mypy --strict"
	@echo "make bench     benchmarks against peers, printing ratios measured in one run"
	@echo "make bench-quick  the same, short (a smoke run)"
	@echo "make demo      a small multi-threaded SQLite program using @with_conn"
	@echo "make demo-ha   a live failover: 3-node local PostgreSQL, primary killed mid-run"
	@echo "make docs      build the documentation site (mkdocs --strict) into site/"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench,docs]'

test: $(PY)
	$(PY) -m pytest $(PYTEST_ARGS)

test-core: $(PY)
	$(PY) -m pytest tests/core tests/dsn $(PYTEST_ARGS)

test-oldest:
	@test -n "$(OLDEST_PY)" || { echo "test-oldest: no python3.10 found; set OLDEST_PY=/path/to/python3.10"; exit 1; }
	test -x $(OLDEST_VENV)/bin/python || $(OLDEST_PY) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[dev,bench]'
	$(OLDEST_VENV)/bin/python -m pytest -p no:cacheprovider tests/core tests/dsn $(PYTEST_ARGS)

lint: $(PY)
	$(PY) -m ruff check qdbpool tests bench examples
	$(PY) -m ruff format --check qdbpool tests bench examples
	$(PY) -m mypy --strict qdbpool
	$(PY) -m mypy --strict tests/typing

typecheck: $(PY)
	$(PY) -m mypy --strict qdbpool

BENCHES := overhead acquire pg_throughput failover mysql_throughput

bench: $(PY)
	@for b in $(BENCHES); do echo; echo "== bench/$$b.py"; $(PY) bench/$$b.py $(BENCH_ARGS) || exit 1; done

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick

demo: $(PY)
	$(PY) examples/demo_sqlite.py

demo-ha: $(PY)
	$(PY) examples/demo_ha.py $(DEMO_ARGS)

docs: $(PY)
	$(PY) -m mkdocs build --strict

docs-serve: $(PY)
	$(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
