#!/usr/bin/env bash
# The observability tests run Debian's Prometheus, Alertmanager and Pushgateway (and promtool);
# install them when missing (as root), as ensure-browser.sh does for Chromium. The packages'
# own services are not started: each test starts its own servers on free ports.
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null \
   && command -v prometheus-alertmanager >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "error: the observability tests need prometheus, prometheus-alertmanager and prometheus-pushgateway (apt-get install ...)" >&2
  exit 1
fi
echo "installing prometheus, prometheus-alertmanager and prometheus-pushgateway for the observability tests" >&2
apt-get update -qq
# policy-rc.d 101: install without starting the packages' own services (they would take the ports).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  prometheus prometheus-alertmanager prometheus-pushgateway >/dev/null
