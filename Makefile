# make run: the whole stack on this machine (Temporal dev server + UI, worker, API, demo data).
# make test: ruff and mypy, then the whole suite (needs PostgreSQL at 127.0.0.1:5432).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BOOTSTRAP_PYTHON := $(shell command -v python3.11 || command -v python3)

.PHONY: install browser run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

# tests/test_ui_browser.py drives Debian's chromium (never a downloaded browser). Installed here
# when missing, where apt-get exists and we are root (CI, the dev machines); otherwise, or if apt
# refuses, a warning here and that test fails saying what is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the Temporal UI test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; } \
	    || echo "warning: apt-get could not install chromium; the UI test will fail" >&2; \
	  else \
	    echo "warning: chromium is missing (needs root and apt-get); the UI test will fail" >&2; \
	  fi; }

run: install
	$(PYTHON) devstack.py

# The suite waits on Temporal round trips far more than it computes, so it runs in
# PYTEST_WORKERS processes (pytest-xdist), each with its own Temporal dev server and stacks
# (tests/conftest.py). PYTEST_WORKERS=0 runs it in this one process. `--dist load` hands out
# runs of neighbouring tests (module fixtures are rarely built twice) and balances test by test:
# with whole files (loadfile, biggest first) the one-test files that take minutes (Schemathesis,
# the bench smoke run) would come last and leave the other process idle meanwhile.
PYTEST_WORKERS ?= 2
test: lint browser
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist load

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

# Service against the raw Temporal ceiling in one run (docs/performance.md); larger runs:
# make bench BENCH_ARGS="--n 1000 --concurrency 32 --open-workflows 20000"
# make bench BENCH_ARGS=--quick   (under 3 minutes, no cost section: for before/after runs)
BENCH_ARGS ?=
bench: install
	$(PYTHON) -m bench.run $(BENCH_ARGS)

# Caches and the dev stack's data (.data); the virtualenv stays.
clean:
	rm -rf .data test-artifacts .pytest_cache .mypy_cache .ruff_cache build
