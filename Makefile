# amir-pl: `make test` runs the test suite; `make bench` measures the README's speed figures.
# Everything installs into .venv on first use (Python >= 3.11).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

test-fast: install  # skips the subprocess and DDP tests
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/amir-bench

clean:
	rm -rf $(VENV) .pytest_cache
