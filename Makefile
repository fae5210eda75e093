# Two commands on a fresh machine (Python >= 3.11, package registry access):
#   make run    -- create .venv, install copa-bench, run the workflow (snakemake --cores 8)
#   make test   -- create .venv, install copa-bench with test extras, run the tests' fast tier (pytest: not slow)
#   make test-all -- both tiers: the fast one and the integration tier (workflow runs, sandbox red team, SLURM,
#                    browser, README blocks; marked slow) -- what CI runs
PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
BIN := $(VENV)/bin
# the extras make test installs; .ci/run adds slurm (snakemake-executor-plugin-slurm) for tests/test_slurm.py
PIP_EXTRAS ?= test

.PHONY: run test test-all install clean sandbox

install: $(VENV)/.installed sandbox

# bubblewrap: the sandbox plug-in attacks run in (docs/trust.md). Installed from Debian's packages where this
# runs as root with apt; elsewhere one line says how (plug-ins are then refused unless allowed explicitly).
sandbox:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1) \
	  || echo "make sandbox: bubblewrap could not be installed: plug-in attacks will be refused (docs/trust.md)"; \
	else echo "make sandbox: install bubblewrap (e.g. sudo apt-get install bubblewrap) to run plug-in attacks (docs/trust.md)"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[$(PIP_EXTRAS)]"
	touch $@

run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

# both tiers, one after the other (each prints its own time); -m overrides pyproject's addopts (-m "not slow")
test-all: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m slow

clean:
	rm -rf runs .snakemake
