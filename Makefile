# Every target bootstraps what it needs: a fresh clone needs only python3 >= 3.11 and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
UV_VERSION := 0.13.8
UV := $(TOOLS)/bin/uv
# A dead registry fails in seconds, not minutes (see docs/troubleshooting in README).
# The embedded default registry (settings.EMBEDDED_TRACKING_URI) unless the user points elsewhere.
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_HTTP_REQUEST_MAX_RETRIES ?= 1
export MLFLOW_HTTP_REQUEST_TIMEOUT ?= 10
# `mlflow run --env-manager local` runs `python` from PATH: make it ours.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install test lint train api bench-serving help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed ## create ./.venv with the project and its dev tools (idempotent)

lint: install ## ruff
	$(BIN)/ruff check churn_platform pipelines serving monitoring tests

test: install ## the whole test suite (starts the services it needs)
	@scripts/ensure-postgres.sh
	$(BIN)/python -m pytest

train: install ## train on DATA (default: synthetic) against MLFLOW_TRACKING_URI (default: ./mlflow.db)
	$(BIN)/mlflow run . -e train --env-manager local $(if $(DATA),-P data=$(DATA))

api: install ## serve the Production model on http://127.0.0.1:8000 (docs at /docs)
	$(BIN)/churn-platform serve

bench-serving: install ## our API vs `mlflow models serve`, side by side (needs wrk: installs it with apt when root)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk first (apt-get install wrk)"; exit 1; }
	$(BIN)/python benchmarks/serving.py
