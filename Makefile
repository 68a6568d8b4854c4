# Quick start: `make demo` and `make test`. Both bootstrap everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup venv lock stack-install k8s-tools k8s-schemas k8s-check demo compose-init \
	compose-build compose-up compose-down docker-install test test-unit typecheck lint format \
	bench clean

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
	@# JupyterLab for the dev image, for its interpreter (Debian bookworm's Python 3.11.2).
	$(BIN)/uv pip compile docker/jupyter/requirements.in -c requirements.lock --generate-hashes \
		--python-version 3.11.2 --python-platform linux --quiet -o docker/jupyter/requirements.lock

stack-install: venv ## Install Postgres/Adminer/Java packages and fetch the Kafka/Debezium/Apicurio jars
	$(BIN)/streaming-ml stack install

# kustomize and kubeconform for deploy/k8s, built from their Go modules (the Go module
# proxy) into GOPATH/bin; reinstalled only when the pinned version is not the one there.
KUSTOMIZE_VERSION   := v5.8.2
KUBECONFORM_VERSION := v0.8.0
GOBIN_DIR = $(shell go env GOPATH)/bin

k8s-tools: ## Install kustomize and kubeconform (pinned) from their Go modules (idempotent)
	@go version -m $(GOBIN_DIR)/kustomize 2>/dev/null | grep -q '^\s*mod\s.*\s$(KUSTOMIZE_VERSION)\s' \
		|| GOBIN=$(GOBIN_DIR) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@go version -m $(GOBIN_DIR)/kubeconform 2>/dev/null | grep -q '^\s*mod\s.*\s$(KUBECONFORM_VERSION)\s' \
		|| GOBIN=$(GOBIN_DIR) go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)

k8s-schemas: venv ## Regenerate deploy/k8s/schemas from the Go modules and Maven Central (JAVA: a Java 21+)
	$(BIN)/python scripts/k8s_schemas.py

k8s-check: venv k8s-tools ## Build every deploy/k8s overlay and validate it strictly against deploy/k8s/schemas
	$(BIN)/pytest -q tests/unit/test_k8s.py

setup: venv stack-install k8s-tools ## Everything: venv, system packages, jars, k8s tools (idempotent)

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
	$(BIN)/python -c 'from streaming_ml.stack.compose import print_endpoints; print_endpoints()'

compose-down: ## Stop the compose stack (data stays; `docker compose down -v` deletes it)
	docker compose down

test: setup docker-install typecheck ## Type-check src/, then run the whole test suite against real components
	$(BIN)/pytest

test-unit: venv k8s-tools ## Unit tests only (start nothing)
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
