# Two commands on a fresh machine (Python >= 3.11, package registry access):
#   make run    -- create .venv, install copa-bench, run the workflow (snakemake --cores 8)
#   make test   -- create .venv, install copa-bench with test extras, run the tests
PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
BIN := $(VENV)/bin

.PHONY: run test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

clean:
	rm -rf runs .snakemake
