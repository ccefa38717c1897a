#!/usr/bin/env bash
# s3a:// for the Spark engine's tests: hadoop-aws and the AWS SDK bundle it was built against.
# A real cluster takes them from Maven (spark.jars.packages) or its image; this machine reaches
# only PyPI, where sagemaker-pyspark's source archive carries both jars. Fetched once, ~180 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.tools/spark-jars
JARS=(hadoop-aws-3.3.1.jar aws-java-sdk-bundle-1.11.901.jar)
have=1
for jar in "${JARS[@]}"; do [ -s "$DEST/$jar" ] || have=0; done
[ "$have" = 1 ] && exit 0
[ -x .tools/bin/pip ] || { echo "error: run 'make install' first (.tools/bin/pip)" >&2; exit 1; }
echo "fetching hadoop-aws for the Spark engine's s3a tests" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.tools/bin/pip download --quiet --no-deps --no-binary :all: sagemaker-pyspark==1.4.5 -d "$tmp" 2>/dev/null
mkdir -p "$DEST"
for jar in "${JARS[@]}"; do
  tar -xzf "$tmp"/sagemaker_pyspark-1.4.5.tar.gz -C "$tmp" "sagemaker_pyspark-1.4.5/deps/jars/$jar"
  mv "$tmp/sagemaker_pyspark-1.4.5/deps/jars/$jar" "$DEST/$jar"
done
