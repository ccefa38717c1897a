#!/bin/sh
# Selects the role of the one image: api | features | monitor | performance | retrain | score | train |
# mlflow-server (extra args pass through).
# The role is $1 when it names one (docker run IMAGE train ..., Kubernetes args), else $CHURN_ROLE
# (default api): `docker compose run SERVICE ARGS` replaces the command with ARGS, so each compose
# service names its role in CHURN_ROLE and ARGS are the role's own flags.
set -eu
roles="api | features | monitor | performance | retrain | score | train | mlflow-server"
# `compose run train -- --data x`: the separator is not an argument of the role (click would
# then read --data as a stray positional).
if [ "${1:-}" = "--" ]; then shift; fi
case "${1:-}" in
  api | features | monitor | performance | retrain | score | train | mlflow-server)
    role="$1"
    shift
    if [ "${1:-}" = "--" ]; then shift; fi ;;
  "" | -*)
    role="${CHURN_ROLE:-api}" ;;
  *)
    # Escape hatch: any other command (docker compose run --rm api python -c ...), but a
    # misspelt role fails with the list of roles, not "exec: trian: not found".
    if ! command -v "$1" >/dev/null 2>&1; then
      echo "entrypoint: '$1' is neither a role ($roles) nor a command" >&2
      exit 2
    fi
    exec "$@" ;;
esac
case "$role" in
  api)
    exec churn-platform serve --host "${CHURN_API_HOST:-0.0.0.0}" --port "${CHURN_API_PORT:-8000}" "$@" ;;
  features)
    exec churn-platform features "$@" ;;
  monitor)
    exec churn-platform monitor "$@" ;;
  performance)
    exec churn-platform performance "$@" ;;
  retrain)
    exec churn-platform retrain "$@" ;;
  score)
    exec churn-platform score "$@" ;;
  train)
    exec churn-platform train "$@" ;;
  mlflow-server)
    exec mlflow server \
      --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}" \
      --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION}" \
      --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
      --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost:*,127.0.0.1:*}" "$@" ;;
  *)
    echo "entrypoint: CHURN_ROLE='$role' is not a role ($roles)" >&2
    exit 2 ;;
esac
