# Quick start: `make run` (set up and start the service), `make test` (set up and run every check).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test lint typecheck clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

$(BIN)/exhaust: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --quiet
	@touch $@

## install: create .venv from the lock file and migrate the database (only sets up)
install: $(BIN)/exhaust
	$(BIN)/exhaust migrate

## run: start the service on the embedded defaults (SQLite, local files, in-process workers)
run: install
	$(BIN)/exhaust serve --first-run

## lint / typecheck: ruff and mypy --strict
lint: $(BIN)/exhaust
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(BIN)/exhaust
	$(BIN)/mypy

## test: lint, type checks, then every test (unit, integration, acceptance)
test: install lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache
