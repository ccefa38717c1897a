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
export CHURN_REGISTRY_MAX_RETRIES ?= 1
export CHURN_REGISTRY_TIMEOUT_S ?= 10
# One knob: raw `mlflow` commands (the `mlflow run` launcher) follow CHURN_REGISTRY_* too.
export MLFLOW_HTTP_REQUEST_MAX_RETRIES = $(CHURN_REGISTRY_MAX_RETRIES)
export MLFLOW_HTTP_REQUEST_TIMEOUT = $(CHURN_REGISTRY_TIMEOUT_S)
# `mlflow run --env-manager local` runs `python` from PATH: make it ours.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install test demo lint audit train api bench-serving bench-monitoring bench-performance bench-batch mlflow-ui mlflow-ui-screenshots drift-monitor promote rollback docker-build docker-run docker-stop compose-up compose-down k8s-deploy k8s-delete help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (CI, containers) every process would
# otherwise compile MLflow, scikit-learn and pandas from source: 8 s more per CLI command.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev --extra spark --compile-bytecode --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed ## create ./.venv with the project and its dev tools (idempotent)

demo: install ## the whole platform end to end on the embedded default (DATA=data/telco_churn.csv for real data)
	$(BIN)/churn-platform demo $(if $(DATA),--data $(DATA)) $(DEMO_ARGS)

lint: install ## ruff, and the layering rules as import-linter contracts (pyproject.toml)
	$(BIN)/ruff check churn_platform pipelines serving monitoring benchmarks tests
	$(BIN)/lint-imports --no-cache

audit: $(UV) ## known vulnerabilities in the locked dependencies (pip-audit; needs PyPI's advisory data online)
	$(UV) export --quiet --frozen --no-hashes --no-emit-project --extra dev --extra spark -o $(TOOLS)/requirements-audit.txt
	$(TOOLS)/bin/uvx pip-audit==2.10.1 -r $(TOOLS)/requirements-audit.txt --no-deps --disable-pip --strict --progress-spinner off

test: lint ## lint, then the whole test suite (starts the services it needs)
	@scripts/ensure-postgres.sh
	@scripts/ensure-browser.sh
	@scripts/ensure-spark-jars.sh
	@scripts/ensure-prometheus.sh
	$(BIN)/python -m pytest

train: install ## train on DATA (default: synthetic; real: data/telco_churn.csv) against MLFLOW_TRACKING_URI (default: ./mlflow.db)
	$(BIN)/mlflow run . -e train --env-manager local $(if $(DATA),-P data=$(DATA))

api: install ## serve the Production model on http://127.0.0.1:8000 (docs at /docs); follows promotions every 30 s
	CHURN_RELOAD_POLL_S=$${CHURN_RELOAD_POLL_S:-30} $(BIN)/churn-platform serve

bench-serving: install ## our API vs `mlflow models serve`, side by side (needs wrk: installs it with apt when root)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; }; } || { echo "install wrk first (apt-get install wrk)"; exit 1; }
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/observability.py
	$(BIN)/python benchmarks/capacity.py

bench-monitoring: install ## drift-check seconds and peak RSS, ours vs DataDriftPreset
	$(BIN)/python benchmarks/monitoring.py

bench-performance: install ## performance job on 1M predictions + 200k outcomes: seconds and peak RSS, SQLite and PostgreSQL
	$(BIN)/python benchmarks/performance.py

bench-batch: install ## batch scoring of 1M (and 5M) customers: rows/s and peak RSS vs mlflow pyfunc
	$(BIN)/python benchmarks/batch.py

mlflow-ui: install ## MLflow UI on http://127.0.0.1:5000 over MLFLOW_TRACKING_URI's store
	$(BIN)/mlflow server --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

mlflow-ui-screenshots: install ## docs/images/mlflow-ui/*.png from the real MLflow UI (headless Chromium, a throwaway registry)
	@scripts/ensure-browser.sh
	$(BIN)/python scripts/mlflow-ui-screenshots.py

drift-monitor: install ## drift check of Production (CURRENT=file, else the inference log)
	$(BIN)/churn-platform monitor $(if $(CURRENT),--current $(CURRENT))

promote: install ## promote VERSION=N to Production
	@test -n "$(VERSION)" || { echo "usage: make promote VERSION=N [REASON=...]"; exit 2; }
	$(BIN)/churn-platform promote --version $(VERSION) $(if $(REASON),--reason "$(REASON)")

rollback: install ## move Production back one step
	$(BIN)/churn-platform rollback $(if $(REASON),--reason "$(REASON)")

IMAGE ?= churn-platform:0.1.0
ENV ?= dev
need = @command -v $(1) >/dev/null || { echo "$(1) is not installed: $(2)"; exit 127; }

docker-build: ## build the image (needs Docker)
	$(call need,docker,see https://docs.docker.com/engine/install/)
	docker build -f deploy/Dockerfile -t $(IMAGE) .

docker-run: ## run the API container on :8000 against MLFLOW_TRACKING_URI, an http(s):// server (needs Docker)
# Inside the container the sqlite:///mlflow.db default names an empty file: the API would never be ready.
	@case "$$MLFLOW_TRACKING_URI" in http://* | https://*) ;; *) \
	  echo "docker-run: MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI is not an http(s):// tracking server;" \
	    "the container cannot see your local files (SQLite registry, ./mlruns artifacts)." >&2; \
	  echo "  Serve them: make mlflow-ui, train through it (MLFLOW_TRACKING_URI=http://127.0.0.1:5000 make train)," \
	    "then make docker-run MLFLOW_TRACKING_URI=http://127.0.0.1:5000; or the full stack: make compose-up." >&2; \
	  exit 2 ;; esac
	$(call need,docker,see https://docs.docker.com/engine/install/)
	docker run -d --name churn-api --network host -e MLFLOW_TRACKING_URI -e CHURN_ADMIN_API_KEY $(IMAGE) api

docker-stop: ## stop and remove the API container
	$(call need,docker,see https://docs.docker.com/engine/install/)
	-docker rm -f churn-api

compose-up: ## the full stack with docker compose (needs Docker and a .env, see .env.example)
	$(call need,docker,see https://docs.docker.com/engine/install/)
	@test -f .env || { echo "copy .env.example to .env and set its values first"; exit 2; }
	@# The jobs' bind mount: Docker would create a missing ./reports as root, which UID 1000 cannot write.
	mkdir -p reports
	docker compose up -d --build

compose-down: ## stop the compose stack, observability included (volumes are kept)
	$(call need,docker,see https://docs.docker.com/engine/install/)
	@# Without its profiles, `down` leaves the profiled services (Prometheus, Grafana...) running.
	docker compose --profile jobs --profile observability down

k8s-deploy: install ## kubectl apply -k deploy/overlays/$(ENV) (needs a cluster)
	$(BIN)/kubectl apply -k deploy/overlays/$(ENV)

k8s-delete: install ## kubectl delete -k deploy/overlays/$(ENV)
	$(BIN)/kubectl delete -k deploy/overlays/$(ENV)
