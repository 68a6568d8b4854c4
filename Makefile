# Quick start: `make demo` and `make test`. Both bootstrap everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup venv lock stack-install demo compose-init compose-build compose-up compose-down \
	docker-install test test-unit lint format bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# Exactly the locked versions, every file checked against its hash; then the package
# itself, whose dependencies the lock already holds.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the package (fast when nothing changed)

lock: ## Re-resolve requirements.lock from pyproject.toml (hashes included); then `make setup`
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
		--python-version 3.11 --quiet -o requirements.lock
	@# JupyterLab for the dev image, for its interpreter (Debian bookworm's Python 3.11.2).
	$(BIN)/uv pip compile docker/jupyter/requirements.in -c requirements.lock --generate-hashes \
		--python-version 3.11.2 --python-platform linux --quiet -o docker/jupyter/requirements.lock

stack-install: venv ## Install Postgres/Adminer/Java packages and fetch the Kafka/Debezium/Apicurio jars
	$(BIN)/streaming-ml stack install

setup: venv stack-install ## Everything: venv, system packages, jars (idempotent)

demo: setup ## Run the end-to-end demo (Ctrl-C stops everything)
	$(BIN)/streaming-ml demo

compose-init: venv ## Generate the Docker Compose stack's passwords into a 0600 .env (once)
	$(BIN)/streaming-ml compose init

docker-install: ## Install docker.io, Docker Compose v2 and debootstrap when missing
	docker/install-docker.sh

compose-build: setup docker-install ## Start dockerd if needed; build every compose image here (no pull)
	docker/dockerd.sh >/dev/null
	docker/build-images.sh

compose-up: compose-build compose-init ## The demo's pipeline in containers: build, `up --wait`, endpoints
	docker compose up --detach --wait --wait-timeout 600
	$(BIN)/python -c 'from streaming_ml.compose import print_endpoints; print_endpoints()'

compose-down: ## Stop the compose stack (data stays; `docker compose down -v` deletes it)
	docker compose down

test: setup docker-install ## Run the whole test suite against real components
	$(BIN)/pytest

test-unit: venv ## Unit tests only (start nothing)
	$(BIN)/pytest tests/unit

lint: venv ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Full benchmark (see docs/performance.md)
	$(BIN)/streaming-ml bench --out bench-results.json --plot bench-latency.png

clean: ## Stop the local stack and remove its state (keeps downloaded jars)
	-$(BIN)/streaming-ml stack down --purge
