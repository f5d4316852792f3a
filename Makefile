# make run: the whole stack on this machine (Temporal dev server + UI, worker, API, demo data).
# make test: ruff and mypy, then the whole suite (needs PostgreSQL at 127.0.0.1:5432).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BOOTSTRAP_PYTHON := $(shell command -v python3.11 || command -v python3)

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

run: install
	$(PYTHON) devstack.py

test: lint
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

bench:
	@echo "not yet: see issue 7"

# Caches and the dev stack's data (.data); the virtualenv stays.
clean:
	rm -rf .data test-artifacts .pytest_cache .mypy_cache .ruff_cache build
