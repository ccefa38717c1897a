#!/usr/bin/env bash
# The UI promotion test drives Debian's headless Chromium; install it when missing (as root).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "error: the browser test needs chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2
  exit 1
fi
echo "installing chromium and chromium-driver for the MLflow UI test" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
