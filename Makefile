# Quick start: `make run` (set up and start the service), `make test` (set up and run every check).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test test-deps lint typecheck clean bench

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode and compileall: where PYTHONDONTWRITEBYTECODE is set (it is on the bench
# and CI machines) nothing is ever cached, and every process start compiled every module it
# imported from source: `exhaust --help` 0.86 s -> 0.36 s, importing the app 4.8 s -> 2.0 s.
$(BIN)/exhaust: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --quiet --compile-bytecode
	$(BIN)/python -m compileall -q src >/dev/null
	@touch $@

## install: create .venv from the lock file and migrate the database (only sets up)
install: $(BIN)/exhaust
	$(BIN)/exhaust migrate

## run: start the service on the embedded defaults (SQLite, local files, in-process workers)
run: install
	$(BIN)/exhaust serve --first-run

## lint / typecheck: ruff and mypy --strict
lint: $(BIN)/exhaust
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(BIN)/exhaust
	$(BIN)/mypy

## test-deps: system tools only the tests need: 7-Zip's 7z (Debian p7zip-full) opens the
## private exhaust's AES-256 zips; Debian's chromium runs the browser test of the upload page;
## installed when missing (CI and this machine run as root)
test-deps:
	@command -v 7z >/dev/null || (apt-get update -qq && apt-get install -y -qq p7zip-full)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

## test: lint, type checks, then every test (unit, integration, acceptance), on
## TEST_WORKERS pytest-xdist processes (most tests wait on servers and subprocesses; the
## RabbitMQ/Redis tests share one worker, see tests marked xdist_group("broker"))
TEST_WORKERS ?= 2
test: install test-deps lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

## bench: the benchmark suite (bench/README.md); not part of `make test`. BENCH_ARGS="export --scale 1"
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache
