#!/bin/sh
# Selects the role of the one image: api | monitor | train | mlflow-server (extra args pass through).
set -eu
role="${1:-api}"
[ "$#" -gt 0 ] && shift
case "$role" in
  api)
    exec churn-platform serve --host "${CHURN_API_HOST:-0.0.0.0}" --port "${CHURN_API_PORT:-8000}" "$@" ;;
  monitor)
    exec churn-platform monitor "$@" ;;
  train)
    exec churn-platform train "$@" ;;
  mlflow-server)
    exec mlflow server \
      --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}" \
      --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION}" \
      --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}" \
      --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost:*,127.0.0.1:*}" "$@" ;;
  *)
    exec "$role" "$@" ;;
esac
