#!/usr/bin/env bash
# Make sure the machine's PostgreSQL answers on 127.0.0.1:5432 before the integration tests.
# It is the machine's own server: we start it when it is down, and never stop it.
set -euo pipefail
host=${CHURN_TEST_PG_HOST:-127.0.0.1}
port=${CHURN_TEST_PG_PORT:-5432}
if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "PostgreSQL is not answering on $host:$port; starting the local cluster" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h "$host" -p "$port" && exit 0; sleep 1; done
fi
echo "error: PostgreSQL is not reachable on $host:$port; the integration tests need it" >&2
exit 1
