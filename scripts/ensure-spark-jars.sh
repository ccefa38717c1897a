#!/usr/bin/env bash
# s3a:// for the Spark engine's tests: hadoop-aws and the AWS SDK bundle it was built against.
# A real cluster takes them from Maven (spark.jars.packages) or its image; this machine reaches
# only PyPI, where sagemaker-pyspark's source archive carries both jars. Fetched once, ~180 MB,
# and kept outside the checkout too (as pip keeps its downloads): a fresh clone, CI's every
# run, copies them in a second rather than unpacking the archive again (~15 s).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.tools/spark-jars
JARS=(hadoop-aws-3.3.1.jar aws-java-sdk-bundle-1.11.901.jar)
CACHE_HOME="${XDG_CACHE_HOME:-${HOME:-}/.cache}"
CACHE=""
[ "$CACHE_HOME" != "/.cache" ] && CACHE="$CACHE_HOME/churn-platform/spark-jars"

all_in() { for jar in "${JARS[@]}"; do [ -s "$1/$jar" ] || return 1; done; }

# Copy the jars from $1 to $2 through temporary names: a copy cut short leaves no jar behind
# that all_in would take for a whole one. The cache is a convenience: a home that
# cannot take it (read-only, full) costs the next clone the download, nothing else.
copy_all() {
  mkdir -p "$2" || return 1
  for jar in "${JARS[@]}"; do
    local part
    part=$(mktemp "$2/.$jar.XXXXXX") || return 1
    if ! cp "$1/$jar" "$part" || ! chmod 0644 "$part" || ! mv "$part" "$2/$jar"; then rm -f "$part"; return 1; fi
  done
}

if all_in "$DEST"; then
  [ -z "$CACHE" ] || all_in "$CACHE" || copy_all "$DEST" "$CACHE" 2>/dev/null || true
  exit 0
fi
if [ -n "$CACHE" ] && all_in "$CACHE" && copy_all "$CACHE" "$DEST"; then exit 0; fi
[ -x .tools/bin/pip ] || { echo "error: run 'make install' first (.tools/bin/pip)" >&2; exit 1; }
echo "fetching hadoop-aws for the Spark engine's s3a tests" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.tools/bin/pip download --quiet --no-deps --no-binary :all: sagemaker-pyspark==1.4.5 -d "$tmp" 2>/dev/null
tar -xzf "$tmp"/sagemaker_pyspark-1.4.5.tar.gz -C "$tmp" "${JARS[@]/#/sagemaker_pyspark-1.4.5/deps/jars/}"
copy_all "$tmp/sagemaker_pyspark-1.4.5/deps/jars" "$DEST"
[ -z "$CACHE" ] || copy_all "$DEST" "$CACHE" 2>/dev/null || true
