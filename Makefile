# h2q-tui developer commands. Every target creates the virtualenv first if it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ARGS    ?=
WORKERS ?=        # make test WORKERS=2: pytest-xdist processes (empty: one process)

.PHONY: run test test-all lint bench clean browser compiler

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0   # the CPU build; a newer torch would pull GBs of CUDA
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)            ## set up, then train on the embedded default corpus
	$(BIN)/h2q-tui $(ARGS)

test: $(STAMP) browser compiler  ## set up, then run the test suite (slow tests excluded)
	$(BIN)/python -m pytest -m "not slow" $(if $(WORKERS),-n $(WORKERS))

browser:                 ## Debian's chromium for the browser test of h2q-tui web (skipped without it)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed (needs root and apt-get): the browser test will skip"

compiler:                ## a C compiler for the integer kernels of crystallized models (tests skip without)
	@command -v cc >/dev/null || command -v gcc >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq gcc >/dev/null) ; } || \
	  echo "note: no C compiler (needs root and apt-get): crystallized models decode to float, their kernel tests skip"

test-all: $(STAMP) browser compiler ## every test, slow ones included
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check h2q_tui kernels tests benchmarks
	$(BIN)/ruff format --check h2q_tui kernels tests benchmarks

bench: $(STAMP)          ## the 10-minute gpt-cpu vs microstream-cpu comparison (README figures)
	$(BIN)/python benchmarks/cpu_presets.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
