# Quick start: `make demo` and `make test`. Both bootstrap everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup venv lock stack-install demo compose-init test test-unit typecheck lint format bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# Exactly the locked versions, every file checked against its hash: first the build tools
# (pip, setuptools, wheel, uv), then the project's lock; then the package itself, whose
# dependencies the lock already holds, built with those setuptools (no build isolation,
# which would fetch unpinned ones).
$(STAMP): pyproject.toml requirements.lock requirements-build.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-build.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the package (fast when nothing changed)

lock: ## Re-resolve requirements.lock from pyproject.toml (hashes included); then `make setup`
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-build.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
		--python-version 3.11 --quiet -o requirements.lock

stack-install: venv ## Install Postgres/Adminer/Java packages and fetch the Kafka/Debezium/Apicurio jars
	$(BIN)/streaming-ml stack install

setup: venv stack-install ## Everything: venv, system packages, jars (idempotent)

demo: setup ## Run the end-to-end demo (Ctrl-C stops everything)
	$(BIN)/streaming-ml demo

compose-init: venv ## Generate the Docker Compose stack's passwords into a 0600 .env (once)
	$(BIN)/streaming-ml compose init

test: setup typecheck ## Type-check src/, then run the whole test suite against real components
	$(BIN)/pytest

test-unit: venv ## Unit tests only (start nothing)
	$(BIN)/pytest tests/unit

typecheck: venv ## mypy over src/ (settings in pyproject.toml)
	$(BIN)/mypy

lint: venv typecheck ## ruff check + format check + mypy + the docs' commands, settings and ports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q tests/unit/test_docs.py tests/unit/test_readme.py

format: venv ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Full benchmark (see docs/performance.md)
	$(BIN)/streaming-ml bench --out bench-results.json --plot bench-latency.png

clean: ## Stop the local stack and remove its state (keeps downloaded jars)
	-$(BIN)/streaming-ml stack down --purge
