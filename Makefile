# Set-up and everyday commands. `make run` and `make test` each install what they need first.
# Python >= 3.12 is required; PYTHON=/path/to/python3.12 picks a specific interpreter.
# Installs take the exact versions in the lock files (requirements*.lock); `make lock` updates them.

VENV ?= .venv
PYTHON ?= $(shell for candidate in python3.12 python3.13 python3 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
	$$candidate -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { command -v $$candidate || echo $$candidate; } && break; done)
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# mkdocs-material's banner about MkDocs 2 (not a warning of this site's build)
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true

.PHONY: install install-test install-docs run test lint docs lock clean-data system-packages

# What running needs, at the locked versions, then the project itself without resolving again.
$(BIN)/kedro: pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "Python >= 3.12 not found: install it or pass PYTHON=/path/to/python3.12"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -r requirements.lock
	$(PIP) --no-deps -e .
	@touch $@

# The test tools (pytest, ruff, ...) and the docs tools on top, each from its own lock.
$(BIN)/pytest: $(BIN)/kedro requirements-test.lock
	$(PIP) -r requirements-test.lock
	@touch $@

$(BIN)/mkdocs: $(BIN)/kedro requirements-docs.lock
	$(PIP) -r requirements-docs.lock
	@touch $@

install: $(BIN)/kedro  ## create .venv and install the project (what running needs)

install-test: $(BIN)/pytest  ## install plus the test tools

install-docs: $(BIN)/mkdocs  ## install plus the docs tools

run: install  ## the whole benchmark on the built-in demo data
	$(BIN)/kedro run

test: install-test system-packages  ## the test suite (the real-data tests skip when ../shared is absent)
	$(BIN)/python -m pytest -n 2 --durations=15

# Servers and a browser some tests start on localhost: PostgreSQL (behind the MLflow server) and
# Chromium (the MLflow UI check), from Debian's packages where apt-get can install them (root or
# password-less sudo); elsewhere those tests skip and say why.
SYSTEM_PACKAGES := $(strip $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
	$(if $(wildcard /usr/bin/chromium),,chromium))
system-packages:
	@if [ -z "$(SYSTEM_PACKAGES)" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "Not installed: $(SYSTEM_PACKAGES) (the tests that need them skip)"; exit 0; fi; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	echo "Installing $(SYSTEM_PACKAGES) (Debian packages) for the tests"; \
	{ $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; } \
	|| echo "Could not install $(SYSTEM_PACKAGES): the tests that need them skip"

lint: install-test  ## ruff, and import-linter's contracts (pyproject.toml): the library never imports its pipelines
	$(BIN)/ruff check src tests docs tools
	$(BIN)/ruff format --check src tests docs tools
	$(BIN)/lint-imports --no-cache

docs: install-docs  ## the docs site in site/ (reference pages generated from the registries), warnings as errors
	$(BIN)/mkdocs build --strict

# Newest versions pyproject.toml allows, installed into .venv, then written to the lock files.
# Then run `make test` and commit the requirements*.lock files.
lock: install-test install-docs
	$(PIP) --upgrade --upgrade-strategy eager -e ".[test,docs]"
	$(BIN)/python tools/lock.py

clean-data:  ## remove what runs wrote under data/; never data/01_raw/ (inputs, downloads, .part files)
	find data -mindepth 2 ! -path 'data/01_raw/*' ! -type d ! -name .gitkeep -delete
	find data -mindepth 2 ! -path 'data/01_raw/*' -type d -empty -delete
