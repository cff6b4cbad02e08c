#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real Prometheus, HAProxy,
# Alertmanager, etcd, real HTTP receivers and a real headless Chromium.
# Installs what the tests need from Debian's packages when it is missing (as root, or with
# sudo). Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# tool:Debian package
tools="prometheus:prometheus promtool:prometheus haproxy:haproxy
  prometheus-alertmanager:prometheus-alertmanager chromium:chromium openssl:openssl python3:python3
  etcd:etcd-server systemd-analyze:systemd"

need=()
for pair in $tools; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing from Debian: ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Fail here, not halfway through the suite, if anything is still missing.
for pair in $tools; do
  tool=${pair%%:*}
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool (Debian package ${pair#*:})" >&2; exit 1; }
done
[ -f ../shared/traces/nasa_http_jul95_1min.csv ] || { echo "missing: ../shared/traces/nasa_http_jul95_1min.csv" >&2; exit 1; }

cargo test --locked "$@"
